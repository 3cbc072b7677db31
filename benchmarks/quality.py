"""Embedding quality of mining strategies and peer recipes, under a fair tuning protocol.

**Protocol** (:mod:`benchmarks.protocol`, after Musgrave et al. 2020). Omniglot's 964
*background* characters are the training classes; whole background alphabets holding 20%
of them (recorded) are held out as the *validation part*. Every row of
:mod:`benchmarks.strategies` declares a small search space (learning rate, L2-normalisation
where the loss allows it, its margin or equivalent); ``--tune`` trains every setting of
every row on the training part for the same number of steps and scores it by MAP@R on the
validation part (``benchmarks/results/quality_tuning.json``). The main run trains each
row's chosen setting on all 964 background characters over several seeds and evaluates it
once on the 659 *evaluation* characters, which no run or search ever sees: MAP@R,
R-precision and P@1 by leave-one-out retrieval (every image queries the other 13,179).

**Rows.** tripletkit's strategies, pytorch-metric-learning's recipes in the same harness
(when installed; skipped with a note otherwise), and the rows where mining is expensive:
cross-batch memories (tripletkit's and pytorch-metric-learning's, the latter capped in
time), a 4x larger batch through :func:`tripletkit.gradcache.cached_backward` at the same
number of training images (skipped with a note when tripletkit has no ``gradcache``), and
the hard-class sampler.

**Runs.**

- ``python -m benchmarks.quality``: the headline comparison, the best tripletkit rows and
  the best peer recipes of the saved search (:data:`DEFAULT_HEADLINE`), 3 seeds x
  :data:`DEFAULT_STEPS` steps; part of ``python -m benchmarks`` (15 minutes on 2 cores with
  the speed benchmark).
- ``--full``: every row, 3 seeds x :data:`FULL_STEPS` steps (``quality_full.json``).
- ``--tune``: the search (``quality_tuning.json``); resumes where it stopped.
- ``--quick``: a smoke run of everything on tiny settings (CI).
- ``--data FILE.npz``: the same protocol on a user's data (arrays ``x`` ``[N, ...]`` and
  ``y`` ``[N]``): classes split 60/20/20, the search, then the final runs
  (:mod:`benchmarks.data`).

**Outputs** (``--out``, default ``benchmarks/results/``): ``<stem>.json`` and the plots
``<stem>_map_at_r.png`` (MAP@R vs training images), ``<stem>_time.png`` (MAP@R vs
training seconds: time to quality), ``<stem>_final.png``, ``<stem>_difficulty.png`` and
``<stem>_sensitivity.png``, with ``<stem>`` ``quality``, ``quality_full``,
``quality_quick`` or ``quality_data_<file>``. The run ends by printing the best
tripletkit row against the best peer recipe at equal training time, with error bars
(standard deviations over seeds, ``ddof = 1``).

Every run is deterministic for its seed on a given machine and thread count; training
times (the time-to-quality axis) are measured, so they depend on the machine and its load,
both recorded in the JSON.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tripletkit.stats import triplet_stats

from .cli import run
from .common import RESULTS_DIR, load_average, load_json, new_result, progress, save_json
from .data import Dataset, Task, load_npz, load_omniglot
from .measure import thread_count
from .nets import EMBEDDING_DIM, describe_net
from .protocol import (
    TuneConfig,
    choice_for,
    load_tuning,
    run_tuning,
    sensitivity,
    tuning_plan,
)
from .report import MAP, comparison_text, mean_std, sensitivity_table
from .report import aggregate_runs as aggregate
from .report import plot_quality as plot_results
from .report import quality_table as markdown_table
from .strategies import STRATEGIES, Strategy, describe_setting, missing_requirement
from .training import RunPlan, checkpoint_steps, embed, retrieval, setup_run, train_run

__all__ = [
    "DEFAULT_CONFIG",
    "FULL_CONFIG",
    "QUICK_CONFIG",
    "STRATEGIES",
    "Config",
    "aggregate",
    "compare_at_equal_time",
    "main",
    "markdown_table",
    "plot_results",
    "ranking_stability",
    "select_rows",
]

#: The wall-time target of ``python -m benchmarks`` (quality and speed), seconds, and the
#: quality benchmark's share of it (the default speed plan takes about 2 minutes).
DEFAULT_BUDGET_S = 15 * 60
QUALITY_BUDGET_S = 12 * 60
#: Steps of the default and of the full run.
DEFAULT_STEPS = 1000
FULL_STEPS = 4000
#: Steps of every configuration of the search.
TUNE_STEPS = 1000
#: The default run's rows: this many tripletkit rows and peer rows, best first by their
#: validation score in the saved search.
DEFAULT_HEADLINE = (2, 2)
#: The default run's rows when no search is saved.
FALLBACK_HEADLINE = ("semi_hard", "batch_hard", "pml_semihard", "pml_batch_hard")
#: The rows of ``--quick`` (every kind of row once) and of ``--data`` runs.
QUICK_ROWS = (
    "batch_hard",
    "multi_similarity",
    "pml_batch_hard",
    "xbm_semi_hard",
    "pml_xbm_semihard",
    "large_batch_batch_hard",
    "hard_class_batch_hard",
)
DATA_ROWS = ("batch_hard", "semi_hard", "multi_similarity", "pml_batch_hard", "pml_semihard")
DATA_QUICK_ROWS = ("batch_hard", "pml_batch_hard")
#: Relative cost of a step, by kind of row (for the printed plan only).
KIND_COST = {"plain": 1.0, "hard_class": 1.05, "memory": 2.0, "large_batch": 1.4}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (saved in the JSON).

    ``strategies`` None picks the rows by ``headline`` from the saved search (or every
    row when ``headline`` is None too). ``checkpoints`` evaluations are spread over the
    run; ``subset_classes`` evaluation classes are used at the intermediate checkpoints and
    ``final_classes`` (None: all) at the last one; ``train_classes`` limits the Omniglot
    background classes (smoke runs). ``tune_rows`` are the rows ``--tune`` searches (None:
    the run's rows, or every row). ``threads``: torch and numba threads (None: as they are;
    smoke runs use one: on a shared machine, two OpenMP threads on tiny tensors can be a
    hundred times slower than one).
    """

    name: str
    strategies: tuple[str, ...] | None
    seeds: tuple[int, ...]
    steps: int
    p: int
    k: int
    checkpoints: int
    subset_classes: int
    final_classes: int | None
    train_classes: int | None
    tune: TuneConfig
    headline: tuple[int, int] | None = None
    tune_rows: tuple[str, ...] | None = None
    threads: int | None = None
    quick: bool = False

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def checkpoint_steps(self) -> list[int]:
        return checkpoint_steps(self.steps, self.checkpoints)


