"""The fused triplet losses' autograd glue: kernels compute sums, counts and gradients with
respect to the distance matrix; this module hands them to autograd.

- Batch-all: :class:`_BatchAllSum` asks a kernel for the sum of every valid triplet's term,
  the counts and ``d(sum) / d(dist)``; backward only scales that gradient. No triplet is
  listed.
- Batch-hard and semi-hard: a selection kernel picks one negative per anchor (or positive
  pair) on the detached matrix; the terms are then read from the matrix in the graph, so the
  gradient flows through the selected distances only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batch import Batch
from ..kernels import batch_all_hinge, batch_all_soft

__all__ = ["batch_all_sum", "mined_terms", "triplet_terms"]

#: A selection kernel: ``(dist, labels, ref_labels, self_index, backend) -> (a, p, n)``.
Selector = Callable[[Tensor, Tensor, Tensor, Tensor, str], tuple[Tensor, Tensor, Tensor]]


def triplet_terms(d_ap: Tensor, d_an: Tensor, margin: float, soft_margin: bool) -> Tensor:
    """Per-triplet loss: ``max(0, d_ap - d_an + margin)`` or ``softplus(d_ap - d_an)``.

    Shape:
        - d_ap, d_an: ``[T]`` -> ``[T]``.

    Example:
        >>> triplet_terms(torch.tensor([0.5]), torch.tensor([0.6]), 0.2, soft_margin=False)
        tensor([0.1000])
    """
    if soft_margin:
        return F.softplus(d_ap - d_an)
    return F.relu(d_ap - d_an + margin)


class _BatchAllSum(torch.autograd.Function):
    """Sum of batch-all terms as a function of the distance matrix."""

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


def batch_all_sum(b: Batch, margin: float, soft_margin: bool) -> tuple[Tensor, int, int]:
    """``(total, n_valid, n_active)`` of the batch-all loss of a prepared batch."""
    total, counts = _BatchAllSum.apply(
        b.distances, b.labels, b.ref_labels, b.self_index, margin, soft_margin, b.backend
    )
    return total, int(counts[0]), int(counts[1])


def mined_terms(b: Batch, select: Selector, margin: float, soft_margin: bool) -> Tensor:
    """Mine one triplet per anchor (or positive pair) with ``select``, then the terms of the
    selected triplets ``[T]``, read from the distance matrix in the graph."""
    dist = b.distances
    a, p, n = select(dist.detach(), b.labels, b.ref_labels, b.self_index, b.backend)
    # one gather for both distances: a single N x M gradient buffer in backward
    d_ap, d_an = dist[a.repeat(2), torch.cat([p, n])].view(2, -1)
    return triplet_terms(d_ap, d_an, margin, soft_margin)
