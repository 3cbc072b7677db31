"""The fused triplet losses' autograd glue: kernels compute sums, counts and gradients with
respect to the distance matrix; this module hands them to autograd.

- Batch-all (Euclidean metrics): :class:`_BatchAllEuclidean` computes the distances, asks a
  kernel for the sum of every valid triplet's term, the counts and ``g = d(sum) / d(dist)``,
  and turns ``g`` *in place* into the weights of the distance backward (``g / d``): only that
  one ``N x M`` matrix is kept for backward, where two matrix products give the embeddings'
  gradients. No triplet is listed. The cosine metric goes through the distance matrix in the
  graph (:class:`_BatchAllSum`).
- Batch-hard and semi-hard: a selection kernel picks one negative per anchor (or positive
  pair) on the detached matrix. A small selection (``T max(4, 2D) <= N M``: batch-hard) is
  recomputed from the embeddings' rows (O(T D)), so the gradient reaches only the rows
  involved. A larger one (semi-hard's ``T = N (K - 1)``) is read from the detached matrix
  (:class:`_SelectedEuclidean`), whose backward scatters the selected entries' weights into
  one ``N x M`` matrix for two matrix products: they scale with the threads, where the
  rows' gathers had a serial scatter on the CPU (0.2's semi-hard slowdown at 2 threads).
  The values read from the matrix get the difference form's (:func:`_exact_values`).

Counts stay 0-dim tensors and nothing here reads a device value: with the input checks off
(:func:`~tripletkit.set_input_checks`) and the kernels' widths known, a loss runs without a
host synchronisation and ``torch.compile(fullgraph=True)`` captures it whole.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batch import Batch
from .._checks import to_host
from ..distances import (
    _euclidean_backward,
    _euclidean_matrix,
    _euclidean_weights_,
)
from ..distances import _paired_distance_unchecked as paired
from ..kernels import Selection, batch_all_hinge, batch_all_soft, batch_hard, semi_hard
from ._reduce import keep_in_graph

__all__ = ["batch_all_sum", "mined_terms", "triplet_terms"]

#: Selected distances are recomputed from the rows when the selection has at most this
#: share of the matrix's entries, and its rows (``T x D`` values, each read and written a
#: few times) are at most half the matrix's entries (else they are read from the matrix).
_PAIRED_SHARE = 4


def triplet_terms(
    d_ap: Tensor, d_an: Tensor, margin: float | Tensor, soft_margin: bool, *, smooth: bool = False
) -> Tensor:
    """Per-triplet loss: the hinge ``max(0, d_ap - d_an + margin)``, the soft margin
    ``softplus(d_ap - d_an)`` (``soft_margin``, Hermans et al. 2017; no margin) or the smooth
    hinge ``softplus(d_ap - d_an + margin)`` (``smooth``, pytorch-metric-learning's
    ``smooth_loss=True``). ``soft_margin`` and ``smooth`` together are refused by the
    losses' checks; here ``smooth`` wins.

    Shape:
        - d_ap, d_an: ``[T]`` -> ``[T]`` (any matching shapes).

    Examples:
        >>> triplet_terms(torch.tensor([0.5]), torch.tensor([0.6]), 0.2, soft_margin=False)
        tensor([0.1000])
        >>> triplet_terms(torch.tensor([0.5]), torch.tensor([0.6]), 0.1, False, smooth=True)
        tensor([0.6931])
    """
    if smooth:
        return F.softplus(d_ap - d_an + margin)
    if soft_margin:
        return F.softplus(d_ap - d_an)
    return F.relu(d_ap - d_an + margin)


#: What the batch-all kernels need besides the matrix: ``(labels, ref_labels, self_index,
#: backend, margin, soft, width)``; ``soft``: the terms are ``softplus(d_ap - d_an + margin)``
#: (the soft margin has ``margin = 0`` here), else the hinge.
KernelArgs = tuple[Tensor, Tensor, Tensor, str, "float | Tensor", bool, "int | None"]


def _kernel(dist: Tensor, k: KernelArgs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(total, n_valid, n_active, grad)`` of the batch-all sum on a detached matrix."""
    labels, ref_labels, self_index, backend, margin, soft, width = k
    if soft:
        args = (dist, labels, ref_labels, self_index, backend, width, margin)
        total, n_valid, grad = batch_all_soft(*args)
        return total, n_valid, n_valid, grad
    return batch_all_hinge(dist, labels, ref_labels, self_index, margin, backend, width)


class _BatchAllSum(torch.autograd.Function):
    """Sum of batch-all terms as a function of a distance matrix in the graph."""

    @staticmethod
    def forward(ctx: Any, dist: Tensor, k: KernelArgs) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        total, n_valid, n_active, grad = _kernel(dist.detach(), k)
        counts = torch.stack([n_valid, n_active])
        ctx.mark_non_differentiable(counts)
        ctx.save_for_backward(grad)
        return total.to(dist.device), counts

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_counts: Tensor) -> tuple:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None


