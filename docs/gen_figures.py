"""Write the site's benchmark figures from the committed JSON: nothing is typed by hand.

Run from anywhere as ``python docs/gen_figures.py``. It reads ``benchmarks/results/*.json``
and writes

- ``docs/generated/<run>.md``: markdown fragments (tables and one-line summaries) that the
  pages include with ``--8<-- "docs/generated/<run>.md"`` (pymdownx.snippets);
- ``docs/generated/*.png``: copies of the plots beside the JSON;
- the block of ``README.md`` between ``<!-- generated:headline -->`` and
  ``<!-- /generated:headline -->``: the headline figures.

The tables are those the benchmarks print (``benchmarks/report.py``), so the site and a
benchmark's own output never disagree; the script reads only the fields a file has (the
formats change between protocol versions) and leaves out what is missing.
``tests/test_docs.py`` regenerates everything into a temporary folder and compares it with
the committed files.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "generated"
README = ROOT / "README.md"
BEGIN, END = "<!-- generated:headline -->", "<!-- /generated:headline -->"
MAP = "mean_average_precision_at_r"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(data: Mapping[str, Any]) -> str:
    m = data.get("machine", {})
    parts = [
        f"{m['cpu_count']} CPU cores ({m.get('cpu', '?')})" if "cpu_count" in m else None,
        f"GPU {m['cuda_device']}" if m.get("cuda_device") else None,
        f"Python {m['python']}" if "python" in m else None,
        f"torch {m['torch']}" if "torch" in m else None,
        f"numba {m['numba']}" if "numba" in m else None,
        f"commit {m['git_commit'][:7]}" if m.get("git_commit") else None,
        f"on {m['timestamp'][:10]}" if m.get("timestamp") else None,
    ]
    return ", ".join(p for p in parts if p)


def _drop_empty_columns(table: str) -> str:
    """A markdown table without the columns whose cells are all empty (older JSON lacks
    some fields the current tables show)."""
    rows = [line.strip().strip("|").split("|") for line in table.splitlines()]
    keep = [j for j in range(len(rows[0])) if any(r[j].strip() for r in rows[2:])]
    return "\n".join("|" + "|".join(r[j] for j in keep) + "|" for r in rows)


def _try(render: Callable[[], str]) -> str | None:
    """A renderer's text, or None when the file lacks what it reads."""
    try:
        return render()
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _ranked(data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The rows of a quality run, best final MAP@R first."""
    rows = [
        (name, entry)
        for name, entry in data.get("strategies", {}).items()
        if MAP in entry.get("aggregate", {}).get("final", {})
    ]
    return sorted(rows, key=lambda r: -r[1]["aggregate"]["final"][MAP]["mean"])


def _stat(stat: Mapping[str, Any]) -> str:
    if "half_width" in stat:
        return report.format_interval(stat)
    return report.format_mean_std(dict(stat))


def _pm_label(data: Mapping[str, Any]) -> str:
    rows = _ranked(data)
    if rows and "half_width" in rows[0][1]["aggregate"]["final"][MAP]:
        return report.INTERVAL_LABEL
    return report.STD_LABEL


def quality_fragment(data: Mapping[str, Any]) -> str:
    cfg = data.get("config", {})
    steps, seeds = cfg.get("steps"), len(cfg.get("seeds", []))
    parts = [
        f"*{len(data.get('strategies', {}))} rows, {steps} steps, {seeds} seeds; "
        f"{_machine(data)}; ± is the {_pm_label(data)}. Test metrics on the evaluation "
        "characters; train s: seconds of training per run.*",
        _drop_empty_columns(report.quality_table(dict(data))),
    ]
    stability = _try(lambda: report.stability_text(data.get("ranking"), every_flip=False))
    if stability:
        parts.append(stability)
    comparison = _try(lambda: report.comparison_text(data["comparison"]))
    if comparison:
        parts.append(comparison)
    if data.get("comparisons"):  # protocol 2: paired t-tests over seeds, Holm-corrected
        tests = _try(lambda: _list(report.comparisons_text(data["comparisons"])))
        if tests:
            parts.append(tests)
    return "\n\n".join(parts) + "\n"


def _list(text: str) -> str:
    """A heading line and its ``- `` items, with the blank line markdown needs between."""
    return text.replace("\n", "\n\n", 1)


def sensitivity_fragment(data: Mapping[str, Any]) -> str | None:
    sens = data.get("sensitivity")
    if not sens:
        return None
    table = _try(lambda: report.sensitivity_table(sens))
    if table is None:
        return None
    return (
        "*Validation MAP@R of every searched setting (one seed each), the chosen one in "
        "bold; spread: best minus worst.*\n\n" + table + "\n"
    )


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"


def _cdist_reference(data: Mapping[str, Any], n: int = 1024) -> str | None:
    """``N = 1,024: 6.47 ms``, cdist's median in a speed run (at its largest size when it
    lacks 1,024), or None."""
    rows = [
        e
        for e in data.get("results", [])
        if e.get("method") == "cdist" and e.get("labels") == "pk" and e.get("status") == "ok"
    ]
    if not rows:
        return None
    pick = next((e for e in rows if e["n"] == n), max(rows, key=lambda e: e["n"]))
    return f"N = {pick['n']:,}: {_ms(pick['median_s'])}"


def speed_fragment(data: Mapping[str, Any]) -> str:
    cfg = data.get("config", {})
    run = []
    if data.get("elapsed_s"):
        run.append(f"the run took {data['elapsed_s']:.0f} s")
    ref = _cdist_reference(data)
    if ref:
        run.append(f"every ratio divides by `cdist`'s time at the same N ({ref})")
    parts = [
        f"*Forward + backward, N random {cfg.get('dim', '?')}-d {cfg.get('dtype', '')} "
        f"embeddings, P×K labels with K = {cfg.get('k_per_class', '?')}, median over repeats "
        f"(ratio to `cdist`); {_machine(data)}" + (f"; {'; '.join(run)}" if run else "") + ".*",
        report.speed_table(dict(data)),
    ]
    targets = data.get("targets") or []
    if targets:
        lines = [
            f"- [{'PASS' if t.get('passed') else 'FAIL'}] {t['name']}: {t.get('detail', '')}"
            for t in targets
        ]
        parts.append("Targets checked by the run:\n\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def gradcache_fragment(data: Mapping[str, Any]) -> str:
    rows = []
    for r in data.get("results", []):
        step = "plain `loss.backward()`"
        if r.get("mode") != "plain":
            step = f"`cached_backward`, chunk {r.get('chunk_size')}"
        rows.append(
            [
                f"{r['batch']:,}",
                step,
                report.format_bytes(r["extra_peak_bytes"]),
                report.format_bytes(r["peak_bytes"]),
                f"{r['step_min_s']:.2f} s",
            ]
        )
    table = report.md_table(
        ["batch", "step", "extra peak RSS", "whole-process peak", "time / step (best)"],
        rows,
        "rlrrr",
    )
    took = f"; the run took {data['wall_s'] / 60:.1f} minutes" if data.get("wall_s") else ""
    return f"*{_machine(data)}{took}.*\n\n{table}\n"


def precision_fragment(data: Mapping[str, Any]) -> str:
    rows = [
        [
            f"{r['distance']:g}",
            r["method"],
            f"{r['median_abs_error']:.2g}",
            f"{r['max_abs_error']:.2g}",
            f"{r['max_rel_error']:.2g}",
            r.get("zeros", ""),
        ]
        for r in data.get("rows", [])
    ]
    table = report.md_table(
        ["true distance", "method", "median error", "largest error", "largest relative", "zeros"],
        rows,
        "rlrrrr",
    )
    return (
        f"*{data.get('pairs')} pairs of {data.get('dtype')} points of norm {data.get('norm')} "
        f"in {data.get('dim')} dimensions, errors against float64; zeros: pairs reported "
        f"exactly 0 apart; {_machine(data)}.*\n\n{table}\n"
    )


def neighbours_fragment(files: list[Mapping[str, Any]]) -> str:
    text = _neighbours_table(files) + "\n"
    notes = [d["note"] for d in files if d.get("note")]
    text += "".join(f"\n*{n}.*\n" for n in notes)
    summary = _neighbours_summary([r for d in files for r in d.get("results", [])])
    return text + (f"\n{summary}\n" if summary else "")


def _neighbours_table(files: list[Mapping[str, Any]]) -> str:
    """The cost of one refresh per measured N and search backend (issue 20)."""
    rows = []
    for data in files:
        for r in data.get("results", []):
            queries = r.get("queries")
            search = r.get("backend", "?") + (
                f", {queries:,} queries" if queries and queries != r.get("n") else ""
            )
            extra = r.get("search_cpu_s_extrapolated")
            cpu = f"{r['search_cpu_s']:,.1f} s" + (
                f" (→ ~{extra:,.0f} s for all, extrapolated)" if extra and queries != r["n"] else ""
            )
            rows.append(
                [
                    f"{r['n']:,}",
                    search,
                    f"{r['embed_s']:,.0f} s",
                    cpu,
                    f"{r['search_s']:,.0f} s",
                    report.format_bytes(r["search_extra_peak_bytes"]),
                ]
            )
    header = ["N", "search", "embed (wall)", "search CPU", "search wall", "search extra peak"]
    return report.md_table(header, rows, "rlrrrr")


def _neighbours_summary(results: list[Mapping[str, Any]]) -> str | None:
    """One line from the rows: the torch search's extra peak at each N, faiss's CPU time
    against torch's at the same N, and the largest extrapolated search in CPU-hours."""
    torch_rows = sorted((r for r in results if r.get("backend") == "torch"), key=lambda r: r["n"])
    if not torch_rows:
        return None
    peaks = ", ".join(
        f"{r['search_extra_peak_bytes'] / 2**20:,.0f} MiB at N = {r['n']:,}" for r in torch_rows
    )
    parts = [f"Search extra peak of the torch path: {peaks}"]
    for r in torch_rows:
        faiss = next((f for f in results if f.get("backend") == "faiss" and f["n"] == r["n"]), None)
        if faiss and faiss.get("search_cpu_s") and r.get("queries", r["n"]) == r["n"]:
            ratio = r["search_cpu_s"] / faiss["search_cpu_s"]
            parts.append(f"faiss's exact index used {ratio:.1f}× less CPU time at N = {r['n']:,}")
    extra = [r for r in torch_rows if r.get("search_cpu_s_extrapolated")]
    if extra:
        r = extra[-1]
        parts.append(
            f"the search over all N = {r['n']:,} queries, extrapolated from "
            f"{r['queries']:,}, would take {r['search_cpu_s_extrapolated'] / 3600:.1f} CPU-hours"
        )
    return "*" + "; ".join(parts) + ".*"


