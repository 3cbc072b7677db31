"""P x K batch sampling for online triplet mining.

Batch-hard and batch-all mining need many positives *and* negatives in every batch, which a
uniformly shuffled loader does not guarantee. :class:`PKBatchSampler` builds each batch from
``p`` classes with ``k`` samples each, following Hermans, Beyer & Leibe (2017), "In Defense of
the Triplet Loss for Person Re-Identification".
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ._checks import check_choice, check_nonnegative_int, check_positive_int
from ._world import resolve_replicas

__all__ = ["SMALL_CLASSES", "PKBatchSampler"]

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


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` distinct classes with exactly ``k`` samples each (Hermans et al. 2017).

    Use it as a DataLoader's ``batch_sampler``. Every batch holds ``p * k`` dataset indices:
    ``k`` for each of ``p`` distinct labels, listed class by class.

    One epoch draws every sample of every usable class at least once. Each class's indices
    are shuffled and cut into ``ceil(n_c / k)`` groups of ``k``; the last group is topped up
    with other samples of the same class. Classes with fewer than ``k`` samples are either
    drawn with replacement (``small_classes="replace"``: the group holds all of their samples
    plus repeats) or left out (``"skip"``). To fill the last batches, extra groups of random
    classes are added. Groups are then dealt to batches so that no batch holds a label twice,
    and the batch order is shuffled.

    The number of batches per replica ``B`` is the smallest with ``B * p * R >= G`` and
    ``B * R >= g_max``, where ``G`` is the total number of groups, ``g_max`` the largest
    number of groups of one class and ``R`` the number of replicas. It depends only on the
    labels, so ``len()`` is exact and needs no drawing.

    Randomness comes from a numpy Generator seeded with ``(seed, epoch)`` (never the global
    RNG): the same seed and epoch give the same batches, and different epochs give different
    batches. Call :meth:`set_epoch` before each epoch, as with
    :class:`torch.utils.data.DistributedSampler`; otherwise every epoch repeats epoch 0.

    Distributed training: every replica must be built with the same labels, ``seed`` and
    epoch; they then agree on one global set of ``B * R`` batches and replica ``rank`` takes
    its own ``B`` of them, so replicas get disjoint batches, the same number each, and
    together cover every sample.

    Args:
        labels: class label of each dataset item, ``[N]``: an integer tensor, numpy array or
            sequence of ints. Any integer values (they need not be contiguous).
        p: number of distinct classes per batch.
        k: number of samples per class in a batch.
        seed: seed of the sampler's random generator (an int >= 0).
        num_replicas: number of distributed replicas; defaults to the world size of the
            initialised default process group, else 1.
        rank: this replica's rank in ``[0, num_replicas)``; defaults to the process group's
            rank, else 0.
        small_classes: ``"replace"`` or ``"skip"``, what to do with classes that have fewer
            than ``k`` samples (see above).

    Raises:
        ValueError: ``p`` or ``k`` below 1, fewer usable classes than ``p``, ``rank`` out of
            range, an unknown ``small_classes``, or empty / non-1-D labels.
        TypeError: labels that are not integers.

    Shape:
        - labels: ``[N]``.
        - each batch: a list of ``p * k`` ints in ``[0, N)``.

    Example:
        >>> labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
        >>> sampler = PKBatchSampler(labels, p=2, k=2, seed=0)
        >>> len(sampler), sampler.batch_size
        (3, 4)
        >>> batches = list(sampler)
        >>> all(len({labels[i] for i in b}) == 2 for b in batches)
        True
        >>> sorted({i for b in batches for i in b}) == list(range(10))
        True
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        small_classes: str = "replace",
    ) -> None:
        super().__init__()
        self.p = check_positive_int(p, "p")
        self.k = check_positive_int(k, "k")
        self.small_classes = check_choice("small_classes", small_classes, SMALL_CLASSES)
        self.seed = int(check_nonnegative_int(seed, "seed"))  # type: ignore[arg-type]
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0

        array = _labels_to_numpy(labels)
        classes, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
        usable = counts >= self.k if self.small_classes == "skip" else counts >= 1
        self.num_samples = int(array.shape[0])
        num_usable = int(usable.sum())
        if self.p > num_usable:
            skipped = len(classes) - num_usable
            why = (
                f" ({skipped} of {len(classes)} classes have fewer than k={self.k} samples and "
                "are skipped because small_classes='skip')"
                if skipped
                else ""
            )
            raise ValueError(
                f"p={self.p} is larger than the number of usable classes, {num_usable}{why}; "
                "every batch needs p distinct classes"
            )
        # Dataset indices of the usable classes, sorted by class; class c owns
        # _order[_starts[c] : _starts[c] + _counts[c]].
        keep = usable[inverse]
        self._order = np.flatnonzero(keep)[np.argsort(inverse[keep], kind="stable")]
        self._counts = counts[usable]
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self._groups = -(-self._counts // self.k)  # ceil(n_c / k) groups per class
        total_groups = int(self._groups.sum())
        largest = int(self._groups.max())
        r = self.num_replicas
        self._num_batches = max(
            math.ceil(total_groups / (self.p * r)),
            math.ceil(largest / r),
        )

    @property
    def batch_size(self) -> int:
        """Number of indices in every batch, ``p * k``."""
        return self.p * self.k

    @property
    def num_classes(self) -> int:
        """Number of classes that are sampled (classes skipped by ``"skip"`` excluded)."""
        return int(self._counts.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed``, determines the next iteration's batches."""
        self.epoch = int(check_nonnegative_int(epoch, "epoch"))  # type: ignore[arg-type]

    def __len__(self) -> int:
        """Number of batches this replica yields per epoch."""
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._draw_batches():
            yield batch.tolist()

    def _draw_batches(self) -> np.ndarray:
        """This replica's batches for the current epoch, ``[B, p * k]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        k, p = self.k, self.p
        counts, starts, groups = self._counts, self._starts, self._groups
        num_classes = counts.shape[0]
        slots = self._num_batches * self.num_replicas  # batches across all replicas

        # Shuffle every class's indices: a random permutation, then stably back into classes.
        owner = np.repeat(np.arange(num_classes), counts)
        perm = rng.permutation(owner.shape[0])
        shuffled = self._order[perm[np.argsort(owner[perm], kind="stable")]]

        # Groups covering every sample: class c lays out its shuffled positions 0..n_c-1
        # and tops the last group up to k. A class with n_c >= k reuses its first positions,
        # which are a uniformly random set of its other samples, so the group stays
        # distinct; a smaller class is topped up with random repeats.
        cover_class = np.repeat(np.arange(num_classes), groups)
        slot_class = np.repeat(cover_class, k)
        cover_start = np.cumsum(groups * k) - groups * k  # where each class's slots begin
        j = np.arange(slot_class.shape[0]) - np.repeat(cover_start, groups * k)
        n = counts[slot_class]
        repeats = rng.integers(0, n)
        pos = np.where(j < n, j, np.where(n >= k, j - n, repeats))
        cover = shuffled[starts[slot_class] + pos].reshape(-1, k)

        # Extra groups that fill the last batches, from random classes, weighted by how many
        # more groups each class can take without appearing twice in a batch (at most
        # `slots` groups per class).
        num_extra = slots * p - int(groups.sum())
        capacity = slots - groups
        extra_class = np.zeros(0, dtype=np.int64)
        extra = np.zeros((0, k), dtype=np.int64)
        if num_extra > 0:
            picks = rng.choice(int(capacity.sum()), size=num_extra, replace=False)
            extra_class = np.searchsorted(np.cumsum(capacity), picks, side="right")
            n = counts[extra_class]
            # k distinct samples (Floyd's algorithm, vectorised over groups), or for a class
            # with fewer than k samples all of them plus random repeats.
            pos = np.empty((num_extra, k), dtype=np.int64)
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
            extra = shuffled[starts[extra_class, None] + pos]

        # List groups class by class in a random class order, then deal group i to batch
        # i mod slots: a class's (at most `slots`) contiguous groups land in distinct
        # batches, so labels within a batch are distinct.
        class_rank = np.empty(num_classes, dtype=np.int64)
        class_rank[rng.permutation(num_classes)] = np.arange(num_classes)
        all_class = np.concatenate([cover_class, extra_class])
        all_groups = np.concatenate([cover, extra])[
            np.argsort(class_rank[all_class], kind="stable")
        ]
        batches = all_groups.reshape(p, slots, k).transpose(1, 0, 2).reshape(slots, p * k)
        batches = batches[rng.permutation(slots)]
        start = self.rank * self._num_batches
        return batches[start : start + self._num_batches]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, k={self.k}, num_samples={self.num_samples}, "
            f"num_classes={self.num_classes}, seed={self.seed}, num_replicas={self.num_replicas}, "
            f"rank={self.rank}, small_classes={self.small_classes!r})"
        )
