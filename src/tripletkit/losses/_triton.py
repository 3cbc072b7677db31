"""Autograd glue of the fused losses on ``backend="triton"`` (issue 18): the results of
:mod:`._fused` without the ``[N, M]`` matrix, from the kernels of
:mod:`tripletkit.kernels.triton_backend`.

- Batch-all: :class:`_TritonBatchAll` keeps the embeddings and the kernels' ``O(N W)``
  per-anchor state for backward, where a second streaming pass accumulates their gradient.
  The cosine metric normalises the embeddings in the graph first, as the in-memory matrix
  does.
- Batch-hard and semi-hard: the kernels give the selection in the torch backend's layouts
  (a ``valid`` mask, no data-dependent shape); the selected distances are then recomputed
  from the rows (``O(N K D)``), as :func:`._fused.mined_terms` does for small selections, so
  their values and gradients are the difference form's.

Counts stay 0-dim int64 tensors on the device and nothing reads a device value on the host,
except the batch's largest number of positives when neither the checks nor
``max_positives`` gave it (one read, as the torch backend's soft-margin loss does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._batch import Batch
from .._checks import to_host
from ..distances import _paired_distance_unchecked as paired
from ..kernels import triton_backend
from ._fused import triplet_terms
from ._reduce import keep_in_graph
from ._streaming import _inputs

__all__ = ["batch_all_sum", "mined_terms"]


def _width(b: Batch) -> int:
    """:attr:`Batch.width`, or the batch's largest number of positives (one host read)."""
    if b.width is not None:
        return b.width
    if torch.compiler.is_compiling():
        raise ValueError(
            "backend='triton' needs max_positives= under torch.compile (an upper bound on any "
            "anchor's number of positives, e.g. k - 1 for P x K batches)"
        )
    counts = b.positive_counts()
    return int(to_host(counts.max().reshape(1))[0]) if counts.numel() else 0


#: ``(labels, ref_labels, self_index, metric, margin, soft, width)``.
_Args = tuple[Tensor, Tensor, Tensor, str, "float | Tensor", bool, int]


class _TritonBatchAll(torch.autograd.Function):
    """Sum of the batch-all terms as a function of the anchors ``x`` and the references ``y``
    (``None``: the anchors themselves), for the cosine metric their normalised forms."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor | None, k: _Args
    ) -> tuple[Tensor, Tensor]:
        labels, ref_labels, own, metric, margin, soft, width = k
        ref = x if y is None else y
        total, n_valid, n_active, state = triton_backend.batch_all_forward(
            x, ref, labels, ref_labels, own, metric, margin, soft, width
        )
        counts = torch.stack([n_valid, n_active])
        ctx.mark_non_differentiable(counts)
        ctx.state, ctx.soft, ctx.y_is_x = state, soft, y is None
        return total.to(x.dtype), counts

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_counts: Tensor) -> tuple:  # type: ignore[override]
        gx, gy = triton_backend.batch_all_backward(ctx.state, ctx.soft, ctx.y_is_x)
        scale = grad_total.to(gx.dtype)
        dtype = ctx.state.problem.x.dtype
        return (
            gx.mul_(scale).to(dtype) if ctx.needs_input_grad[0] else None,
            None if gy is None or not ctx.needs_input_grad[1] else gy.mul_(scale).to(dtype),
            None,
        )


def batch_all_sum(
    b: Batch, margin: float | Tensor, soft_margin: bool, smooth: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, n_valid, n_active)`` of the batch-all loss of a prepared batch, from the
    Triton kernels: :func:`._fused.batch_all_sum`'s results without the ``[N, M]`` matrix."""
    if smooth:
        soft_margin = True
    elif soft_margin:
        margin = 0.0
    x, y = _inputs(b)
    k: _Args = (
        b.labels,
        b.ref_labels,
        b.self_index,
        str(b.metric),
        margin,
        soft_margin,
        _width(b),
    )
    total, counts = _TritonBatchAll.apply(x, y, k)
    return total, counts[0], counts[1]


def mined_terms(
    b: Batch,
    hardest: bool,
    margin: float | Tensor,
    soft_margin: bool,
    windows: tuple[tuple[int, int], tuple[int, int]] = ((0, 1), (0, 1)),
    smooth: bool = False,
) -> tuple[Tensor, Tensor]:
    """The terms of the batch-hard (``hardest``, with its rank ``windows``) or semi-hard
    triplets of a prepared batch, in the autograd graph, in the torch backend's layouts,
    and which of them are real (the others are 0)."""
    emb, ref = b.embeddings, b.ref_embeddings
    with torch.no_grad():
        x, y = _inputs(b)
        y = x if y is None else y
        args = (x, y, b.labels, b.ref_labels, b.self_index, str(b.metric))
        if hardest:
            sel = triton_backend.batch_hard(*args, *windows)
        else:
            sel = triton_backend.semi_hard(*args, _width(b))
    assert sel.valid is not None
    if ref.shape[0] == 0:  # no reference: no triplet, every slot is empty
        shape = torch.broadcast_shapes(sel.anchor.shape, sel.positive.shape, sel.negative.shape)
        return keep_in_graph(emb.new_zeros(shape), emb, ref), sel.valid
    metric = str(b.metric)
    rows = emb.reshape(*sel.anchor.shape, emb.shape[-1])
    d_ap = paired(rows, ref[sel.positive], metric)
    d_an = paired(rows, ref[sel.negative], metric)
    terms = triplet_terms(d_ap, d_an, margin, soft_margin, smooth=smooth)
    return torch.where(sel.valid, terms, 0), sel.valid
