"""Autograd glue of the streaming fused losses (``backend="streaming"``): the same results as
:mod:`._fused` without ever holding an ``[N, M]`` matrix (see :mod:`tripletkit.kernels.\
streaming`).

- Batch-all: :class:`_StreamingBatchAll` keeps only the embeddings for backward, where a
  second pass over the tiles accumulates their gradient. The cosine metric normalises the
  embeddings in the graph first, as the in-memory matrix does.
- Batch-hard and semi-hard: the selection comes from the tiles; the selected distances are
  then recomputed from the rows, as :func:`._fused.mined_terms` does, by
  :class:`_PairedChunks`, in chunks of :data:`PAIR_CHUNK_ELEMENTS` so that no ``[T, D]``
  gather is kept for backward (``T = N (K - 1)`` semi-hard triplets of ``D`` floats would
  otherwise be several of them alive).

Counts are 0-dim int64 tensors, as in :mod:`._fused`; the streaming kernels run on the host,
so this path, like the numba one, is not for ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._batch import Batch
from ..distances import _paired_distance_unchecked as paired
from ..distances import normalize_embeddings
from ..kernels import streaming
from ._fused import triplet_terms

__all__ = ["PAIR_CHUNK_ELEMENTS", "batch_all_sum", "mined_terms"]

#: Elements (rows x D) of the gathered rows handled at once when recomputing selected
#: distances.
PAIR_CHUNK_ELEMENTS = 1 << 20

#: ``(labels, ref_labels, self_index, metric, margin, soft_margin)``.
_Args = tuple[Tensor, Tensor, Tensor, str, float, bool]


class _StreamingBatchAll(torch.autograd.Function):
    """Sum of the batch-all terms as a function of the anchors ``x`` and the references ``y``
    (``None``: the anchors themselves), for the cosine metric their normalised forms."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor | None, k: _Args
    ) -> tuple[Tensor, Tensor]:
        ref = x if y is None else y
        total, n_valid, n_active = streaming.batch_all_forward(x, ref, *k)
        counts = torch.tensor([n_valid, n_active], dtype=torch.int64)
        ctx.mark_non_differentiable(counts)
        ctx.k = k
        ctx.y_is_x = y is None
        ctx.save_for_backward(x) if y is None else ctx.save_for_backward(x, y)
        return torch.tensor(total, dtype=x.dtype), counts

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_counts: Tensor) -> tuple:  # type: ignore[override]
        x, *rest = ctx.saved_tensors
        y = x if ctx.y_is_x else rest[0]
        labels, ref_labels, own, metric, margin, soft = ctx.k
        gx, gy = streaming.batch_all_backward(
            x, y, labels, ref_labels, own, metric, margin, soft, ctx.y_is_x
        )
        scale = grad_total.to(x.dtype)
        return (
            gx.mul_(scale) if ctx.needs_input_grad[0] else None,
            None if gy is None or not ctx.needs_input_grad[1] else gy.mul_(scale),
            None,
        )


def _inputs(b: Batch) -> tuple[Tensor, Tensor | None]:
    """The anchors and references as the tiles see them (``None``: the references are the
    anchors), normalised in the graph for the cosine metric."""
    same = b.ref_embeddings is b.embeddings
    if b.metric != "cosine":
        return b.embeddings, None if same else b.ref_embeddings
    x = normalize_embeddings(b.embeddings)
    return x, None if same else normalize_embeddings(b.ref_embeddings)


def batch_all_sum(
    b: Batch, margin: float | Tensor, soft_margin: bool, smooth: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, n_valid, n_active)`` of the batch-all loss of a prepared batch, streamed:
    :func:`._fused.batch_all_sum`'s results without the ``[N, M]`` matrix (``smooth``:
    ``softplus(d_ap - d_an + margin)``, the soft kernel with a margin)."""
    if smooth:
        soft_margin = True
    elif soft_margin:
        margin = 0.0
    x, y = _inputs(b)
    k: _Args = (b.labels, b.ref_labels, b.self_index, str(b.metric), float(margin), soft_margin)
    total, counts = _StreamingBatchAll.apply(x, y, k)
    return total, counts[0], counts[1]


class _PairedChunks(torch.autograd.Function):
    """``(d(x[a], y[p]), d(x[a], y[n]))`` for listed triplets (``y=None``: ``y`` is ``x``),
    computed and differentiated in chunks of rows; only ``x``, ``y`` and the indices are
    kept for backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor | None, a: Tensor, p: Tensor, n: Tensor, metric: str
    ) -> tuple[Tensor, Tensor]:
        ref = x if y is None else y
        t = a.shape[0]
        d_ap, d_an = x.new_empty(t), x.new_empty(t)
        for c in _chunks(t, x.shape[1]):
            rows = x[a[c]]
            d_ap[c] = paired(rows, ref[p[c]], metric)
            d_an[c] = paired(rows, ref[n[c]], metric)
        ctx.metric = metric
        ctx.y_is_x = y is None
        ctx.save_for_backward(x, a, p, n) if y is None else ctx.save_for_backward(x, y, a, p, n)
        return d_ap, d_an

    @staticmethod
    def backward(ctx: Any, g_ap: Tensor, g_an: Tensor) -> tuple:  # type: ignore[override]
        if ctx.y_is_x:
            x, a, p, n = ctx.saved_tensors
            y = x
        else:
            x, y, a, p, n = ctx.saved_tensors
        gx = torch.zeros_like(x)
        gy = gx if ctx.y_is_x else torch.zeros_like(y)
        for c in _chunks(a.shape[0], x.shape[1]):
            with torch.enable_grad():
                rows = x[a[c]].detach().requires_grad_()
                pos = y[p[c]].detach().requires_grad_()
                neg = y[n[c]].detach().requires_grad_()
                d_ap = paired(rows, pos, ctx.metric)
                d_an = paired(rows, neg, ctx.metric)
                g_rows, g_pos, g_neg = torch.autograd.grad(
                    (d_ap, d_an), (rows, pos, neg), (g_ap[c], g_an[c])
                )
            gx.index_add_(0, a[c], g_rows)
            gy.index_add_(0, p[c], g_pos)
            gy.index_add_(0, n[c], g_neg)
        return gx, None if ctx.y_is_x else gy, None, None, None, None


def _chunks(t: int, d: int) -> list[slice]:
    rows = max(1, PAIR_CHUNK_ELEMENTS // max(1, d))
    return [slice(r0, min(t, r0 + rows)) for r0 in range(0, t, rows)]


def mined_terms(
    b: Batch,
    hardest: bool,
    margin: float | Tensor,
    soft_margin: bool,
    windows: tuple[tuple[int, int], tuple[int, int]] = ((0, 1), (0, 1)),
    smooth: bool = False,
) -> tuple[Tensor, None]:
    """The terms ``[T]`` of the batch-hard (``hardest``, with its rank ``windows``) or
    semi-hard triplets of a prepared batch, in the autograd graph, listed (so every one is
    real: the second value is ``None``), as :func:`._fused.mined_terms` returns them on the
    numba backend."""
    emb, ref = b.embeddings, b.ref_embeddings
    with torch.no_grad():
        x, y = _inputs(b)
        y = x if y is None else y
        a, p, n = streaming.select(
            x, y, b.labels, b.ref_labels, b.self_index, str(b.metric), hardest, windows
        )
    y_arg = None if ref is emb else ref
    d_ap, d_an = _PairedChunks.apply(emb, y_arg, a, p, n, str(b.metric))
    return triplet_terms(d_ap, d_an, margin, soft_margin, smooth=smooth), None
