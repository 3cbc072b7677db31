"""The protocol of the quality benchmark: class splits, the hyper-parameter search, the
saved choices.

Following Musgrave, Belongie & Lim ("A Metric Learning Reality Check", ECCV 2020), every row
gets the same search budget on a *validation split of the training classes*, and the
evaluation classes are used once, by the chosen setting:

1. **Split** (:class:`ClassSplit`). The training classes are cut into a training part and a
   validation part, fixed and recorded. Omniglot (:func:`omniglot_split`): whole background
   alphabets, drawn in a seeded order until they hold at least 20% of the background
   characters, form the validation part, so that validation (like evaluation) asks for
   characters of alphabets never trained on. A user's file (:func:`user_split`): the sorted
   class ids, shuffled with a fixed seed, are cut 60% training / 20% validation / 20%
   evaluation.
2. **Search** (:func:`run_tuning`, ``python -m benchmarks.quality --tune``). Every setting
   a row declares (:meth:`benchmarks.strategies.Strategy.settings`) is trained on the
   training part for the same number of steps with the same seed, and scored by MAP@R on
   the validation part at the last step; the best one is the row's choice (ties: the first
   declared). One seed per configuration: the search ranks settings, the final runs
   measure. Results are saved after every configuration (the search resumes where it
   stopped).
3. **Final runs** (:mod:`benchmarks.quality`): the chosen setting is trained on *all* the
   training classes (training part and validation part together, the simple variant of
   Musgrave et al.'s retraining after cross-validation) over several seeds, and evaluated
   on the evaluation classes. Rows without a search of their own (memory, large batch,
   hard-class sampler) use their base row's choice (:func:`choice_for`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import load_json, save_json
from .strategies import STRATEGIES, Strategy, describe_setting, setting_key

if TYPE_CHECKING:
    from .data import Dataset

__all__ = [
    "MIN_CLASSES_PER_SPLIT",
    "MIN_SAMPLES_PER_CLASS",
    "SPLIT_SEED",
    "SUBSET_SEED",
    "TUNE_SEED",
    "ClassSplit",
    "TuneConfig",
    "choice_for",
    "load_tuning",
    "omniglot_split",
    "run_tuning",
    "sensitivity",
    "tuning_plan",
    "user_split",
]

#: Seed of the class splits (validation alphabets; a user's 60/20/20 split).
SPLIT_SEED = 0
#: Seed of the fixed subset of evaluation classes used at the training checkpoints.
SUBSET_SEED = 1234
#: Seed of every search run (initialisation, batches, random miners).
TUNE_SEED = 1000
#: Share of the training classes held out for validation.
VALIDATION_FRACTION = 0.2
#: A user's file: share of the classes in each split (training, validation, evaluation).
USER_FRACTIONS = (0.6, 0.2, 0.2)
#: A user's file: fewest classes per split, fewest samples per class.
MIN_CLASSES_PER_SPLIT = 5
MIN_SAMPLES_PER_CLASS = 2


# --------------------------------------------------------------------------------------
# Class splits
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSplit:
    """Disjoint class ids: ``train`` (training part), ``validation`` (validation part,
    drawn from the training classes), ``evaluation`` (never trained on); ``how`` says how
    they were drawn, ``extra`` holds what else identifies them (validation alphabets)."""

    train: np.ndarray
    validation: np.ndarray
    evaluation: np.ndarray
    how: str
    extra: dict[str, Any]

    def __post_init__(self) -> None:
        parts = (self.train, self.validation, self.evaluation)
        every = np.concatenate(parts)
        if len(np.unique(every)) != len(every):
            raise ValueError("the class splits overlap")
        if any(len(p) == 0 for p in parts):
            raise ValueError("every class split needs at least one class")

    def as_json(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "train_part_classes": [int(c) for c in self.train],
            "validation_classes": [int(c) for c in self.validation],
            "evaluation_classes": [int(c) for c in self.evaluation],
            "counts": {
                "train_part": len(self.train),
                "validation": len(self.validation),
                "evaluation": len(self.evaluation),
            },
            **self.extra,
        }


def omniglot_split(
    alphabets: Sequence[str],
    characters: Sequence[str],
    evaluation: np.ndarray,
    fraction: float = VALIDATION_FRACTION,
    seed: int = SPLIT_SEED,
) -> ClassSplit:
    """Validation part: whole alphabets of the training (background) classes, in a seeded
    random order, until they hold at least ``fraction`` of the training classes (when one
    alphabet holds every class, as in tiny smoke runs: its first ``fraction`` of them).

    Args:
        alphabets: the alphabet of each training class (class id = position).
        characters: the character name of each training class (recorded).
        evaluation: the evaluation class ids.
    """
    names = np.asarray(alphabets)
    order = list(dict.fromkeys(names.tolist()))  # alphabets in class order
    rng = np.random.default_rng(seed)
    want = math.ceil(fraction * len(names))
    chosen: list[str] = []
    for i in rng.permutation(len(order)):
        if np.isin(names, chosen).sum() >= want:
            break
        chosen.append(order[i])
    is_val = np.isin(names, chosen)
    ids = np.arange(len(names))
    if is_val.all():  # tiny smoke runs: one alphabet holds every class; keep its first ones
        is_val = ids < want
    return ClassSplit(
        train=ids[~is_val],
        validation=ids[is_val],
        evaluation=np.asarray(evaluation),
        how=f"whole background alphabets in a random order (seed {seed}) until they hold "
        f">= {fraction:.0%} of the background characters; class id = background label",
        extra={
            "validation_alphabets": sorted(chosen),
            "validation_characters": [f"{names[c]}/{characters[c]}" for c in ids[is_val]],
        },
    )


def user_split(
    classes: np.ndarray, fractions: Sequence[float] = USER_FRACTIONS, seed: int = SPLIT_SEED
) -> ClassSplit:
    """The sorted class ids shuffled with ``seed`` and cut into training / validation /
    evaluation: ``floor(f * C)`` validation and evaluation classes, the rest training."""
    ids = np.sort(np.asarray(classes))
    order = np.random.default_rng(seed).permutation(ids)
    n_val = int(math.floor(fractions[1] * len(ids)))
    n_eval = int(math.floor(fractions[2] * len(ids)))
    return ClassSplit(
        train=np.sort(order[n_val + n_eval :]),
        validation=np.sort(order[:n_val]),
        evaluation=np.sort(order[n_val : n_val + n_eval]),
        how=f"sorted class ids shuffled (numpy default_rng({seed})), cut "
        f"{fractions[0]:.0%} training / {fractions[1]:.0%} validation / "
        f"{fractions[2]:.0%} evaluation",
        extra={},
    )


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


def tuning_plan(names: Sequence[str], grid: str = "full") -> list[tuple[Strategy, dict]]:
    """Every (row, setting) the search trains, rows without a search of their own replaced
    by their base row (each once)."""
    rows: list[Strategy] = []
    for name in names:
        strategy = STRATEGIES[name]
        base = STRATEGIES[strategy.base] if strategy.base else strategy
        if base not in rows:
            rows.append(base)
    return [(s, setting) for s in rows for setting in s.settings(grid)]


def _protocol_block(dataset: Dataset, cfg: TuneConfig) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "split": dataset.split.as_json(),
        "search": asdict(cfg),
        "score": "MAP@R on the validation classes after the last step (one seed)",
    }


def _same_protocol(saved: dict[str, Any], block: dict[str, Any]) -> bool:
    old = saved.get("protocol", {})
    keys = ("dataset", "search")
    return (
        all(old.get(k) == block[k] for k in keys)
        and old.get("split", {}).get("validation_classes") == block["split"]["validation_classes"]
    )


def _choose(entry: dict[str, Any]) -> None:
    """Set ``chosen`` to the best validation score (the first on ties)."""
    best = max(entry["results"], key=lambda r: r["val_map_at_r"])
    entry["chosen"] = best["setting"]
    entry["chosen_val_map_at_r"] = best["val_map_at_r"]


def _new_entry(strategy: Strategy, cfg: TuneConfig) -> dict[str, Any]:
    settings = strategy.settings(cfg.grid)
    return {
        "family": strategy.family,
        "label": strategy.label,
        "space": settings,
        "configurations": len(settings),
        "budget_steps": len(settings) * cfg.steps,
        "results": [],
    }


def run_tuning(
    names: Sequence[str],
    dataset: Dataset,
    cfg: TuneConfig,
    path: Path,
    train: Callable[[Strategy, dict, int], dict[str, Any]],
    new_result: Callable[..., dict[str, Any]],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Search every setting of the rows ``names`` (:func:`tuning_plan`), saving ``path``
    after each configuration and skipping those already saved with the same protocol.

    Args:
        train: ``train(strategy, setting, seed) -> run`` (a run of
            :func:`benchmarks.training.train_run` on the tuning task).
        new_result: :func:`benchmarks.common.new_result` (the machine is taken now).

    Returns:
        The saved dict: ``protocol`` (dataset, split with the validation class ids, search
        budget), ``strategies`` (name -> ``space``, ``results`` (one per setting:
        ``setting``, ``key``, ``val_map_at_r``, ``val_curve``, ``train_s``), ``chosen``,
        ``chosen_val_map_at_r``, ``configurations``, ``budget_steps``).
    """
    block = _protocol_block(dataset, cfg)
    saved = load_tuning(path)
    if saved is not None and not _same_protocol(saved, block):
        log(f"{path}: saved search used another protocol; starting afresh")
        saved = None
    state = saved or new_result("quality_tuning", protocol=block, strategies={})
    state["protocol"] = block
    for strategy, setting in tuning_plan(names, cfg.grid):
        entry = state["strategies"].setdefault(strategy.name, _new_entry(strategy, cfg))
        done = {r["key"] for r in entry["results"]}
        key = setting_key(setting)
        if key in done:
            continue
        run = train(strategy, setting, cfg.seed)
        entry["results"].append(
            {
                "setting": setting,
                "key": key,
                "val_map_at_r": run["final"]["mean_average_precision_at_r"],
                "val_curve": {
                    k: run["curve"][k] for k in ("step", "train_s", "mean_average_precision_at_r")
                },
                "train_s": run["train_s"],
            }
        )
        _choose(entry)
        log(
            f"  {strategy.name:<22} {describe_setting(setting):<40} "
            f"val MAP@R {entry['results'][-1]['val_map_at_r']:.3f}"
        )
        save_json(path, state)
    return state


