"""How the benchmarks report: aggregation over seeds, markdown tables and figures.

Shared helpers come first: :func:`mean_std` and :func:`mean_std_series` (mean and sample
standard deviation over seeds, ``ddof = 1``, 0 for one value), :func:`format_mean_std`,
:func:`md_table`, :func:`pyplot` (matplotlib with the Agg backend, or ``None``),
:func:`save_figure` and :func:`plot_mean_band` (a mean curve with a +-1 std band, against
training steps or seconds alike). The statistics over seeds, written here (scipy is not a
dependency) and tested against printed tables and closed forms: :func:`t_cdf` and
:func:`t_quantile` (Student's t, through the regularised incomplete beta function),
:func:`t_interval` (mean, std and the 95% t-interval), :func:`paired_t_test` and
:func:`holm` (Holm's step-down correction); every ``±`` they lead to is labelled
(:data:`INTERVAL_LABEL`). Then the renderers of each benchmark's results, which read
nothing but the dicts the benchmarks save as JSON:

- speed: :func:`speed_table` (``benchmarks.speed.markdown_table``) and :func:`plot_speed`
  (``benchmarks.speed.plot_results``);
- quality: :func:`aggregate_runs` (``benchmarks.quality.aggregate``), :func:`quality_table`
  (``benchmarks.quality.markdown_table``), :func:`sensitivity_table`,
  :func:`comparison_text`, :func:`comparisons_text` and :func:`plot_quality`
  (``benchmarks.quality.plot_results``),
  one function per figure: MAP@R against training images and against training seconds
  (time to quality), final scores, difficulty fractions, sensitivity to the searched
  settings.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import GIB

__all__ = [
    "CURVE_KEYS",
    "INTERVAL_LABEL",
    "LEVEL",
    "STD_LABEL",
    "FINAL_KEYS",
    "aggregate_runs",
    "aligned",
    "comparison_text",
    "comparisons_text",
    "find_entry",
    "format_bytes",
    "format_interval",
    "holm",
    "incomplete_beta",
    "format_mean_std",
    "md_table",
    "mean_std",
    "mean_std_series",
    "paired_t_test",
    "plot_mean_band",
    "plot_quality",
    "plot_speed",
    "pyplot",
    "quality_table",
    "sensitivity_table",
    "save_figure",
    "speed_table",
    "t_cdf",
    "t_interval",
    "t_quantile",
]

#: Dots per inch of every figure.
DPI = 110


# --------------------------------------------------------------------------------------
# Aggregation and formatting
# --------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of ``values``; ``std`` is the sample standard deviation
    (``ddof = 1``), 0 for a single value.

    Raises:
        statistics.StatisticsError: ``values`` is empty.
    """
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def mean_std_series(series: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Point-wise :func:`mean_std` of equally long series (one per seed).

    Returns:
        ``{"mean": [...], "std": [...]}``, one value per point.

    Raises:
        ValueError: the series differ in length.
    """
    stats = [mean_std(column) for column in zip(*series, strict=True)]
    return {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}


def format_mean_std(stat: dict[str, Any], digits: int = 3) -> str:
    """``"mean ± std"`` of a :func:`mean_std` dict, or just the mean for a single value."""
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


# --------------------------------------------------------------------------------------
# Statistics over seeds: Student's t, intervals, paired tests, Holm's correction
# --------------------------------------------------------------------------------------

#: Confidence level of every interval and significance level of every test.
LEVEL = 0.95


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified
    Lentz's method), accurate to ~1e-14 for ``x < (a + 1) / (a + b + 2)``."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    out = d
    for m in range(1, 400):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        out *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        out *= step
        if abs(step - 1.0) < 1e-15:
            break
    return out


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``,
    ``0 <= x <= 1`` (continued fraction on the side where it converges fast)."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta needs a, b > 0 and 0 <= x <= 1, got {a}, {b}, {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on
    :func:`t_cdf` to 1e-12), e.g. ``t_quantile(0.975, 4) = 2.776``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean, sample std (``ddof = 1``) and the two-sided ``level`` Student-t confidence
    interval of the mean of ``values`` (``half_width = t_{(1+level)/2, n-1} std / sqrt(n)``;
    None for one value)."""
    stat = mean_std(values)
    n = stat["n"]
    half = None
    if n > 1:
        half = t_quantile(0.5 + level / 2.0, n - 1) * stat["std"] / math.sqrt(n)
    lo = None if half is None else stat["mean"] - half
    hi = None if half is None else stat["mean"] + half
    return {**stat, "level": level, "half_width": half, "low": lo, "high": hi}


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided paired t-test of ``mean(a - b) = 0`` over matched pairs (same seed: same
    initialisation and batches), with the 95% t-interval of the mean difference.

    Returns:
        ``n``, ``mean`` (of the differences), ``std``, ``half_width``, ``low``, ``high``
        (the interval), ``t`` and ``p`` (None with fewer than two pairs; ``p = 1`` when every
        difference is 0, ``p = 0`` when they are all equal and non-zero).

    Raises:
        ValueError: ``a`` and ``b`` differ in length or are empty.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a paired test needs two equally long samples, got {len(a)}, {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    out = t_interval(diffs)
    n = out["n"]
    if n < 2:
        return {**out, "t": None, "p": None}
    se = out["std"] / math.sqrt(n)
    if se == 0.0:
        return {
            **out,
            "t": math.copysign(math.inf, out["mean"]) if out["mean"] else 0.0,
            "p": 1.0 if out["mean"] == 0.0 else 0.0,
        }
    t = out["mean"] / se
    return {**out, "t": t, "p": 2.0 * (1.0 - t_cdf(abs(t), n - 1))}


def holm(pvalues: Sequence[float | None], alpha: float = 1.0 - LEVEL) -> list[dict[str, Any]]:
    """Holm's step-down correction (Holm 1979) of a family of p-values: the adjusted
    p-value ``max_{j <= i} min(1, (m - j + 1) p_(j))`` in increasing order of p, and
    whether the hypothesis is rejected at family-wise level ``alpha``. ``None`` p-values
    (one seed) stay None and do not count in ``m``."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[dict[str, Any]] = [{"p_holm": None, "reject": None} for _ in pvalues]
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = {"p_holm": running, "reject": running <= alpha}
    return out


def format_interval(stat: Mapping[str, Any], digits: int = 3) -> str:
    """``"mean ± half-width"`` of a :func:`t_interval` dict (the ``±`` is the 95%
    t-interval's half-width; see :data:`INTERVAL_LABEL`), or the mean for one value."""
    if stat.get("half_width") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['half_width']:.{digits}f}"


#: What the ``±`` of :func:`format_interval` means, printed with every table that uses it.
INTERVAL_LABEL = "mean ± half-width of the 95% Student-t confidence interval over seeds"
#: What the ``±`` of :func:`format_mean_std` means.
STD_LABEL = "mean ± sample standard deviation over seeds (ddof = 1)"


def format_bytes(b: float) -> str:
    """Bytes in GiB (two decimals) from 1 GiB on, else in MiB (one decimal)."""
    if b >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / 1024**2:.1f} MiB"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table.

    Args:
        header: the column titles.
        rows: the cells, row by row (converted with :class:`str`).
        align: one letter per column, ``"l"`` (left) or ``"r"`` (right); missing letters
            mean left.

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    rule = ["---:" if align[i : i + 1] == "r" else "---" for i in range(len(header))]
    lines = [_md_row(header), "|" + "|".join(rule) + "|"]
    lines += [_md_row(row) for row in rows]
    return "\n".join(lines)


def _md_row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or ``None`` when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its folders) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_mean_band(
    ax: Any,
    x: Sequence[float],
    stat: Mapping[str, Sequence[float]],
    *,
    color: Any,
    label: str,
    markersize: float = 3,
) -> None:
    """Draw ``stat["mean"]`` against ``x`` with a +-1 ``stat["std"]`` band (as returned by
    :func:`mean_std_series`); ``x`` may be training steps or seconds."""
    xs = np.asarray(x)
    mean = np.asarray(stat["mean"])
    std = np.asarray(stat["std"])
    ax.plot(xs, mean, marker="o", markersize=markersize, color=color, label=label)
    ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15)


