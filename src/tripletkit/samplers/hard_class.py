"""Class-level hard mining: batches that put confusable classes together."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .._checks import (
    check_embeddings,
    check_finite_real,
    check_labels,
    check_positive_int,
)
from ._draw import _Classes, _cover_groups, _random_groups, _shuffle_within_classes
from .pk import PKBatchSampler

__all__ = ["HardClassPKBatchSampler"]

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


def _class_draw_groups(
    rng: np.random.Generator, cls: _Classes, shuffled: np.ndarray, draws: np.ndarray, k: int
) -> np.ndarray:
    """``[len(draws), k]``: a group of k samples per class draw; a class's j-th draw in
    the epoch takes its j-th cover group while it has one, else a random group."""
    cover = _cover_groups(rng, shuffled, cls.counts, cls.starts, cls.groups, k)
    cover_start = np.cumsum(cls.groups) - cls.groups
    by_class = np.argsort(draws, kind="stable")
    sorted_draws = draws[by_class]
    occurrence = np.empty_like(draws)
    occurrence[by_class] = np.arange(draws.shape[0]) - np.searchsorted(
        sorted_draws, sorted_draws, side="left"
    )
    from_cover = occurrence < cls.groups[draws]
    out = np.empty((draws.shape[0], k), dtype=np.int64)
    out[from_cover] = cover[cover_start[draws[from_cover]] + occurrence[from_cover]]
    rest = ~from_cover
    if rest.any():
        out[rest] = _random_groups(rng, shuffled, cls.counts, cls.starts, draws[rest], k)
    return out


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

    Examples:
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
        """``[len(draws), k]``: see :func:`_class_draw_groups`."""
        return _class_draw_groups(rng, self._classes, shuffled, draws, self.k)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, k={self.k}, hard_fraction={self.hard_fraction}, "
            f"group_size={self.group_size}, momentum={self.momentum}, "
            f"num_samples={self.num_samples}, num_classes={self.num_classes}, "
            f"num_updates={self.num_updates}, seed={self.seed}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, "
            f"small_classes={self.small_classes!r})"
        )
