"""P x K batch sampling for online triplet mining.

Batch-hard and batch-all mining need many positives *and* negatives in every batch, which a
uniformly shuffled loader does not guarantee. :class:`PKBatchSampler` builds each batch from
``p`` classes with ``k`` samples each, following Hermans, Beyer & Leibe (2017), "In Defense of
the Triplet Loss for Person Re-Identification". Two variants choose *which* classes meet:

- :class:`HardClassPKBatchSampler` puts classes that the model confuses into the same batch
  (class-level hard mining: Suh et al. 2019; Smirnov et al. 2017);
- :class:`CategoryPKBatchSampler` draws ``c`` super-categories and ``p`` classes from each,
  so that negatives share a category.

All three share one drawing procedure (the helpers below): each class's indices are shuffled
and cut into groups of ``k``, and groups are dealt to batches so that no batch holds a class
twice.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ._checks import (
    check_choice,
    check_embeddings,
    check_finite_real,
    check_labels,
    check_nonnegative_int,
    check_positive_int,
)
from ._world import resolve_replicas

__all__ = [
    "SMALL_CLASSES",
    "CategoryPKBatchSampler",
    "HardClassPKBatchSampler",
    "PKBatchSampler",
]

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


# ----------------------------------------------------------------------------------------


class _EpochBatchSampler(Sampler[list[int]]):
    """What every batch sampler here shares: ``k`` samples per class, a numpy generator
    seeded with ``(seed, epoch)``, :meth:`set_epoch`, replicas that take disjoint shares of
    one global batch list, an exact ``len``, and :meth:`state_dict` /
    :meth:`load_state_dict` for exact resumption mid-epoch. Subclasses set ``_num_batches``
    and ``_labels_crc`` and write ``_draw_batches``."""

    _num_batches: int
    _labels_crc: int

    def __init__(
        self, k: int, seed: int, num_replicas: int | None, rank: int | None, small_classes: str
    ) -> None:
        super().__init__()
        self.k = check_positive_int(k, "k")
        self.small_classes = check_choice("small_classes", small_classes, SMALL_CLASSES)
        self.seed = int(check_nonnegative_int(seed, "seed"))  # type: ignore[arg-type]
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._batches: np.ndarray | None = None  # the epoch being iterated, [B, batch size]
        self._position = 0  # batches of it handed out so far
        self._resume: tuple[int, np.ndarray, int] | None = None  # (epoch, batches, position)

    @property
    def max_positives(self) -> int:
        """The number of positives of every anchor of a batch mined against itself, ``k - 1``:
        the ``max_positives`` bound of the fused losses (no host read to find it)."""
        return self.k - 1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed``, determines the next iteration's batches. After
        :meth:`load_state_dict`, setting the saved epoch keeps the resumption; another epoch
        drops it."""
        self.epoch = int(check_nonnegative_int(epoch, "epoch"))  # type: ignore[arg-type]
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None

    def __len__(self) -> int:
        """Number of batches this replica yields per epoch (a resumed epoch yields only the
        batches that were not handed out before the checkpoint)."""
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch's batches are decided when iteration starts (not at the first batch).
        if self._resume is not None and self._resume[0] == self.epoch:
            _, batches, start = self._resume
        else:
            batches, start = self._draw_batches(), 0
        self._resume = None
        self._batches, self._position = batches, start
        return self._yield(batches, start)

    def _yield(self, batches: np.ndarray, start: int) -> Iterator[list[int]]:
        for i in range(start, batches.shape[0]):
            if self._batches is batches:  # a newer iteration has not replaced this one
                self._position = i + 1
            yield batches[i].tolist()
        if self._batches is batches:
            self._batches, self._position = None, 0

    def _draw_batches(self) -> np.ndarray:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        """What must agree between the sampler that saved a state and the one loading it."""
        names = ("p", "c", "k", "seed", "num_replicas", "rank", "small_classes", "num_samples")
        config: dict[str, object] = {"type": type(self).__name__}
        config.update({n: getattr(self, n) for n in names if hasattr(self, n)})
        config.update(num_batches=self._num_batches, labels_crc32=self._labels_crc)
        return config

    def state_dict(self, consumed: int | None = None) -> dict[str, object]:
        """The sampler's state, to resume exactly where it stopped (``torch.save`` it with
        the model and optimizer).

        Holds the epoch and, mid-epoch, the epoch's batches not handed out yet (the rest of
        the epoch is then replayed exactly, whatever happened to the sampler in between).

        Args:
            consumed: how many batches of the current epoch the training loop has *used*.
                A ``DataLoader`` with workers draws batches ahead of the loop
                (``num_workers * prefetch_factor`` of them), so pass your step count within
                the epoch there; by default, the batches the sampler has handed out.

        Returns:
            A dict of plain values and tensors: ``config`` (checked on load), ``epoch``,
            ``position`` and ``batches`` (``[B, batch size]`` int64 tensor, or ``None`` at
            an epoch boundary).
        """
        batches, position = self._batches, self._position
        if self._resume is not None:  # loaded, not iterated yet
            _, batches, position = self._resume
        if consumed is not None:
            consumed = int(check_nonnegative_int(consumed, "consumed"))  # type: ignore[arg-type]
            if batches is None and consumed:
                raise ValueError(
                    f"consumed={consumed}, but no epoch is being iterated (the sampler has "
                    "handed out no batch since the epoch began)"
                )
            if batches is not None and consumed > position:
                raise ValueError(
                    f"consumed={consumed}, but the sampler has handed out only {position} "
                    "batches of this epoch"
                )
            position = consumed
        mid_epoch = batches is not None and position < batches.shape[0]
        return {
            "config": self._config(),
            "epoch": self.epoch,
            "position": position if mid_epoch else 0,
            "batches": torch.from_numpy(batches.copy()) if mid_epoch else None,  # type: ignore[union-attr]
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict`: the next iteration (of the saved epoch) continues
        with the first batch that was not consumed.

        Raises:
            ValueError: a state saved by a sampler of another type, other labels, ``p``,
                ``k``, seed, replicas or rank (the fields that differ are named).
        """
        missing = {"config", "epoch", "position", "batches"} - set(state)
        if missing:
            raise ValueError(f"not a sampler state: missing {sorted(missing)}")
        saved, mine = dict(state["config"]), self._config()  # type: ignore[call-overload]
        differ = sorted(k for k in saved.keys() | mine.keys() if saved.get(k) != mine.get(k))
        if differ:
            shown = ", ".join(f"{k}: saved {saved.get(k)!r}, here {mine.get(k)!r}" for k in differ)
            raise ValueError(f"the state belongs to another sampler ({shown})")
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        batches = state["batches"]
        self._batches, self._position = None, 0
        if batches is None:
            self._resume = None
        else:
            array = torch.as_tensor(batches).numpy().astype(np.int64, copy=True)
            self._resume = (self.epoch, array, int(state["position"]))  # type: ignore[call-overload]


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


# ----------------------------------------------------------------------------------------
# Class-level hard mining

#: Rows of the class-similarity matrix computed at once by the nearest-class search:
#: ``rows x C`` float64 entries (32 MiB for 2^22).
_SEARCH_ENTRIES = 1 << 22
_TINY = float(np.finfo(np.float64).tiny)


def _nearest_classes(signatures: np.ndarray, num: int) -> np.ndarray:
    """``[C, num]``: for each row of ``signatures [C, D]``, the ``num`` other rows of highest
    cosine similarity, most similar first, ties to the lower index. Exact; the ``C x C``
    similarity matrix is computed in chunks of rows (O(chunk * C) memory, O(C^2 D) time).
    Needs ``num <= C - 1``."""
    x = torch.from_numpy(np.ascontiguousarray(signatures, dtype=np.float64))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(_TINY)  # zero rows stay zero
    c = x.shape[0]
    out = torch.empty((c, num), dtype=torch.int64)
    if num == 0:
        return out.numpy()
    rows = max(1, _SEARCH_ENTRIES // c)
    for r0 in range(0, c, rows):
        sim = x[r0 : r0 + rows] @ x.T  # [r, C]
        r = sim.shape[0]
        sim[torch.arange(r), torch.arange(r0, r0 + r)] = -math.inf  # never one's own class
        # The num-th largest value t: every entry above it, then ties at t by lowest index.
        t = sim.topk(num, dim=1).values[:, -1:]
        above = sim > t
        ties = sim == t
        need = num - above.sum(dim=1, keepdim=True)
        take = above | (ties & (ties.cumsum(dim=1) <= need))
        idx = take.nonzero()[:, 1].reshape(r, num)  # ascending class index per row
        best = torch.sort(sim.gather(1, idx), dim=1, descending=True, stable=True).indices
        out[r0 : r0 + r] = idx.gather(1, best)
    return out.numpy()


def _check_fraction(value: object, name: str) -> float:
    result = check_finite_real(value, name)
    if not 0 <= result <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {result}")
    return result


class HardClassPKBatchSampler(PKBatchSampler):
    """P x K batches in which classes the model confuses meet: class-level hard mining.

    In the spirit of Suh, Han, Kim & Lee (CVPR 2019), "Stochastic Class-based Hard Example
    Mining for Deep Metric Learning", and of doppelganger mining (Smirnov, Melnikov, Oleinik,
    Ivanova, Kalinovskiy & Luckyanets 2017, "Doppelganger Mining for Face Representation
    Learning"): the sampler keeps one *signature* per class, refreshed by :meth:`update` from
    the training loop (or from a :class:`~tripletkit.memory.CrossBatchMemory`:
    ``sampler.update(*memory.get())``), and fills a share of every batch with classes whose
    signatures are nearest to each other.

    **Signatures.** For each class in an update, ``m_c`` is the mean of its L2-normalised
    embeddings in that update; the signature is an exponential moving average over updates,
    ``s_c <- momentum * s_c + (1 - momentum) * m_c``, with ``s_c = m_c`` at the class's first
    update. Classes never updated have no signature: they can be drawn uniformly, never as
    hard classes.

    **Batches.** Before the first update (while no class has a signature), and always with
    ``hard_fraction=0``, the batches are exactly :class:`PKBatchSampler`'s.
    Afterwards every batch holds ``h = ceil(hard_fraction * p)`` *hard* classes and ``p - h``
    uniform ones: hard classes come in groups, each a seed class drawn uniformly among the
    classes with a signature that are not yet in the batch, followed by its nearest classes
    (cosine similarity of signatures) not yet in the batch, up to ``group_size`` classes per
    group or ``h`` in all (``group_size=2``: doppelganger pairs; ``group_size=p`` with
    ``hard_fraction=1``: one seed and its ``p - 1`` nearest classes, as Suh et al.). The
    other classes are drawn uniformly, without repeats, among all usable classes. Each
    batch lists its ``p`` distinct classes with ``k`` samples each, class by class: the hard
    groups first (each seed followed by its neighbours, nearest first), then the others.

    **Samples and coverage.** A class's draws within an epoch use its cover groups first (its
    shuffled samples cut into ``ceil(n_c / k)`` groups, exactly as in
    :class:`PKBatchSampler`), then groups of ``k`` random distinct samples (all samples plus
    repeats for a class smaller than ``k``). So every sample of a class is drawn in an epoch
    in which the class is drawn at least ``ceil(n_c / k)`` times, and no sample repeats
    before all of its class's samples have been drawn; unlike :class:`PKBatchSampler`, hard
    batches cannot guarantee that every sample is drawn every epoch.

    **Length, seeding, epochs.** ``len()`` is exactly :class:`PKBatchSampler`'s for the same
    labels, ``p``, ``k``, ``small_classes`` and replicas. An epoch's batches are drawn when
    its iteration starts (``iter(sampler)``) from a numpy Generator seeded with ``(seed,
    epoch)`` and from the signatures at that moment: they are a function of ``seed``, the
    epoch and the update history, nothing else (never the global RNG). Updates made during
    an epoch therefore shape the next one.

    **Replicas.** Every replica computes the same global list of ``len() * num_replicas``
    batches and takes its own disjoint share, provided every replica sees the same updates:
    call :meth:`update` with the same data on each, e.g. the batch gathered from all replicas
    (:func:`tripletkit.distributed.gather`) or a memory that enqueues the gathered batch. The
    nearest-class search runs on the CPU in float64, so replicas on different hardware agree
    except for exact ties broken by rounding.

    **Cost.** An update costs O(B D). The first epoch after updates runs an exact search of
    the nearest classes among the ``C`` classes with a signature: the ``C x C`` cosine
    similarities are computed in chunks of rows, so memory stays O(chunk * C) (at most 32 MiB
    of similarities at a time) plus ``[C, p + group_size]`` neighbour lists, and time is
    O(C^2 D): about 2 s for 10k classes of 128 dimensions on one CPU core, ~25x that for
    50k. Beyond ~50k classes this per-epoch search dominates; refresh less often (update
    only every few epochs) or hard-mine within super-categories
    (:class:`CategoryPKBatchSampler`). Drawing the batches costs O(B p) Python steps.

    Args:
        labels: class label of each dataset item, ``[N]`` (as in :class:`PKBatchSampler`).
        p: number of distinct classes per batch.
        k: number of samples per class in a batch.
        hard_fraction: share of each batch's ``p`` classes that are hard, in ``[0, 1]``
            (``ceil(hard_fraction * p)`` classes).
        group_size: classes per hard group (a seed and its ``group_size - 1`` nearest
            classes), an int >= 2.
        momentum: weight of the old signature in the moving average, in ``[0, 1)``
            (0: the latest update's mean alone).
        seed: seed of the sampler's random generator (an int >= 0).
        num_replicas, rank: distributed replicas, as in :class:`PKBatchSampler`.
        small_classes: ``"replace"`` or ``"skip"``, as in :class:`PKBatchSampler`.

    Raises:
        ValueError: as :class:`PKBatchSampler`; ``hard_fraction`` outside ``[0, 1]``,
            ``momentum`` outside ``[0, 1)``, ``group_size`` below 2.
        TypeError: as :class:`PKBatchSampler`; non-numeric hyper-parameters.

    Shape:
        - labels: ``[N]``; update: embeddings ``[B, D]``, labels ``[B]``.
        - each batch: a list of ``p * k`` ints in ``[0, N)``.

    Example:
        >>> import torch
        >>> labels = torch.arange(8).repeat_interleave(3)        # 8 classes x 3 samples
        >>> sampler = HardClassPKBatchSampler(labels, p=4, k=2, hard_fraction=0.5, seed=0)
        >>> list(sampler) == list(PKBatchSampler(labels, p=4, k=2, seed=0))  # no update yet
        True
        >>> centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
        >>> emb = centres[labels // 2] + 0.01 * torch.randn(24, 16)   # classes 2i, 2i+1 alike
        >>> sampler.update(emb, labels)
        >>> batches = list(sampler)
        >>> len(batches) == len(sampler) and all(len(b) == 8 for b in batches)
        True
        >>> all(any(labels[i] // 2 == labels[j] // 2 and labels[i] != labels[j]
        ...         for i in b for j in b) for b in batches)    # every batch holds a twin pair
        True
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        *,
        hard_fraction: float = 0.5,
        group_size: int = 2,
        momentum: float = 0.5,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        small_classes: str = "replace",
    ) -> None:
        self.hard_fraction = _check_fraction(hard_fraction, "hard_fraction")
        self.group_size = check_positive_int(group_size, "group_size")
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (a seed class and at least one neighbour), got {group_size}"
            )
        self.momentum = check_finite_real(momentum, "momentum")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        super().__init__(
            labels,
            p,
            k,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            small_classes=small_classes,
        )
        # ceil, robust to rounding (0.3 * 10 is 3.0000000000000004)
        self.num_hard = min(self.p, math.ceil(round(self.hard_fraction * self.p, 9)))
        self.num_updates = 0
        self._signatures: np.ndarray | None = None  # [C, D] float64
        self._known = np.zeros(self.num_classes, dtype=bool)
        self._neighbours: tuple[int, np.ndarray] | None = None  # (num_updates, [C, L])

    @property
    def classes(self) -> np.ndarray:
        """Label values of the sampled classes, in the order of :attr:`signatures`' rows."""
        return self._classes.values.copy()

    @property
    def signatures(self) -> torch.Tensor | None:
        """``[C, D]`` float64 copy of the class signatures (rows of classes without one are
        zero; see :attr:`has_signature`), or ``None`` before the first update."""
        if self._signatures is None:
            return None
        return torch.from_numpy(self._signatures.copy())

    @property
    def has_signature(self) -> torch.Tensor:
        """``[C]`` bool: which classes have a signature."""
        return torch.from_numpy(self._known.copy())

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Refresh the signatures of the classes in a batch (see the class docstring).

        The embeddings are detached, L2-normalised and averaged per class on the CPU in
        float64. Labels of classes skipped by ``small_classes="skip"`` are ignored; labels
        that are not in the sampler's labels are an error.

        Args:
            embeddings: ``[B, D]`` floating tensor (the same ``D`` at every update).
            labels: ``[B]`` integer tensor on the same device.

        Raises:
            TypeError, ValueError: embeddings that are not a finite 2-D floating tensor,
                labels of another length, device or dtype, another ``D`` than earlier
                updates, or labels that the sampler does not know.
        """
        emb = check_embeddings(embeddings)
        lab = check_labels(labels, emb.shape[0], emb.device)
        if self._signatures is not None and emb.shape[1] != self._signatures.shape[1]:
            raise ValueError(
                f"embeddings have {emb.shape[1]} features but earlier updates had "
                f"{self._signatures.shape[1]}"
            )
        x = emb.detach().to("cpu", torch.float64)
        values = lab.cpu().numpy()
        all_values = self._classes.all_values
        where = np.minimum(np.searchsorted(all_values, values), all_values.shape[0] - 1)
        unknown = all_values[where] != values
        if unknown.any():
            bad = np.unique(values[unknown])
            shown = ", ".join(map(str, bad[:5])) + (", ..." if bad.shape[0] > 5 else "")
            raise ValueError(
                f"labels has {bad.shape[0]} value(s) that are not among the sampler's labels: "
                f"{shown}"
            )
        self.num_updates += 1
        cls = self._classes.index[where]
        keep = cls >= 0  # classes skipped by small_classes="skip" have no signature
        if not keep.any():
            return
        if self._signatures is None:
            self._signatures = np.zeros((self.num_classes, x.shape[1]))
        cls_t = torch.from_numpy(cls[keep])
        x = x[torch.from_numpy(keep)]
        x = x / x.norm(dim=1, keepdim=True).clamp_min(_TINY)  # zero rows stay zero
        sums = torch.zeros(self.num_classes, x.shape[1], dtype=torch.float64)
        sums.index_add_(0, cls_t, x)
        count = np.bincount(cls[keep], minlength=self.num_classes)
        present = count > 0
        mean = sums.numpy()[present] / count[present, None]
        old = self._signatures[present]
        known = self._known[present, None]
        self._signatures[present] = np.where(
            known, self.momentum * old + (1 - self.momentum) * mean, mean
        )
        self._known |= present

    def reset(self) -> None:
        """Forget every signature: the sampler behaves like :class:`PKBatchSampler` again."""
        self._signatures = None
        self._known[:] = False
        self._neighbours = None
        self.num_updates = 0

    def state_dict(self, consumed: int | None = None) -> dict[str, object]:
        """:meth:`PKBatchSampler.state_dict` plus the class signatures, which classes have
        one and the update count (the nearest-class tables are recomputed from them)."""
        state = super().state_dict(consumed)
        sig = self._signatures
        state["signatures"] = None if sig is None else torch.from_numpy(sig.copy())
        state["has_signature"] = torch.from_numpy(self._known.copy())
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict` (see :meth:`PKBatchSampler.load_state_dict`)."""
        missing = {"signatures", "has_signature", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"not a HardClassPKBatchSampler state: missing {sorted(missing)}")
        super().load_state_dict(state)
        sig = state["signatures"]
        self._signatures = None if sig is None else torch.as_tensor(sig).double().numpy().copy()
        self._known = torch.as_tensor(state["has_signature"]).numpy().astype(bool, copy=True)
        self.num_updates = int(state["num_updates"])  # type: ignore[call-overload]
        self._neighbours = None

    def _draw_batches(self) -> np.ndarray:
        if self.num_hard == 0 or not self._known.any():
            return super()._draw_batches()
        rng = np.random.default_rng([self.seed, self.epoch])
        cls = self._classes
        slots = self._num_batches * self.num_replicas
        shuffled = _shuffle_within_classes(rng, cls.order, cls.counts)
        chosen = self._choose_classes(rng, slots)  # [slots, p]
        batches = self._class_groups(rng, shuffled, chosen.reshape(-1)).reshape(slots, -1)
        start = self.rank * self._num_batches
        return batches[start : start + self._num_batches]

    def _nearest(self) -> tuple[np.ndarray, np.ndarray]:
        """The classes with a signature and, per class, its nearest such classes
        ``[C, L]`` (-1 where it has none), cached per update count."""
        known = np.flatnonzero(self._known)
        if self._neighbours is None or self._neighbours[0] != self.num_updates:
            assert self._signatures is not None
            # a group needs group_size - 1 neighbours outside the (at most h - 1) hard
            # classes already in the batch
            num = min(known.shape[0] - 1, self.num_hard + self.group_size - 2)
            table = np.full((self.num_classes, num), -1, dtype=np.int64)
            table[known] = known[_nearest_classes(self._signatures[known], num)]
            self._neighbours = (self.num_updates, table)
        return known, self._neighbours[1]

    def _choose_classes(self, rng: np.random.Generator, slots: int) -> np.ndarray:
        """``[slots, p]`` distinct classes per batch: hard groups, then uniform ones."""
        known, neighbours = self._nearest()
        p, h, size = self.p, self.num_hard, self.group_size
        num_classes = self.num_classes
        out = np.empty((slots, p), dtype=np.int64)
        for s in range(slots):
            batch: list[int] = []
            taken: set[int] = set()
            # Seeds: a uniformly random order of the known classes; skipping those already
            # in the batch, 2h of them always suffice (each seed adds a class, each skip
            # passes one already taken).
            seeds = known[
                rng.choice(known.shape[0], size=min(2 * h, known.shape[0]), replace=False)
            ]
            for seed in seeds.tolist():
                if len(batch) == h:
                    break
                if seed in taken:
                    continue
                batch.append(seed)
                taken.add(seed)
                group = 1
                for near in neighbours[seed].tolist():
                    if group == size or len(batch) == h:
                        break
                    if near not in taken:
                        batch.append(near)
                        taken.add(near)
                        group += 1
            # The rest uniformly: a random order of p distinct classes, skipping taken ones.
            for c in rng.choice(num_classes, size=p, replace=False).tolist():
                if len(batch) == p:
                    break
                if c not in taken:
                    batch.append(c)
                    taken.add(c)
            out[s] = batch
        return out

    def _class_groups(
        self, rng: np.random.Generator, shuffled: np.ndarray, draws: np.ndarray
    ) -> np.ndarray:
        """``[len(draws), k]``: a group of k samples per class draw; a class's j-th draw in
        the epoch takes its j-th cover group while it has one, else a random group."""
        cls = self._classes
        cover = _cover_groups(rng, shuffled, cls.counts, cls.starts, cls.groups, self.k)
        cover_start = np.cumsum(cls.groups) - cls.groups
        by_class = np.argsort(draws, kind="stable")
        sorted_draws = draws[by_class]
        occurrence = np.empty_like(draws)
        occurrence[by_class] = np.arange(draws.shape[0]) - np.searchsorted(
            sorted_draws, sorted_draws, side="left"
        )
        from_cover = occurrence < cls.groups[draws]
        out = np.empty((draws.shape[0], self.k), dtype=np.int64)
        out[from_cover] = cover[cover_start[draws[from_cover]] + occurrence[from_cover]]
        rest = ~from_cover
        if rest.any():
            out[rest] = _random_groups(rng, shuffled, cls.counts, cls.starts, draws[rest], self.k)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, k={self.k}, hard_fraction={self.hard_fraction}, "
            f"group_size={self.group_size}, momentum={self.momentum}, "
            f"num_samples={self.num_samples}, num_classes={self.num_classes}, "
            f"num_updates={self.num_updates}, seed={self.seed}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, "
            f"small_classes={self.small_classes!r})"
        )


# ----------------------------------------------------------------------------------------
# Super-categories


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

    Example:
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