# --------------------------------------------------------------------------------------
# Speed results
# --------------------------------------------------------------------------------------


def find_entry(
    rows: list[dict[str, Any]], method: str, n: int, labels: str = "pk"
) -> dict[str, Any] | None:
    """The speed result entry of ``method`` at ``n`` with ``labels``, if any."""
    for e in rows:
        if e["method"] == method and e["n"] == n and e["labels"] == labels:
            return e
    return None


def _method_names(rows: list[dict[str, Any]]) -> list[str]:
    """Method names in order of first appearance."""
    return list(dict.fromkeys(e["method"] for e in rows))


def _speed_cell(e: dict[str, Any] | None) -> str:
    if e is None:
        return ""
    if e["status"] == "skipped":
        return "skip"
    if e["status"] == "error":
        return "error"
    ms = 1e3 * e["median_s"]
    text = f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"
    if "ratio_to_cdist" in e:
        text += f" ({e['ratio_to_cdist']:.3g}x)"
    return text


def _time_table(rows: list[dict[str, Any]]) -> str | None:
    sizes = sorted({e["n"] for e in rows if e["labels"] == "pk"})
    if not sizes:
        return None
    names = _method_names(rows)
    cells = [[n, *(_speed_cell(find_entry(rows, name, n)) for name in names)] for n in sizes]
    return md_table(["N", *names], cells, "r" * (len(names) + 1))


