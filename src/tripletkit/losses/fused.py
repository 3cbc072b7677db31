"""Fused triplet losses: mining and loss in one pass, never listing the N³ triplets.

Each loss is split in two pure steps: ``*_parts`` returns ``(total, n_valid, n_active)``
(the sum of the loss terms, in the autograd graph, and two counts) and :func:`reduce_parts`
turns them into the requested reduction. The split is what lets
:mod:`tripletkit.distributed` all-reduce the counts across replicas.

Definitions: see :mod:`tripletkit.mining`. Hinge ``max(0, d_ap - d_an + m)``; soft margin
``softplus(d_ap - d_an)`` (Hermans et al. 2017). When there is no valid triplet (one class,
all labels distinct, empty batch) every loss is 0, still part of the graph, with a zero
gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batch import prepare
from .._checks import check_margin, check_reduction
from ..kernels import batch_all_hinge, batch_all_soft, batch_hard, semi_hard

__all__ = [
    "batch_all_parts",
    "batch_all_triplet_loss",
    "batch_hard_parts",
    "batch_hard_triplet_loss",
    "reduce_parts",
    "semi_hard_parts",
    "semi_hard_triplet_loss",
    "triplet_terms",
]

#: ``(total, n_valid, n_active)``: a 0-dim sum of terms and two integer counts.
Parts = tuple[Tensor, int, int]

_FUSED_REDUCTIONS = ("mean", "sum", "mean_nonzero")


def reduce_parts(total: Tensor, n_valid: int, n_active: int, reduction: str) -> Tensor:
    """``"sum"``: the total; ``"mean"``: total / n_valid; ``"mean_nonzero"``: total /
    n_active (the mean over terms > 0). Both means are 0 when their count is 0.

    Shape:
        - total: ``[]`` -> ``[]``.

    Example:
        >>> reduce_parts(torch.tensor(3.0), n_valid=6, n_active=2, reduction="mean_nonzero")
        tensor(1.5000)
    """
    if reduction == "sum":
        return total
    count = n_valid if reduction == "mean" else n_active
    return total / max(count, 1)


def triplet_terms(d_ap: Tensor, d_an: Tensor, margin: float, soft_margin: bool) -> Tensor:
    """Per-triplet loss: ``max(0, d_ap - d_an + margin)`` or ``softplus(d_ap - d_an)``.

    Shape:
        - d_ap, d_an: ``[T]`` -> ``[T]``.
    """
    if soft_margin:
        return F.softplus(d_ap - d_an)
    return F.relu(d_ap - d_an + margin)


class _BatchAllSum(torch.autograd.Function):
    """Sum of batch-all terms as a function of the distance matrix. Forward asks a kernel
    for the sum, the counts and d(sum)/d(dist); backward scales that gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        dist: Tensor,
        labels: Tensor,
        ref_labels: Tensor,
        self_index: Tensor,
        margin: float,
        soft_margin: bool,
        backend: str,
    ) -> tuple[Tensor, Tensor]:
        if soft_margin:
            total, n_valid, grad = batch_all_soft(dist, labels, ref_labels, self_index, backend)
            n_active = n_valid
        else:
            total, n_valid, n_active, grad = batch_all_hinge(
                dist, labels, ref_labels, self_index, margin, backend
            )
        counts = torch.tensor([n_valid, n_active], dtype=torch.int64)
        ctx.mark_non_differentiable(counts)
        ctx.save_for_backward(grad)
        return total.to(dist.device), counts

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_counts: Tensor) -> tuple:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None, None, None, None


