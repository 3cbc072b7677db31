"""The drawing procedure every batch sampler shares: each class's indices are shuffled and
cut into groups of ``k``, and groups are dealt to batches so that no batch holds a class twice."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["SMALL_CLASSES"]


#: What :class:`PKBatchSampler` does with classes that have fewer than ``k`` samples.
SMALL_CLASSES = ("replace", "skip")


def _labels_to_numpy(labels: object) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 numpy array, refusing anything else clearly."""
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        array = labels.detach().cpu().numpy()
    elif isinstance(labels, (np.ndarray, Sequence)) and not isinstance(labels, (str, bytes)):
        array = np.asarray(labels)
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got an array of dtype {array.dtype}")
    else:
        raise TypeError(
            "labels must be a 1-D integer tensor, numpy array or sequence of ints, "
            f"got {type(labels).__name__}"
        )
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("labels is empty: there is nothing to sample")
    return array.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------------------
# The shared drawing procedure. Classes are numbered 0..C-1; class c owns the dataset
# indices shuffled[starts[c] : starts[c] + counts[c]] and ceil(counts[c] / k) cover groups.


class _Classes:
    """The usable classes of a label vector: class ``c`` (label ``values[c]``) owns the
    dataset indices ``order[starts[c] : starts[c] + counts[c]]`` and ``groups[c] =
    ceil(counts[c] / k)`` groups of ``k``."""

    def __init__(self, array: np.ndarray, k: int, small_classes: str) -> None:
        classes, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
        usable = counts >= k if small_classes == "skip" else counts >= 1
        self.all_values = classes  # every label value, usable or not
        self.usable = usable
        self.values = classes[usable]
        self.num_skipped = int(len(classes) - usable.sum())
        # index of each label value among the usable classes, -1 for skipped ones
        self.index = np.where(usable, np.cumsum(usable) - 1, -1)
        keep = usable[inverse]
        self.order = np.flatnonzero(keep)[np.argsort(inverse[keep], kind="stable")]
        self.inverse = inverse
        self.k = k
        self._set_counts(counts[usable])

    def _set_counts(self, counts: np.ndarray) -> None:
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.groups = -(-counts // self.k)  # ceil(n_c / k) groups per class

    def keep(self, perm: np.ndarray) -> None:
        """Keep the usable classes ``perm``, renumbered: new class ``i`` is old class
        ``perm[i]``; the others become unusable."""
        old = self.counts.shape[0]
        rank = np.full(old, -1, dtype=np.int64)
        rank[perm] = np.arange(perm.shape[0])
        owner_rank = rank[np.repeat(np.arange(old), self.counts)]
        kept = owner_rank >= 0
        self.order = self.order[kept][np.argsort(owner_rank[kept], kind="stable")]
        self.values = self.values[perm]
        usable_index = np.flatnonzero(self.usable)[perm]  # positions among all label values
        self.usable = np.zeros_like(self.usable)
        self.usable[usable_index] = True
        self.index = np.full(self.index.shape[0], -1, dtype=np.int64)
        self.index[usable_index] = np.arange(perm.shape[0])
        self._set_counts(self.counts[perm])

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])


def _check_p(p: int, num_usable: int, num_classes: int, k: int) -> None:
    if p > num_usable:
        skipped = num_classes - num_usable
        why = (
            f" ({skipped} of {num_classes} classes have fewer than k={k} samples and "
            "are skipped because small_classes='skip')"
            if skipped
            else ""
        )
        raise ValueError(
            f"p={p} is larger than the number of usable classes, {num_usable}{why}; "
            "every batch needs p distinct classes"
        )


def _num_slots(groups: np.ndarray, per_slot: int, replicas: int) -> int:
    """The smallest ``B`` with ``B * per_slot * R >= sum(groups)`` and ``B * R >=
    max(groups)``: batches per replica, so that every group fits and no batch holds a class
    twice."""
    return max(
        math.ceil(int(groups.sum()) / (per_slot * replicas)),
        math.ceil(int(groups.max()) / replicas),
    )