class _BatchAllEuclidean(torch.autograd.Function):
    """Sum of batch-all terms as a function of the embeddings, Euclidean metrics.

    ``y=None`` when the references are the anchors themselves."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, y: Tensor | None, squared: bool, k: KernelArgs
    ) -> tuple[Tensor, Tensor]:
        dist = _euclidean_matrix(x, x if y is None else y, squared)
        total, n_valid, n_active, grad = _kernel(dist, k)
        weights = _euclidean_weights_(grad.to(dist.dtype), dist, squared)
        del dist, grad
        counts = torch.stack([n_valid, n_active])
        ctx.mark_non_differentiable(counts)
        ctx.y_is_x = y is None
        ctx.save_for_backward(x, weights) if y is None else ctx.save_for_backward(x, y, weights)
        return total.to(x.device), counts

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_counts: Tensor) -> tuple:  # type: ignore[override]
        if ctx.y_is_x:
            x, weights = ctx.saved_tensors
            y = x
        else:
            x, y, weights = ctx.saved_tensors
        gx, gy = _euclidean_backward(
            x, y, weights, ctx.y_is_x, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        scale = grad_total.to(x.dtype)
        return (
            None if gx is None else gx * scale,
            None if gy is None else gy * scale,
            None,
            None,
        )


def batch_all_sum(
    b: Batch, margin: float | Tensor, soft_margin: bool, smooth: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, n_valid, n_active)`` of the batch-all loss of a prepared batch (counts as
    0-dim int64 tensors), terms as in :func:`triplet_terms`. The soft margin and the smooth
    hinge need :attr:`Batch.width` on the torch backend: without it (checks off and no
    ``max_positives``) it is read here, one host read."""
    if smooth:  # softplus(d_ap - d_an + margin)
        soft_margin = True
    elif soft_margin:  # softplus(d_ap - d_an)
        margin = 0.0
    width = b.width
    if soft_margin and width is None and b.backend == "torch":
        if torch.compiler.is_compiling():
            raise ValueError(
                "the soft-margin batch-all loss needs max_positives= under torch.compile (an "
                "upper bound on any anchor's number of positives, e.g. k - 1 for P x K batches)"
            )
        width = int(to_host(b.positive_counts().max().reshape(1))[0])
    k = (b.labels, b.ref_labels, b.self_index, b.backend, margin, soft_margin, width)
    if b.metric == "cosine":
        total, counts = _BatchAllSum.apply(b.distances(grad=True), k)
    else:
        y = None if b.ref_embeddings is b.embeddings else b.ref_embeddings
        squared = b.metric == "sqeuclidean"
        total, counts = _BatchAllEuclidean.apply(b.embeddings, y, squared, k)
    return total, counts[0], counts[1]


