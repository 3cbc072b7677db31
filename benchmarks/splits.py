"""The class splits of the quality benchmark (step 1 of :mod:`benchmarks.protocol`).

The training classes are cut into a training part and a validation part, fixed and recorded;
the evaluation classes are never trained on. Omniglot (:func:`omniglot_split`): whole
background alphabets, drawn in a seeded order until they hold at least 20% of the background
characters. A user's file (:func:`user_split`): the sorted class ids, shuffled with a fixed
seed, cut 60% training / 20% validation / 20% evaluation.

Both :mod:`benchmarks.data` (which builds a :class:`~benchmarks.data.Dataset` with its split)
and :mod:`benchmarks.protocol` (which records it) use this module; it imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MIN_CLASSES_PER_SPLIT",
    "MIN_SAMPLES_PER_CLASS",
    "SPLIT_SEED",
    "SUBSET_SEED",
    "USER_FRACTIONS",
    "VALIDATION_FRACTION",
    "ClassSplit",
    "omniglot_split",
    "user_split",
]

#: Seed of the class splits (validation alphabets; a user's 60/20/20 split).
SPLIT_SEED = 0
#: Seed of the fixed subset of evaluation classes used at the training checkpoints.
SUBSET_SEED = 1234
#: Share of the training classes held out for validation.
VALIDATION_FRACTION = 0.2
#: A user's file: share of the classes in each split (training, validation, evaluation).
USER_FRACTIONS = (0.6, 0.2, 0.2)
#: A user's file: fewest classes per split, fewest samples per class.
MIN_CLASSES_PER_SPLIT = 5
MIN_SAMPLES_PER_CLASS = 2


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
