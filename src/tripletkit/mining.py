"""Triplet mining as pure functions: the single source of truth behind the miner modules.

Definitions (``d_ap``: anchor-positive distance, ``d_an``: anchor-negative distance,
``m``: margin). A positive of anchor ``a`` is another sample with the same label; a negative
is a sample with a different label; a *valid* triplet is ``(a, p, n)`` with ``p`` a positive
and ``n`` a negative of ``a``. Ties between equal distances are broken by the lowest index.

Every function takes ``embeddings [N, D]`` and int ``labels [N]``, optionally a reference
set ``ref_embeddings [M, D]``, ``ref_labels [M]`` that positives and negatives are drawn
from (then ``positive`` and ``negative`` index the references), and returns
:class:`~tripletkit.types.Triplets`. Memory is O(N M + T) for T output rows; no
``N x M x M`` tensor is built.
"""

from __future__ import annotations

from torch import Tensor

from ._batch import no_grad_prepare
from ._checks import check_choice, check_margin
from .kernels import batch_hard, semi_hard, triplet_region
from .types import Triplets

__all__ = [
    "TYPES_OF_TRIPLETS",
    "batch_all_triplets",
    "batch_hard_triplets",
    "semi_hard_triplets",
    "triplet_margin_triplets",
]

#: ``type_of_triplets`` values of :func:`triplet_margin_triplets` (pytorch-metric-learning's).
TYPES_OF_TRIPLETS = ("all", "hard", "semihard", "easy")


def batch_all_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    metric: str = "euclidean",
    active_only: bool = True,
    normalize: bool = False,
    backend: str = "auto",
    anchor_offset: int | None = None,
) -> Triplets:
    """Every valid triplet, or with ``active_only`` those with ``d_ap - d_an + m > 0``
    (the non-zero terms of Hermans et al.'s batch-all loss, "BA≠0").

    Rows are ordered by anchor, then positive, then increasing ``d_an``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [1.0]])
        >>> batch_all_triplets(x, torch.tensor([0, 0, 1]), margin=0.2, active_only=False)
        Triplets(anchor=tensor([0, 1]), positive=tensor([1, 0]), negative=tensor([2, 2]))
    """
    margin = check_margin(margin)
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    region = "active" if active_only else "valid"
    return Triplets(
        *triplet_region(b.dist, b.labels, b.ref_labels, b.self_index, margin, region, backend)
    )


def batch_hard_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    metric: str = "euclidean",
    normalize: bool = False,
    backend: str = "auto",
    anchor_offset: int | None = None,
) -> Triplets:
    """Batch-hard triplets (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    One triplet per anchor that has at least one positive and one negative: its farthest
    positive and its nearest negative. Anchors lacking either are left out.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [0.5], [1.0], [3.0]])
        >>> batch_hard_triplets(x, torch.tensor([0, 0, 0, 1, 2]))
        Triplets(anchor=tensor([0, 1, 2]), positive=tensor([2, 2, 0]), negative=tensor([3, 3, 3]))
    """
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    return Triplets(*batch_hard(b.dist, b.labels, b.ref_labels, b.self_index, backend))


def semi_hard_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    metric: str = "euclidean",
    active_only: bool = False,
    normalize: bool = False,
    backend: str = "auto",
    anchor_offset: int | None = None,
) -> Triplets:
    """Semi-hard triplets as FaceNet (Schroff et al. 2015) and TensorFlow-Addons mine them.

    For every positive pair ``(a, p)`` whose anchor has a negative: the negative with the
    smallest ``d_an`` among those with ``d_an > d_ap``; when none is farther than the
    positive, the negative with the largest ``d_an``. With ``active_only`` only the rows
    whose hinge ``d_ap - d_an + m`` is positive are kept (the margin plays no other role).

    Rows are ordered by anchor, then positive.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> semi_hard_triplets(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), negative=tensor([2, 3, 0, 1]))
    """
    margin = check_margin(margin)
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    a, p, n = semi_hard(b.dist, b.labels, b.ref_labels, b.self_index, backend)
    if active_only:
        keep = b.dist[a, p] - b.dist[a, n] + margin > 0
        a, p, n = a[keep], p[keep], n[keep]
    return Triplets(a, p, n)


def triplet_margin_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    type_of_triplets: str = "all",
    metric: str = "euclidean",
    normalize: bool = False,
    backend: str = "auto",
    anchor_offset: int | None = None,
) -> Triplets:
    """Valid triplets by region of ``t = d_an - d_ap``, with pytorch-metric-learning's
    ``TripletMarginMiner`` regions: ``"all"`` ``t <= m``; ``"hard"`` ``t <= 0``;
    ``"semihard"`` ``0 < t <= m``; ``"easy"`` ``t > m``.

    Rows are ordered by anchor, then positive, then increasing ``d_an``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> triplet_margin_triplets(x, torch.tensor([0, 0, 1, 1]), type_of_triplets="hard")
        Triplets(anchor=tensor([1, 2, 2]), positive=tensor([0, 3, 3]), negative=tensor([2, 1, 0]))
    """
    margin = check_margin(margin)
    check_choice("type_of_triplets", type_of_triplets, TYPES_OF_TRIPLETS)
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    return Triplets(
        *triplet_region(
            b.dist, b.labels, b.ref_labels, b.self_index, margin, type_of_triplets, backend
        )
    )
