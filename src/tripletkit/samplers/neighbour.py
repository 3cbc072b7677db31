"""Sample-level hard mining over the whole dataset: batches built around each anchor's mined
nearest neighbours of other classes, refreshed from the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._checks import check_choice, check_nonnegative_int, check_positive_int, check_positive_real
from ..neighbours import (
    BACKENDS,
    DEFAULT_MEMORY_BUDGET,
    NEIGHBOUR_METRICS,
    embed_dataset,
    nearest_neighbours,
)
from ._draw import _shuffle_within_classes
from .hard_class import _check_fraction, _class_draw_groups
from .pk import PKBatchSampler

__all__ = ["NeighbourPKBatchSampler"]


class NeighbourPKBatchSampler(PKBatchSampler):
    """P x K batches that put anchors together with their nearest samples of other classes,
    mined over the whole dataset and refreshed every few steps (dataset-level hard negatives).

    The fine, sample-level form of class-level hard mining
    (:class:`HardClassPKBatchSampler`; Suh, Han, Kim & Lee, CVPR 2019), with the refreshed
    nearest-neighbour negatives of ANCE (Xiong et al., ICLR 2021 / arXiv 2020, "Approximate
    Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval") for labelled
    data. The training loop calls :meth:`refresh` every ``R`` steps (with the model and an
    un-augmented view of the training set, or with embeddings it computed); the sampler
    re-embeds the set (:func:`tripletkit.neighbours.embed_dataset`) and finds every sample's
    ``num_neighbours`` nearest samples of other classes, exactly
    (:func:`tripletkit.neighbours.nearest_neighbours`, with its false-negative guard
    ``skip_hardest`` / ``positive_ratio``).

    **Batches.** Before the first refresh, and always with ``hard_fraction=0``, the batches
    are exactly :class:`PKBatchSampler`'s. Afterwards every batch keeps the P x K shape (so
    every in-batch miner works unchanged) and holds ``h = ceil(hard_fraction * p)`` *hard*
    classes in groups: each group starts from an *anchor* sample, taken in turn from a
    random order of all samples drawn once per epoch (anchors whose class is already in the
    batch are passed over), followed by the classes of the anchor's mined negatives, nearest
    first, that are not in the batch yet, up to ``group_size`` classes per group or ``h`` in
    all (so a group holds a neighbour class only when ``h >= 2``). The other ``p - h``
    classes are drawn uniformly without repeats. Every class gets
    ``k`` samples as in :class:`HardClassPKBatchSampler` (cover groups first, then random
    groups); the anchor is put into its class's group, and into each neighbour class's group
    the mined negative that brought it in, so the batch holds the anchor *and* its mined
    negatives themselves (replacing the group's first sample when they are not drawn
    already). Classes skipped by ``small_classes="skip"`` are never anchors nor neighbours.

    **Refreshes, seeding, epochs.** An epoch's batches are drawn when its iteration starts,
    from a numpy Generator seeded with ``(seed, epoch, num_refreshes)`` and the mined lists
    at that moment. A refresh during an epoch redraws the batches of the epoch that were not
    handed out yet (the same way, from the new lists and the new refresh count), so the
    batches are a function of ``seed``, the epoch, and the refresh history (when each
    refresh happened, and what it found), nothing else. With a ``DataLoader`` that draws
    batches ahead (workers), the redrawn batches start after those already drawn.
    ``len()`` is always :class:`PKBatchSampler`'s.

    **Replicas.** Every replica computes the same global list of batches and takes its own
    disjoint share, provided every replica refreshes at the same step with the same data.
    Under ``torch.distributed`` :meth:`refresh` does that itself when given a dataset: each
    replica embeds its shard, the embeddings are all-gathered once, and every replica runs
    the same exact search on the whole set (on identical hardware, identical lists).

    **Checkpoints.** :meth:`state_dict` adds the mined lists and the refresh count to
    :class:`PKBatchSampler`'s (the rest of the epoch's batches), so a resumed run draws
    exactly the batches of an uninterrupted one.

    **Cost.** A refresh costs one forward pass over the dataset plus an exact search in
    O(N^2 D) time and bounded memory (see :func:`~tripletkit.neighbours.nearest_neighbours`;
    ``backend="faiss"`` for large sets), and ``[N, num_neighbours]`` int64 of lists.
    Drawing an epoch costs O(B p) Python steps, as for the hard-class sampler.

    Args:
        labels: class label of each dataset item, ``[N]`` (as in :class:`PKBatchSampler`).
        p: number of distinct classes per batch.
        k: number of samples per class in a batch.
        num_neighbours: mined negatives kept per sample (candidates for the neighbour
            classes of a group), an int >= 1.
        hard_fraction: share of each batch's ``p`` classes that are hard, in ``[0, 1]``.
        group_size: classes per hard group (the anchor's and up to ``group_size - 1``
            neighbour classes), an int >= 2.
        skip_hardest, positive_ratio: the false-negative guard of
            :func:`~tripletkit.neighbours.nearest_neighbours` (defaults: off).
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        backend: ``"torch"`` (exact, any device) or ``"faiss"``.
        memory_budget: working memory of the torch search, in bytes.
        seed, num_replicas, rank, small_classes: as in :class:`PKBatchSampler`.

    Raises:
        ValueError: as :class:`PKBatchSampler`; a bad ``num_neighbours``, ``hard_fraction``,
            ``group_size``, guard, metric or backend.
        TypeError: as :class:`PKBatchSampler`; non-numeric hyper-parameters.

    Shape:
        - labels: ``[N]``; refresh embeddings: ``[N, D]`` in dataset order.
        - each batch: a list of ``p * k`` ints in ``[0, N)``.

    Examples:
        >>> labels = torch.arange(8).repeat_interleave(4)          # 8 classes x 4 samples
        >>> sampler = NeighbourPKBatchSampler(labels, p=4, k=2, hard_fraction=1.0, seed=0)
        >>> list(sampler) == list(PKBatchSampler(labels, p=4, k=2, seed=0))  # no refresh yet
        True
        >>> centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
        >>> emb = centres[labels // 2] + 0.01 * torch.randn(32, 16)  # classes 2i, 2i+1 alike
        >>> sampler.refresh(embeddings=emb)
        >>> batches = list(sampler)
        >>> len(batches) == len(sampler) and all(len(b) == 8 for b in batches)
        True
        >>> all(labels[i] // 2 == labels[j] // 2 and labels[i] != labels[j]
        ...     for b in batches for i, j in zip(b[0::4], b[2::4]))  # twins are paired
        True
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        *,
        num_neighbours: int = 8,
        hard_fraction: float = 0.5,
        group_size: int = 2,
        skip_hardest: int = 0,
        positive_ratio: float | None = None,
        metric: str = "euclidean",
        backend: str = "torch",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        small_classes: str = "replace",
    ) -> None:
        self.num_neighbours = check_positive_int(num_neighbours, "num_neighbours")
        self.hard_fraction = _check_fraction(hard_fraction, "hard_fraction")
        self.group_size = check_positive_int(group_size, "group_size")
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (an anchor's class and at least one neighbour "
                f"class), got {group_size}"
            )
        self.skip_hardest = int(check_nonnegative_int(skip_hardest, "skip_hardest"))  # type: ignore[arg-type]
        self.positive_ratio = (
            None
            if positive_ratio is None
            else check_positive_real(positive_ratio, "positive_ratio")
        )
        self.metric = check_choice("metric", metric, NEIGHBOUR_METRICS)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.memory_budget = check_positive_int(memory_budget, "memory_budget")
        super().__init__(
            labels,
            p,
            k,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            small_classes=small_classes,
        )
        self.num_hard = min(self.p, math.ceil(round(self.hard_fraction * self.p, 9)))
        cls = self._classes
        self._label_values = cls.all_values[cls.inverse]  # [N] the labels, int64
        self._sample_class = cls.index[cls.inverse]  # [N] usable class number, -1 if skipped
        self.num_refreshes = 0
        self._negatives: np.ndarray | None = None  # [N, num_neighbours], -1 padded

    @property
    def negatives(self) -> torch.Tensor | None:
        """``[N, num_neighbours]`` int64 copy of the mined negatives of every sample (nearest
        first, ``-1`` padded), or ``None`` before the first refresh."""
        return None if self._negatives is None else torch.from_numpy(self._negatives.copy())

    def refresh(
        self,
        model: Callable[..., torch.Tensor] | None = None,
        data: Dataset[Any] | DataLoader[Any] | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        progress: bool = False,
    ) -> None:
        """Re-mine every sample's nearest negatives: embed ``data`` with ``model`` (or take
        ``embeddings``), search, and redraw the rest of the current epoch.

        Call it from the training loop every ``R`` steps (at the same step on every
        replica), e.g. ``if step % R == 0: sampler.refresh(model, eval_view_of_train_set)``.
        ``data`` must list the same items, in the same order, as the sampler's labels (use
        the training set without random augmentation); when it yields labels they are
        checked against the sampler's. Under ``torch.distributed`` a dataset is embedded in
        shards and gathered once (see :func:`~tripletkit.neighbours.embed_dataset`).

        Args:
            model: the embedding model (any callable returning ``[B, D]``).
            data: a map-style dataset or a non-shuffling ``DataLoader`` of the ``N`` items.
            embeddings: ``[N, D]`` embeddings in dataset order, instead of model and data
                (under DDP, the same tensor on every replica).
            batch_size, device, num_workers, progress: as in
                :func:`~tripletkit.neighbours.embed_dataset`.

        Raises:
            ValueError: neither or both of ``embeddings`` and ``model``/``data``; embeddings
                or data of another length than the labels; yielded labels that differ from
                the sampler's.
        """
        if embeddings is None:
            if model is None or data is None:
                raise ValueError("refresh needs model and data, or embeddings=")
            emb, labels = embed_dataset(
                model,
                data,
                batch_size=batch_size,
                device=device,
                num_workers=num_workers,
                progress=progress,
            )
            if emb.shape[0] != self.num_samples:
                raise ValueError(
                    f"the data has {emb.shape[0]} items but the sampler has {self.num_samples} labels"
                )
            if labels is not None and not np.array_equal(labels.cpu().numpy(), self._label_values):
                bad = int(np.flatnonzero(labels.cpu().numpy() != self._label_values)[0])
                raise ValueError(
                    "the labels the data yields differ from the sampler's (first at item "
                    f"{bad}): refresh needs the same items in the same order"
                )
        else:
            if model is not None or data is not None:
                raise ValueError("pass either embeddings= or model and data, not both")
            emb = embeddings
            if not isinstance(emb, torch.Tensor):
                raise TypeError(f"embeddings must be a torch.Tensor, got {type(emb).__name__}")
            if emb.dim() != 2 or emb.shape[0] != self.num_samples:
                raise ValueError(
                    f"embeddings must be [N, D] with N = {self.num_samples} (the sampler's "
                    f"labels), got shape {tuple(emb.shape)}"
                )
        labels_t = torch.from_numpy(self._label_values).to(emb.device)
        found = nearest_neighbours(
            emb.detach(),
            labels_t,
            self.num_neighbours,
            metric=self.metric,
            skip_hardest=self.skip_hardest,
            positive_ratio=self.positive_ratio,
            backend=self.backend,
            memory_budget=self.memory_budget,
        )
        self._negatives = found.negatives.cpu().numpy().astype(np.int64, copy=True)
        self.num_refreshes += 1
        self._redraw_rest()

    def _redraw_rest(self) -> None:
        """Replace the batches of the current epoch that were not handed out yet."""
        if self._resume is not None:
            _, batches, start = self._resume
        elif self._batches is not None:
            batches, start = self._batches, self._position
        else:
            return
        if start < batches.shape[0]:
            batches[start:] = self._draw_batches()[start:]

    # -- checkpoints ----------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        config = super()._config()
        names = (
            "num_neighbours",
            "hard_fraction",
            "group_size",
            "skip_hardest",
            "positive_ratio",
            "metric",
        )
        config.update({n: getattr(self, n) for n in names})
        return config

    def state_dict(self, consumed: int | None = None) -> dict[str, object]:
        """:meth:`PKBatchSampler.state_dict` plus the mined negatives (``[N,
        num_neighbours]`` int64 tensor or ``None``) and the refresh count."""
        state = super().state_dict(consumed)
        neg = self._negatives
        state["negatives"] = None if neg is None else torch.from_numpy(neg.copy())
        state["num_refreshes"] = self.num_refreshes
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict` (see :meth:`PKBatchSampler.load_state_dict`)."""
        missing = {"negatives", "num_refreshes"} - set(state)
        if missing:
            raise ValueError(f"not a NeighbourPKBatchSampler state: missing {sorted(missing)}")
        neg = state["negatives"]
        if neg is not None:
            array = torch.as_tensor(neg).numpy()
            if array.shape != (self.num_samples, self.num_neighbours):
                raise ValueError(
                    f"the state's negatives have shape {array.shape}, expected "
                    f"{(self.num_samples, self.num_neighbours)}"
                )
        super().load_state_dict(state)
        self._negatives = (
            None if neg is None else torch.as_tensor(neg).numpy().astype(np.int64, copy=True)
        )
        self.num_refreshes = int(state["num_refreshes"])  # type: ignore[call-overload]

    # -- drawing --------------------------------------------------------------------------

    def _draw_batches(self) -> np.ndarray:
        if self.num_hard == 0 or self._negatives is None:
            return super()._draw_batches()
        rng = np.random.default_rng([self.seed, self.epoch, self.num_refreshes])
        cls = self._classes
        slots = self._num_batches * self.num_replicas
        shuffled = _shuffle_within_classes(rng, cls.order, cls.counts)
        chosen, forced = self._choose_classes(rng, slots)  # [slots, p] each
        groups = _class_draw_groups(rng, cls, shuffled, chosen.reshape(-1), self.k)
        want = forced.reshape(-1)
        fix = (want >= 0) & ~(groups == want[:, None]).any(axis=1)
        groups[fix, 0] = want[fix]  # the anchor / mined negative itself joins its group
        batches = groups.reshape(slots, -1)
        start = self.rank * self._num_batches
        return batches[start : start + self._num_batches]

    def _choose_classes(
        self, rng: np.random.Generator, slots: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[slots, p]`` distinct classes per batch (hard groups, then uniform ones) and
        ``[slots, p]`` the sample each class must contain (the anchor or the mined negative
        that brought the class in; -1 for none)."""
        assert self._negatives is not None
        negatives, sample_class = self._negatives, self._sample_class
        p, h, size = self.p, self.num_hard, self.group_size
        anchors = np.flatnonzero(sample_class >= 0)
        anchors = anchors[rng.permutation(anchors.shape[0])]
        num_anchors = anchors.shape[0]
        cursor = 0
        out = np.empty((slots, p), dtype=np.int64)
        forced = np.full((slots, p), -1, dtype=np.int64)
        for s in range(slots):
            batch: list[int] = []
            must: list[int] = []
            taken: set[int] = set()
            # Anchors in turn; each pass over one already in the batch costs a try, and 2h
            # tries always suffice unless the batch's classes hold most anchors.
            for _ in range(min(2 * h, num_anchors)):
                if len(batch) >= h:
                    break
                a = int(anchors[cursor % num_anchors])
                cursor += 1
                c = int(sample_class[a])
                if c in taken:
                    continue
                batch.append(c)
                must.append(a)
                taken.add(c)
                group = 1
                for j in negatives[a].tolist():
                    if group == size or len(batch) == h or j < 0:
                        break
                    cj = int(sample_class[j])
                    if cj >= 0 and cj not in taken:
                        batch.append(cj)
                        must.append(j)
                        taken.add(cj)
                        group += 1
            for c in rng.choice(self.num_classes, size=p, replace=False).tolist():
                if len(batch) == p:
                    break
                if c not in taken:
                    batch.append(c)
                    must.append(-1)
                    taken.add(c)
            out[s] = batch
            forced[s] = must
        return out, forced

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, k={self.k}, num_neighbours={self.num_neighbours}, "
            f"hard_fraction={self.hard_fraction}, group_size={self.group_size}, "
            f"skip_hardest={self.skip_hardest}, positive_ratio={self.positive_ratio}, "
            f"metric={self.metric!r}, backend={self.backend!r}, num_samples={self.num_samples}, "
            f"num_classes={self.num_classes}, num_refreshes={self.num_refreshes}, "
            f"seed={self.seed}, num_replicas={self.num_replicas}, rank={self.rank}, "
            f"small_classes={self.small_classes!r})"
        )
