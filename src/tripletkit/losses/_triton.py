"""Glue of the fused losses on ``backend="triton"`` (issue 18): the results of :mod:`._fused`
without the ``[N, M]`` matrix, from the kernels of :mod:`tripletkit.kernels.triton_backend`.

- Batch-all: the forward op (``tripletkit::triton_batch_all_fwd``) returns the total, the
  active count and the kernels' ``O(N W)`` per-anchor state as tensors; its autograd
  formula is the backward op (``tripletkit::triton_batch_all_bwd``), a second streaming
  pass that accumulates the embeddings' gradients. The cosine metric normalises the
  embeddings in the graph first, as the in-memory matrix does.
- Batch-hard and semi-hard: the kernels give the selection in the torch backend's layouts
  (a ``valid`` mask, no data-dependent shape); the selected distances are then recomputed
  from the rows (``O(N K D)``), as :func:`._fused.mined_terms` does for small selections, so
  their values and gradients are the difference form's.

``torch.compile``: every launch is a ``torch.library.custom_op`` with a fake (shape-only)
implementation, and the code around the launches is torch code, so with the input checks
off ``torch.compile(fullgraph=True)`` captures each loss whole, forward and backward
(tests/test_triton.py). It needs the width of the positive slots on the host: give
``max_positives``, or use a module form (below) after its first eager call.

Host reads: counts stay 0-dim int64 tensors on the device and nothing reads a device value
on the host, except the batch's largest number of positives when neither the checks,
``max_positives`` nor a module's memory gave it (one read). So with the input checks off a
call reads nothing when it is given ``max_positives``, and a module form
(``BatchAllTripletLoss`` / ``SemiHardTripletLoss``, which remember the width of their
batches: :class:`~tripletkit._batch.WidthMemory`) reads nothing after its first call.
"""

from __future__ import annotations

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
    total, n_valid, n_active, _ = triton_backend.batch_all_forward(
        x,
        x if y is None else y,
        b.labels,
        b.ref_labels,
        b.self_index,
        str(b.metric),
        margin,
        soft_margin,
        _width(b),
    )
    return total.to(x.dtype), n_valid, n_active


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
    width = 0 if hardest else _width(b)
    with torch.no_grad():
        x, y = _inputs(b)
        y = x if y is None else y
        args = (x, y, b.labels, b.ref_labels, b.self_index, str(b.metric))
        if hardest:
            sel = triton_backend.batch_hard(*args, *windows)
        else:
            sel = triton_backend.semi_hard(*args, width)
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
