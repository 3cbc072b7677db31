"""P x K batches (Hermans, Beyer & Leibe 2017)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from .._checks import (
    check_positive_int,
)
from ._base import _EpochBatchSampler
from ._draw import (
    _check_p,
    _Classes,
    _labels_to_numpy,
    _num_slots,
    _pk_slots,
    _shuffle_within_classes,
)

__all__ = ["PKBatchSampler"]


class PKBatchSampler(_EpochBatchSampler):
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

    Multi-label data (multi-hot labels, see the multi-label guide): sample by one label per
    sample, e.g. its first or rarest label (``tags.float().argmax(dim=1)``), and hand the
    multi-hot labels to the loss; every anchor then has at least ``k - 1`` positives.

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

    Examples:
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
        self.p = check_positive_int(p, "p")
        super().__init__(k, seed, num_replicas, rank, small_classes)
        array = _labels_to_numpy(labels)
        self._labels_crc = zlib.crc32(array.tobytes())
        self._classes = _Classes(array, self.k, self.small_classes)
        self.num_samples = int(array.shape[0])
        _check_p(self.p, self._classes.num_classes, len(self._classes.all_values), self.k)
        self._num_batches = _num_slots(self._classes.groups, self.p, self.num_replicas)

    @property
    def batch_size(self) -> int:
        """Number of indices in every batch, ``p * k``."""
        return self.p * self.k

    @property
    def num_classes(self) -> int:
        """Number of classes that are sampled (classes skipped by ``"skip"`` excluded)."""
        return self._classes.num_classes

    def _draw_batches(self) -> np.ndarray:
        """This replica's batches for the current epoch, ``[B, p * k]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        cls = self._classes
        slots = self._num_batches * self.num_replicas  # batches across all replicas
        shuffled = _shuffle_within_classes(rng, cls.order, cls.counts)
        batches = _pk_slots(
            rng, shuffled, cls.counts, cls.starts, cls.groups, self.k, self.p, slots
        )
        batches = batches[rng.permutation(slots)]
        start = self.rank * self._num_batches
        return batches[start : start + self._num_batches]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, k={self.k}, num_samples={self.num_samples}, "
            f"num_classes={self.num_classes}, seed={self.seed}, num_replicas={self.num_replicas}, "
            f"rank={self.rank}, small_classes={self.small_classes!r})"
        )