# ----------------------------------------------------------------------------------------
# Streaming losses (issue 18): the docs' table and the README's "memory at N = 65,536"
# column; the 1M x 1M neighbour-search bound (issue 20).

STREAMING_N = 65536
STREAMING_K = 8
#: The README speed table's rows that are tripletkit losses, by the streaming row's kind.
STREAMING_KIND = {
    "batch_all[numba]": "batch_all",
    "batch_hard[numba]": "batch_hard",
    "semi_hard[numba]": "semi_hard",
}


def _streaming_row(
    data: Mapping[str, Any], kind: str, n: int, backend: str
) -> Mapping[str, Any] | None:
    for r in data.get("memory", []):
        if (r.get("kind"), r.get("n"), r.get("m"), r.get("backend")) == (kind, n, None, backend):
            return None if "error" in r else r
    return None


def streaming_fragment(data: Mapping[str, Any]) -> str:
    """The streaming benchmark's memory table (every row of the file) and time table."""
    cfg = data.get("config", {})
    rows = []
    for r in data.get("memory", []):
        if "error" in r:
            continue
        m = r.get("m")
        commit = str(r["git_commit"])[:7] if r.get("git_commit") else ""
        rows.append(
            [
                r["kind"].replace("_", "-"),
                f"{r['n']:,}",
                f"{m:,}" if m else "",
                r["backend"],
                report.format_bytes(r["extra_peak_bytes"]),
                report.format_bytes(r["n"] * (m or r["n"]) * 4),
                f"{r['cpu_s']:,.1f} s" if "cpu_s" in r else "",
                f"{r['load_average_1m']:.1f}" if "load_average_1m" in r else "",
                commit or ("see note" if r.get("note") else "default run"),
            ]
        )
    memory = report.md_table(
        [
            "loss",
            "N",
            "M (references)",
            "backend",
            "extra peak",
            "N × M float32",
            "CPU time",
            "load (1 min)",
            "commit",
        ],
        rows,
        "lrrlrrrrl",
    )
    times = []
    for r in data.get("time", []):
        if "error" in r:
            continue
        times.append(
            [
                r["kind"].replace("_", "-"),
                f"{r['n']:,}",
                f"{r['numba']['cpu_median_s']:.2f} s",
                f"{r['streaming']['cpu_median_s']:.2f} s",
                f"×{r['cpu_ratio']:.2f}",
                f"×{r['ratio']:.2f}",
            ]
        )
    time_table = report.md_table(
        ["loss", "N", "in-memory CPU", "streaming CPU", "CPU ratio", "wall ratio"],
        times,
        "lrrrrr",
    )
    targets = []
    for name, t in data.get("targets", {}).items():
        if t == "N/A":
            targets.append(f"- [not measured] {name}")
        elif isinstance(t, Mapping):
            verdict = "PASS" if t.get("passed") else "FAIL"
            value = (
                f"extra peak {t['extra_peak_mib']:.0f} MiB (target ≤ 256 MiB)"
                if "extra_peak_mib" in t
                else f"streaming / in-memory median {t.get('ratio', 0):.2f} (target ≤ 2)"
            )
            targets.append(f"- [{verdict}] {name}: {value}")
    notes = sorted({r["note"] for r in data.get("memory", []) if r.get("note")})
    parts = [
        f"*Forward + backward, {cfg.get('d', '?')}-d {cfg.get('dtype', '')} embeddings, "
        f"P×K labels with K = {cfg.get('k', '?')}; extra peak: peak RSS during the call minus "
        f"the RSS before it (inputs resident, `x.grad` counted); {_machine(data)}. Memory "
        "does not depend on the machine's load; times do (a shared 2-core machine): compare "
        "CPU times, and read the wall ratio as indicative.*",
        memory,
        "Time at the target's size (median of alternating calls, same inputs):",
        time_table,
        "Targets of issue 18 checked from these rows:\n\n" + "\n".join(targets),
    ]
    parts += [f"*Merged rows: {n.rstrip('.')}.*" for n in notes]
    return "\n\n".join(parts) + "\n"


