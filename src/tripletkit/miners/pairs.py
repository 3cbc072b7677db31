"""Pair miners: the pairs of the multi-similarity loss and of the contrastive loss.

Each is a pure function (the single source of truth) with its ``nn.Module`` form beside it,
returning :class:`~tripletkit.types.Pairs`: positive pairs ``(anchor_pos, positive)`` and
negative pairs ``(anchor_neg, negative)``, each ordered row-major. A positive of anchor
``a`` is another sample with the same label, a negative a sample with another label. Every
function takes ``embeddings [N, D]`` and integer ``labels [N]``, then its hyper-parameters;
keyword-only: ``ref_embeddings [M, D]``, ``ref_labels [M]``, ``anchor_offset`` and
``normalize``. Memory is O(N M) plus the output. Mining runs without autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._batch import check_options, prepare
from .._checks import check_finite_real, to_host
from .._deprecation import refs_keyword_only
from .._masks import given_masks
from ..types import Pairs
from ._base import Miner

__all__ = [
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "multi_similarity_pairs",
    "pair_margin_pairs",
]


def _pair_batch(
    embeddings: Tensor,
    labels: Tensor,
    metric: str,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
    normalize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The detached distance matrix and the positive and negative masks."""
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        normalize=normalize,
    )
    return (b.distances(), *b.masks())


def _pairs(pos: Tensor, neg: Tensor) -> Pairs:
    """The True entries of both masks, row-major: both sizes in one host read."""
    n_pos, n_neg = to_host(torch.stack([pos.sum(), neg.sum()]))
    ap, p = torch.nonzero_static(pos, size=n_pos).unbind(1)
    an, n = torch.nonzero_static(neg, size=n_neg).unbind(1)
    return Pairs(ap, p, an, n)