_TUNE = TuneConfig(steps=TUNE_STEPS, p=32, k=4, checkpoints=4)
#: The default run: the headline rows of the saved search, 3 seeds.
DEFAULT_CONFIG = Config(
    name="default",
    strategies=None,
    seeds=(0, 1, 2),
    steps=DEFAULT_STEPS,
    p=32,
    k=4,
    checkpoints=6,
    subset_classes=100,
    final_classes=None,
    train_classes=None,
    tune=_TUNE,
    headline=DEFAULT_HEADLINE,
)
#: ``--full``: every row, 3 seeds, :data:`FULL_STEPS` steps.
FULL_CONFIG = replace(DEFAULT_CONFIG, name="full", steps=FULL_STEPS, checkpoints=17, headline=None)
#: ``--quick``: every kind of row once, a handful of steps, few classes (CI smoke run).
QUICK_CONFIG = Config(
    name="quick",
    strategies=QUICK_ROWS,
    seeds=(0,),
    steps=8,
    p=8,
    k=4,
    checkpoints=3,
    subset_classes=10,
    final_classes=20,
    train_classes=100,
    tune=TuneConfig(steps=3, p=8, k=4, checkpoints=2, grid="tiny"),
    tune_rows=("batch_hard", "pml_batch_hard"),
    threads=1,
    quick=True,
)


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


def _best(tuning: dict[str, Any], family: str, n: int) -> list[str]:
    entries = tuning.get("strategies", {})
    ranked = sorted(
        (
            (e["chosen_val_map_at_r"], name)
            for name, e in entries.items()
            if e.get("family") == family and name in STRATEGIES and e.get("results")
        ),
        reverse=True,
    )
    runnable = [name for _, name in ranked if missing_requirement(STRATEGIES[name]) is None]
    return runnable[:n]