def streaming_memory_cells(
    names: list[str], streaming: Mapping[str, Any] | None, n: int = STREAMING_N
) -> tuple[list[str], list[str]]:
    """The README speed table's "memory at N = 65,536" cell of each row in ``names``, and
    the footnotes they cite. tripletkit's losses: the streaming path's measured extra peak
    (the CPU default switches to it above the memory budget) and, computed, what the
    in-memory numba path would need (its extra peak per N × N matrix measured at the
    largest N it ran, times the N × N float32 matrix at ``n``); the peer: its memory
    estimate (:func:`benchmarks.registry.pml_all_memory`), computed."""
    import torch

    from benchmarks import registry

    cells, notes, measured_at = [], [], set()
    matrix = n * n * 4
    for name in names:
        kind = STREAMING_KIND.get(name)
        if kind is not None and streaming is not None:
            row = _streaming_row(streaming, kind, n, "streaming")
            measured = (
                f"{report.format_bytes(row['extra_peak_bytes'])} streaming (measured)"
                if row
                else "streaming: not measured yet"
            )
            sizes = sorted(
                r["n"]
                for r in streaming.get("memory", [])
                if (r.get("kind"), r.get("m"), r.get("backend")) == (kind, None, "numba")
                and "error" not in r
            )
            in_memory = ""
            if sizes:
                ref = _streaming_row(streaming, kind, sizes[-1], "numba")
                assert ref is not None
                ratio = ref["extra_peak_bytes"] / (sizes[-1] ** 2 * 4)
                measured_at.add(f"{sizes[-1]:,}")
                in_memory = f"; in memory ~{report.format_bytes(ratio * matrix)} (computed¹)"
            cells.append(measured + in_memory)
        elif name == "pml_all":
            labels = torch.arange(n // STREAMING_K).repeat_interleave(STREAMING_K)
            need = registry.pml_all_memory(n, labels)
            cells.append(f"~{need / 2**40:,.0f} TiB (computed²)")
        else:
            cells.append("—")
    if any("¹" in c for c in cells):
        notes.append(
            f"¹ Computed, not run: the in-memory path's extra peak per {n:,} × {n:,} float32 "
            f"matrix ({report.format_bytes(matrix)}) as measured at N = "
            f"{' / '.join(sorted(measured_at))}; above the "
            "memory budget (`tripletkit.set_memory_budget`) the CPU default switches to the "
            "streaming path, which was measured."
        )
    if any("²" in c for c in cells):
        notes.append(
            "² Computed, not run: pytorch-metric-learning lists every valid triplet "
            "(~120 bytes each, `benchmarks.registry.pml_all_memory`): "
            f"{n:,} × 7 × {n - STREAMING_K:,} triplets at K = {STREAMING_K}."
        )
    return cells, notes


def neighbours_bound_fragment(data: Mapping[str, Any] | None) -> str | None:
    """The 1M x 1M bound of ``neighbours.json``'s ``steady_state`` entry, as a table row
    and its explanation (a bound from measured points, labelled as such)."""
    entry = (data or {}).get("steady_state")
    if not entry or "error" in entry:
        return None
    points = entry["points"]
    every = [*entry.get("earlier_points", []), *points]
    rows = [
        [
            f"{p['n']:,}",
            f"torch, {p['queries']:,} queries ({p['query_chunks']} chunks of {p['chunk_rows']})",
            f"{p['search_cpu_s']:,.1f} s",
            report.format_bytes(p["search_extra_peak_bytes"]),
            "measured"
            + (f" {p['measured_at'][:16].replace('T', ' ')} UTC" if "measured_at" in p else ""),
        ]
        for p in every
    ]
    n = entry["n"]
    rows.append(
        [
            f"{n:,}",
            f"torch, all {n:,} queries",
            "",
            f"≤ {report.format_bytes(entry['bound_extra_peak_bytes'])}",
            "bound: largest measured peak + exact output bytes",
        ]
    )
    table = report.md_table(
        ["N (references)", "search", "search CPU", "search extra peak", "figure"], rows, "llrrl"
    )
    verdict = "within" if entry["passed"] else "above"
    return (
        table
        + "\n\n"
        + f"*The full {n:,} × {n:,} search was not run (~24,000 CPU-s on one core). The "
        f"torch path keeps only the `[Q, k]` results across query chunks (everything a chunk "
        f"allocates is released before the next), so its extra peak is a constant working "
        f"memory plus the results: measured with {points[0]['queries']:,} and "
        f"{points[1]['queries']:,} queries in the latest invocation, the peak changed by "
        f"{entry['growth_measured_bytes'] / 2**20:+.1f} MiB (their results and query "
        f"indices: {entry['growth_outputs_bytes'] / 2**20:+.2f} MiB)."
        + _peak_spread(entry)
        + f" The bound for all "
        f"{n:,} queries is the largest measured peak + the results at {n:,} queries counted "
        f"twice ({entry['output_bytes_per_query']} bytes per query; returned results are "
        f"clones) + the int64 query indices: "
        f"{report.format_bytes(entry['bound_extra_peak_bytes'])}, {verdict} the 1 GiB "
        f"target (the full distance matrix would be "
        f"{entry['full_matrix_bytes'] / 10**12:.0f} TB).*\n"
    )


def _peak_spread(entry: Mapping[str, Any]) -> str:
    """How much the same search's extra peak varied between processes, when measured
    more than once (the reason the bound takes the largest)."""
    peaks = entry.get("measured_peaks_bytes")
    if not peaks or peaks["count"] <= len(entry["points"]):
        return ""
    return (
        f" Between processes the same search's peak varied from "
        f"{report.format_bytes(peaks['min'])} to {report.format_bytes(peaks['max'])} "
        f"({peaks['count']} points of {peaks['count'] // 2} invocations, all kept), so the "
        "bound takes the largest."
    )


# ----------------------------------------------------------------------------------------
# The quality benchmark's declared rows and their searches (benchmarks/strategies.py)


def _values(settings: list[dict[str, Any]], key: str) -> str:
    values = sorted({s[key] for s in settings if key in s}, key=lambda v: (str(type(v)), v))
    if all(isinstance(v, bool) for v in values):
        return "/".join("L2" if v else "raw" for v in values)
    return " / ".join(f"{v:g}" for v in values)


def rows_fragment() -> str:
    """Every row the quality benchmark declares (:data:`benchmarks.strategies.STRATEGIES`),
    with how it trains and what its search covers: generated from the declarations, so the
    protocol page lists exactly the rows the code searches."""
    from benchmarks import strategies

    base_choice = {"lr": None}
    table = []
    for name, row in strategies.STRATEGIES.items():
        if row.tuned:
            settings = row.settings()
            keys = [k for k in settings[0] if k not in ("lr", "normalize")]
            groups = [(None, settings)]
            if "normalize" in settings[0]:  # the other values depend on the normalisation
                groups = [
                    (n, [x for x in settings if x["normalize"] == n])
                    for n in (True, False)
                    if any(x["normalize"] == n for x in settings)
                ]
            space = "; ".join(
                ("" if n is None else ("L2" if n else "raw") + (": " if keys else ""))
                + ", ".join(f"{k} {_values(group, k)}" for k in keys)
                for n, group in groups
            )
            search = f"{len(settings)} of {len(row.grid())}: lr {_values(settings, 'lr')}"
            search += f"; {space}" if space else ""
        else:
            settings = row.settings_from(base_choice)
            extra = [k for k in settings[0] if k != "lr"]
            search = f"{len(settings)} from `{row.base}`'s choice: lr {_values(settings, 'lr')}"
            search += "".join(f" × {k} {_values(settings, k)}" for k in extra)
        kind = row.training.kind.replace("_", " ")
        if name in strategies.OPT_IN_ROWS:  # left out of the protocol's own plans
            kind += " (opt-in¹)"
        table.append([f"`{name}`", row.family, kind, search])
    text = report.md_table(["row", "family", "training", "searched settings"], table, "llll")
    return (
        f"*{len(strategies.STRATEGIES)} rows declared in `benchmarks/strategies.py`; a row's "
        "search is at most "
        f"{strategies.ROW_BUDGET} settings (a seeded subset holding every value of a larger "
        "grid); an add-on row starts from its base row's choice; a choice at an edge of its "
        "values gets one extension step.*\n\n"
        + text
        + "\n"
        + "".join(f"\n¹ `{name}`: {reason}.\n" for name, reason in strategies.OPT_IN_ROWS.items())
    )


def gpu_fragment(data: Mapping[str, Any] | None) -> str:
    if data is None:
        return (
            "*No GPU run is committed yet: `python -m benchmarks.gpu` writes "
            "`benchmarks/results/gpu.json`, and this page shows it after "
            "`python docs/gen_figures.py`.*\n"
        )
    md = RESULTS / "gpu.md"
    body = md.read_text().strip() if md.is_file() else "(no gpu.md beside gpu.json)"
    return f"*{_machine(data)}.*\n\n{body}\n"


def reference_fragment(
    quality: Mapping[str, Any] | None,
    speed: Mapping[str, Any] | None,
    full: Mapping[str, Any] | None,
) -> str | None:
    """The machine of the committed default runs and how long ``python -m benchmarks``
    (quality, then speed) took there; the full quality run's training time, summed over its
    runs."""
    if not quality or not speed:
        return None
    q_min = quality.get("wall_s", 0.0) / 60
    s_min = speed.get("elapsed_s", 0.0) / 60
    m = speed.get("machine", {})
    gpu = f"GPU {m['cuda_device']}" if m.get("cuda_device") else "no GPU"
    text = (
        f"*Reference machine: {m.get('usable_cores', '?')} CPU cores ({m.get('cpu', '?')}), "
        f"{gpu}; Python {m.get('python')}, torch {m.get('torch')}, numba {m.get('numba')}. "
        f"`python -m benchmarks` took {q_min + s_min:.1f} minutes there: the quality "
        f"benchmark {q_min:.1f}, the speed benchmark {s_min:.1f} "
        "(`benchmarks/results/quality.json`, `speed_cpu.json`)"
    )
    runs = [r for s in (full or {}).get("strategies", {}).values() for r in s.get("runs", [])]
    if runs and all("wall_s" in r for r in runs):
        steps = (full or {}).get("config", {}).get("steps")
        total = sum(r["wall_s"] for r in runs) / 60
        text += (
            f". The full quality run ({len(runs)} runs of up to {steps:,} steps) trained and "
            f"evaluated for {total:.0f} minutes in all (`quality_full.json`)"
        )
    return text + ".*\n"


def quality_facts_fragment(data: Mapping[str, Any], tuning: Mapping[str, Any] | None) -> str | None:
    """What a quality run recorded about its split, its search and its time-capped rows."""
    parts = []
    split = data.get("protocol", {}).get("split", {})
    counts = split.get("counts", {})
    if counts:
        alphabets = split.get("validation_alphabets") or []
        parts.append(
            f"validation part: {counts['validation']:,} characters"
            + (f" ({len(alphabets)} alphabets)" if alphabets else "")
            + f", training part {counts['train_part']:,}, evaluation "
            f"{counts['evaluation']:,}"
        )

    def version(d: Mapping[str, Any] | None) -> Any:
        return (d or {}).get("protocol", {}).get("version", 1)

    if version(tuning) != version(data):  # a newer search than the run: not its search
        tuning = None
    results = [r for s in (tuning or {}).get("strategies", {}).values() for r in s["results"]]
    if results and all("train_s" in r for r in results):
        minutes = sum(r["train_s"] for r in results) / 60
        parts.append(
            f"the search trained {len(results)} configurations for {minutes:.0f} minutes "
            "(`quality_tuning.json`)"
        )
    for name, s in data.get("strategies", {}).items():
        capped = [r for r in s.get("runs", []) if r.get("capped")]
        if capped:
            steps = sorted(r["steps"] for r in capped)
            parts.append(
                f"`{name}` reached its time cap after {steps[0]:,}–{steps[-1]:,} of its "
                f"{capped[0]['planned_steps']:,} steps ({len(capped)} of "
                f"{len(s['runs'])} runs)"
            )
    if not parts:
        return None
    return "*Recorded in the JSON: " + "; ".join(parts) + ".*\n"


def _headline_rows(full: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The README's rows of a quality run: under protocol 2 the tripletkit row and the peer
    recipe its equal-time comparison chose on validation classes (their test scores are
    reported, never ranked: the highest test score of many rows would be a choice on test
    data); under 0.2's protocol the highest of each family, as 0.2 reported them."""
    ranked = _ranked(full)
    entries = full.get("strategies", {})
    cmp = full.get("comparison") or {}
    if "half_width" in cmp.get("tripletkit", {}).get("at_time", {}):
        picks = [
            ("tripletkit row chosen on validation classes", cmp["tripletkit"]["name"]),
            ("peer recipe chosen on validation classes", cmp["peer"]["name"]),
        ]
        rows = [(what, (name, entries[name])) for what, name in picks if name in entries]
    else:
        rows = [
            (what, next((r for r in ranked if r[1].get("family") == family), None))
            for what, family in (
                ("highest tripletkit row", "tripletkit"),
                ("highest pytorch-metric-learning recipe", "peer"),
            )
        ]
    random = next((r for r in ranked if r[0] == "random"), None)
    return [*rows, ("random triplets (no mining)", random)]


def headline(
    full: Mapping[str, Any] | None,
    speed: Mapping[str, Any] | None,
    streaming: Mapping[str, Any] | None = None,
    neighbours: list[Mapping[str, Any]] | None = None,
) -> str:
    """The README's headline figures."""
    lines = []
    if full:
        cells = []
        for what, row in _headline_rows(full):
            if row:
                cells.append([what, f"`{row[0]}`", _stat(row[1]["aggregate"]["final"][MAP])])
        steps = full.get("config", {}).get("steps")
        lines.append(
            f"Retrieval quality on unseen Omniglot characters (MAP@R, {steps} steps, "
            f"{_pm_label(full)}; [all rows](docs/benchmarks/quality.md)):\n"
        )
        lines.append(report.md_table(["", "row", "MAP@R"], cells, "llr"))
        comparison = _try(lambda: report.comparison_text(full["comparison"]))
        if comparison:
            lines.append("\n" + comparison)
        items = (full.get("comparisons") or {}).get("items") or []
        test = _try(
            lambda: _list(report.comparisons_text({**full["comparisons"], "items": items[:1]}))
        )
        if items and test:  # protocol 2: the same pair on the test classes
            lines.append("\n" + test)
    if speed:
        rows = speed.get("results", [])
        sizes = sorted({e["n"] for e in rows if e.get("labels") == "pk"})
        n = 1024 if 1024 in sizes else (sizes[-1] if sizes else None)
        cells = []
        # the numba rows from the targets' rounds (each loss timed in alternation with cdist,
        # in one process: the median of the per-round ratios and its quartiles); the peer
        # against the median of those rounds' cdist times
        rounds = {r["method"]: r for r in speed.get("target_rows", []) if r.get("n") == n}
        cdist_s = (
            statistics.median(r["cdist_median_s"] for r in rounds.values()) if rounds else None
        )
        for name in ("batch_all[numba]", "batch_hard[numba]", "semi_hard[numba]", "pml_all"):
            r = rounds.get(name)
            if r:
                q = r["ratio"]
                ratio = f"{q['median']:.2f}× [{q['q1']:.2f}–{q['q3']:.2f}]"
                cells.append([f"`{name}`", f"{1e3 * r['median_s']:.3g} ms", ratio])
                continue
            e = report.find_entry(rows, name, n) if n else None
            if e and e.get("status") == "ok" and "ratio_to_cdist" in e:
                ms = 1e3 * e["median_s"]
                time = f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"
                base = cdist_s or e["median_s"] / e["ratio_to_cdist"]
                cells.append([f"`{name}`", time, f"{e['median_s'] / base:,.0f}×"])
        header, notes = ["loss", "time", "× cdist"], []
        if cells and streaming:  # issue 18's column, from streaming_cpu.json
            memory, notes = streaming_memory_cells([c[0].strip("`") for c in cells], streaming)
            cells = [[*c, m] for c, m in zip(cells, memory, strict=True)]
            header.append(f"memory at N = {STREAMING_N:,}")
        if cells:
            cdist = (
                f", against `torch.cdist` forward + backward {1e3 * cdist_s:.3g} ms timed in "
                f"alternation with each loss ({next(iter(rounds.values()))['rounds']} rounds in "
                "one process; × cdist: the median of the per-round ratios [quartiles])"
                if cdist_s
                else ""
            )
            lines.append(
                f"\nSpeed, forward + backward at N = {n:,} on {_machine(speed).split(',')[0]}"
                f"{cdist} ([all sizes and peers](docs/benchmarks/speed.md)):\n"
            )
            lines.append(report.md_table(header, cells, "lrrl"[: len(header)]))
            lines += ["\n" + note for note in notes]
    if neighbours:  # issue 20: what a dataset-level refresh costs at scale
        lines.append(
            "\nCost of one refresh of `NeighbourPKBatchSampler` (embedding N random 128-d "
            "vectors and the exact search for 8 negatives each, one thread; CPU times compare, "
            "wall times carry the machine's load; "
            "[details](docs/guide/dataset-hard-negatives.md)):\n"
        )
        lines.append(_neighbours_table(neighbours))
        summary = _neighbours_summary([r for d in neighbours for r in d.get("results", [])])
        if summary:
            lines.append("\n" + summary)
    return "\n".join(lines) + "\n"


def generate(out: Path) -> dict[str, str]:
    """Write every fragment and plot into ``out``; return the README block."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.md"), *out.glob("*.png")]:  # a result that is gone goes too
        stale.unlink()
    fragments: dict[str, str | None] = {}
    for name in ("quality_full", "quality"):
        data = _load(f"{name}.json")
        if data:
            fragments[name] = quality_fragment(data)
            fragments[f"{name}_sensitivity"] = sensitivity_fragment(data)
    for name in ("speed_cpu", "speed_cpu_full"):
        data = _load(f"{name}.json")
        if data:
            fragments[name] = speed_fragment(data)
    data = _load("gradcache.json")
    if data:
        fragments["gradcache"] = gradcache_fragment(data)
    data = _load("precision.json")
    if data:
        fragments["precision"] = precision_fragment(data)
    found = [d for d in (_load("neighbours.json"), _load("neighbours_partial.json")) if d]
    if found:
        fragments["neighbours"] = neighbours_fragment(found)
        bound = neighbours_bound_fragment(found[0])
        if bound:
            fragments["neighbours"] = f"{fragments['neighbours']}\n{bound}"
    data = _load("streaming_cpu.json")
    if data:
        fragments["streaming_cpu"] = streaming_fragment(data)
    fragments["quality_rows"] = rows_fragment()
    fragments["gpu"] = gpu_fragment(_load("gpu.json"))
    fragments["reference"] = reference_fragment(
        _load("quality.json"), _load("speed_cpu.json"), _load("quality_full.json")
    )
    full = _load("quality_full.json")
    if full:
        fragments["quality_full_facts"] = quality_facts_fragment(full, _load("quality_tuning.json"))
    for name, text in fragments.items():
        if text is not None:
            (out / f"{name}.md").write_text(text)
    for png in sorted(RESULTS.glob("*.png")):
        shutil.copyfile(png, out / png.name)
    return {
        "README": headline(
            _load("quality_full.json"),
            _load("speed_cpu.json"),
            _load("streaming_cpu.json"),
            found,
        )
    }


def with_block(readme: str, block: str) -> str:
    """``readme`` with its generated block replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"error: README.md has no {BEGIN} ... {END} block")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}{END}", readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the fragments")
    args = parser.parse_args(argv)
    blocks = generate(args.out)
    README.write_text(with_block(README.read_text(), blocks["README"]))
    print(f"wrote {args.out} and the headline block of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