def load_tuning(path: Path | None) -> dict[str, Any] | None:
    """The saved search of ``path``, or None when there is none."""
    if path is None or not Path(path).is_file():
        return None
    data: dict[str, Any] = load_json(path)
    return data


def choice_for(strategy: Strategy, tuning: dict[str, Any] | None) -> tuple[dict, str]:
    """The setting a final run of ``strategy`` uses, and where it comes from: its own
    search, its base row's search, or (no saved search) its default setting."""
    name = strategy.base or strategy.name
    entry = (tuning or {}).get("strategies", {}).get(name)
    if entry and entry.get("chosen") is not None:
        n = len(entry["results"])
        complete = "" if n == entry["configurations"] else f" ({n} of {entry['configurations']})"
        source = f"searched{complete}" if name == strategy.name else f"from {name}'s search"
        return dict(entry["chosen"]), source
    base = STRATEGIES[name]
    return base.default_setting(), "default (no saved search)"


def sensitivity(tuning: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Per searched row among ``names`` (or their bases): every setting with its validation
    MAP@R, the chosen one, and the spread (best minus worst)."""
    out: dict[str, Any] = {}
    for name in names:
        strategy = STRATEGIES[name]
        key = strategy.base or name
        entry = tuning.get("strategies", {}).get(key)
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
        }
    return out


def save_tuning(path: Path, state: dict[str, Any]) -> Path:
    """Write the search results (see :func:`run_tuning`)."""
    return save_json(path, state)