def _shuffle_within_classes(
    rng: np.random.Generator, order: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """``order`` with every class's indices shuffled: a random permutation, then stably back
    into classes."""
    owner = np.repeat(np.arange(counts.shape[0]), counts)
    perm = rng.permutation(owner.shape[0])
    return order[perm[np.argsort(owner[perm], kind="stable")]]


def _cover_groups(
    rng: np.random.Generator,
    shuffled: np.ndarray,
    counts: np.ndarray,
    starts: np.ndarray,
    groups: np.ndarray,
    k: int,
) -> np.ndarray:
    """``[sum(groups), k]``: every class's groups, class by class, covering all its samples.

    Class c lays out its shuffled positions 0..n_c-1 and tops the last group up to k. A class
    with n_c >= k reuses its first positions, which are a uniformly random set of its other
    samples, so the group stays distinct; a smaller class is topped up with random repeats.
    """
    num_classes = counts.shape[0]
    cover_class = np.repeat(np.arange(num_classes), groups)
    slot_class = np.repeat(cover_class, k)
    cover_start = np.cumsum(groups * k) - groups * k  # where each class's slots begin
    j = np.arange(slot_class.shape[0]) - np.repeat(cover_start, groups * k)
    n = counts[slot_class]
    repeats = rng.integers(0, n)
    pos = np.where(j < n, j, np.where(n >= k, j - n, repeats))
    return shuffled[starts[slot_class] + pos].reshape(-1, k)


def _random_groups(
    rng: np.random.Generator,
    shuffled: np.ndarray,
    counts: np.ndarray,
    starts: np.ndarray,
    group_class: np.ndarray,
    k: int,
) -> np.ndarray:
    """``[G, k]``: for each class in ``group_class``, k distinct random samples (Floyd's
    algorithm, vectorised over groups), or for a class with fewer than k samples all of
    them plus random repeats."""
    num = group_class.shape[0]
    n = counts[group_class]
    pos = np.empty((num, k), dtype=np.int64)
    for i in range(k):
        top = np.maximum(n - k + i, 0)
        draw = rng.integers(0, top + 1)
        taken = (pos[:, :i] == draw[:, None]).any(axis=1)
        pos[:, i] = np.where(taken, top, draw)
    small = n < k
    if small.any():
        col = np.arange(k)
        n_small = n[small, None]
        pos[small] = np.where(
            col < n_small, col, rng.integers(0, n_small, size=(int(small.sum()), k))
        )
    return shuffled[starts[group_class, None] + pos]


def _draw_by_capacity(rng: np.random.Generator, capacity: np.ndarray, size: int) -> np.ndarray:
    """``size`` class numbers, class c at most ``capacity[c]`` times: a draw without
    replacement over the units of capacity."""
    picks = rng.choice(int(capacity.sum()), size=size, replace=False)
    return np.searchsorted(np.cumsum(capacity), picks, side="right")


def _deal(
    rng: np.random.Generator,
    item_class: np.ndarray,
    items: np.ndarray,
    num_classes: int,
    per_slot: int,
    slots: int,
) -> np.ndarray:
    """Deal ``per_slot * slots`` items (``[*, w]``, at most ``slots`` per class) to ``slots``
    batches of ``per_slot`` items of distinct classes: list the items class by class in a
    random class order, then deal item i to batch i mod slots, so a class's contiguous items
    land in distinct batches. Returns ``[slots, per_slot * w]``."""
    class_rank = np.empty(num_classes, dtype=np.int64)
    class_rank[rng.permutation(num_classes)] = np.arange(num_classes)
    listed = items[np.argsort(class_rank[item_class], kind="stable")]
    width = items.shape[1]
    return listed.reshape(per_slot, slots, width).transpose(1, 0, 2).reshape(slots, -1)


def _pk_slots(
    rng: np.random.Generator,
    shuffled: np.ndarray,
    counts: np.ndarray,
    starts: np.ndarray,
    groups: np.ndarray,
    k: int,
    p: int,
    slots: int,
) -> np.ndarray:
    """``[slots, p * k]``: every group of every class (covering all samples), plus extra
    groups of random classes to fill the last batches, dealt to ``slots`` batches of ``p``
    distinct classes (needs ``slots >= max(groups)`` and ``slots * p >= sum(groups)``)."""
    cover = _cover_groups(rng, shuffled, counts, starts, groups, k)
    cover_class = np.repeat(np.arange(counts.shape[0]), groups)
    # Extra groups from random classes, weighted by how many more groups each class can
    # take without appearing twice in a batch (at most `slots` groups per class).
    num_extra = slots * p - int(groups.sum())
    extra_class = np.zeros(0, dtype=np.int64)
    extra = np.zeros((0, k), dtype=np.int64)
    if num_extra > 0:
        extra_class = _draw_by_capacity(rng, slots - groups, num_extra)
        extra = _random_groups(rng, shuffled, counts, starts, extra_class, k)
    return _deal(
        rng,
        np.concatenate([cover_class, extra_class]),
        np.concatenate([cover, extra]),
        counts.shape[0],
        p,
        slots,
    )