class _SelectedEuclidean(torch.autograd.Function):
    """Entries ``dist[rows, cols]`` of a detached Euclidean (or squared) distance matrix, as
    a function of the embeddings ``x`` and ``y`` (``None``: ``y`` is ``x``). Backward: the
    selected entries' weights (``2 g``, or ``g / d`` with 0 where ``d == 0``, as
    :func:`~tripletkit.distances._euclidean_weights_`) summed into one ``N x M`` matrix,
    then :func:`~tripletkit.distances._euclidean_backward`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        y: Tensor | None,
        dist: Tensor,
        rows: Tensor,
        cols: Tensor,
        squared: bool,
    ) -> Tensor:
        picked = dist[rows, cols]
        ctx.squared, ctx.y_is_x, ctx.shape = squared, y is None, dist.shape
        ctx.save_for_backward(x, x if y is None else y, rows, cols, picked)
        return picked

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # type: ignore[override]
        x, y, rows, cols, picked = ctx.saved_tensors
        if ctx.squared:
            w = 2 * grad
        else:
            w = torch.where(picked == 0, 0, grad / picked)
        weights = torch.zeros(ctx.shape, dtype=w.dtype, device=w.device)
        weights.index_put_((rows, cols), w, accumulate=True)
        gx, gy = _euclidean_backward(
            x, y, weights, ctx.y_is_x, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return gx, gy, None, None, None, None


#: Selections whose rows hold at most this many elements (4 MiB in float32) always get
#: the exact values of the difference form, whatever the batch size.
_EXACT_ROWS_FLOOR = 1 << 20


def _exact_values(
    d: Tensor, x: Tensor, y: Tensor, a: Tensor, cols: Tensor, metric: str, sets: int = 1
) -> Tensor:
    """``d`` (distances of the pairs ``(a, cols)`` read from the Gram-form matrix, in the
    graph) with the values of the difference form, exact to the dtype's rounding (see
    :mod:`tripletkit.distances`); the gradient stays ``d``'s. ``sets > 1``: ``cols`` and
    ``d`` stack that many selections ``[sets, *a.shape]`` of the same anchors (a list of
    triplets' positives and negatives), whose rows are then gathered once for all.

    Exact values cost O(T D) reads of the pairs' rows, so they are computed only while
    that is at most one ``N x M`` matrix of data or :data:`_EXACT_ROWS_FLOOR` elements
    (``T D <= max(N M, 2^20)``: every small batch, batch-hard, semi-hard with
    ``K - 1 <= M / D`` positives per anchor); a larger selection keeps the Gram form's
    values (off by up to ~2e-5 for points ~0.004 apart in float32, see
    :func:`tripletkit.distances.pairwise_distance`). The torch layouts (``a`` the row of each
    slot, ``cols [N, W]``) use one batched direct ``cdist`` (no difference tensor)."""
    n, m = x.shape[0], y.shape[0]
    if cols.numel() // sets * x.shape[1] > max(n * m, _EXACT_ROWS_FLOOR):
        return d
    with torch.no_grad():
        if metric != "cosine" and cols.dim() == 2 and cols.shape[0] == n and a.dim() == 2:
            exact = torch.cdist(
                x.unsqueeze(1), y[cols], compute_mode="donot_use_mm_for_euclid_dist"
            ).squeeze(1)
            exact = exact.square_() if metric == "sqeuclidean" else exact
        elif metric == "cosine":
            exact = paired(x[a], y[cols], metric)
        else:  # one fused reduction per pair (no squared-difference tensor); the gathered
            # references take the difference in place (the sign does not change the norm)
            diff = y[cols].sub_(x[a])
            if metric == "sqeuclidean":
                exact = torch.linalg.vecdot(diff, diff)
            else:
                exact = torch.linalg.vector_norm(diff, dim=-1)
    return d + (exact.to(d.dtype) - d).detach()


def mined_terms(
    b: Batch,
    hardest: bool,
    margin: float | Tensor,
    soft_margin: bool,
    windows: tuple[tuple[int, int], tuple[int, int]] = ((0, 1), (0, 1)),
    smooth: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The terms of the batch-hard (``hardest``, with its rank ``windows``) or semi-hard
    triplets of a prepared batch, in the autograd graph, and which of them are real
    (``None``: all; slots that hold no triplet have the term 0).

    Returns:
        ``(terms, valid)`` of the selection's shape: ``[N]``, ``[N, P, Q]``, ``[N, width]``
        or ``[N, M]`` (torch layouts) or ``[T]`` (a listed selection).
    """
    dist = b.distances(grad=False)
    args = (dist, b.labels, b.ref_labels, b.self_index, b.backend)
    sel: Selection = batch_hard(*args, *windows) if hardest else semi_hard(*args, b.width)
    a, p, n = torch.broadcast_tensors(sel.anchor, sel.positive, sel.negative)
    if dist.shape[1] == 0:  # no reference: no triplet, every slot is empty
        zero = keep_in_graph(b.embeddings.new_zeros(a.shape), b.embeddings, b.ref_embeddings)
        return zero, sel.valid
    emb, ref = b.embeddings, b.ref_embeddings
    if a.numel() == 0 or a.numel() * max(_PAIRED_SHARE, 2 * emb.shape[1]) <= dist.numel():
        # Recomputed from the rows (O(T D)): a torch layout's anchor is its row of slots, so
        # anchors broadcast (not gathered) against the selected references, unexpanded.
        metric = str(b.metric)
        rows = emb[sel.anchor] if sel.valid is None else emb.reshape(*sel.anchor.shape, -1)
        d_ap = paired(rows, ref[sel.positive], metric)
        d_an = paired(rows, ref[sel.negative], metric)
    elif b.metric != "cosine":
        # Read from the detached matrix; the backward scatters the selected entries' weights
        # into one N x M matrix for the two matrix products (no N x M gradient chain).
        y = None if ref is emb else ref
        picked = _SelectedEuclidean.apply(
            emb, y, dist, torch.stack([a, a]), torch.stack([p, n]), b.metric == "sqeuclidean"
        )
        metric = str(b.metric)
        if a.dim() == 1:  # a list of triplets: each anchor's row gathered once for both
            d_ap, d_an = _exact_values(picked, emb, ref, a, torch.stack([p, n]), metric, 2)
        else:
            d_ap = _exact_values(picked[0], emb, ref, a, p, metric)
            d_an = _exact_values(picked[1], emb, ref, a, n, metric)
    else:  # cosine: read from the matrix in the graph, with the values of the difference form
        in_graph = b.distances(grad=True)
        d_ap = _exact_values(in_graph[a, p], emb, ref, a, p, "cosine")
        d_an = _exact_values(in_graph[a, n], emb, ref, a, n, "cosine")
    terms = triplet_terms(d_ap, d_an, margin, soft_margin, smooth=smooth)
    if sel.valid is not None:
        terms = torch.where(sel.valid, terms, 0)
    return terms, sel.valid
