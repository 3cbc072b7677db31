"""Super-categories: batches of ``c`` categories x ``p`` classes x ``k`` samples."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .._checks import (
    check_positive_int,
)
from ._base import _EpochBatchSampler
from ._draw import (
    _Classes,
    _deal,
    _draw_by_capacity,
    _labels_to_numpy,
    _num_slots,
    _pk_slots,
    _shuffle_within_classes,
)

__all__ = ["CategoryPKBatchSampler"]


def _category_ids(values: object, name: str) -> np.ndarray:
    """Category ids as a 1-D numpy array of integers or strings."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.dtype.is_floating_point or values.is_complex():
            raise TypeError(f"{name} must be integers or strings, got a {values.dtype} tensor")
        array = values.detach().cpu().numpy()
    elif isinstance(values, (np.ndarray, Sequence)) and not isinstance(values, (str, bytes)):
        array = np.asarray(values)
    else:
        raise TypeError(
            f"{name} must be a sequence, array or tensor of category ids, or a mapping "
            f"from label to category, got {type(values).__name__}"
        )
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.size and array.dtype.kind not in "iuUS":
        raise TypeError(f"{name} must be integers or strings, got an array of dtype {array.dtype}")
    return array


def _class_categories(
    categories: object, array: np.ndarray, all_values: np.ndarray, inverse: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(category ids [G], category of every label value [C_all] as an index into them)``,
    from per-sample categories or a mapping label -> category."""
    if isinstance(categories, Mapping):
        missing = [v for v in all_values.tolist() if v not in categories]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise ValueError(
                f"categories has no category for {len(missing)} label(s): {shown}; "
                "every label needs a category"
            )
        ids = _category_ids([categories[v] for v in all_values.tolist()], "categories' values")
        values, per_class = np.unique(ids, return_inverse=True)
        return values, per_class.reshape(-1)
    ids = _category_ids(categories, "categories")
    if ids.shape[0] != array.shape[0]:
        raise ValueError(
            f"categories has {ids.shape[0]} entries but labels has {array.shape[0]}; give one "
            "category per sample, or a mapping from label to category"
        )
    values, per_sample = np.unique(ids, return_inverse=True)
    per_sample = per_sample.reshape(-1)
    per_class = np.zeros(all_values.shape[0], dtype=np.int64)
    per_class[inverse] = per_sample
    mixed = per_class[inverse] != per_sample
    if mixed.any():
        label = array[np.flatnonzero(mixed)[0]]
        raise ValueError(
            f"label {label} has samples in more than one category; each class must belong "
            "to one category"
        )
    return values, per_class


class CategoryPKBatchSampler(_EpochBatchSampler):
    """Batches of ``c`` super-categories x ``p`` classes from each x ``k`` samples per class.

    Hierarchical P x K sampling, as pytorch-metric-learning's ``HierarchicalSampler`` and
    open-metric-learning's category-balanced sampler: the ``p`` classes drawn from one
    category are each other's negatives, so negatives share a category (fine-grained,
    harder), while ``c > 1`` still mixes categories. Every batch holds ``c * p * k`` dataset
    indices, listed category by category and, within a category, class by class.

    Construction: within each category the :class:`PKBatchSampler` procedure cuts every
    class into groups of ``k`` covering all its samples and deals them into *parts* of ``p``
    distinct classes; a category needs ``B_g = max(ceil(G_g / p), g_max)`` parts (``G_g``
    its groups, ``g_max`` the most groups of one of its classes). Parts are dealt to batches
    so that no batch holds a category twice; extra parts of random categories (weighted by
    how many more parts they can take) fill the last batches. One epoch therefore draws every
    sample of every usable class of every usable category at least once, and ``len()`` is
    exact: the smallest ``B`` with ``B * c * R >= sum_g B_g`` and ``B * R >= max_g B_g``
    (``R`` replicas).

    Usable: classes as in :class:`PKBatchSampler` (``small_classes``); categories with at
    least ``p`` usable classes. Categories with fewer are never drawn (their samples are left
    out, and :attr:`num_categories` does not count them).

    Seeding, epochs and replicas as in :class:`PKBatchSampler`: a numpy Generator seeded
    with ``(seed, epoch)``, :meth:`set_epoch`, and one global list of ``B * R`` batches of
    which replica ``rank`` takes its own ``B``.

    Args:
        labels: class label of each dataset item, ``[N]``: integers.
        categories: the super-category of each item, ``[N]`` (integers or strings; all
            samples of a class must share it), or a mapping ``{label: category}`` that names
            every label.
        c: number of distinct categories per batch.
        p: number of distinct classes per category in a batch.
        k: number of samples per class in a batch.
        seed, num_replicas, rank, small_classes: as in :class:`PKBatchSampler`.

    Raises:
        ValueError: ``c``, ``p`` or ``k`` below 1; fewer than ``c`` categories with ``p``
            usable classes; categories and labels of different lengths; a label without a
            category in the mapping; a class spread over several categories; replicas and
            labels as in :class:`PKBatchSampler`.
        TypeError: labels or categories of the wrong type.

    Shape:
        - labels, categories: ``[N]``.
        - each batch: a list of ``c * p * k`` ints in ``[0, N)``.

    Examples:
        >>> labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        >>> categories = {0: "shoe", 1: "shoe", 2: "shoe", 3: "bag", 4: "bag", 5: "bag"}
        >>> sampler = CategoryPKBatchSampler(labels, categories, c=2, p=2, k=2, seed=0)
        >>> len(sampler), sampler.batch_size
        (2, 8)
        >>> batches = list(sampler)
        >>> [categories[labels[i]] for i in batches[0][::2]]   # c x p classes, k=2 each
        ['shoe', 'shoe', 'bag', 'bag']
        >>> sorted({i for b in batches for i in b}) == list(range(12))
        True
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        categories: Sequence[int] | Sequence[str] | np.ndarray | torch.Tensor | Mapping,
        c: int,
        p: int,
        k: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        small_classes: str = "replace",
    ) -> None:
        self.c = check_positive_int(c, "c")
        self.p = check_positive_int(p, "p")
        super().__init__(k, seed, num_replicas, rank, small_classes)
        array = _labels_to_numpy(labels)
        self._labels_crc = zlib.crc32(array.tobytes())
        self.num_samples = int(array.shape[0])
        cls = _Classes(array, self.k, self.small_classes)
        category_ids, class_category = _class_categories(
            categories, array, cls.all_values, cls.inverse
        )
        category = class_category[cls.usable]  # category of each usable class
        per_category = np.bincount(category, minlength=category_ids.shape[0])
        usable = per_category >= self.p
        if self.c > int(usable.sum()):
            skipped = int((~usable).sum())
            why = (
                f" ({skipped} of {category_ids.shape[0]} categories have fewer than p={self.p} "
                "usable classes"
                + (", counting only classes with at least k samples" if cls.num_skipped else "")
                + ")"
                if skipped
                else ""
            )
            raise ValueError(
                f"c={self.c} is larger than the number of usable categories, "
                f"{int(usable.sum())}{why}; every batch needs c distinct categories with p "
                "distinct classes each"
            )
        # Keep the classes of usable categories, numbered category by category.
        kept = np.flatnonzero(usable[category])
        cls.keep(kept[np.argsort(category[kept], kind="stable")])
        self._classes = cls
        self._category_values = category_ids[usable]
        self._category_classes = np.bincount(category[kept], minlength=len(usable))[usable]
        self._category_start = np.cumsum(self._category_classes) - self._category_classes
        # parts each category needs to cover its samples
        self._parts = np.array(
            [
                _num_slots(cls.groups[s : s + n], self.p, 1)
                for s, n in zip(
                    self._category_start.tolist(), self._category_classes.tolist(), strict=True
                )
            ],
            dtype=np.int64,
        )
        self._num_batches = _num_slots(self._parts, self.c, self.num_replicas)

    @property
    def batch_size(self) -> int:
        """Number of indices in every batch, ``c * p * k``."""
        return self.c * self.p * self.k

    @property
    def num_categories(self) -> int:
        """Number of categories that are sampled (those with at least ``p`` usable classes)."""
        return int(self._category_values.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes that are sampled (usable classes of usable categories)."""
        return self._classes.num_classes

    def _draw_batches(self) -> np.ndarray:
        """This replica's batches for the current epoch, ``[B, c * p * k]``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        cls = self._classes
        slots = self._num_batches * self.num_replicas
        shuffled = _shuffle_within_classes(rng, cls.order, cls.counts)
        num_categories = self._parts.shape[0]
        parts = self._parts.copy()
        num_extra = slots * self.c - int(parts.sum())
        if num_extra > 0:  # extra parts, at most `slots` per category
            extra = _draw_by_capacity(rng, slots - self._parts, num_extra)
            parts += np.bincount(extra, minlength=num_categories)
        drawn = []
        for g in range(num_categories):
            s = slice(self._category_start[g], self._category_start[g] + self._category_classes[g])
            drawn.append(
                _pk_slots(
                    rng,
                    shuffled,
                    cls.counts[s],
                    cls.starts[s],
                    cls.groups[s],
                    self.k,
                    self.p,
                    int(parts[g]),
                )
            )
        part_category = np.repeat(np.arange(num_categories), parts)
        batches = _deal(rng, part_category, np.concatenate(drawn), num_categories, self.c, slots)
        batches = batches[rng.permutation(slots)]
        start = self.rank * self._num_batches
        return batches[start : start + self._num_batches]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(c={self.c}, p={self.p}, k={self.k}, "
            f"num_samples={self.num_samples}, num_categories={self.num_categories}, "
            f"num_classes={self.num_classes}, seed={self.seed}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, "
            f"small_classes={self.small_classes!r})"
        )