def batch_all_parts(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> Parts:
    """The un-reduced batch-all loss: see :func:`batch_all_triplet_loss`."""
    margin = check_margin(margin)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    total, counts = _BatchAllSum.apply(
        b.dist, b.labels, b.ref_labels, b.self_index, margin, bool(soft_margin), backend
    )
    return total, int(counts[0]), int(counts[1])


def batch_all_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean_nonzero",
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> Tensor:
    """Batch-all triplet loss over every valid triplet, without listing them.

    Hermans, Beyer & Leibe 2017 ("In Defense of the Triplet Loss"); with
    ``reduction="mean_nonzero"`` this is their "BA≠0" variant. The hinge version runs in
    O(N M log M) time and O(N M) memory at any label distribution (per anchor: one sort of
    the negatives, then a binary search and a prefix sum per positive); the soft-margin
    version sums every term in bounded-memory chunks.

    Args:
        embeddings: ``[N, D]`` float embeddings (float16/bfloat16 computed in float32).
        labels: ``[N]`` integer class labels.
        margin: ``m`` of the hinge ``max(0, d_ap - d_an + m)``; ignored with ``soft_margin``.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        soft_margin: use ``softplus(d_ap - d_an)`` instead of the hinge.
        reduction: ``"mean"`` (over valid triplets), ``"sum"`` or ``"mean_nonzero"``
            (over triplets with a positive loss; 0 when there are none).
        normalize: L2-normalise the embeddings first.
        backend: ``"auto"`` (numba on CPU, torch elsewhere), ``"torch"`` or ``"numba"``.
        ref_embeddings: optional ``[M, D]`` references that positives and negatives are
            drawn from (e.g. a cross-batch memory), with ``ref_labels`` ``[M]``.
        anchor_offset: when the anchors are rows ``anchor_offset : anchor_offset + N`` of
            the references, the pairs of a sample with itself are excluded.

    Returns:
        0-dim loss tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6]])
        >>> loss = batch_all_triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.2, reduction="sum")
        >>> round(loss.item(), 4)  # (0, 1, 2): 0.5 - 0.6 + 0.2 ; (1, 0, 2): 0.5 - 0.1 + 0.2
        0.7
    """
    check_reduction(reduction, _FUSED_REDUCTIONS)
    parts = batch_all_parts(
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        normalize=normalize,
        backend=backend,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
    )
    return reduce_parts(*parts, reduction)


def _mined_parts(
    select: Callable[..., tuple[Tensor, Tensor, Tensor]],
    embeddings: Tensor,
    labels: Tensor,
    margin: float,
    metric: str,
    soft_margin: bool,
    normalize: bool,
    backend: str,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
    return_terms: bool,
) -> Parts | Tensor:
    """Mine one triplet per anchor (or pair) with a selection kernel, then gather its
    distances from the matrix in the graph: the loss's gradient flows through them."""
    margin = check_margin(margin)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    a, p, n = select(b.dist.detach(), b.labels, b.ref_labels, b.self_index, backend)
    # one gather for both distances: a single N x M gradient buffer in backward
    d_ap, d_an = b.dist[a.repeat(2), torch.cat([p, n])].view(2, -1)
    terms = triplet_terms(d_ap, d_an, margin, soft_margin)
    if return_terms:
        return terms
    # With nothing selected, dist.sum() * 0 keeps the loss in the graph with a zero gradient.
    total = terms.sum() if terms.numel() else b.dist.sum() * 0
    return total, int(terms.shape[0]), int((terms > 0).sum())


def _reduced(parts: Parts | Tensor, reduction: str) -> Tensor:
    return parts if isinstance(parts, Tensor) else reduce_parts(*parts, reduction)


def batch_hard_parts(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    return_terms: bool = False,
) -> Parts | Tensor:
    """The un-reduced batch-hard loss: see :func:`batch_hard_triplet_loss`."""
    return _mined_parts(
        batch_hard,
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        normalize,
        backend,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        return_terms,
    )


def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017), in O(N M).

    For each anchor with at least one positive and one negative, one term with its farthest
    positive and nearest negative; anchors lacking either are excluded (not counted as 0).
    ``soft_margin=True`` gives their "BH soft-margin" loss.

    Args:
        embeddings, labels, margin, metric, soft_margin, normalize, backend,
        ref_embeddings, ref_labels, anchor_offset: as in :func:`batch_all_triplet_loss`.
        reduction: ``"mean"`` (over the anchors kept), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per kept anchor, anchors ascending: ``[A]``).

    Returns:
        0-dim loss, or ``[A]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """
    check_reduction(reduction, (*_FUSED_REDUCTIONS, "none"))
    parts = batch_hard_parts(
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        normalize=normalize,
        backend=backend,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        return_terms=reduction == "none",
    )
    return _reduced(parts, reduction)


def semi_hard_parts(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    return_terms: bool = False,
) -> Parts | Tensor:
    """The un-reduced semi-hard loss: see :func:`semi_hard_triplet_loss`."""
    return _mined_parts(
        semi_hard,
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        normalize,
        backend,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        return_terms,
    )


def semi_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    *,
    normalize: bool = False,
    backend: str = "auto",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
) -> Tensor:
    """Semi-hard triplet loss (Schroff, Kalenichenko & Philbin 2015, "FaceNet"), with the
    negative selection of TensorFlow-Addons' ``triplet_semihard_loss``.

    For every positive pair ``(a, p)`` whose anchor has a negative: the nearest negative
    farther than the positive (``d_an > d_ap``), or the farthest negative when none is.
    ``"mean"`` averages the hinge over those pairs. Unlike TensorFlow-Addons, a batch without
    positive pairs gives 0, not NaN. O(N M log M) time, O(N M) memory.

    Args:
        embeddings, labels, margin, metric, soft_margin, normalize, backend,
        ref_embeddings, ref_labels, anchor_offset: as in :func:`batch_all_triplet_loss`.
        reduction: ``"mean"`` (over those pairs), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per pair, ordered by anchor then positive: ``[P]``).

    Returns:
        0-dim loss, or ``[P]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> semi_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.0000, 4.0000, 0.1000])
    """
    check_reduction(reduction, (*_FUSED_REDUCTIONS, "none"))
    parts = semi_hard_parts(
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        normalize=normalize,
        backend=backend,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        return_terms=reduction == "none",
    )
    return _reduced(parts, reduction)
