"""Embedding quality of mining strategies and peer recipes, under a fair tuning protocol.

**Protocol** (:mod:`benchmarks.protocol`, after Musgrave et al. 2020). Omniglot's 964
*background* characters are the training classes; whole background alphabets holding 20%
of them (recorded) are held out as the *validation part*. Every row of
:mod:`benchmarks.strategies` declares a search space (three learning rates, L2-normalisation
where the loss allows it, three values of each margin or equivalent, at most 12
configurations per row); ``--tune`` trains each on the training part for the same number of
steps and scores it by MAP@R on the validation part (``quality_tuning.json``); a choice at
an edge of its grid gets one extension step. Add-on rows (memory, 4x batch, hard-class
sampler; tripletkit's and pytorch-metric-learning's) are searched from their base row's
choice over the learning rates.

**Selection on validation only.** The final runs train each row's chosen setting on the
*training part only*, over :data:`SEEDS` seeds, with checkpoint curves on the validation
classes (100 of them at the intermediate checkpoints, all at the last). Every choice reads
validation numbers only: the default run's rows (validation scores of the search), the rows
compared at equal time and the ranking-stability check (validation curves of the final
runs). The 659 *evaluation* (test) characters are read once, after every row has trained
and every choice is made (:func:`final_evaluation`): MAP@R, R-precision and P@1 by
leave-one-out retrieval over all of them, reported only. The networks wait in memory (and
in ``<stem>_models.pt`` next to the JSON, for ``--resume``).

**Statistics** (:mod:`benchmarks.report`). Per row: mean, standard deviation and the 95%
Student-t interval over seeds (the tables' ``±`` is the interval's half-width and says so).
A seed fixes the initialisation and the batches (:mod:`benchmarks.training`), so rows are
compared by paired t-tests over seeds; every comparison printed (the best tripletkit row
against the best peer row, each tripletkit row against its peer counterpart, each add-on
row against its base) is one family, Holm-corrected at 5%. The ranking-stability criterion
(:func:`ranking_stability`) is fixed here: ``stable`` is the *strict* reading (no pair that
swaps between the last two checkpoints is separated at the last one), the *lenient* reading
(no swapped pair separated both ways: 0.2's full run, changed after that run was seen) is
reported beside it.

**Wall clock.** Before each row, a calibration pass in the same process times single
steps of the row (:func:`benchmarks.training.calibrate`: median, quartiles, extremes, in the
JSON). Equal-time comparisons put every row on the time axis *median step time x steps*
(not the noisy measured time of each run, which is recorded too).

**Runs.**

- ``python -m benchmarks.quality``: the best tripletkit row and the best peer row
  (:data:`DEFAULT_HEADLINE`) by validation score in the saved search among plain and
  hard-class rows (:data:`DEFAULT_KINDS`: memory and 4x-batch rows cost more per step than
  the budget allows; ``--full`` has them), :data:`SEEDS` seeds x :data:`DEFAULT_STEPS`
  steps, the same steps and seeds as ``--full`` (its two rows are rows of the full run);
  part of ``python -m benchmarks``.
- ``--full``: every row but the opt-in ones (:data:`benchmarks.strategies.OPT_IN_ROWS`),
  :data:`SEEDS` seeds x :data:`FULL_STEPS` steps (``quality_full.json``).
- ``--tune``: the search (``quality_tuning.json``); resumes where it stopped.

**Time plan** (:mod:`benchmarks.budget`, measured on the 2-core reference machine, AVX2:
``benchmarks/results/quality_budget.json``, checked by the suite against the constants
here): 42-52 ms per plain step, 0.07-0.14 s for pytorch-metric-learning's memory rows;
the search ~118 min with one extension per row (222 configurations x
:data:`benchmarks.protocol.SEARCH_STEPS`), ``--full`` ~119 min, the default run ~8 min in
the worst case (the two costliest eligible rows; 130, 127 and 9 min in an earlier
measurement of the same day), within its :data:`QUALITY_BUDGET_S`
share of the 15 minutes (the speed benchmark takes ~4.5). 0.2's plan (4,000 steps, then
1,200) was sized on a host three times faster (AVX-512: 32 ms per step of the larger
0.2 network); 750 steps with 5 seeds is the trade the reference machine allows: the
curves still rise slowly at 750 steps (0.2's flattened from ~1,500), so the rows are
compared after a short budget, a stated limit.
- ``--quick``: a smoke run of everything on tiny settings (CI).
- ``--data FILE.npz``: the same protocol on a user's data (arrays ``x`` ``[N, ...]`` and
  ``y`` ``[N]``): classes split 60/20/20, the search, then the final runs
  (:mod:`benchmarks.data`).

**Outputs** (``--out``, default ``benchmarks/results/``): ``<stem>.json`` and the plots
``<stem>_map_at_r.png`` (validation MAP@R vs training images), ``<stem>_time.png``
(validation MAP@R vs calibrated training seconds: time to quality), ``<stem>_final.png``,
``<stem>_difficulty.png`` and ``<stem>_sensitivity.png``, with ``<stem>`` ``quality``,
``quality_full``, ``quality_quick`` or ``quality_data_<file>``.

Every run is deterministic for its seed on a given machine and thread count; training
times are measured, so they depend on the machine and its load, both recorded in the JSON.
Results of protocol version 1 (0.2: no ``protocol.version``) are read by the report
functions and the notebook as they are, but never reused by ``--resume``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
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
    PROTOCOL_VERSION,
    SEARCH_STEPS,
    TuneConfig,
    choice_for,
    load_tuning,
    run_tuning,
    sensitivity,
    tuning_plan,
    usable_tuning,
)
from .report import (
    INTERVAL_LABEL,
    MAP,
    comparison_text,
    comparisons_text,
    holm,
    paired_t_test,
    sensitivity_table,
    stability_text,
    t_interval,
    t_quantile,
)
from .report import aggregate_runs as aggregate
from .report import plot_quality as plot_results
from .report import quality_table as markdown_table
from .strategies import (
    COUNTERPARTS,
    OPT_IN_ROWS,
    STRATEGIES,
    Strategy,
    describe_setting,
    missing_requirement,
)
from .training import (
    RunPlan,
    calibrate,
    checkpoint_steps,
    embed,
    evaluate_test,
    retrieval,
    setup_run,
    train_run,
)

__all__ = [
    "DEFAULT_CONFIG",
    "FULL_CONFIG",
    "QUICK_CONFIG",
    "STRATEGIES",
    "Config",
    "aggregate",
    "compare_at_equal_time",
    "comparisons",
    "final_evaluation",
    "main",
    "markdown_table",
    "run_estimate",
    "plot_results",
    "ranking_stability",
    "select_rows",
]

#: The wall-time target of ``python -m benchmarks`` (quality and speed), seconds, and the
#: quality benchmark's share of it (the default speed plan takes about 4.5 minutes on the
#: 2-core reference machine).
DEFAULT_BUDGET_S = 15 * 60
QUALITY_BUDGET_S = 10 * 60
#: Steps of the default and of the full run (the same: the default run's rows are rows of
#: the full run, seed for seed).
DEFAULT_STEPS = 750
FULL_STEPS = 750
#: Steps of every configuration of the search.
TUNE_STEPS = SEARCH_STEPS
#: Seeds of the final runs (default and full).
SEEDS = (0, 1, 2, 3, 4)
#: The default run's rows: this many tripletkit rows and peer rows, best first by their
#: validation score in the saved search, among the rows of :data:`DEFAULT_KINDS`.
DEFAULT_HEADLINE = (1, 1)
DEFAULT_KINDS = ("plain", "hard_class")
#: The default run's rows when no search (of this protocol) is saved.
FALLBACK_HEADLINE = ("semi_hard", "pml_semihard")
#: Steps timed by the calibration pass before each row (after its untimed warm-up).
CALIBRATION_STEPS = 20
#: The ranking-stability criterion, fixed before any run: ``"strict"`` (see
#: :func:`ranking_stability`); the lenient reading is reported beside it.
RANKING_CRITERION = "strict"
#: The rows of ``--quick`` (every kind of row once) and of ``--data`` runs.
QUICK_ROWS = (
    "batch_hard",
    "multi_similarity",
    "pml_batch_hard",
    "xbm_semi_hard",
    "pml_xbm_multi_similarity",
    "large_batch_batch_hard",
    "hard_class_pml_multi_similarity",
)
DATA_ROWS = ("batch_hard", "semi_hard", "multi_similarity", "pml_batch_hard", "pml_semihard")
DATA_QUICK_ROWS = ("batch_hard", "pml_batch_hard")
#: Relative cost of a step, by kind of row (for the printed plans only; the checked plan is
#: :mod:`benchmarks.budget`'s), over a plain batch-hard step, from
#: ``benchmarks/results/quality_budget.json`` (2-core reference machine, 44 ms plain): a
#: neighbour-sampler row pays one refresh (~7 s) every 200 steps (the middle period); a
#: 4x-batch row per plain step's worth of images; pytorch-metric-learning's memory rows
#: 1.7x (batch-hard) to 3.1x (multi-similarity).
KIND_COST = {"plain": 1.0, "hard_class": 1.2, "memory": 1.35, "large_batch": 1.5}
KIND_COST["neighbour"] = 2.0
PEER_MEMORY_COST = 3.1


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (saved in the JSON).

    ``strategies`` None picks the rows by ``headline`` from the saved search (or every
    row when ``headline`` is None too). ``checkpoints`` evaluations are spread over the
    run; ``subset_classes`` validation classes are used at the intermediate checkpoints
    (all of them at the last one) and ``final_classes`` test classes (None: all) by the
    final evaluation; ``train_classes`` limits the Omniglot
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


_TUNE = TuneConfig(steps=TUNE_STEPS, p=32, k=4, checkpoints=2)
#: The default run: the headline rows of the saved search, :data:`SEEDS`.
DEFAULT_CONFIG = Config(
    name="default",
    strategies=None,
    seeds=SEEDS,
    steps=DEFAULT_STEPS,
    p=32,
    k=4,
    checkpoints=5,
    subset_classes=100,
    final_classes=None,
    train_classes=None,
    tune=_TUNE,
    headline=DEFAULT_HEADLINE,
)
#: ``--full``: every row, :data:`SEEDS`, :data:`FULL_STEPS` steps.
FULL_CONFIG = replace(DEFAULT_CONFIG, name="full", steps=FULL_STEPS, checkpoints=7, headline=None)
#: ``--quick``: every kind of row once, a handful of steps, few classes (CI smoke run).
QUICK_CONFIG = Config(
    name="quick",
    strategies=QUICK_ROWS,
    seeds=(0, 1),
    steps=8,
    p=8,
    k=4,
    checkpoints=3,
    subset_classes=10,
    final_classes=20,
    train_classes=100,
    tune=TuneConfig(steps=3, p=8, k=4, checkpoints=2, grid="tiny"),
    tune_rows=("batch_hard", "pml_batch_hard", "large_batch_batch_hard"),
    threads=1,
    quick=True,
)


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


def _best(tuning: dict[str, Any], family: str, n: int) -> list[str]:
    """The ``n`` rows of ``family`` (kinds :data:`DEFAULT_KINDS`) with the best validation
    score in the search, runnable here."""
    entries = tuning.get("strategies", {})
    ranked = sorted(
        (
            (e["chosen_val_map_at_r"], name)
            for name, e in entries.items()
            if e.get("family") == family
            and name in STRATEGIES
            and e.get("results")
            and STRATEGIES[name].training.kind in DEFAULT_KINDS
            and name not in OPT_IN_ROWS
        ),
        reverse=True,
    )
    runnable = [name for _, name in ranked if missing_requirement(STRATEGIES[name]) is None]
    return runnable[:n]


def select_rows(cfg: Config, tuning: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """The rows of a run, and the rows left out with the reason (a missing library).

    Explicit ``cfg.strategies`` first; else ``cfg.headline`` picks the best tripletkit and
    peer rows by validation score from the saved search (:data:`FALLBACK_HEADLINE` without
    one of this protocol); else every row. Reads no test class.
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
        if cfg.strategies is None and name in OPT_IN_ROWS:
            reason = OPT_IN_ROWS[name]
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
    """Seconds of a checkpoint evaluation (measured on a fresh network, after a warm-up, on
    the validation subset) and of the last checkpoint's and the test evaluation together
    (extrapolated from the sample counts: embedding grows like the rows, the metrics like
    their square; the test classes' size is estimated from the validation classes', so
    that no test sample is read)."""
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
    test_ratio = ratio * task.test_classes / max(1, task.eval_classes())
    last = embed_s * (ratio + test_ratio) + metric_s * (ratio**2 + test_ratio**2)
    return embed_s + metric_s, last