def _two_class_table(rows: list[dict[str, Any]]) -> str | None:
    two = [e for e in rows if e["labels"] == "two_classes"]
    if not two:
        return None
    cells = [[e["n"], e["method"], _speed_cell(e)] for e in two]
    return md_table(["two classes, N", "method", "time (ratio to cdist)"], cells, "rlr")


def _memory_table(rows: list[dict[str, Any]]) -> str | None:
    mem = [e for e in rows if e.get("memory")]
    if not mem:
        return None
    cells = []
    for e in mem:
        m = e["memory"]
        value = format_bytes(m["extra_peak_bytes"]) if "extra_peak_bytes" in m else "error"
        cells.append([e["n"], e["method"], value])
    return md_table(["memory, N", "method", "extra peak"], cells, "rlr")


def _skip_notes(rows: list[dict[str, Any]]) -> str | None:
    notes = [e for e in rows if e["status"] in ("skipped", "error")]
    if not notes:
        return None
    return "\n".join(
        f"- {e['method']} N={e['n']} ({e['labels']}): {e['status']}: "
        f"{e.get('reason') or e.get('error')}"
        for e in notes
    )


def speed_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Markdown tables of a speed run: time (and ratio to cdist) per ``N`` and method, the
    two-class configuration, the extra peak memory measured, and the skips and errors.

    Args:
        results: the dict of one device (see :func:`benchmarks.speed.main`) or its
            ``"results"``.
    """
    rows = results["results"] if isinstance(results, dict) else results
    parts = (_time_table(rows), _two_class_table(rows), _memory_table(rows), _skip_notes(rows))
    return "\n\n".join(p for p in parts if p is not None)


_STRATEGY_COLORS = {
    "batch_all": "tab:blue",
    "batch_all_soft": "tab:cyan",
    "batch_hard": "tab:red",
    "semi_hard": "tab:green",
}
_PEER_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:orange")


def _speed_style(first: dict[str, Any], peer_colors: Iterator[str]) -> dict[str, Any]:
    """Line style of a method: black for cdist, a colour per strategy for tripletkit
    (dashed for numba, dash-dotted for a compiled form), the next peer colour (dotted) for a
    peer."""
    if first["family"] == "baseline":
        style: dict[str, Any] = {"color": "black", "linestyle": "-", "marker": "x"}
    elif first["family"] == "tripletkit":
        dashes = "-." if first["method"].endswith("[compiled]") else "-"
        style = {
            "color": _STRATEGY_COLORS.get(first["strategy"], "tab:gray"),
            "linestyle": "--" if first["backend"] == "numba" else dashes,
            "marker": "o",
        }
    else:
        style = {"color": next(peer_colors, "tab:gray"), "linestyle": ":", "marker": "s"}
    style.update(markersize=4, label=first["method"])
    return style


def _speed_axes(axes: Sequence[Any], sizes: list[int]) -> None:
    ylabels = ("forward + backward time (ms)", "time / torch.cdist time")
    for ax, ylabel in zip(axes, ylabels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sizes:
            ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("batch size N (P x K, K = 8, D = 128)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)


def plot_speed(result: dict[str, Any], path: Path) -> Path | None:
    """Log-log plot: time vs N (left) and ratio to cdist vs N (right), one line per method
    (P x K configurations only). Returns ``None`` when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return None
    rows = [e for e in result["results"] if e["labels"] == "pk" and e["status"] == "ok"]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(13, 5.5))
    peer_colors = iter(_PEER_COLORS)
    for name in _method_names(rows):
        pts = sorted(((e["n"], e) for e in rows if e["method"] == name), key=lambda p: p[0])
        style = _speed_style(pts[0][1], peer_colors)
        ax_t.plot([n for n, _ in pts], [1e3 * e["median_s"] for _, e in pts], **style)
        ratios = [(n, e["ratio_to_cdist"]) for n, e in pts if "ratio_to_cdist" in e]
        if ratios and pts[0][1]["family"] != "baseline":
            ax_r.plot([n for n, _ in ratios], [r for _, r in ratios], **style)
    _speed_axes((ax_t, ax_r), sorted({e["n"] for e in rows}))
    ax_r.axhline(1.0, color="black", linewidth=0.8, label="cdist")
    ax_t.legend(fontsize=7, ncol=2)
    machine = result.get("machine", {})
    fig.suptitle(
        f"tripletkit speed on {result['config']['device']} ({machine.get('cpu', '?')}, "
        f"torch threads: {machine.get('torch_threads', '?')})"
        + (" [quick]" if result["config"]["quick"] else "")
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------
# Quality results
# --------------------------------------------------------------------------------------

#: Retrieval metrics of a quality run's final evaluation and checkpoints.
FINAL_KEYS = ("mean_average_precision_at_r", "r_precision", "precision_at_1")
#: The per-checkpoint series aggregated over seeds (mean and std).
CURVE_KEYS = (*FINAL_KEYS, "easy", "semi_hard", "hard", "train_s")
#: The checkpoint positions aggregated as plain means.
POSITION_KEYS = ("step", "images")
MAP = "mean_average_precision_at_r"


def aligned(runs: Sequence[Mapping[str, Any]], key: str) -> list[list[float]]:
    """Each run's ``curve[key]`` cut to a common length: the first ``L - 1`` checkpoints and
    the last one, with ``L`` the shortest curve (all of it when the runs agree; a run
    stopped by a time cap ends with its final evaluation)."""
    n = min(len(r["curve"][key]) for r in runs)
    return [list(r["curve"][key][: n - 1]) + list(r["curve"][key][-1:]) for r in runs]


def _mean_position(series: list[list[float]]) -> list[float]:
    """Point-wise means of checkpoint positions, integers when every run agrees."""
    out: list[float] = []
    for column in zip(*series, strict=True):
        out.append(column[0] if len(set(column)) == 1 else statistics.fmean(column))
    return out


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, std and 95% t-interval over seeds of the final metrics, the times and every
    curve point.

    Args:
        runs: one quality run per seed (see :func:`benchmarks.training.train_run`).

    Returns:
        ``final`` (test metrics -> :func:`t_interval`, with ``recall_at_<k>``; absent until
        the final evaluation filled every run's ``final``), ``validation`` (the same on
        the validation classes at the last step, when the runs have it), ``wall_s``,
        ``train_s``, ``steps`` and ``curves`` (``step`` and ``images``: the checkpoint
        positions, and per key of :data:`CURVE_KEYS` the :func:`mean_std_series`), curves
        aligned by :func:`aligned`; ``capped`` when a run stopped at its time cap.
    """
    out: dict[str, Any] = {}
    for field_name in ("final", "validation"):
        if runs and all(r.get(field_name) for r in runs):
            block = {key: t_interval([r[field_name][key] for r in runs]) for key in FINAL_KEYS}
            for k in runs[0][field_name].get("recall_at_k", {}):
                block[f"recall_at_{k}"] = t_interval(
                    [r[field_name]["recall_at_k"][k] for r in runs]
                )
            out[field_name] = block
    curves: dict[str, Any] = {}
    for key in POSITION_KEYS:
        if all(key in r["curve"] for r in runs):
            curves[key] = _mean_position(aligned(runs, key))
    for key in CURVE_KEYS:
        if all(key in r["curve"] for r in runs):
            curves[key] = mean_std_series(aligned(runs, key))
    out.update(
        {
            "wall_s": mean_std([r["wall_s"] for r in runs]),
            "train_s": mean_std([r["train_s"] for r in runs]),
            "curves": curves,
        }
    )
    if all("steps" in r for r in runs):
        out["steps"] = mean_std([r["steps"] for r in runs])
        out["capped"] = any(r.get("capped") for r in runs)
    return out


def _setting_cell(entry: Mapping[str, Any]) -> str:
    from .strategies import describe_setting

    setting = entry.get("setting")
    return describe_setting(setting) if setting else ""


def _step_cell(entry: Mapping[str, Any]) -> str:
    cal = entry.get("calibration")
    if not cal:
        return ""
    return f"{1e3 * cal['median_s']:.0f} [{1e3 * cal['q1_s']:.0f}-{1e3 * cal['q3_s']:.0f}]"


def quality_table(results: dict[str, Any]) -> str:
    """``| strategy | family | setting | val MAP@R | MAP@R | R-prec | P@1 | step ms | train s |``
    in the order the rows ran: ``val MAP@R`` on every validation class at the last step
    (what the choices read), the test metrics (evaluation classes, read once at the end),
    each ``mean ± half-width of the 95% t-interval over seeds`` (:data:`INTERVAL_LABEL`;
    results of 0.2 without intervals: ``mean ± std``), the calibrated time per step
    (median [quartiles], ms) and the training time per run (mean ± std). ``results`` is
    what :func:`benchmarks.quality.main` returns."""
    rows = []
    for name, entry in results["strategies"].items():
        agg = entry["aggregate"]
        train = format_mean_std(agg["train_s"], 1) + (" (cap)" if agg.get("capped") else "")
        final = agg.get("final", {})
        val = agg.get("validation", {}).get(MAP)
        rows.append(
            [
                name,
                entry.get("family", ""),
                _setting_cell(entry),
                _cell(val),
                *(_cell(final.get(key)) for key in FINAL_KEYS),
                _step_cell(entry),
                train,
            ]
        )
    header = [
        "strategy",
        "family",
        "setting",
        "val MAP@R",
        "MAP@R",
        "R-prec",
        "P@1",
        "step ms",
        "train s",
    ]
    return md_table(header, rows, "lllrrrrrr")


def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return ""
    if "half_width" in stat:
        return format_interval(stat)
    return format_mean_std(dict(stat))


def _variant(setting: Mapping[str, Any]) -> str:
    from .strategies import describe_setting

    return describe_setting({k: v for k, v in setting.items() if k != "lr"}) or "-"


def sensitivity_table(sens: Mapping[str, Any]) -> str:
    """One row per searched strategy: its variants (every hyper-parameter but the learning
    rate), the validation MAP@R of each variant at each learning rate (in the variants'
    order, the chosen one in bold), and the spread (best minus worst)."""
    lrs = sorted({s["setting"]["lr"] for e in sens.values() for s in e["settings"]})
    rows = []
    for name, entry in sens.items():
        variants = list(dict.fromkeys(_variant(s["setting"]) for s in entry["settings"]))
        cells = []
        for lr in lrs:
            scores = []
            for variant in variants:
                hit = [
                    s
                    for s in entry["settings"]
                    if s["setting"]["lr"] == lr and _variant(s["setting"]) == variant
                ]
                if not hit:
                    scores.append("-")
                    continue
                text = f"{hit[0]['val_map_at_r']:.3f}"
                scores.append(f"**{text}**" if hit[0]["setting"] == entry["chosen"] else text)
            cells.append(" / ".join(scores))
        rows.append([name, " / ".join(variants), *cells, f"{entry['spread']:.3f}"])
    header = ["strategy", "variants (in order)", *(f"lr {lr:g}" for lr in lrs), "spread"]
    return md_table(header, rows, "ll" + "r" * (len(lrs) + 1))


def comparison_text(comparison: Mapping[str, Any] | None) -> str:
    """The best tripletkit row against the best peer row at equal (calibrated) training
    time, in words: a validation figure, labelled as such. 0.2's results (protocol 1, no
    intervals) keep 0.2's wording: their checkpoint classes were evaluation classes."""
    if not comparison:
        return "No peer row ran: no comparison at equal wall-clock."
    tk, peer, diff = comparison["tripletkit"], comparison["peer"], comparison["difference"]
    if "half_width" not in tk["at_time"]:
        gap = f"{diff['mean']:+.3f}"
        if "se" in diff:
            gap += f" ± {diff['se']:.3f} (standard error)"
        return (
            f"**At equal training time** ({comparison['time_s']:.0f} s, MAP@R on "
            f"{comparison['classes']} checkpoint classes): `{tk['name']}` "
            f"{_cell(tk['at_time'])} against `{peer['name']}` {_cell(peer['at_time'])}, a "
            f"difference of {gap}."
        )
    if diff.get("half_width") is None:
        gap = f"{diff['mean']:+.3f} (one seed: no interval)"
    else:
        gap = (
            f"{diff['mean']:+.3f} (95% paired t-interval [{diff['low']:+.3f}, "
            f"{diff['high']:+.3f}], p {diff['p']:.3g}, uncorrected)"
        )
    text = (
        f"Equal training time ({comparison['time_s']:.0f} s = median calibrated step time x "
        f"steps), on the {comparison['classes']} validation checkpoint classes: best "
        f"tripletkit row by validation {tk['name']} {format_interval(tk['at_time'])} vs best "
        f"peer row {peer['name']} {format_interval(peer['at_time'])} (± = 95% t-interval "
        f"half-width): difference {gap}. A validation figure: the test comparison of the "
        "same pair is below."
    )
    return text


