"""The quality benchmark's time plan, measured on this machine: ``python -m benchmarks.budget``.

Times one training step of every row (:func:`benchmarks.training.calibrate`: the median of
``--repeats`` single steps after a warm-up; a memory row with its memory full, a
neighbour-sampler row with its refresh amortised, a 4x-batch row per plain step's worth of
images) and the evaluations, then estimates the three runs of the protocol with its
constants (:data:`benchmarks.protocol.SEARCH_STEPS`, :data:`benchmarks.quality.FULL_CONFIG`,
:data:`benchmarks.quality.DEFAULT_CONFIG`, the grids of :mod:`benchmarks.strategies`):

- the search (``--tune``), with one extension step per row: at most 150 minutes;
- ``--full``: at most 150 minutes;
- the default run, worst case (the two costliest eligible rows of each family): within
  :data:`benchmarks.quality.QUALITY_BUDGET_S`, its share of ``python -m benchmarks``'s 15.

Writes ``quality_budget.json`` (``--out``, default ``benchmarks/results/``) with the
machine and its load. The committed file holds the times of the slowest machine measured
(the 2-core reference machine, see the README); ``tests/test_bench_protocol.py`` re-derives
the three estimates from its step times and the protocol's current constants, so a change of
steps, grids, seeds or rows that would overrun a budget on that machine fails the suite.

The step times depend on the machine: the same network took 32 ms per step on a 2-core host
with AVX-512 (0.2's search) and 87 ms on the reference machine (AVX2 only); the protocol is
sized for the slower one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cli import UsageError, run
from .common import RESULTS_DIR, load_average, new_result, progress, save_json
from .data import Task, load_omniglot
from .measure import thread_count
from .protocol import SEARCH_BUDGET_S, SEARCH_STEPS, search_estimate
from .quality import (
    DEFAULT_CONFIG,
    DEFAULT_KINDS,
    FULL_CONFIG,
    QUALITY_BUDGET_S,
    _positive_int,
    _time_evaluation,
    run_estimate,
)
from .strategies import OPT_IN_ROWS, STRATEGIES, Strategy
from .training import RunPlan, calibrate

__all__ = ["FULL_BUDGET_S", "estimates", "main", "measure", "row_setting"]

#: The ``--full`` run's time target on the 2-core machine, seconds.
FULL_BUDGET_S = 150 * 60


def row_setting(strategy: Strategy) -> dict[str, Any]:
    """The setting a row is timed with: its default, or for an add-on row the middle of the
    settings searched from its base row's default (the refresh period of a
    neighbour-sampler row, which sets its cost, is then the middle one)."""
    if strategy.base is None:
        return strategy.default_setting()
    options = strategy.settings_from(STRATEGIES[strategy.base].default_setting())
    return options[len(options) // 2]


def measure(
    names: Sequence[str], task: Task, plan: RunPlan, repeats: int
) -> dict[str, dict[str, Any]]:
    """Per row: ``step_s`` (median seconds per plain step's worth of images: a 4x-batch
    step divided by 4), the calibration's quartiles and, for a neighbour-sampler row, the
    refresh time."""
    rows: dict[str, dict[str, Any]] = {}
    with progress(total=len(names), desc="rows", unit="row") as bar:
        for name in names:
            strategy = STRATEGIES[name]
            bar.set_postfix_str(name)
            c = calibrate(strategy, row_setting(strategy), task, plan, repeats=repeats)
            per = strategy.training.batch_factor if strategy.training.kind == "large_batch" else 1
            rows[name] = {
                "step_s": c["median_s"] / per,
                "median_s": c["median_s"],
                "q1_s": c["q1_s"],
                "q3_s": c["q3_s"],
                "images_per_step": per,
                **{k: c[k] for k in ("refresh_s", "refresh_every") if k in c},
            }
            bar.write(f"{name}: {1e3 * rows[name]['step_s']:.1f} ms per plain step")
            bar.update(1)
    return rows


def estimates(
    step_s: Mapping[str, float], search_eval_s: float, subset_eval_s: float, last_eval_s: float
) -> dict[str, Any]:
    """Seconds of the search, the full run and the default run (worst case) from measured
    per-row step times and evaluation times, with the protocol's current constants; each
    with its budget and whether it fits."""
    plain = step_s["batch_hard"]
    names = [n for n in STRATEGIES if n not in OPT_IN_ROWS]
    search = search_estimate(
        [STRATEGIES[n] for n in names],
        SEARCH_STEPS,
        step_s,
        plain,
        search_eval_s,
        checkpoints=DEFAULT_CONFIG.tune.checkpoints,
        extensions=1.0,
    )
    full = run_estimate(FULL_CONFIG, names, step_s, plain, subset_eval_s, last_eval_s)
    eligible = [n for n in names if STRATEGIES[n].training.kind in DEFAULT_KINDS]
    per_row = run_estimate(DEFAULT_CONFIG, eligible, step_s, plain, subset_eval_s, last_eval_s)[
        "per_row_s"
    ]
    worst_rows: list[str] = []
    for family in ("tripletkit", "peer"):
        ranked = sorted(
            (n for n in eligible if STRATEGIES[n].family == family),
            key=lambda n: per_row[n],
            reverse=True,
        )
        worst_rows += ranked[: DEFAULT_CONFIG.headline[0 if family == "tripletkit" else 1]]
    default_s = sum(per_row[n] for n in worst_rows)
    return {
        "search": {
            "total_s": search["total_s"],
            "configurations": search["configurations"],
            "budget_s": SEARCH_BUDGET_S,
            "fits": search["total_s"] <= SEARCH_BUDGET_S,
        },
        "full": {
            "total_s": full["total_s"],
            "budget_s": FULL_BUDGET_S,
            "fits": full["total_s"] <= FULL_BUDGET_S,
        },
        "default": {
            "total_s": default_s,
            "worst_rows": worst_rows,
            "budget_s": QUALITY_BUDGET_S,
            "fits": default_s <= QUALITY_BUDGET_S,
        },
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.budget",
        description="Time every quality row's training step on this machine and check the "
        "search, the full run and the default run against their time budgets.",
    )
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed steps per row (10)")
    p.add_argument("--rows", help="comma-separated rows to time (default: every row)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    p.add_argument("--threads", type=_positive_int, help="torch and numba threads")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, estimate, print and save (``quality_budget.json``); returns the result."""
    args = _parser().parse_args(None if argv is None else list(argv))
    names = list(STRATEGIES) if not args.rows else [n.strip() for n in args.rows.split(",")]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or "batch_hard" not in names:
        raise UsageError(
            f"--rows needs batch_hard (the plain step) and known rows; unknown: {unknown}"
        )
    started = time.perf_counter()
    with thread_count(args.threads):
        dataset = load_omniglot()
        cfg = DEFAULT_CONFIG
        plan = RunPlan(steps=FULL_CONFIG.steps, p=cfg.p, k=cfg.k, checkpoints=2)
        result = new_result("quality_budget")
        result["load_average_start"] = load_average()
        rows = measure(names, dataset.task("tune"), plan, args.repeats)
        search_eval_s = _time_evaluation(dataset.task("tune"))[0]
        final_task = dataset.task("final", cfg.subset_classes, cfg.final_classes)
        subset_eval_s, last_eval_s = _time_evaluation(final_task)
    step_s = {n: r["step_s"] for n, r in rows.items()}
    plans = estimates(step_s, search_eval_s, subset_eval_s, last_eval_s)
    result.update(
        rows=rows,
        evaluation={
            "search_s": search_eval_s,
            "subset_s": subset_eval_s,
            "last_and_test_s": last_eval_s,
        },
        estimates=plans,
        load_average_end=load_average(),
        elapsed_s=time.perf_counter() - started,
    )
    for what, e in plans.items():
        verdict = "fits" if e["fits"] else "DOES NOT FIT"
        print(
            f"{what}: ~{e['total_s'] / 60:.0f} min planned, budget {e['budget_s'] / 60:.0f} "
            f"min: {verdict}"
        )
    path = args.out / "quality_budget.json"
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(path, result)
    print(f"Wrote {path}")
    return result


if __name__ == "__main__":
    run(main, "python -m benchmarks.budget")
