"""Pairwise losses: the contrastive loss over every pair (fused over the ``N x M`` matrix) or
over mined pairs, and its ``nn.Module`` form.

A positive pair ``(a, j)``: ``j != a`` with the same label; a negative pair: another label.
Signatures: ``fn(embeddings, labels, pairs=None, <margins>, metric, reduction, *,
ref_embeddings=None, ref_labels=None, anchor_offset=None, normalize=False)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batch import check_options, prepare
from .._checks import check_finite_real, check_index_tuple, check_reduction
from ..distances import _paired_distance_unchecked
from ..types import Pairs
from ._base import LossModule
from ._reduce import REDUCTIONS, Parts, reduce_parts, reduce_terms

__all__ = ["ContrastiveLoss", "contrastive_loss", "contrastive_parts"]


def contrastive_parts(
    embeddings: Tensor,
    labels: Tensor,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
) -> Parts:
    """The un-reduced contrastive loss over every pair: see :func:`contrastive_loss`.

    Returns:
        :class:`~tripletkit.losses.Parts` ``(total, n_valid, n_active)``: the 0-dim sum of
        the terms of every anchor-reference pair other than a sample with itself (in the
        autograd graph), the number of those pairs and the number of positive terms; reduce
        with :func:`~tripletkit.losses.reduce_parts`.

    Example:
        >>> import torch
        >>> total, n_valid, n_active = contrastive_parts(
        ...     torch.tensor([[0.0], [0.5], [3.0]]), torch.tensor([0, 0, 1]))
        >>> total.item(), int(n_valid), int(n_active)
        (1.0, 6, 2)
    """
    pos_margin = check_finite_real(pos_margin, "pos_margin")
    neg_margin = check_finite_real(neg_margin, "neg_margin")
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        normalize=normalize,
    )
    pos, neg = b.masks()
    dist = b.distances(grad=True)
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    terms = torch.where(pos, F.relu(dist - pos_margin), zero)
    terms = terms + torch.where(neg, F.relu(neg_margin - dist), zero)
    n_valid = pos.sum() + neg.sum()
    return Parts(terms.sum(), n_valid, (terms > 0).sum())


def contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    pairs: Pairs | tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
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
        pos_margin, neg_margin: the margins of the positive and negative terms.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[P + Q]``;
            needs explicit pairs).
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        anchor_offset: with ``pairs=None`` and references given: the anchors are rows
            ``anchor_offset : anchor_offset + N`` of the references, so the pairs of a sample
            with itself are excluded (see :func:`~tripletkit.distributed.sharded_loss`).
        normalize: L2-normalise the embeddings first.

    Returns:
        0-dim loss, or ``[P + Q]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> contrastive_loss(x, torch.tensor([0, 0, 1, 1]), reduction="sum")  # 2 x (0.5 + 4.4 + 0.9 + 0.4)
        tensor(12.4000)
    """
    check_reduction(reduction, REDUCTIONS)
    pos_margin = check_finite_real(pos_margin, "pos_margin")
    neg_margin = check_finite_real(neg_margin, "neg_margin")
    check_options(metric=metric)
    if pairs is None:
        if reduction == "none":
            raise ValueError("reduction='none' needs explicit pairs (e.g. from PairMarginMiner)")
        parts = contrastive_parts(
            embeddings,
            labels,
            pos_margin,
            neg_margin,
            metric,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            normalize=normalize,
        )
        return reduce_parts(*parts, reduction)
    if anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with pairs=None (explicit pairs name their rows)"
        )
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        metric=None,
        normalize=normalize,
    )
    emb, ref = b.embeddings, b.ref_embeddings
    ap, p, an, n = check_index_tuple(pairs, "pairs", (4,), emb.shape[0], ref.shape[0], emb.device)
    terms = torch.cat(
        [
            F.relu(_paired_distance_unchecked(emb[ap], ref[p], metric) - pos_margin),
            F.relu(neg_margin - _paired_distance_unchecked(emb[an], ref[n], metric)),
        ]
    )
    return reduce_terms(terms, reduction, emb)


class ContrastiveLoss(LossModule):
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

    function = staticmethod(contrastive_loss)

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        metric: str = "euclidean",
        reduction: str = "mean",
        *,
        normalize: bool = False,
    ) -> None:
        super().__init__(
            pos_margin=check_finite_real(pos_margin, "pos_margin"),
            neg_margin=check_finite_real(neg_margin, "neg_margin"),
            reduction=check_reduction(reduction, REDUCTIONS),
            **check_options(metric=metric, normalize=normalize),
        )

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        pairs: Pairs | tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        anchor_offset: int | None = None,
    ) -> Tensor:
        return contrastive_loss(
            embeddings,
            labels,
            pairs,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            **self.options(),
        )