def comparisons_text(comparisons: Mapping[str, Any] | None) -> str:
    """The run's comparisons on the test metric, one line each: the paired mean
    difference with its 95% t-interval, p, Holm's adjusted p and the verdict."""
    if not comparisons or not comparisons.get("items"):
        return "No comparison: fewer than two rows."
    lines = [
        f"Comparisons on {comparisons['metric']}: {comparisons['test']}; "
        f"{comparisons['correction']}."
    ]
    for c in comparisons["items"]:
        if c["p"] is None:
            lines.append(f"- {c['a']} - {c['b']}: {c['mean']:+.3f} ({c['verdict']})")
            continue
        lines.append(
            f"- {c['a']} - {c['b']} ({c['what']}): {c['mean']:+.3f}, 95% CI "
            f"[{c['low']:+.3f}, {c['high']:+.3f}], p {c['p']:.3g}, Holm {c['p_holm']:.3g}: "
            f"{c['verdict']}"
        )
    return "\n".join(lines)


def stability_text(ranking: Mapping[str, Any] | None, every_flip: bool = True) -> str | None:
    """The ranking-stability check in words: both readings (the strict one is the
    criterion) and the pairs that swapped between the last two checkpoints, each marked
    when separated or reversed; with ``every_flip=False`` only the marked pairs are named.
    None for a run without checkpoints or from before protocol 2 (no readings)."""
    if not ranking or not ranking.get("rankings") or "strict" not in ranking:
        return None
    flips = ranking["flips"]
    marks = {(False, False): "", (True, False): " (separated)", (True, True): " (REVERSED)"}
    named = [f for f in flips if every_flip or f["separated"]]
    text = ", ".join(
        f"{f['up']} > {f['down']}{marks[f['separated'], f['reversed']]}" for f in named
    )
    return (
        f"Ranking over the last two checkpoints (validation curves): stable="
        f"{ranking['stable']} by the {ranking['criterion']} criterion (strict: "
        f"{ranking['strict']}, lenient: {ranking['lenient']}); {len(flips)} pairs swapped, "
        f"{sum(f['separated'] for f in flips)} of them separated at the last checkpoint "
        f"(95% paired t-interval excludes 0), {sum(f['reversed'] for f in flips)} reversed"
        + (f": {text}" if text else "")
        + "."
    )