@refs_keyword_only
def multi_similarity_pairs(
    embeddings: Tensor,
    labels: Tensor | None,
    epsilon: float = 0.1,
    metric: str = "cosine",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Pairs:
    """The pair mining of the multi-similarity loss (Wang, Han, Huang, Dong & Scott 2019,
    "Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning").

    With the cosine similarity ``S = 1 - d`` (``metric="cosine"``), a negative pair
    ``(a, n)`` is kept if ``S_an > min_p S_ap - epsilon`` (harder than the anchor's hardest
    positive, up to ``epsilon``) and a positive pair ``(a, p)`` if
    ``S_ap < max_n S_an + epsilon``. For the distance metrics the same rule reads
    ``d_an < max_p d_ap + epsilon`` and ``d_ap > min_n d_an - epsilon``; this distance form is
    what is computed for every metric (for cosine it is the similarity form rewritten). An
    anchor without positives keeps no negative pair and an anchor without negatives keeps no
    positive pair. The same pairs as pytorch-metric-learning's ``MultiSimilarityMiner``
    (there ordered by similarity within an anchor).

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        epsilon: the slack ``epsilon`` of both rules.
        metric: ``"cosine"`` (the paper's), ``"euclidean"`` or ``"sqeuclidean"``.
        normalize: L2-normalise the embeddings first (implied by ``"cosine"``).
        anchor_offset: the anchors are rows ``anchor_offset : anchor_offset + N`` of the
            references (their own rows are then not positives).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        :class:`~tripletkit.types.Pairs`; positive and negative pairs each ordered row-major
        (by anchor, then reference index).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: ``[P]``, ``[P]``, ``[Q]``, ``[Q]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
        >>> multi_similarity_pairs(x, torch.tensor([0, 0, 1, 1]), epsilon=0.1)
        Pairs(anchor_pos=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), anchor_neg=tensor([0, 1, 1, 2, 2, 3]), negative=tensor([2, 2, 3, 0, 1, 1]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    epsilon = check_finite_real(epsilon, "epsilon")
    d, pos, neg = _pair_batch(
        embeddings, labels, metric, ref_embeddings, ref_labels, anchor_offset, normalize
    )
    if d.numel() == 0:
        return Pairs.empty(d.device)
    inf = torch.full_like(d, math.inf)
    hardest_pos = torch.where(pos, d, -inf).amax(dim=1, keepdim=True)  # -inf: no positive
    hardest_neg = torch.where(neg, d, inf).amin(dim=1, keepdim=True)  # +inf: no negative
    return _pairs(pos & (d > hardest_neg - epsilon), neg & (d < hardest_pos + epsilon))


@refs_keyword_only
def pair_margin_pairs(
    embeddings: Tensor,
    labels: Tensor | None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Pairs:
    """The pairs with a non-zero contrastive loss: positive pairs with ``d > pos_margin`` and
    negative pairs with ``d < neg_margin`` (the terms of
    :func:`~tripletkit.losses.contrastive_loss` with the same margins that are not 0).

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        pos_margin: positive pairs closer than or at this distance are dropped.
        neg_margin: negative pairs at or beyond this distance are dropped.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        normalize: L2-normalise the embeddings first.
        anchor_offset: the anchors are rows ``anchor_offset : anchor_offset + N`` of the
            references (their own rows are then not positives).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        :class:`~tripletkit.types.Pairs`; positive and negative pairs each ordered row-major.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: ``[P]``, ``[P]``, ``[Q]``, ``[Q]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.8], [3.0]])
        >>> pair_margin_pairs(x, torch.tensor([0, 0, 1, 1]), pos_margin=0.1, neg_margin=1.0)
        Pairs(anchor_pos=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), anchor_neg=tensor([0, 1, 2, 2]), negative=tensor([2, 2, 0, 1]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    pos_margin = check_finite_real(pos_margin, "pos_margin")
    neg_margin = check_finite_real(neg_margin, "neg_margin")
    d, pos, neg = _pair_batch(
        embeddings, labels, metric, ref_embeddings, ref_labels, anchor_offset, normalize
    )
    return _pairs(pos & (d > pos_margin), neg & (d < neg_margin))


# ---------------------------------------------------------------------------------------------
# Module forms


class MultiSimilarityMiner(Miner):
    """The pair mining of the multi-similarity loss (Wang et al. 2019).

    With ``S = 1 - cosine distance``: negative pairs with ``S_an > min_p S_ap - epsilon`` and
    positive pairs with ``S_ap < max_n S_an + epsilon``; for the Euclidean metrics
    ``d_an < max_p d_ap + epsilon`` and ``d_ap > min_n d_an - epsilon``. See
    :func:`multi_similarity_pairs`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Pairs`, each side ordered row-major.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
        >>> MultiSimilarityMiner(epsilon=0.1)(x, torch.tensor([0, 0, 1, 1])).num_negative
        6
    """

    function = staticmethod(multi_similarity_pairs)

    def __init__(
        self, epsilon: float = 0.1, metric: str = "cosine", *, normalize: bool = False
    ) -> None:
        super().__init__(
            epsilon=check_finite_real(epsilon, "epsilon"),
            **check_options(metric=metric, normalize=normalize),
        )


class PairMarginMiner(Miner):
    """The pairs with a non-zero contrastive loss: positive pairs with ``d > pos_margin``,
    negative pairs with ``d < neg_margin``, for :class:`~tripletkit.losses.ContrastiveLoss`.
    See :func:`pair_margin_pairs`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Pairs`, each side ordered row-major.

    Examples:
        >>> import torch
        >>> from tripletkit.losses import ContrastiveLoss
        >>> x = torch.tensor([[0.0], [0.5], [0.8], [3.0]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> pairs = PairMarginMiner(pos_margin=0.0, neg_margin=1.0)(x, labels)
        >>> ContrastiveLoss(reduction="sum")(x, labels, pairs).backward()
    """

    function = staticmethod(pair_margin_pairs)

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        metric: str = "euclidean",
        *,
        normalize: bool = False,
    ) -> None:
        super().__init__(
            pos_margin=check_finite_real(pos_margin, "pos_margin"),
            neg_margin=check_finite_real(neg_margin, "neg_margin"),
            **check_options(metric=metric, normalize=normalize),
        )