def _row_cost(strategy: Strategy) -> float:
    cost = KIND_COST.get(strategy.training.kind, 1.0)
    if strategy.training.kind == "memory" and strategy.family == "peer":
        cost = PEER_MEMORY_COST
    return cost


def plan_budget(
    cfg: Config, task: Task, rows: Sequence[tuple[Strategy, dict]], repeats: int = 10
) -> dict[str, Any]:
    """Time a few training steps and evaluations on throwaway networks and estimate the
    run. Touches no run's random state (every run reseeds) and no test class."""
    started = time.perf_counter()
    warmup_s = warm_up(rows, cfg)
    step_s = _time_steps(task, cfg, repeats)
    subset_s, final_s = _time_evaluation(task)
    per_row = {}
    n_ckpt = len(cfg.checkpoint_steps())
    fixed = (n_ckpt - 1) * subset_s + final_s
    for strategy, _ in rows:
        train_s = cfg.steps * step_s * _row_cost(strategy)
        calibration_s = (CALIBRATION_STEPS + 1) * step_s * _row_cost(strategy) / len(cfg.seeds)
        per_row[strategy.name] = train_s + fixed + calibration_s
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


def run_estimate(
    cfg: Config,
    names: Sequence[str],
    step_s: Mapping[str, float],
    default_step_s: float,
    subset_eval_s: float,
    last_eval_s: float,
) -> dict[str, Any]:
    """Seconds a run of ``cfg`` over the rows ``names`` should take, from step times
    measured elsewhere (e.g. a saved search): per row and seed ``cfg.steps`` steps at the
    row's ``step_s`` (else its base's, or ``default_step_s``, times the kind's relative cost),
    the intermediate checkpoints at ``subset_eval_s`` and the last checkpoint with the test
    evaluation at ``last_eval_s``; per row one calibration pass."""
    per_row: dict[str, float] = {}
    n_ckpt = len(cfg.checkpoint_steps())
    for name in names:
        strategy = STRATEGIES[name]
        if name in step_s:
            step = step_s[name]
        else:
            step = step_s.get(strategy.base or "", default_step_s) * _row_cost(strategy)
        calibration = CALIBRATION_STEPS + 1
        if strategy.training.kind == "memory":
            calibration += -(-strategy.training.memory_size // cfg.batch_size)
        per_run = cfg.steps * step + (n_ckpt - 1) * subset_eval_s + last_eval_s
        per_row[name] = len(cfg.seeds) * per_run + calibration * step
    return {"per_row_s": per_row, "total_s": sum(per_row.values())}


# --------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------


def _entry(strategy: Strategy, setting: dict, source: str, tuning: dict | None) -> dict:
    found = sensitivity(tuning or {}, [strategy.name])
    search = found.get(strategy.name) or found.get(strategy.base or "", {})
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
    v = run["validation"]
    cap = f"; capped at step {run['steps']} of {run['planned_steps']}" if run["capped"] else ""
    return (
        f"[{done}/{total}] {name} seed {run['seed']}: validation MAP@R "
        f"{v['mean_average_precision_at_r']:.3f}  R-prec {v['r_precision']:.3f}  "
        f"P@1 {v['precision_at_1']:.3f}  (train {run['train_s']:.1f} s, "
        f"wall {run['wall_s']:.1f} s{cap})"
    )


def models_path(json_path: Path) -> Path:
    """Where the trained networks of a run wait for the final evaluation (and ``--resume``)."""
    return json_path.with_name(json_path.stem + "_models.pt")


def _reusable(
    saved: dict[str, Any] | None, cfg: Config, models: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The rows of an earlier run's results that ``--resume`` may keep: same protocol
    version, steps, batch, checkpoints and seeds, and their networks saved in ``models``
    (row -> seed -> state)."""
    if not saved:
        return {}
    if saved.get("protocol", {}).get("version") != PROTOCOL_VERSION:
        print("--resume: the saved results follow another protocol version; training afresh")
        return {}
    old = saved.get("config", {})
    same = all(old.get(k) == v for k, v in asdict(cfg).items() if k in ("steps", "p", "k"))
    same = same and old.get("checkpoints") == cfg.checkpoints
    if not same:
        return {}
    stamp = saved.get("machine", {}).get("timestamp")
    keep = {}
    for name, entry in saved.get("strategies", {}).items():
        seeds = [r["seed"] for r in entry.get("runs", [])]
        stored = (models or {}).get(name, {})
        if seeds == list(cfg.seeds) and all(seed in stored for seed in seeds):
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
    models: dict[str, dict[int, Any]] | None = None,
) -> dict[str, Any]:
    """Calibrate, then train every row with every seed of ``cfg`` (progress bar over all
    steps), on the training part with validation checkpoints; never reads a test class.

    ``earlier`` rows (see :func:`_reusable`) trained with the same setting are kept instead
    of trained again; ``on_row(entries)`` is called after each row (to save progress);
    ``models`` receives each run's network (row -> seed -> state) for
    :func:`final_evaluation`.

    Returns:
        Per row name: description, ``setting`` and its source, the ``search`` results,
        ``calibration`` (:func:`benchmarks.training.calibrate`), ``runs`` (one per seed,
        see :func:`benchmarks.training.train_run`) and ``aggregate`` (see
        :func:`benchmarks.report.aggregate_runs`; test metrics added by
        :func:`final_evaluation`).
    """
    earlier = earlier or {}
    models = {} if models is None else models
    todo = [r for r in rows if earlier.get(r[0].name, {}).get("setting") != r[1]]
    total = len(todo) * len(cfg.seeds)
    entries: dict[str, Any] = {}
    done = 0
    repeats = 2 if cfg.quick else CALIBRATION_STEPS
    with progress(total=total * cfg.steps, desc="quality", unit="step") as bar:
        for strategy, setting, source in rows:
            if (strategy, setting, source) not in todo:
                entries[strategy.name] = earlier[strategy.name]
                bar.write(
                    f"{strategy.name}: kept from {entries[strategy.name]['from_earlier_run']}"
                )
                continue
            entry = _entry(strategy, setting, source, tuning)
            bar.set_postfix_str(f"{strategy.name} calibration")
            entry["calibration"] = calibrate(strategy, setting, task, plan, repeats)
            entry["calibration"]["load_average"] = load_average()
            models[strategy.name] = {}
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{strategy.name} seed {seed}")
                keep: dict[str, Any] = {}
                run = train_run(strategy, setting, seed, task, plan, bar.update, keep)
                models[strategy.name][seed] = keep["state"]
                entry["runs"].append(run)
                done += 1
                bar.write(_run_line(done, total, strategy.name, run))
            entry["aggregate"] = aggregate(entry["runs"])
            entries[strategy.name] = entry
            if on_row is not None:
                on_row(entries)
    return entries


def final_evaluation(
    entries: dict[str, Any],
    models: dict[str, dict[int, Any]],
    task: Task,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The one reading of the test classes: every kept network evaluated on them
    (:func:`benchmarks.training.evaluate_test`), each run's ``final`` filled and each row's
    ``aggregate`` computed again. Call it after every choice is made.

    Returns:
        ``classes``, ``samples`` and ``eval_s`` of the evaluation.
    """
    t0 = time.perf_counter()
    x, y = task.test()
    for name, entry in entries.items():
        for one in entry["runs"]:
            state = models[name][one["seed"]]
            one["final"] = evaluate_test(state, one["setting"], task.input_shape, x, y)
        entry["aggregate"] = aggregate(entry["runs"])
    seconds = time.perf_counter() - t0
    log(
        f"Final evaluation: {len(entries)} rows on {task.test_classes} test classes "
        f"({len(y)} images) in {seconds:.1f} s."
    )
    return {"classes": task.test_classes, "samples": len(y), "eval_s": seconds}


# --------------------------------------------------------------------------------------
# Choices (validation only) and the statistics
# --------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"1 {noun}" if n == 1 else f"the {n} {noun}s"


def _step_s(entry: dict[str, Any]) -> float | None:
    cal = entry.get("calibration")
    return None if not cal else float(cal["median_s"])


def _val_score(entry: dict[str, Any]) -> float:
    return float(entry["aggregate"]["validation"][MAP]["mean"])


def _paired(entries: dict, a: str, b: str, values: Callable[[dict], float]) -> dict[str, Any]:
    """Paired t-test of rows ``a`` minus ``b`` over their common seeds."""
    ra = {r["seed"]: r for r in entries[a]["runs"]}
    rb = {r["seed"]: r for r in entries[b]["runs"]}
    seeds = [s for s in ra if s in rb]
    test = paired_t_test([values(ra[s]) for s in seeds], [values(rb[s]) for s in seeds])
    return {**test, "seeds": seeds}


def compare_at_equal_time(results: dict[str, Any]) -> dict[str, Any] | None:
    """The best tripletkit row against the best peer row, both chosen by their mean MAP@R
    on every validation class at the last step, at equal training time.

    Time is calibrated: a row's time after ``s`` steps is ``s x`` its median calibrated
    step time (:func:`benchmarks.training.calibrate`). The two rows meet at the shorter of
    their planned times; each seed's validation curve (MAP@R on the checkpoint classes
    against steps) is interpolated there, and the difference is tested by a paired t-test
    over seeds (the test metrics of both rows are added by :func:`comparisons`). Returns
    None without a row of each family.
    """
    entries = results["strategies"]
    fams = {
        f: [n for n, e in entries.items() if e["family"] == f and _step_s(e) is not None]
        for f in ("tripletkit", "peer")
    }
    if not fams["tripletkit"] or not fams["peer"]:
        return None
    a = max(fams["tripletkit"], key=lambda n: _val_score(entries[n]))
    b = max(fams["peer"], key=lambda n: _val_score(entries[n]))

    def planned_s(name: str) -> float:
        run = entries[name]["runs"][0]
        return float(run["planned_steps"]) * float(_step_s(entries[name]))  # type: ignore[arg-type]

    t = min(planned_s(a), planned_s(b))

    def at_time(name: str) -> Callable[[dict], float]:
        step = t / float(_step_s(entries[name]))  # type: ignore[arg-type]
        return lambda run: float(np.interp(step, run["curve"]["step"], run["curve"][MAP]))

    def side(name: str) -> dict[str, Any]:
        entry = entries[name]
        return {
            "name": name,
            "at_time": t_interval([at_time(name)(r) for r in entry["runs"]]),
            "validation": entry["aggregate"]["validation"][MAP],
            "step_s": _step_s(entry),
            "train_s": entry["aggregate"]["train_s"]["mean"],
        }

    ra = {r["seed"]: r for r in entries[a]["runs"]}
    rb = {r["seed"]: r for r in entries[b]["runs"]}
    seeds = [s for s in ra if s in rb]
    diff = paired_t_test([at_time(a)(ra[s]) for s in seeds], [at_time(b)(rb[s]) for s in seeds])
    n = diff["n"]
    return {
        "time_s": t,
        "classes": results["config"]["subset_classes"],
        "tripletkit": side(a),
        "peer": side(b),
        "difference": {**diff, "se": diff["std"] / math.sqrt(n) if n > 1 else 0.0},
        "separated": None if diff["p"] is None else diff["p"] < 0.05,
        "how": "best row of each family by mean validation MAP@R (every validation class, "
        "last step); time = median calibrated step time x steps; MAP@R on the validation "
        "checkpoint classes interpolated per seed at the shorter planned time; paired t-test "
        "over seeds (95%, uncorrected: this is a validation figure; the tested claims are "
        "in comparisons)",
    }


def _comparison_pairs(entries: dict[str, Any], best: tuple[str, str] | None) -> list[tuple]:
    """The comparisons a run prints: the best pair by validation, each tripletkit row and
    its peer counterpart, each add-on row and its base (those that ran)."""
    pairs: list[tuple[str, str, str]] = []
    if best is not None:
        pairs.append((*best, "best tripletkit row vs best peer row (chosen on validation)"))
    for a, b in COUNTERPARTS:
        if a in entries and b in entries and (a, b) != best:
            pairs.append((a, b, "tripletkit row vs its peer counterpart"))
    for name, entry in entries.items():
        base = entry.get("base")
        if base and base in entries:
            pairs.append((name, base, "add-on row vs its base row"))
    return pairs


def comparisons(results: dict[str, Any]) -> dict[str, Any]:
    """Every comparison of the run, on the test metrics (final MAP@R on the evaluation
    classes), paired over seeds, Holm-corrected as one family at 5%.

    The pairs are fixed before the test classes are read (:func:`_comparison_pairs`: the
    best pair is chosen on validation). Each holds the paired test (mean difference, its
    95% t-interval, ``t``, ``p``), Holm's adjusted ``p_holm`` and ``reject``, and a
    ``verdict`` that says only what the numbers support at that level.
    """
    entries = results["strategies"]
    cmp = results.get("comparison")
    best = (cmp["tripletkit"]["name"], cmp["peer"]["name"]) if cmp else None
    out = []
    for a, b, what in _comparison_pairs(entries, best):
        test = _paired(entries, a, b, lambda run: float(run["final"][MAP]))
        out.append({"a": a, "b": b, "what": what, **test})
    for item, adj in zip(out, holm([c["p"] for c in out]), strict=True):
        item.update(adj)
        item["verdict"] = _verdict(item)
    return {
        "metric": "test MAP@R (all evaluation classes, read once after every choice)",
        "test": "paired t-test over seeds (same seed: same initialisation and batches), "
        "two-sided; 95% t-interval of the mean difference",
        "correction": f"Holm over {_count(sum(c['p'] is not None for c in out), 'comparison')} "
        "with a p-value, family-wise level 5%",
        "items": out,
    }


def _verdict(item: dict[str, Any]) -> str:
    if item["p"] is None:
        return "one seed: no test"
    if item["reject"]:
        word = "better" if item["mean"] > 0 else "worse"
        return f"{item['a']} {word} than {item['b']} (Holm-adjusted p {item['p_holm']:.3g} < 0.05)"
    return (
        f"no difference shown (Holm-adjusted p {item['p_holm']:.3g}): the data do not separate them"
    )


def ranking_stability(results: dict[str, Any], last: int = 3) -> dict[str, Any]:
    """The ranking of the rows (mean MAP@R on the validation checkpoint classes) at each
    of the last ``last`` checkpoints, rows stopped by a time cap excluded.

    ``flips`` lists the pairs whose order differs between the last two checkpoints, each
    with its gap at the last one, whether that gap is *separated* (the 95% t-interval of
    the paired difference over seeds excludes 0) and whether the pair was separated the
    other way round at the checkpoint before (``reversed``). Two readings, fixed before
    any run: ``strict`` (the criterion, :data:`RANKING_CRITERION`): no flip is separated;
    ``lenient``: no flip is reversed. ``stable`` is the criterion's reading.
    """
    entries = {
        n: e
        for n, e in results["strategies"].items()
        if not e["aggregate"].get("capped") and e["runs"]
    }
    if len(entries) < 2:
        return {"rankings": [], "flips": [], "stable": None, "strict": None, "lenient": None}
    n_points = min(len(e["aggregate"]["curves"][MAP]["mean"]) for e in entries.values())
    idx = list(range(max(0, n_points - last), n_points))
    first = next(iter(entries.values()))["aggregate"]["curves"]
    rankings = []
    for i in idx:
        order = sorted(entries, key=lambda n: -entries[n]["aggregate"]["curves"][MAP]["mean"][i])
        rankings.append({"images": first.get("images", first["step"])[i], "order": order})
    flips = _flips(entries, rankings, idx)
    strict = not any(f["separated"] for f in flips)
    lenient = not any(f["reversed"] for f in flips)
    return {
        "rankings": rankings,
        "flips": flips,
        "strict": strict,
        "lenient": lenient,
        "criterion": RANKING_CRITERION,
        "stable": strict if RANKING_CRITERION == "strict" else lenient,
        "how": "rows ranked by mean MAP@R on the validation checkpoint classes; a flip is a "
        "pair whose order differs between the last two checkpoints; separated: the 95% "
        "t-interval of its paired difference over seeds at the last checkpoint excludes 0; "
        "reversed: also separated the other way at the checkpoint before; strict: no flip "
        "is separated (the criterion); lenient: no flip is reversed (0.2's reading after "
        "its full run)",
    }


def _gap(entries: dict, a: str, b: str, i: int) -> tuple[float, bool]:
    """Mean MAP@R of ``a`` minus ``b`` at checkpoint ``i`` (validation curves, paired over
    seeds), and whether its 95% t-interval excludes 0 (never with one seed)."""
    n = min(len(entries[a]["runs"]), len(entries[b]["runs"]))
    if n < 2:
        sa = entries[a]["aggregate"]["curves"][MAP]["mean"][i]
        sb = entries[b]["aggregate"]["curves"][MAP]["mean"][i]
        return sa - sb, False

    def at(run: dict) -> float:
        curve = run["curve"][MAP]
        n_points = min(len(r["curve"][MAP]) for r in (*entries[a]["runs"], *entries[b]["runs"]))
        return float((curve[: n_points - 1] + curve[-1:])[i])

    test = _paired(entries, a, b, at)
    if test["half_width"] is None:
        return test["mean"], False
    return test["mean"], abs(test["mean"]) > test["half_width"]


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
        names = [n for n in STRATEGIES if n not in OPT_IN_ROWS]
    return [n for n in names if missing_requirement(STRATEGIES[n]) is None or STRATEGIES[n].base]


def tune(cfg: Config, dataset: Dataset, path: Path, names: Sequence[str]) -> dict[str, Any]:
    """Run (or resume) the search of ``names`` on ``dataset`` into ``path`` (the tuning
    task: training part and validation part; no test class exists there)."""
    task = dataset.task("tune")
    rows = [s for s in tuning_plan(names) if missing_requirement(s) is None]
    tcfg = cfg.tune
    plan = RunPlan(steps=tcfg.steps, p=tcfg.p, k=tcfg.k, checkpoints=tcfg.checkpoints)
    step_s = _time_steps(task, replace(cfg, p=tcfg.p, k=tcfg.k), 1 if cfg.quick else 10)
    eval_s = _time_evaluation(task)[0]
    n_configs = sum(
        len(s.settings(tcfg.grid)) if s.tuned else len(s.settings_from({}, tcfg.grid)) for s in rows
    )
    estimate = sum(
        ((len(s.settings(tcfg.grid)) if s.tuned else len(s.settings_from({}, tcfg.grid))) + 1)
        * (tcfg.steps * step_s * _row_cost(s) + tcfg.checkpoints * eval_s)
        for s in rows
    )
    print(
        f"Search: {len(rows)} rows, {n_configs} configurations (+ at most one extension per "
        f"edge) x {tcfg.steps} steps of {tcfg.p}x{tcfg.k} (seed {tcfg.seed}) on "
        f"{task.train_classes} training-part classes, validation MAP@R on "
        f"{task.eval_classes()} validation classes -> {path}\n"
        f"Planned: {1e3 * step_s:.0f} ms per step, {eval_s:.1f} s per validation "
        f"evaluation -> ~{estimate / 60:.0f} min with one extension per row, before any "
        f"resumed configuration is skipped (load average {load_average()}).",
        flush=True,
    )
    total = (n_configs + len(rows)) * tcfg.steps
    with progress(total=total, desc="search", unit="step") as bar:

        def train(strategy: Strategy, setting: dict, seed: int) -> dict[str, Any]:
            bar.set_postfix_str(f"{strategy.name} {describe_setting(setting)}")
            return train_run(strategy, setting, seed, task, plan, on_step=bar.update)

        state = run_tuning(
            [s.name for s in rows],
            dataset,
            tcfg,
            path,
            train,
            new_result,
            log=bar.write,
            resumed=lambda done: bar.update(done * tcfg.steps),
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
        tuning, why = usable_tuning(load_tuning(tuning_path))
        if why:
            print(f"Note: {tuning_path}: {why}.", flush=True)
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
    weights = models_path(json_path)
    models: dict[str, dict[int, Any]] = {}
    if resume and weights.is_file():
        models = torch.load(weights, weights_only=True)
    saved = load_json(json_path) if resume and json_path.is_file() else None
    earlier = _reusable(saved, cfg, models)
    for name in redo:
        earlier.pop(name, None)
    models = {name: models[name] for name in earlier}

    def save_partial(entries: dict[str, Any]) -> None:
        save_json(json_path, {**results, "strategies": entries, "partial": True})
        torch.save(models, weights)

    entries = run_rows(rows, cfg, task, plan, tuning, earlier, save_partial, models)
    results["strategies"] = entries
    # Every choice, on validation numbers only; then the one reading of the test classes.
    results["comparison"] = compare_at_equal_time(results)
    results["ranking"] = ranking_stability(results)
    results["test_evaluation"] = final_evaluation(entries, models, task)
    results["comparisons"] = comparisons(results)
    _add_test_side(results)
    searched = [n for n in (tuning or {}).get("strategies", {}) if n in STRATEGIES]
    results["sensitivity"] = sensitivity(tuning, [*names, *searched]) if tuning else {}
    results["machine"]["load_average_end"] = load_average()
    pngs = plot_results(results, stem)
    results["wall_s"] = time.perf_counter() - started
    results["outputs"] = {
        "json": str(json_path),
        "png": [str(p) for p in pngs],
        "models": str(weights),
    }
    save_json(json_path, results)
    torch.save(models, weights)
    _print_summary(results, json_path, pngs)
    return results


def _add_test_side(results: dict[str, Any]) -> None:
    """The equal-time comparison's rows get their test metrics (reported, chosen before)."""
    cmp = results.get("comparison")
    if not cmp:
        return
    for side in ("tripletkit", "peer"):
        entry = results["strategies"][cmp[side]["name"]]
        cmp[side]["final"] = entry["aggregate"]["final"][MAP]


def _protocol(dataset: Dataset, tuning: dict | None, path: Path) -> dict[str, Any]:
    return {
        "version": PROTOCOL_VERSION,
        "dataset": dataset.source,
        "split": dataset.split.as_json(),
        "search": (tuning or {}).get("protocol", {}).get("search"),
        "search_file": str(path) if tuning else None,
        "search_machine": (tuning or {}).get("machine"),
        "final_training": "the chosen setting trained on the training part only; checkpoint "
        "curves and every choice on the validation classes; the evaluation (test) classes "
        "read once, after every row has trained and every choice is made",
        "time": "calibrated: each row's median step time (calibration pass before the row, "
        "same process) x steps; measured times recorded too",
        "intervals": INTERVAL_LABEL,
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
        "interval": INTERVAL_LABEL
        + (
            f" (t quantile {t_quantile(0.975, len(cfg.seeds) - 1):.3f})"
            if len(cfg.seeds) > 1
            else ""
        ),
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
        f"{cfg.steps} steps of {cfg.p}x{cfg.k}; training on {task.train_classes} classes "
        f"(training part), checkpoints at {cfg.checkpoint_steps()} on "
        f"{task.eval_classes(False)} validation classes (all {task.eval_classes()} at the "
        f"last); {task.test_classes} test classes read once at the end; settings from "
        f"{tuning_path or 'the declared defaults (no saved search)'}."
    )
    for strategy, setting, source in rows:
        print(f"  {strategy.name:<26} {describe_setting(setting):<40} ({source})")
    for name, reason in skipped.items():
        print(f"  {name:<26} skipped: {reason}")
    print(
        f"Planned (warm-up {budget['warmup_s']:.1f} s): {1e3 * budget['step_s']:.0f} ms per "
        f"plain step, {budget['subset_eval_s']:.2f} s per checkpoint, "
        f"{budget['final_eval_s']:.1f} s for the last checkpoint and the test evaluation -> ~"
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
    edges = []
    for name, entry in tuning["strategies"].items():
        record = entry.get("extension") or {}
        for key, edge in record.get("edges", {}).items():
            to = "no step (bound)" if edge["to"] is None else f"-> {edge['to']:g}"
            still = " (still at the edge)" if key in record.get("still_at_edge", []) else ""
            edges.append(f"- {name}: {key} {edge['from']:g} at the {edge['edge']} edge {to}{still}")
    print("\nEdges (one extension step each):\n" + ("\n".join(edges) or "none"))
    print(f"\nWrote {path}")


def _print_summary(results: dict[str, Any], json_path: Path, pngs: list[Path]) -> None:
    final = results["config"]["final_classes"] or "all"
    print(
        f"\n## Quality: validation MAP@R (last step, every validation class) and test metrics "
        f"on {final} unseen evaluation classes\n\n± = {INTERVAL_LABEL}; step ms = median "
        "calibrated step time [quartiles]; train s = mean ± std.\n"
    )
    print(markdown_table(results))
    if results["sensitivity"]:
        print("\n## Sensitivity: validation MAP@R of every searched setting\n")
        print(sensitivity_table(results["sensitivity"]))
    for name, reason in results["skipped"].items():
        print(f"- {name} skipped: {reason}")
    stability = stability_text(results["ranking"])
    if stability:
        print("\n" + stability)
    print("\n" + comparison_text(results["comparison"]))
    print("\n" + comparisons_text(results["comparisons"]))
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