def _quality_where(cfg: dict[str, Any]) -> str:
    """The run's setting, for figure titles."""
    seeds = len(cfg["seeds"])
    return (
        f"{cfg.get('dataset', 'Omniglot')}, {cfg['p']}x{cfg['k']} batches, "
        f"{cfg['steps']} steps, {seeds} seed{'s' * (seeds > 1)}"
        + (" [quick]" if cfg["quick"] else "")
    )


def _strategy_styles(plt: Any, entries: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A colour per row (tab20), solid lines for tripletkit, dashed with squares for peers."""
    colors = plt.get_cmap("tab20").colors
    styles = {}
    for i, (name, entry) in enumerate(entries.items()):
        peer = entry.get("family") == "peer"
        styles[name] = {
            "color": colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            "linestyle": "--" if peer else "-",
            "marker": "s" if peer else "o",
        }
    return styles


def _band(ax: Any, x: Sequence[float], stat: Mapping[str, Any], style: dict, label: str) -> None:
    xs, mean, std = np.asarray(x), np.asarray(stat["mean"]), np.asarray(stat["std"])
    ax.plot(xs, mean, markersize=3, label=label, **style)
    ax.fill_between(xs, mean - std, mean + std, color=style["color"], alpha=0.12)


def plot_quality_map_at_r(plt: Any, results: dict[str, Any], path: Path) -> Path:
    """MAP@R vs training images, one line per row: mean over seeds with a +-1 std band."""
    entries, cfg = results["strategies"], results["config"]
    styles = _strategy_styles(plt, entries)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, entry in entries.items():
        curves = entry["aggregate"]["curves"]
        x = np.asarray(curves.get("images", curves["step"])) / 1000
        _band(ax, x, curves[MAP], styles[name], name)
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel(f"MAP@R ({cfg['subset_classes']} validation classes)")
    ax.set_title(f"Validation MAP@R during training ({_quality_where(cfg)})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_quality_time(plt: Any, results: dict[str, Any], path: Path) -> Path:
    """Time to quality: MAP@R vs seconds of training (evaluations excluded), mean over
    seeds with a +-1 std band, one line per row (peers dashed). Seconds are calibrated
    (steps x the row's median calibrated step time) when the results have a calibration,
    else the measured training seconds (0.2's results)."""
    entries, cfg = results["strategies"], results["config"]
    styles = _strategy_styles(plt, entries)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    calibrated = all(e.get("calibration") for e in entries.values())
    for name, entry in entries.items():
        curves = entry["aggregate"]["curves"]
        if calibrated:
            x = np.asarray(curves["step"], dtype=float) * entry["calibration"]["median_s"]
        else:
            x = np.asarray(curves["train_s"]["mean"])
        _band(ax, x, curves[MAP], styles[name], name)
    comparison = results.get("comparison")
    if comparison:
        ax.axvline(comparison["time_s"], color="gray", linewidth=0.8, linestyle=":")
    machine = results.get("machine", {})
    ax.set_xlabel(
        (
            "calibrated training seconds (median step time x steps"
            if calibrated
            else "training seconds (measured"
        )
        + f"; {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} "
        "torch threads; evaluations excluded)"
    )
    ax.set_ylabel(f"MAP@R ({cfg['subset_classes']} validation classes)")
    ax.set_title(f"Time to quality ({_quality_where(cfg)})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def _error_bar(stat: Mapping[str, Any]) -> float:
    """The 95% t-interval's half-width, or the std for results without one (0.2)."""
    half = stat.get("half_width")
    return float(stat["std"] if "half_width" not in stat else (half or 0.0))


def plot_quality_final(plt: Any, results: dict[str, Any], path: Path) -> Path:
    """Final MAP@R, R-precision and P@1 per row (test classes): grouped bars with the 95%
    t-interval as error bars (the std for 0.2's results)."""
    entries, cfg = results["strategies"], results["config"]
    names = list(entries)
    metrics = zip(FINAL_KEYS, ("MAP@R", "R-precision", "P@1"), strict=True)
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(names) + 2), 5))
    x = np.arange(len(names))
    width = 0.8 / len(FINAL_KEYS)
    for j, (key, label) in enumerate(metrics):
        means = [entries[n]["aggregate"]["final"][key]["mean"] for n in names]
        stds = [_error_bar(entries[n]["aggregate"]["final"][key]) for n in names]
        ax.bar(x + (j - 1) * width, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    final_classes = cfg["final_classes"] or "all"
    ax.set_ylabel(f"final retrieval score ({final_classes} evaluation classes)")
    ax.set_title(
        "Final retrieval on unseen classes, mean and 95% t-interval over seeds "
        f"({_quality_where(cfg)})",
        fontsize=10,
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_quality_difficulty(plt: Any, results: dict[str, Any], path: Path) -> Path:
    """Easy / semi-hard / hard fractions of the training batch vs training images, one
    panel per row (mean over seeds with a +-1 std band), at each row's own margin."""
    entries = results["strategies"]
    names = list(entries)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )
    kinds = (("easy", "tab:green"), ("semi_hard", "tab:orange"), ("hard", "tab:red"))
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        curves = entries[name]["aggregate"]["curves"]
        x = np.asarray(curves.get("images", curves["step"])) / 1000
        for kind, c in kinds:
            plot_mean_band(ax, x, curves[kind], color=c, label=kind, markersize=2.5)
        margin = entries[name].get("stats_margin")
        ax.set_title(name + (f" (m {margin:g})" if margin is not None else ""), fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("training images (thousands)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("fraction of valid triplets", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Easy / semi-hard / hard triplets in the training batch, at each row's margin "
        f"({_quality_where(results['config'])})",
        fontsize=10,
    )
    return save_figure(fig, path)


def plot_quality_sensitivity(plt: Any, results: dict[str, Any], path: Path) -> Path | None:
    """Validation MAP@R of every searched setting, one line of dots per row (circles: the
    smaller learning rate, triangles: the larger; filled: normalised; ringed: chosen)."""
    sens = results.get("sensitivity") or {}
    if not sens:
        return None
    names = list(sens)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    lrs = sorted({s["setting"]["lr"] for e in sens.values() for s in e["settings"]})
    for y, name in enumerate(names):
        entry = sens[name]
        color = "tab:purple" if entry["family"] == "peer" else "tab:blue"
        for s in entry["settings"]:
            setting, score = s["setting"], s["val_map_at_r"]
            marker = "o" if setting["lr"] == lrs[0] else "^"
            face = color if setting.get("normalize", True) else "white"
            ax.scatter(score, y, marker=marker, s=36, edgecolors=color, facecolors=face)
            if setting == entry["chosen"]:
                ax.scatter(score, y, marker="o", s=160, facecolors="none", edgecolors="black")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("validation MAP@R (validation classes, one seed per setting)")
    ax.set_title(
        f"Sensitivity to the searched settings (o lr {lrs[0]:g}, ^ lr {lrs[-1]:g}; filled: "
        "L2-normalised, hollow: raw; ringed: chosen)",
        fontsize=9,
    )
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


#: The quality figures: file-name suffix and drawing function.
QUALITY_FIGURES = (
    ("map_at_r", plot_quality_map_at_r),
    ("time", plot_quality_time),
    ("final", plot_quality_final),
    ("difficulty", plot_quality_difficulty),
    ("sensitivity", plot_quality_sensitivity),
)


def plot_quality(results: dict[str, Any], stem: Path) -> list[Path]:
    """Write ``<stem>_<figure>.png`` for each of :data:`QUALITY_FIGURES` (the sensitivity
    figure only when the results hold a search).

    Returns:
        The paths written (none when matplotlib is not installed).
    """
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    paths = [
        draw(plt, results, stem.with_name(f"{stem.name}_{suffix}.png"))
        for suffix, draw in QUALITY_FIGURES
    ]
    return [p for p in paths if p is not None]
