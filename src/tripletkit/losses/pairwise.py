"""Pairwise losses: the contrastive loss, the multi-similarity loss, the circle loss and the
supervised contrastive loss, each over every pair (fused over the ``N x M`` matrix, no pair
list) or over mined pairs, with their ``nn.Module`` forms.

A positive pair ``(a, j)``: ``j != a`` with the same label; a negative pair: another label.
Signatures: ``fn(embeddings, labels, pairs=None, <hyper-parameters>, reduction, *,
ref_embeddings=None, ref_labels=None, anchor_offset=None[, metric/normalize])``.

The multi-similarity, circle and supervised contrastive losses are defined on the cosine
similarity ``S = <x_a, x_j> / (|x_a| |x_j|)``, as in their papers (rows are always
L2-normalised, so they take no ``metric`` or ``normalize``). Each is a sum of per-anchor
terms, each a log-sum-exp over the anchor's positive and/or negative pairs computed stably
(masked entries never produce NaN or overflow, also for float16/bfloat16 inputs, which are
computed in float32); an anchor that is not counted contributes exactly 0 with a zero
gradient. Given ``pairs``, an anchor's positives and negatives are exactly the listed pairs
(a pair listed twice counts once), as pytorch-metric-learning's ``indices_tuple``.
"""

from __future__ import annotations

from torch import Tensor

from .._batch import check_options
from .._checks import (
    check_finite_real,
    check_positive_real,
    check_reduction,
)
from ..types import Pairs
from ._base import LossModule
from ._pairwise_functions import (  # the functions, re-exported under this path
    PairIndices,
    circle_loss,
    circle_parts,
    contrastive_loss,
    contrastive_parts,
    multi_similarity_loss,
    multi_similarity_parts,
    supcon_loss,
    supcon_parts,
)
from ._reduce import REDUCTIONS

__all__ = [
    "CircleLoss",
    "ContrastiveLoss",
    "MultiSimilarityLoss",
    "SupConLoss",
    "circle_loss",
    "circle_parts",
    "contrastive_loss",
    "contrastive_parts",
    "multi_similarity_loss",
    "multi_similarity_parts",
    "supcon_loss",
    "supcon_parts",
]


# ---------------------------------------------------------------------------------------------
# Module forms


class ContrastiveLoss(LossModule):
    """Module form of :func:`contrastive_loss`: ``loss(embeddings, labels, pairs=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; pairs: 4 x ``[P]``/``[Q]``.
        - output: ``[]``, or ``[P + Q]`` with ``reduction="none"``.

    Examples:
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


class _SimilarityLoss(LossModule):
    """A similarity loss module: ``loss(embeddings, labels, pairs=None, ref_embeddings=None,
    ref_labels=None, *, anchor_offset=None)``."""

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        pairs: PairIndices | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        anchor_offset: int | None = None,
    ) -> Tensor:
        return type(self).function(
            embeddings,
            labels,
            pairs,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            **self.options(),
        )


class MultiSimilarityLoss(_SimilarityLoss):
    """Module form of :func:`multi_similarity_loss` (Wang et al. 2019):
    ``loss(embeddings, labels, pairs=None)``, e.g. with a
    :class:`~tripletkit.miners.MultiSimilarityMiner`'s pairs.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; pairs: 4 x ``[P]``/``[Q]``; optional
          ref_embeddings ``[M, D]``, ref_labels ``[M]``.
        - output: ``[]``, or ``[N]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from tripletkit.miners import MultiSimilarityMiner
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> loss = MultiSimilarityLoss()(x, labels, MultiSimilarityMiner(0.1)(x, labels))
        >>> round(loss.item(), 4)
        0.3394
        >>> loss.backward()
    """

    function = staticmethod(multi_similarity_loss)

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            alpha=check_positive_real(alpha, "alpha"),
            beta=check_positive_real(beta, "beta"),
            base=check_finite_real(base, "base"),
            reduction=check_reduction(reduction, REDUCTIONS),
        )


class CircleLoss(_SimilarityLoss):
    """Module form of :func:`circle_loss` (Sun et al. 2020): ``loss(embeddings, labels,
    pairs=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; pairs: 4 x ``[P]``/``[Q]``; optional
          ref_embeddings ``[M, D]``, ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> CircleLoss(m=0.25, gamma=256.0)(x, torch.tensor([0, 0, 1, 1]))
        tensor(142.2848)
    """

    function = staticmethod(circle_loss)

    def __init__(self, m: float = 0.4, gamma: float = 80.0, reduction: str = "mean") -> None:
        super().__init__(
            m=check_finite_real(m, "m"),
            gamma=check_positive_real(gamma, "gamma"),
            reduction=check_reduction(reduction, REDUCTIONS),
        )


class SupConLoss(_SimilarityLoss):
    """Module form of :func:`supcon_loss` (Khosla et al. 2020): ``loss(embeddings, labels,
    pairs=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; pairs: 4 x ``[P]``/``[Q]``; optional
          ref_embeddings ``[M, D]``, ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> SupConLoss(temperature=0.1)(x, torch.tensor([0, 0, 1, 1]))
        tensor(0.9668)
    """

    function = staticmethod(supcon_loss)

    def __init__(self, temperature: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(
            temperature=check_positive_real(temperature, "temperature"),
            reduction=check_reduction(reduction, REDUCTIONS),
        )
