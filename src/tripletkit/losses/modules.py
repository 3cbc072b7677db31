"""Loss modules over explicit triplets or pairs (or all of them when none are given)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._batch import prepare, prepare_rows
from .._checks import (
    check_bool,
    check_choice,
    check_indices,
    check_margin,
    check_reduction,
)
from ..distances import METRICS, paired_distance
from ..kernels import BACKENDS
from ..types import Pairs, Triplets
from .fused import batch_all_triplet_loss, reduce_parts, triplet_terms

__all__ = [
    "ContrastiveLoss",
    "TripletMarginLoss",
    "contrastive_loss",
    "contrastive_parts",
    "triplet_margin_loss",
]

_REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")


def _reduce_terms(terms: Tensor, reduction: str, graph_root: Tensor) -> Tensor:
    if reduction == "none":
        return terms
    total = terms.sum() + graph_root.sum() * 0  # in the graph even with no rows
    return reduce_parts(total, int(terms.shape[0]), int((terms > 0).sum()), reduction)


def _unpack(indices: object, n: int, kind: str) -> Sequence[object]:
    if not isinstance(indices, (tuple, list)) or len(indices) != n:
        raise TypeError(
            f"{kind} must be a tuple of {n} index tensors, got {type(indices).__name__}"
        )
    return indices


def triplet_margin_loss(
    embeddings: Tensor,
    labels: Tensor,
    triplets: Triplets | tuple[Tensor, Tensor, Tensor] | None = None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    *,
    normalize: bool = False,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Triplet margin loss over given triplets (Weinberger & Saul 2009; Schroff et al. 2015).

    ``max(0, d(a, p) - d(a, n) + margin)`` (or ``softplus(d(a, p) - d(a, n))`` with
    ``soft_margin``) per row of ``triplets``; distances are computed for those rows only.
    With ``triplets=None`` every valid triplet is used, through the fused
    :func:`~tripletkit.losses.batch_all_triplet_loss` (no triplet is listed).

    Args:
        embeddings: ``[N, D]``. labels: ``[N]`` (only used when ``triplets`` is None).
        triplets: ``Triplets`` or any 3-tuple of ``[T]`` index tensors, e.g. a miner's
            output; positives and negatives index ``ref_embeddings`` when given.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[T]``, in
            the order of the triplets; needs explicit triplets).

    Returns:
        0-dim loss, or ``[T]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tripletkit.mining import batch_hard_triplets
        >>> x, y = torch.tensor([[0.0], [0.5], [0.6], [5.0]]), torch.tensor([0, 0, 1, 1])
        >>> triplet_margin_loss(x, y, batch_hard_triplets(x, y), margin=0.2, reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """
    check_reduction(reduction, _REDUCTIONS)
    margin = check_margin(margin)
    check_choice("metric", metric, METRICS)
    if triplets is None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' needs explicit triplets (e.g. from BatchAllMiner(active_only=False))"
            )
        return batch_all_triplet_loss(
            embeddings,
            labels,
            margin,
            metric,
            soft_margin,
            reduction,
            normalize=normalize,
            backend=backend,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
        )
    emb, _, ref, _ = prepare_rows(
        embeddings, labels, ref_embeddings, ref_labels, normalize=normalize
    )
    a, p, n = _unpack(triplets, 3, "triplets")
    a = check_indices(a, "triplets.anchor", emb.shape[0], emb.device)
    p = check_indices(p, "triplets.positive", ref.shape[0], emb.device)
    n = check_indices(n, "triplets.negative", ref.shape[0], emb.device)
    if not a.shape == p.shape == n.shape:
        raise ValueError(
            f"triplet index tensors differ in length: {a.shape[0]}, {p.shape[0]}, {n.shape[0]}"
        )
    anchors = emb[a]
    terms = triplet_terms(
        paired_distance(anchors, ref[p], metric),
        paired_distance(anchors, ref[n], metric),
        margin,
        soft_margin,
    )
    return _reduce_terms(terms, reduction, emb)


def contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    pairs: Pairs | tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    reduction: str = "mean",
    *,
    normalize: bool = False,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006), with a positive margin.

    ``max(0, d - pos_margin)`` for a positive pair and ``max(0, neg_margin - d)`` for a
    negative pair. With ``pairs=None`` every ordered pair ``i != j`` of the batch is used
    (or every anchor-reference pair when references are given) and ``"mean"`` is over all
    of them; with explicit ``pairs`` the terms are the positive pairs' then the negative
    pairs', in order.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        pairs: ``Pairs`` or any 4-tuple ``(anchor_pos [P], positive [P], anchor_neg [Q],
            negative [Q])``, e.g. a pair miner's output.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[P + Q]``;
            needs explicit pairs).
        anchor_offset: with ``pairs=None`` and references given: the anchors are rows
            ``anchor_offset : anchor_offset + N`` of the references, so the pairs of a sample
            with itself are excluded (see :func:`~tripletkit.distributed.sharded_loss`).

    Returns:
        0-dim loss, or ``[P + Q]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> contrastive_loss(x, torch.tensor([0, 0, 1, 1]), reduction="sum")  # 2 x (0.5 + 4.4 + 0.9 + 0.4)
        tensor(12.4000)
    """
    check_reduction(reduction, _REDUCTIONS)
    pos_margin = check_margin(pos_margin, "pos_margin")
    neg_margin = check_margin(neg_margin, "neg_margin")
    check_choice("metric", metric, METRICS)
    if pairs is None:
        if reduction == "none":
            raise ValueError("reduction='none' needs explicit pairs (e.g. from PairMarginMiner)")
        parts = contrastive_parts(
            embeddings,
            labels,
            pos_margin,
            neg_margin,
            metric,
            normalize=normalize,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
        )
        return reduce_parts(*parts, reduction)
    if anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with pairs=None (explicit pairs name their rows)"
        )
    emb, _, ref, _ = prepare_rows(
        embeddings, labels, ref_embeddings, ref_labels, normalize=normalize
    )
    ap, p, an, n = _unpack(pairs, 4, "pairs")
    ap = check_indices(ap, "pairs.anchor_pos", emb.shape[0], emb.device)
    p = check_indices(p, "pairs.positive", ref.shape[0], emb.device)
    an = check_indices(an, "pairs.anchor_neg", emb.shape[0], emb.device)
    n = check_indices(n, "pairs.negative", ref.shape[0], emb.device)
    if ap.shape != p.shape or an.shape != n.shape:
        raise ValueError("pairs: anchor_pos/positive and anchor_neg/negative must match in length")
    terms = torch.cat(
        [
            F.relu(paired_distance(emb[ap], ref[p], metric) - pos_margin),
            F.relu(neg_margin - paired_distance(emb[an], ref[n], metric)),
        ]
    )
    return _reduce_terms(terms, reduction, emb)


def contrastive_parts(
    embeddings: Tensor,
    labels: Tensor,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    *,
    normalize: bool = False,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> tuple[Tensor, int, int]:
    """The un-reduced contrastive loss over every pair: see :func:`contrastive_loss`.

    Returns:
        ``(total, n_valid, n_active)``: the 0-dim sum of the terms of every anchor-reference
        pair other than a sample with itself (in the autograd graph), the number of those
        pairs and the number of positive terms; reduce with
        :func:`~tripletkit.losses.reduce_parts`.

    Example:
        >>> import torch
        >>> total, n_valid, n_active = contrastive_parts(
        ...     torch.tensor([[0.0], [0.5], [3.0]]), torch.tensor([0, 0, 1]))
        >>> total.item(), n_valid, n_active
        (1.0, 6, 2)
    """
    pos_margin = check_margin(pos_margin, "pos_margin")
    neg_margin = check_margin(neg_margin, "neg_margin")
    b = prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    same = b.labels[:, None] == b.ref_labels[None, :]
    valid = torch.ones_like(same)
    rows = torch.nonzero(b.self_index >= 0).squeeze(1)
    valid[rows, b.self_index[rows]] = False
    terms = torch.where(same, F.relu(b.dist - pos_margin), F.relu(neg_margin - b.dist))
    terms = torch.where(valid, terms, torch.zeros_like(terms))
    return terms.sum(), int(valid.sum()), int((terms > 0).sum())


class TripletMarginLoss(nn.Module):
    """Module form of :func:`triplet_margin_loss`: ``loss(embeddings, labels, triplets=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; triplets: 3 x ``[T]``.
        - output: ``[]``, or ``[T]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tripletkit.miners import BatchHardMiner
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> loss = TripletMarginLoss(margin=0.2)(x, labels, BatchHardMiner()(x, labels))
        >>> loss.backward()
    """

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        soft_margin: bool = False,
        reduction: str = "mean",
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.margin = check_margin(margin)
        self.metric = check_choice("metric", metric, METRICS)
        self.soft_margin = bool(soft_margin)
        self.reduction = check_reduction(reduction, _REDUCTIONS)
        self.normalize = check_bool(normalize, "normalize")
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        triplets: Triplets | tuple[Tensor, Tensor, Tensor] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return triplet_margin_loss(
            embeddings,
            labels,
            triplets,
            self.margin,
            self.metric,
            self.soft_margin,
            self.reduction,
            normalize=self.normalize,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, metric={self.metric!r}, soft_margin={self.soft_margin}, "
            f"reduction={self.reduction!r}"
        )


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss`: ``loss(embeddings, labels, pairs=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; pairs: 4 x ``[P]``/``[Q]``.
        - output: ``[]``, or ``[P + Q]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [3.0]])
        >>> ContrastiveLoss(neg_margin=1.0, reduction="sum")(x, torch.tensor([0, 0, 1]))
        tensor(1.)
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        metric: str = "euclidean",
        reduction: str = "mean",
        *,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.pos_margin = check_margin(pos_margin, "pos_margin")
        self.neg_margin = check_margin(neg_margin, "neg_margin")
        self.metric = check_choice("metric", metric, METRICS)
        self.reduction = check_reduction(reduction, _REDUCTIONS)
        self.normalize = check_bool(normalize, "normalize")

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        pairs: Pairs | tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return contrastive_loss(
            embeddings,
            labels,
            pairs,
            self.pos_margin,
            self.neg_margin,
            self.metric,
            self.reduction,
            normalize=self.normalize,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
        )

    def extra_repr(self) -> str:
        return (
            f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, "
            f"metric={self.metric!r}, reduction={self.reduction!r}"
        )
