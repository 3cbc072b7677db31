"""The protocol of the quality benchmark: class splits, the hyper-parameter search, the
saved choices.

Following Musgrave, Belongie & Lim ("A Metric Learning Reality Check", ECCV 2020), every row
gets the same search budget on a *validation split of the training classes*, every choice
is made on validation classes, and the evaluation (test) classes are read once, at the end
of a final run, and only reported:

1. **Split** (:class:`ClassSplit`; :mod:`benchmarks.splits`, re-exported here). The
   training classes are cut into a training part and a validation part, fixed and recorded.
   Omniglot (:func:`omniglot_split`): whole background alphabets, drawn in a seeded order
   until they hold at least 20% of the background characters, form the validation part, so
   that validation (like evaluation) asks for characters of alphabets never trained on. A
   user's file (:func:`user_split`): the sorted class ids, shuffled with a fixed seed, are
   cut 60% training / 20% validation / 20% evaluation.
2. **Search** (:func:`run_tuning`, ``python -m benchmarks.quality --tune``). Every setting a
   row declares (:meth:`benchmarks.strategies.Strategy.settings`: at most
   :data:`~benchmarks.strategies.ROW_BUDGET` per row, three values per numeric
   hyper-parameter) is trained on the training part for the same number of steps with the
   same seed, and scored by MAP@R on all validation classes at the last step; the best is
   the row's choice (ties: the first declared). A choice at an edge of its grid triggers one
   extension step (:func:`benchmarks.strategies.extension`), recorded in the row's
   ``extension``. Add-on rows (memory, 4x batch, hard-class sampler) are searched after
   their base row, from its choice, over the learning rates
   (:meth:`~benchmarks.strategies.Strategy.settings_from`): they are validated like the
   others, and their validation score competes for the default run's rows. One seed per
   configuration: the search ranks settings, the final runs measure. Results are saved
   after every configuration (the search resumes where it stopped).
3. **Final runs** (:mod:`benchmarks.quality`): the chosen setting is trained on the
   *training part only*, with checkpoint curves on the validation classes; every choice
   made after training (the rows compared at equal time, the ranking-stability check) reads
   those curves. Test classes are evaluated once, after every row has trained and every
   choice is made. Training on the training part only (rather than retraining on training
   and validation together, as Musgrave et al. do after cross-validation) costs 20% of the
   training classes, and buys validation curves from the very runs that are reported,
   without a second set of runs.

**Search budget** (:func:`search_estimate` with the step times that
:mod:`benchmarks.budget` measured on the 2-core reference machine,
``benchmarks/results/quality_budget.json``): 222 configurations (15 searched rows: 13 x
:data:`~benchmarks.strategies.ROW_BUDGET` = 12, 6 and 9; 11 add-on rows x 3 and the 2
neighbour-sampler rows x 9) plus at most one extension per row, :data:`SEARCH_STEPS` = 500
steps each and 2 validation evaluations: about 118 minutes in the worst case (130 in an
earlier measurement), under the
150-minute target. The search ranks settings after 500 steps, before the final runs' 750:
settings that learn fast early are favoured, a stated limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import load_json, save_json
from .splits import (
    MIN_CLASSES_PER_SPLIT,
    MIN_SAMPLES_PER_CLASS,
    SPLIT_SEED,
    SUBSET_SEED,
    ClassSplit,
    omniglot_split,
    user_split,
)
from .strategies import STRATEGIES, Strategy, describe_setting, extension, setting_key

if TYPE_CHECKING:
    from .data import Dataset

__all__ = [
    "MIN_CLASSES_PER_SPLIT",
    "MIN_SAMPLES_PER_CLASS",
    "PROTOCOL_VERSION",
    "SEARCH_STEPS",
    "SPLIT_SEED",
    "SUBSET_SEED",
    "TUNE_SEED",
    "ClassSplit",
    "TuneConfig",
    "choice_for",
    "load_tuning",
    "omniglot_split",
    "run_tuning",
    "search_estimate",
    "sensitivity",
    "tuning_plan",
    "usable_tuning",
    "user_split",
]

#: Seed of every search run (initialisation, batches, random miners).
TUNE_SEED = 1000
#: Version of the protocol; a saved search or run of another version is not reused.
#: 1: 0.2 (final runs on training + validation, checkpoints on test classes); 2: selection
#: on validation only (this module).
PROTOCOL_VERSION = 2
#: Steps of every configuration of the search.
SEARCH_STEPS = 500
#: The search's time target on the 2-core machine, seconds.
SEARCH_BUDGET_S = 150 * 60


# --------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneConfig:
    """The search budget: every configuration trains ``steps`` steps of ``p x k`` with seed
    ``seed`` and is evaluated on the validation classes at ``checkpoints`` points; ``grid``
    ``"tiny"`` keeps two settings per row (smoke runs)."""

    steps: int
    p: int
    k: int
    checkpoints: int
    seed: int = TUNE_SEED
    grid: str = "full"


def tuning_plan(names: Sequence[str]) -> list[Strategy]:
    """The rows the search trains, in order: the searched rows of ``names`` and the bases of
    their add-on rows first, then the add-on rows (each searched from its base's choice)."""
    bases: list[Strategy] = []
    addons: list[Strategy] = []
    for name in names:
        strategy = STRATEGIES[name]
        if strategy.base:
            base = STRATEGIES[strategy.base]
            if base not in bases:
                bases.append(base)
            if strategy not in addons:
                addons.append(strategy)
        elif strategy not in bases:
            bases.append(strategy)
    return [*bases, *addons]


def _protocol_block(dataset: Dataset, cfg: TuneConfig) -> dict[str, Any]:
    return {
        "version": PROTOCOL_VERSION,
        "dataset": dataset.name,
        "split": dataset.split.as_json(),
        "search": asdict(cfg),
        "score": "MAP@R on all validation classes after the last step (one seed)",
        "edges": "a choice at an edge of its grid gets one extension step (recorded)",
    }


def _same_protocol(saved: dict[str, Any], block: dict[str, Any]) -> bool:
    old = saved.get("protocol", {})
    keys = ("version", "dataset", "search")
    return (
        all(old.get(k) == block[k] for k in keys)
        and old.get("split", {}).get("validation_classes") == block["split"]["validation_classes"]
    )


def _choose(entry: dict[str, Any]) -> None:
    """Set ``chosen`` to the best validation score (the first on ties)."""
    best = max(entry["results"], key=lambda r: r["val_map_at_r"])
    entry["chosen"] = best["setting"]
    entry["chosen_val_map_at_r"] = best["val_map_at_r"]


def _new_entry(strategy: Strategy, settings: list[dict], cfg: TuneConfig) -> dict[str, Any]:
    return {
        "family": strategy.family,
        "label": strategy.label,
        "base": strategy.base,
        "space": settings,
        "configurations": len(settings),
        "budget_steps": len(settings) * cfg.steps,
        "results": [],
    }


def _row_settings(
    strategy: Strategy, state: dict[str, Any], grid: str
) -> tuple[list[dict], list[dict]] | None:
    """The settings the search trains for ``strategy`` and the grid its edges are judged
    on (None: an add-on row whose base has no choice)."""
    if strategy.tuned:
        settings = strategy.settings(grid)
        return settings, strategy.grid() if grid == "full" else settings
    base = state["strategies"].get(strategy.base or "", {})
    if base.get("chosen") is None:
        return None
    settings = strategy.settings_from(base["chosen"], grid)
    return settings, settings


def run_tuning(
    names: Sequence[str],
    dataset: Dataset,
    cfg: TuneConfig,
    path: Path,
    train: Callable[[Strategy, dict, int], dict[str, Any]],
    new_result: Callable[..., dict[str, Any]],
    log: Callable[[str], None] = print,
    resumed: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Search every row of ``names`` (:func:`tuning_plan`), saving ``path`` after each
    configuration and skipping those already saved with the same protocol.

    Args:
        train: ``train(strategy, setting, seed) -> run`` (a run of
            :func:`benchmarks.training.train_run` on the tuning task: ``validation`` holds
            its scores on all validation classes at the last step).
        new_result: :func:`benchmarks.common.new_result` (the machine is taken now).
        resumed: called once with the number of configurations of ``names`` found saved
            (a progress bar starts there).

    Returns:
        The saved dict: ``protocol`` (version, dataset, split with the validation class ids,
        search budget), ``strategies`` (name -> ``space``, ``results`` (one per setting:
        ``setting``, ``key``, ``val_map_at_r``, ``val_curve``, ``train_s``, ``extension``
        for an extension step), ``chosen``, ``chosen_val_map_at_r``, ``configurations``,
        ``budget_steps``, ``base`` and ``from_base`` (add-on rows: the base's choice it
        started from), ``extension`` (``edges``: hyper-parameter -> ``from``, ``edge``,
        ``to``; ``still_at_edge``: those whose extended value won)).
    """
    block = _protocol_block(dataset, cfg)
    saved = load_tuning(path)
    if saved is not None and not _same_protocol(saved, block):
        log(f"{path}: saved search used another protocol; starting afresh")
        saved = None
    state = saved or new_result("quality_tuning", protocol=block, strategies={})
    state["protocol"] = block
    if resumed is not None:
        resumed(sum(len(state["strategies"].get(n, {}).get("results", [])) for n in names))

    def run_one(strategy: Strategy, entry: dict, setting: dict, note: str = "") -> None:
        run = train(strategy, setting, cfg.seed)
        result = {
            "setting": setting,
            "key": setting_key(setting),
            "val_map_at_r": run["validation"]["mean_average_precision_at_r"],
            "val_curve": {
                k: run["curve"][k] for k in ("step", "train_s", "mean_average_precision_at_r")
            },
            "train_s": run["train_s"],
        }
        if note:
            result["extension"] = note
        entry["results"].append(result)
        _choose(entry)
        log(
            f"  {strategy.name:<26} {describe_setting(setting):<44} "
            f"val MAP@R {result['val_map_at_r']:.3f}{' (' + note + ')' if note else ''}"
        )
        save_json(path, state)

    for strategy in tuning_plan(names):
        plan = _row_settings(strategy, state, cfg.grid)
        if plan is None:
            log(f"  {strategy.name}: its base {strategy.base} has no choice; not searched")
            continue
        settings, grid = plan
        entry = state["strategies"].get(strategy.name)
        from_base = None if strategy.tuned else settings[0] | {"lr": None}
        if entry is None or entry.get("from_base") != from_base:
            entry = _new_entry(strategy, settings, cfg)
            entry["from_base"] = from_base
            state["strategies"][strategy.name] = entry
        for setting in settings:
            if setting_key(setting) not in {r["key"] for r in entry["results"]}:
                run_one(strategy, entry, setting)
        _extend(strategy, entry, grid, run_one)
    return state


def _extend(
    strategy: Strategy, entry: dict[str, Any], grid: list[dict], run_one: Callable[..., None]
) -> None:
    """One extension step for the row's hyper-parameters at an edge of ``grid`` (skipped
    when already recorded), then the choice again; records what stays at an edge."""
    if "extension" not in entry:
        edges = extension(grid, entry["chosen"])
        entry["extension"] = {"from_chosen": dict(entry["chosen"]), "edges": edges}
    record = entry["extension"]
    start = record["from_chosen"]
    done = {r["key"] for r in entry["results"]}
    for key, edge in record["edges"].items():
        if edge["to"] is None:
            continue
        setting = {**start, key: edge["to"]}
        if setting_key(setting) not in done:
            run_one(strategy, entry, setting, note=f"extension of {key}")
    extended = grid + [r["setting"] for r in entry["results"] if "extension" in r]
    record["still_at_edge"] = sorted(
        k for k, e in extension(extended, entry["chosen"]).items() if k in record["edges"]
    )


def search_estimate(
    rows: Sequence[Strategy],
    steps: int,
    step_s: Mapping[str, float],
    default_step_s: float,
    eval_s: float,
    checkpoints: int,
    extensions: float = 1.0,
) -> dict[str, Any]:
    """Seconds the search of ``rows`` should take: per configuration ``steps`` steps at the
    row's ``step_s`` (default ``default_step_s``) and ``checkpoints`` validation evaluations
    of ``eval_s``, plus ``extensions`` extension steps per row on average."""
    per_row = {}
    configurations = 0
    for strategy in rows:
        n = len(strategy.settings()) if strategy.tuned else len(strategy.settings_from({}))
        configurations += n
        one = steps * step_s.get(strategy.name, default_step_s) + checkpoints * eval_s
        per_row[strategy.name] = (n + extensions) * one
    total = sum(per_row.values())
    return {
        "configurations": configurations,
        "per_row_s": per_row,
        "total_s": total,
        "fits": total <= SEARCH_BUDGET_S,
    }


def load_tuning(path: Path | None) -> dict[str, Any] | None:
    """The saved search of ``path``, or None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    data: dict[str, Any] = load_json(path)
    return data


def usable_tuning(saved: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """``saved`` when its protocol is :data:`PROTOCOL_VERSION`, else None and why (0.2's
    search, version 1, chose on other grids and trained final runs on the validation
    classes: its choices are not this protocol's)."""
    if saved is None:
        return None, None
    version = saved.get("protocol", {}).get("version", 1)
    if version != PROTOCOL_VERSION:
        return None, (
            f"the saved search follows protocol version {version}, not {PROTOCOL_VERSION} "
            "(0.2's grids and final runs); its choices are not used: every row takes its "
            "declared default setting until `python -m benchmarks.quality --tune` is rerun"
        )
    return saved, None


def choice_for(strategy: Strategy, tuning: dict[str, Any] | None) -> tuple[dict, str]:
    """The setting a final run of ``strategy`` uses, and where it comes from: its own
    search (an add-on row's search starts from its base's choice), its base row's choice
    when the add-on row was not searched, or (no saved search) its default setting."""
    entries = (tuning or {}).get("strategies", {})
    for name in (strategy.name, strategy.base):
        entry = entries.get(name or "")
        if entry and entry.get("chosen") is not None:
            n = sum("extension" not in r for r in entry["results"])
            full = n == entry["configurations"]
            complete = "" if full else f" ({n} of {entry['configurations']})"
            source = f"searched{complete}" if name == strategy.name else f"from {name}'s search"
            return dict(entry["chosen"]), source
    base = STRATEGIES[strategy.base or strategy.name]
    return base.default_setting(), "default (no saved search)"


def sensitivity(tuning: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Per searched row among ``names`` (or their bases): every setting with its validation
    MAP@R, the chosen one, and the spread (best minus worst)."""
    out: dict[str, Any] = {}
    for name in names:
        strategy = STRATEGIES[name]
        found = tuning.get("strategies", {})
        key = name if name in found else (strategy.base or name)
        entry = found.get(key)
        if not entry or key in out or not entry["results"]:
            continue
        scores = [r["val_map_at_r"] for r in entry["results"]]
        out[key] = {
            "family": entry["family"],
            "settings": [
                {"setting": r["setting"], "val_map_at_r": r["val_map_at_r"]}
                for r in entry["results"]
            ],
            "chosen": entry["chosen"],
            "chosen_val_map_at_r": entry["chosen_val_map_at_r"],
            "spread": max(scores) - min(scores),
            "configurations": entry["configurations"],
            "budget_steps": entry["budget_steps"],
            "extension": entry.get("extension"),
        }
    return out


def save_tuning(path: Path, state: dict[str, Any]) -> Path:
    """Write the search results (see :func:`run_tuning`)."""
    return save_json(path, state)