def select_rows(cfg: Config, tuning: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """The rows of a run, and the rows left out with the reason (a missing library).

    Explicit ``cfg.strategies`` first; else ``cfg.headline`` picks the best tripletkit and
    peer rows by validation score from the saved search (:data:`FALLBACK_HEADLINE` without
    one); else every row.
    """
    if cfg.strategies is not None:
        names = list(cfg.strategies)
    elif cfg.headline is not None and tuning:
        names = _best(tuning, "tripletkit", cfg.headline[0]) + _best(
            tuning, "peer", cfg.headline[1]
        )
    elif cfg.headline is not None:
        names = list(FALLBACK_HEADLINE)
    else:
        names = list(STRATEGIES)
    skipped = {}
    for name in names:
        reason = missing_requirement(STRATEGIES[name])
        if reason is not None:
            skipped[name] = reason
    return [n for n in names if n not in skipped], skipped


# --------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------


def warm_up(rows: Sequence[tuple[Strategy, dict]], cfg: Config) -> float:
    """Call every row's criterion and :func:`triplet_stats` once on random embeddings, so
    that one-off costs (numba compilation or cache loading, first calls, imports) are not
    charged to whichever row runs first. Returns the seconds it took."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(cfg.batch_size) // cfg.k
    x = F.normalize(torch.randn(cfg.batch_size, EMBEDDING_DIM, generator=gen), dim=1)
    for strategy, setting in rows:
        leaf = x.clone().requires_grad_()
        strategy.build(setting, 0)(leaf, labels).backward()
    triplet_stats(x, labels, margin=0.2)
    return time.perf_counter() - start


def _time_steps(task: Task, cfg: Config, repeats: int) -> float:
    """Mean seconds of a plain batch-hard training step (batch fetch included), after one
    warm-up step, on a throwaway network."""
    strategy = STRATEGIES["batch_hard"]
    plan = RunPlan(steps=repeats + 1, p=cfg.p, k=cfg.k, checkpoints=2)
    run = setup_run(strategy, strategy.default_setting(), 0, task, plan)

    def step() -> None:
        idx = next(run.batches)
        run.step(task.train_x[idx], task.train_y[idx])

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def _time_evaluation(task: Task) -> tuple[float, float]:
    """Seconds of a checkpoint evaluation (measured on a fresh network, after a warm-up)
    and of the final one (extrapolated: embedding grows like the rows, the metrics like
    their square)."""
    from .nets import make_net

    model = make_net(task.input_shape, normalize=True).eval()
    x, y = task.eval_x[task.subset], task.eval_y[task.subset]
    retrieval(embed(model, x), y)  # warm-up
    t0 = time.perf_counter()
    emb = embed(model, x)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    retrieval(emb, y)
    metric_s = time.perf_counter() - t0
    ratio = len(task.final) / max(1, len(task.subset))
    return embed_s + metric_s, embed_s * (1 + ratio) + metric_s * (1 + ratio**2)


def plan_budget(
    cfg: Config, task: Task, rows: Sequence[tuple[Strategy, dict]], repeats: int = 10
) -> dict[str, Any]:
    """Time a few training steps and evaluations on throwaway networks and estimate the
    run. Touches no run's random state (every run reseeds)."""
    started = time.perf_counter()
    warmup_s = warm_up(rows, cfg)
    step_s = _time_steps(task, cfg, repeats)
    subset_s, final_s = _time_evaluation(task)
    per_row = {}
    n_ckpt = len(cfg.checkpoint_steps())
    fixed = (n_ckpt - 1) * subset_s + final_s
    for strategy, _ in rows:
        train_s = cfg.steps * step_s * KIND_COST.get(strategy.training.kind, 1.0)
        if strategy.training.time_cap_factor is not None:
            train_s = min(train_s, strategy.training.time_cap_factor * cfg.steps * step_s)
        per_row[strategy.name] = train_s + fixed
    runs = len(cfg.seeds)
    total = runs * sum(per_row.values())
    spent = time.perf_counter() - started
    plain_runs = runs * max(1, len(rows))
    fits = math.floor(((QUALITY_BUDGET_S - spent) / plain_runs - fixed) / step_s)
    return {
        "runs": runs * len(rows),
        "warmup_s": warmup_s,
        "step_s": step_s,
        "subset_eval_s": subset_s,
        "final_eval_s": final_s,
        "per_run_s_estimate": per_row,
        "total_s_estimate": total,
        "steps_that_fit_budget": max(fits, 0),
        "load_average": load_average(),
    }


# --------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------


def _entry(strategy: Strategy, setting: dict, source: str, tuning: dict | None) -> dict:
    search = sensitivity(tuning or {}, [strategy.name]).get(strategy.base or strategy.name, {})
    return {
        "label": strategy.label,
        "family": strategy.family,
        "miner": strategy.miner,
        "loss": strategy.loss,
        "training": strategy.training.describe(),
        "base": strategy.base,
        "setting": setting,
        "setting_source": source,
        "search": {
            "settings": search.get("settings", []),
            "chosen": search.get("chosen"),
            "chosen_val_map_at_r": search.get("chosen_val_map_at_r"),
        },
        "stats_margin": strategy.stats_margin(setting),
        "notes": list(strategy.notes),
        "runs": [],
    }


def _run_line(done: int, total: int, name: str, run: dict[str, Any]) -> str:
    f = run["final"]
    cap = f"; capped at step {run['steps']} of {run['planned_steps']}" if run["capped"] else ""
    return (
        f"[{done}/{total}] {name} seed {run['seed']}: MAP@R "
        f"{f['mean_average_precision_at_r']:.3f}  R-prec {f['r_precision']:.3f}  "
        f"P@1 {f['precision_at_1']:.3f}  (train {run['train_s']:.1f} s, "
        f"wall {run['wall_s']:.1f} s{cap})"
    )


def _reusable(saved: dict[str, Any] | None, cfg: Config) -> dict[str, Any]:
    """The rows of an earlier run's results that ``--resume`` may keep: same steps, batch,
    checkpoints and seeds."""
    if not saved:
        return {}
    old = saved.get("config", {})
    same = all(old.get(k) == v for k, v in asdict(cfg).items() if k in ("steps", "p", "k"))
    same = same and old.get("checkpoints") == cfg.checkpoints
    if not same:
        return {}
    stamp = saved.get("machine", {}).get("timestamp")
    keep = {}
    for name, entry in saved.get("strategies", {}).items():
        if [r["seed"] for r in entry.get("runs", [])] == list(cfg.seeds):
            keep[name] = {**entry, "from_earlier_run": entry.get("from_earlier_run") or stamp}
    return keep


def run_rows(
    rows: Sequence[tuple[Strategy, dict, str]],
    cfg: Config,
    task: Task,
    plan: RunPlan,
    tuning: dict | None,
    earlier: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train every row with every seed of ``cfg`` (progress bar over all steps).

    ``earlier`` rows (see :func:`_reusable`) trained with the same setting are kept instead
    of trained again; ``on_row(entries)`` is called after each row (to save progress).

    Returns:
        Per row name: description, ``setting`` and its source, the ``search`` results,
        ``runs`` (one per seed, see :func:`benchmarks.training.train_run`) and
        ``aggregate`` (see :func:`benchmarks.report.aggregate_runs`).
    """
    earlier = earlier or {}
    todo = [r for r in rows if earlier.get(r[0].name, {}).get("setting") != r[1]]
    total = len(todo) * len(cfg.seeds)
    entries: dict[str, Any] = {}
    done = 0
    with progress(total=total * cfg.steps, desc="quality", unit="step") as bar:
        for strategy, setting, source in rows:
            if (strategy, setting, source) not in todo:
                entries[strategy.name] = earlier[strategy.name]
                bar.write(
                    f"{strategy.name}: kept from {entries[strategy.name]['from_earlier_run']}"
                )
                continue
            entry = _entry(strategy, setting, source, tuning)
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{strategy.name} seed {seed}")
                run = train_run(strategy, setting, seed, task, plan, on_step=bar.update)
                entry["runs"].append(run)
                done += 1
                bar.write(_run_line(done, total, strategy.name, run))
            entry["aggregate"] = aggregate(entry["runs"])
            entries[strategy.name] = entry
            if on_row is not None:
                on_row(entries)
    return entries


def compare_at_equal_time(results: dict[str, Any]) -> dict[str, Any] | None:
    """The best tripletkit row against the best peer row (by final MAP@R) at equal
    training time: the shorter of their mean training times, where each seed's checkpoint
    curve (MAP@R on the checkpoint classes against training seconds) is interpolated.

    Returns None without a row of each family. The difference is the difference of the
    means; its standard error combines both rows' standard errors over seeds; it is
    ``separated`` when larger than two standard errors (None with one seed).
    """
    entries = results["strategies"]
    fams = {f: [n for n, e in entries.items() if e["family"] == f] for f in ("tripletkit", "peer")}
    if not fams["tripletkit"] or not fams["peer"]:
        return None

    def best(names: list[str]) -> str:
        return max(names, key=lambda n: entries[n]["aggregate"]["final"][MAP]["mean"])

    a, b = best(fams["tripletkit"]), best(fams["peer"])
    t = min(entries[n]["aggregate"]["train_s"]["mean"] for n in (a, b))

    def side(name: str) -> dict[str, Any]:
        runs = entries[name]["runs"]
        at = [float(np.interp(t, r["curve"]["train_s"], r["curve"][MAP])) for r in runs]
        agg = entries[name]["aggregate"]
        return {
            "name": name,
            "at_time": mean_std(at),
            "final": agg["final"][MAP],
            "train_s": agg["train_s"]["mean"],
        }

    tk, peer = side(a), side(b)
    diff = tk["at_time"]["mean"] - peer["at_time"]["mean"]
    n = min(tk["at_time"]["n"], peer["at_time"]["n"])
    se = math.hypot(
        tk["at_time"]["std"] / math.sqrt(tk["at_time"]["n"]),
        peer["at_time"]["std"] / math.sqrt(peer["at_time"]["n"]),
    )
    return {
        "time_s": t,
        "classes": results["config"]["subset_classes"],
        "tripletkit": tk,
        "peer": peer,
        "difference": {"mean": diff, "se": se},
        "separated": None if n < 2 else abs(diff) > 2 * se,
        "how": "best row of each family by final MAP@R; MAP@R on the checkpoint classes "
        "interpolated at the shorter of the two mean training times, per seed",
    }


def ranking_stability(results: dict[str, Any], last: int = 3) -> dict[str, Any]:
    """The ranking of the rows (mean MAP@R on the checkpoint classes) at each of the last
    ``last`` checkpoints, rows stopped by a time cap excluded.

    ``flips`` lists the pairs whose order differs between the last two checkpoints, each
    with its gap at the last one, whether that gap exceeds two standard errors
    (``separated``) and whether the pair was separated the other way round at the
    checkpoint before (``reversed``): a ranking that changed beyond seed noise. With 3
    seeds and many pairs, some flips are separated at one checkpoint by chance alone;
    ``stable`` asks that none be reversed.
    """
    entries = {n: e for n, e in results["strategies"].items() if not e["aggregate"].get("capped")}
    if len(entries) < 2:
        return {"rankings": [], "flips": [], "stable": None}
    n_points = min(len(e["aggregate"]["curves"][MAP]["mean"]) for e in entries.values())
    idx = list(range(max(0, n_points - last), n_points))
    first = next(iter(entries.values()))["aggregate"]["curves"]
    rankings = []
    for i in idx:
        order = sorted(entries, key=lambda n: -entries[n]["aggregate"]["curves"][MAP]["mean"][i])
        rankings.append({"images": first.get("images", first["step"])[i], "order": order})
    flips = _flips(entries, rankings, idx)
    return {
        "rankings": rankings,
        "flips": flips,
        "stable": not any(f["reversed"] for f in flips),
        "how": "rows ranked by mean MAP@R on the checkpoint classes; a flip is a pair whose "
        "order differs between the last two checkpoints; separated: its gap at the last "
        "checkpoint exceeds two standard errors; reversed: it was also separated the other "
        "way at the checkpoint before; stable: no flip is reversed",
    }


def _gap(entries: dict, a: str, b: str, i: int) -> tuple[float, bool]:
    """Mean MAP@R of ``a`` minus ``b`` at checkpoint ``i``, and whether it exceeds two
    standard errors (never with one seed)."""
    sa = entries[a]["aggregate"]["curves"][MAP]
    sb = entries[b]["aggregate"]["curves"][MAP]
    n = len(entries[a]["runs"])
    gap = sa["mean"][i] - sb["mean"][i]
    se = math.hypot(sa["std"][i], sb["std"][i]) / math.sqrt(n)
    return gap, n > 1 and abs(gap) > 2 * se


def _flips(entries: dict, rankings: list[dict], idx: list[int]) -> list[dict[str, Any]]:
    if len(rankings) < 2:
        return []
    before = {n: r for r, n in enumerate(rankings[-2]["order"])}
    after = rankings[-1]["order"]
    out = []
    for i, a in enumerate(after):
        for b in after[i + 1 :]:
            if before[a] > before[b]:  # a overtook b
                gap, separated = _gap(entries, a, b, idx[-1])
                _, separated_before = _gap(entries, a, b, idx[-2])  # b was ahead there
                out.append(
                    {
                        "up": a,
                        "down": b,
                        "gap": gap,
                        "separated": separated,
                        "reversed": separated and separated_before,
                    }
                )
    return out


# --------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------


def _tuning_names(cfg: Config, data: bool) -> list[str]:
    if cfg.tune_rows is not None:
        names = list(cfg.tune_rows)
    elif cfg.strategies is not None:
        names = list(cfg.strategies)
    elif data:
        names = list(DATA_QUICK_ROWS if cfg.quick else DATA_ROWS)
    else:
        names = list(STRATEGIES)
    return [n for n in names if missing_requirement(STRATEGIES[n]) is None or STRATEGIES[n].base]


def tune(cfg: Config, dataset: Dataset, path: Path, names: Sequence[str]) -> dict[str, Any]:
    """Run (or resume) the search of ``names`` on ``dataset`` into ``path``."""
    task = dataset.task("tune")
    todo = [
        (s, st) for s, st in tuning_plan(names, cfg.tune.grid) if missing_requirement(s) is None
    ]
    tcfg = cfg.tune
    plan = RunPlan(steps=tcfg.steps, p=tcfg.p, k=tcfg.k, checkpoints=tcfg.checkpoints)
    step_s = _time_steps(task, replace(cfg, p=tcfg.p, k=tcfg.k), 1 if cfg.quick else 3)
    eval_s = _time_evaluation(task)[0]
    estimate = len(todo) * (tcfg.steps * step_s + tcfg.checkpoints * eval_s)
    print(
        f"Search: {len(todo)} configurations x {tcfg.steps} steps of {tcfg.p}x{tcfg.k} "
        f"(seed {tcfg.seed}) on {task.train_classes} training-part classes, validation "
        f"MAP@R on {task.eval_classes()} validation classes -> {path}\n"
        f"Planned: {1e3 * step_s:.0f} ms per step, {eval_s:.1f} s per validation "
        f"evaluation -> ~{estimate / 60:.0f} min before any resumed configuration is "
        f"skipped (load average {load_average()}).",
        flush=True,
    )
    with progress(total=len(todo) * tcfg.steps, desc="search", unit="step") as bar:

        def train(strategy: Strategy, setting: dict, seed: int) -> dict[str, Any]:
            bar.set_postfix_str(f"{strategy.name} {describe_setting(setting)}")
            return train_run(strategy, setting, seed, task, plan, on_step=bar.update)

        state = run_tuning(
            [s.name for s, _ in todo], dataset, tcfg, path, train, new_result, log=bar.write
        )
    state["machine_end"] = {"load_average": load_average()}
    save_json(path, state)
    return state


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes a count (3) or a comma-separated list (0,5,7), got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds >= 0, got {text!r}")
    return seeds


def _parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown strategies {unknown or text!r}; choose from {', '.join(STRATEGIES)}"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Train an embedding net with each mining strategy and peer recipe under "
        "a fair tuning protocol; compare retrieval on unseen classes.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI smoke run: tiny everything")
    mode.add_argument("--full", action="store_true", help=f"every row, {FULL_STEPS} steps")
    p.add_argument("--tune", action="store_true", help="run the hyper-parameter search only")
    p.add_argument("--data", type=Path, help="a .npz file with arrays x [N, ...] and y [N]")
    p.add_argument("--seeds", type=_parse_seeds, help="count (3 -> 0,1,2) or list (0,5)")
    p.add_argument("--steps", type=_positive_int, help="training steps per final run")
    p.add_argument("--tune-steps", type=_positive_int, help="training steps per search run")
    p.add_argument(
        "--strategies", type=_parse_strategies, help=f"subset of: {', '.join(STRATEGIES)}"
    )
    p.add_argument("--tuning", type=Path, help="the saved search to read (or write)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of the run's saved results trained with the same setting, "
        "steps and seeds (the results are saved after every row)",
    )
    p.add_argument(
        "--redo",
        type=_parse_strategies,
        help="with --resume: rows to train again anyway (e.g. disturbed by other load)",
    )
    p.add_argument("--threads", type=_positive_int, help="torch and numba threads")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    return p


def _config(args: argparse.Namespace) -> Config:
    cfg = QUICK_CONFIG if args.quick else FULL_CONFIG if args.full else DEFAULT_CONFIG
    if args.data is not None and not args.quick:
        cfg = replace(cfg, name="data", strategies=cfg.strategies or DATA_ROWS, headline=None)
    elif args.data is not None:
        cfg = replace(cfg, strategies=DATA_QUICK_ROWS, tune_rows=None)
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.tune_steps is not None:
        cfg = replace(cfg, tune=replace(cfg.tune, steps=args.tune_steps))
    if args.strategies is not None:
        cfg = replace(cfg, strategies=args.strategies, tune_rows=None)
    if args.threads is not None:
        cfg = replace(cfg, threads=args.threads)
    return cfg


def _stems(cfg: Config, args: argparse.Namespace) -> tuple[str, str]:
    """File stems of the run and of its search."""
    quick = "_quick" if cfg.quick else ""
    if args.data is not None:
        return (
            f"quality_data_{args.data.stem}{quick}",
            f"quality_tuning_data_{args.data.stem}{quick}",
        )
    run = {"default": "quality", "full": "quality_full", "quick": "quality_quick"}[cfg.name]
    return run, f"quality_tuning{quick}"


def _tuning_path(args: argparse.Namespace, stem: str, writing: bool) -> Path:
    if args.tuning is not None:
        return Path(args.tuning)
    local = args.out / f"{stem}.json"
    if writing or local.is_file():
        return local
    return RESULTS_DIR / f"{stem}.json"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or, with ``--tune``, the search only); returns what it saved.

    The run's dict holds ``benchmark``, ``machine`` (with the load average), ``config``,
    ``protocol`` (split with the validation class ids, search budget, saved-search file),
    ``hyperparameters``, ``plan``, ``skipped`` (rows left out and why), ``strategies``
    (name -> description, ``setting``, ``search``, ``runs``, ``aggregate``),
    ``sensitivity``, ``comparison``, ``ranking``, ``wall_s`` and ``outputs``.
    """
    args = _parser().parse_args(None if argv is None else list(argv))
    cfg = _config(args)
    with thread_count(cfg.threads):
        return _main(args, cfg)


def _main(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    started = time.perf_counter()
    dataset = load_npz(args.data) if args.data else load_omniglot(cfg.train_classes)
    run_stem, tune_stem = _stems(cfg, args)
    searching = args.tune or args.data is not None
    tuning_path = _tuning_path(args, tune_stem, writing=searching)
    if searching:
        tuning = tune(cfg, dataset, tuning_path, _tuning_names(cfg, args.data is not None))
        if args.tune and args.data is None:
            _print_search(tuning, tuning_path)
            return tuning
    else:
        tuning = load_tuning(tuning_path)
    return _final(
        cfg,
        dataset,
        tuning,
        tuning_path,
        args.out / run_stem,
        started,
        resume=args.resume or bool(args.redo),
        redo=args.redo or (),
    )


def _final(
    cfg: Config,
    dataset: Dataset,
    tuning: dict | None,
    tuning_path: Path,
    stem: Path,
    started: float,
    resume: bool = False,
    redo: Sequence[str] = (),
) -> dict[str, Any]:
    names, skipped = select_rows(cfg, tuning)
    rows = [(STRATEGIES[n], *choice_for(STRATEGIES[n], tuning)) for n in names]
    task = dataset.task("final", cfg.subset_classes, cfg.final_classes)
    budget = plan_budget(cfg, task, [(s, st) for s, st, _ in rows], repeats=1 if cfg.quick else 10)
    _print_plan(cfg, task, rows, skipped, budget, tuning_path if tuning else None)
    plan = RunPlan(cfg.steps, cfg.p, cfg.k, cfg.checkpoints, step_s=budget["step_s"])
    results = new_result(
        "quality",
        config={**asdict(cfg), "batch_size": cfg.batch_size, "dataset": dataset.name},
        protocol=_protocol(dataset, tuning, tuning_path),
        hyperparameters=hyperparameters(cfg, task),
        plan=budget,
        skipped=skipped,
        strategies={},
    )
    json_path = stem.with_suffix(".json")
    earlier = _reusable(load_json(json_path) if resume and json_path.is_file() else None, cfg)
    for name in redo:
        earlier.pop(name, None)

    def save_partial(entries: dict[str, Any]) -> None:
        save_json(json_path, {**results, "strategies": entries, "partial": True})

    results["strategies"] = run_rows(rows, cfg, task, plan, tuning, earlier, save_partial)
    # Every searched row, not only those run: how much each depends on its settings.
    searched = [n for n in (tuning or {}).get("strategies", {}) if n in STRATEGIES]
    results["sensitivity"] = sensitivity(tuning, [*names, *searched]) if tuning else {}
    results["comparison"] = compare_at_equal_time(results)
    results["ranking"] = ranking_stability(results)
    results["machine"]["load_average_end"] = load_average()
    pngs = plot_results(results, stem)
    results["wall_s"] = time.perf_counter() - started
    results["outputs"] = {"json": str(json_path), "png": [str(p) for p in pngs]}
    save_json(json_path, results)
    _print_summary(results, json_path, pngs)
    return results


def _protocol(dataset: Dataset, tuning: dict | None, path: Path) -> dict[str, Any]:
    return {
        "dataset": dataset.source,
        "split": dataset.split.as_json(),
        "search": (tuning or {}).get("protocol", {}).get("search"),
        "search_file": str(path) if tuning else None,
        "search_machine": (tuning or {}).get("machine"),
        "final_training": "the chosen setting trained on the training part and the "
        "validation part together (all training classes), evaluated once on the "
        "evaluation classes",
    }


def hyperparameters(cfg: Config, task: Task) -> dict[str, Any]:
    """The ``hyperparameters`` of the results: network, optimiser, metric."""
    return {
        "network": describe_net(task.input_shape),
        "optimizer": "Adam over the network and the loss's parameters, learning rate from "
        "each row's setting",
        "metric": "euclidean distance on the network's output (cosine when normalised)",
        "triplet_stats_margin": "each row's margin (0.2 for rows without a distance margin)",
        "std": "sample standard deviation over seeds (ddof=1), 0 for one seed",
    }


def _print_plan(
    cfg: Config,
    task: Task,
    rows: Sequence[tuple[Strategy, dict, str]],
    skipped: dict[str, str],
    budget: dict[str, Any],
    tuning_path: Path | None,
) -> None:
    print(
        f"Quality benchmark [{cfg.name}]: {len(rows)} rows x {len(cfg.seeds)} seeds x "
        f"{cfg.steps} steps of {cfg.p}x{cfg.k}; training on {task.train_classes} classes, "
        f"checkpoints at {cfg.checkpoint_steps()} on {task.eval_classes(False)} evaluation "
        f"classes, final on {task.eval_classes()}; settings from "
        f"{tuning_path or 'the declared defaults (no saved search)'}."
    )
    for strategy, setting, source in rows:
        print(f"  {strategy.name:<26} {describe_setting(setting):<40} ({source})")
    for name, reason in skipped.items():
        print(f"  {name:<26} skipped: {reason}")
    print(
        f"Planned (warm-up {budget['warmup_s']:.1f} s): {1e3 * budget['step_s']:.0f} ms per "
        f"plain step, {budget['subset_eval_s']:.2f} s per checkpoint, "
        f"{budget['final_eval_s']:.1f} s final evaluation -> ~"
        f"{budget['total_s_estimate'] / 60:.1f} min in all (load average "
        f"{budget['load_average']}).",
        flush=True,
    )
    if cfg.name == "default" and budget["total_s_estimate"] > QUALITY_BUDGET_S:
        print(
            f"Note: the estimate exceeds the quality benchmark's {QUALITY_BUDGET_S / 60:.0f} "
            f"min share of the {DEFAULT_BUDGET_S / 60:.0f} min target on this machine (is it "
            f"busy?); --steps {budget['steps_that_fit_budget']} would fit it.",
            flush=True,
        )


def _print_search(tuning: dict[str, Any], path: Path) -> None:
    sens = sensitivity(tuning, list(tuning["strategies"]))
    print("\n## Validation MAP@R of every searched setting (chosen in bold)\n")
    print(sensitivity_table(sens))
    print(f"\nWrote {path}")


def _print_summary(results: dict[str, Any], json_path: Path, pngs: list[Path]) -> None:
    final = results["config"]["final_classes"] or "all"
    print(f"\n## Quality on {final} unseen evaluation classes (mean ± std over seeds)\n")
    print(markdown_table(results))
    if results["sensitivity"]:
        print("\n## Sensitivity: validation MAP@R of every searched setting\n")
        print(sensitivity_table(results["sensitivity"]))
    for name, reason in results["skipped"].items():
        print(f"- {name} skipped: {reason}")
    ranking = results["ranking"]
    if ranking["rankings"]:
        flips = ranking["flips"]
        marks = {(False, False): "", (True, False): " (separated)", (True, True): " (REVERSED)"}
        text = ", ".join(
            f"{f['up']} > {f['down']}{marks[f['separated'], f['reversed']]}" for f in flips
        )
        print(
            f"\nRanking over the last two checkpoints: stable={ranking['stable']} "
            f"({len(flips)} pairs swapped, {sum(f['separated'] for f in flips)} of them by more "
            f"than 2 standard errors at the last, {sum(f['reversed'] for f in flips)} reversed "
            f"beyond noise): {text or 'none'}"
        )
    print("\n" + comparison_text(results["comparison"]))
    runs_s = sum(r["wall_s"] for e in results["strategies"].values() for r in e["runs"])
    print(
        f"\nMeasured wall time: {results['wall_s']:.0f} s in all, {runs_s:.0f} s in the runs "
        f"(planned ~{results['plan']['total_s_estimate']:.0f} s)."
    )
    print(f"Wrote {json_path}")
    for path in pngs:
        print(f"Wrote {path}")


if __name__ == "__main__":
    run(main, "python -m benchmarks.quality")
