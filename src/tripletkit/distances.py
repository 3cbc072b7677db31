"""Batch-level pairwise distance matrices, on any torch device.

Every miner and loss in tripletkit starts from one ``[N, M]`` distance matrix computed here;
this is the floor that any online miner pays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_embeddings, check_same_space

__all__ = ["METRICS", "normalize_embeddings", "paired_distance", "pairwise_distance"]

#: Supported metrics. All are distances: smaller means more similar.
METRICS = ("euclidean", "sqeuclidean", "cosine")


def normalize_embeddings(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each row to unit L2 norm.

    Rows of norm ``<= eps`` (all-zero rows) have no direction: they stay zero, with a zero
    gradient (dividing by ``eps`` instead would give gradients of order ``1 / eps``). For
    the cosine metric this puts a zero row at distance 1 from everything.

    Shape:
        - x: ``[N, D]`` -> ``[N, D]`` (any leading dimensions: the last one is normalised).

    Examples:
        >>> normalize_embeddings(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    norm = x.norm(dim=-1, keepdim=True)
    has_direction = norm > eps
    safe = torch.where(has_direction, norm, torch.ones_like(norm))
    return torch.where(has_direction, x / safe, torch.zeros_like(x))


def _euclidean_matrix(x: Tensor, y: Tensor, squared: bool) -> Tensor:
    """``||x_i - y_j||`` (or its square) for every pair, outside autograd: one matrix product
    (the fast path that ``torch.cdist`` also takes), computed in place. Cancellation leaves
    rounding noise of order ``eps * (||x||^2 + ||y||^2)`` where ``x ~= y``; values below that
    floor are set to exactly 0, so exact duplicates are exactly 0 apart."""
    xx = (x * x).sum(dim=1, keepdim=True)
    yy = (y * y).sum(dim=1).unsqueeze(0)
    d = torch.addmm(xx, x, y.t(), alpha=-2.0).add_(yy)
    scale = 8 * torch.finfo(d.dtype).eps  # a power of two: scaling each norm is exact
    xs, ys = xx * scale, yy * scale  # so the floor (xx + yy) * scale costs one N x M pass
    # Eagerly, blocks of rows bound the temporaries to ~1M entries. Under torch.compile one
    # block: the compiler fuses the comparison into the fill (no temporary), and a loop whose
    # trip count grows with N would unroll into a graph that grows with the batch.
    rows = d.shape[0] if torch.compiler.is_compiling() else (1 << 20) // max(d.shape[1], 1)
    rows = max(1, rows)
    for r0 in range(0, d.shape[0], rows):
        block = d[r0 : r0 + rows]
        block.masked_fill_(block <= xs[r0 : r0 + rows] + ys, 0.0)
    if not squared:
        d.sqrt_()
    return d


def _euclidean_weights_(g: Tensor, d: Tensor, squared: bool) -> Tensor:
    """Turn ``g = dL/dd`` into the weights ``w`` of :func:`_euclidean_backward`, **in place**:
    ``w = 2 g`` for the squared distance, else ``w = g / d`` with ``w = 0`` where ``d = 0``
    (the finite subgradient at duplicates)."""
    if squared:
        return g.mul_(2.0)
    # inf or NaN where d == 0 (and only there: d > 0 is at least the square root of the
    # clean-up floor), replaced by the zero subgradient: one pass instead of a mask's two
    return g.div_(d).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def _euclidean_backward(
    x: Tensor, y: Tensor, w: Tensor, y_is_x: bool, need_x: bool = True, need_y: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``sum(g * d)`` with respect to ``x`` and ``y`` from the weights ``w``
    (see :func:`_euclidean_weights_`): ``dx = x * w.sum(1) - w @ y`` and
    ``dy = y * w.sum(0) - w.T @ x``. With ``y is x`` both land on ``x``: two matrix
    products, no ``w + w.T`` copy. ``w`` is not modified."""
    if y_is_x:
        rows, cols = w.sum(dim=1, keepdim=True), w.sum(dim=0).unsqueeze(1)
        return x * (rows + cols) - w @ x - w.t() @ x, None
    gx = x * w.sum(dim=1, keepdim=True) - w @ y if need_x else None
    gy = y * w.sum(dim=0).unsqueeze(1) - w.t() @ x if need_y else None
    return gx, gy


class _EuclideanMatrix(torch.autograd.Function):
    """Euclidean (or squared) distance matrix with a hand-written, memory-lean backward.

    Forward: :func:`_euclidean_matrix`. Backward: :func:`_euclidean_weights_` on a copy of
    the incoming gradient, then :func:`_euclidean_backward`. Only ``x``, ``y`` and ``d`` are
    saved: one ``N x M`` matrix instead of the several that autograd would keep. ``y=None``
    means ``d(x, x)``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor | None, squared: bool) -> Tensor:  # type: ignore[override]
        ctx.squared = squared
        ctx.y_is_x = y is None  # d(x, x): one input, so that no tensor is passed twice
        d = _euclidean_matrix(x, x if y is None else y, squared)
        ctx.save_for_backward(x, d) if y is None else ctx.save_for_backward(x, y, d)
        return d

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        if ctx.y_is_x:
            x, d = ctx.saved_tensors
            y = x
        else:
            x, y, d = ctx.saved_tensors
        w = _euclidean_weights_(g.clone(), d, ctx.squared)
        gx, gy = _euclidean_backward(
            x, y, w, ctx.y_is_x, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return gx, gy, None


def _euclidean_from_squared(sq: Tensor) -> Tensor:
    # sqrt with a finite (zero) gradient at zero distance: the inner where keeps sqrt's
    # argument positive, so no inf * 0 = NaN reaches the backward pass.
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), sq * 0)


def pairwise_distance(x: Tensor, y: Tensor | None = None, metric: str = "euclidean") -> Tensor:
    """Distances between every row of ``x`` and every row of ``y``.

    Args:
        x: embeddings, ``[N, D]``.
        y: reference embeddings, ``[M, D]``; ``x`` itself when ``None``.
        metric: ``"euclidean"`` (L2 distance), ``"sqeuclidean"`` (squared L2) or
            ``"cosine"`` (``1 - cos(x_i, y_j)``; rows are normalised for this metric only).
            No other normalisation is ever applied.

    Returns:
        ``[N, M]`` distances in the compute dtype of the inputs (float16 and bfloat16 are
        computed in float32). Exact duplicates are at distance exactly 0 from each other
        (rounding noise below ``8 eps`` of the squared norms is set to 0), and the Euclidean
        distance has a finite (zero) gradient there. Distances from a third point to two
        duplicates come from one matrix product and may differ in the last bit; miners break
        ties between *equal computed* distances by the lowest index.

    Precision:
        The Euclidean metrics use the Gram form ``|x|^2 + |y|^2 - 2 x.y`` (one matrix
        product, like ``torch.cdist`` above 25 rows), which loses the small squared distance
        of close points in the rounding of the large norms: for unit-norm float32 rows,
        ``python -m benchmarks.precision`` measures errors of 1.8e-5 (median) and up to
        8.5e-5 (2.1%) at a true distance of 0.004, up to 3.5e-5 (0.35%) at 0.01 and 3.6e-6
        at 0.1, and distances below ~1.4e-3 (``sqrt(16 eps)`` times the norm) come out as 0.
        :func:`paired_distance` (the difference form) is exact to float32 rounding (1e-7
        relative) at any distance; the losses of selected triplets use it.

    Examples:
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> pairwise_distance(x)
        tensor([[0., 5.],
                [5., 0.]])
        >>> pairwise_distance(x, metric="sqeuclidean")[0, 1].item()
        25.0
    """
    check_choice("metric", metric, METRICS)
    x = check_embeddings(x, "x")
    if y is None:
        y = x
    else:
        x, y = check_same_space(x, check_embeddings(y, "y"), "x", "y")
    return _pairwise_distance_unchecked(x, y, metric)


def _pairwise_distance_unchecked(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """:func:`pairwise_distance` for inputs already validated (internal fast path)."""
    if metric == "cosine":
        xn, yn = normalize_embeddings(x), normalize_embeddings(y)
        d = (1.0 - xn @ yn.t()).clamp(0.0, 2.0)
        # 1 - cos(x, x) is rounding noise of a few eps: duplicates are exactly 0 apart.
        return torch.where(d > 8 * torch.finfo(d.dtype).eps, d, torch.zeros_like(d))
    return _EuclideanMatrix.apply(x, None if y is x else y, metric == "sqeuclidean")


def paired_distance(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Distances between matching rows, ``d(x_i, y_i)``, without an ``N x M`` matrix.

    Computed from the differences directly, ``sum((x_i - y_i)^2)``: exact to the dtype's
    rounding at any distance (in float32, within 1e-7 relative where the matrix form of
    :func:`pairwise_distance` is off by up to 2% at a distance of 0.004 between unit
    vectors). The cosine distance is ``|x^ - y^|^2 / 2`` on the normalised rows (the same
    value as ``1 - cos``, without its cancellation), 1 when a row is zero. The Euclidean
    distance has a finite (zero) gradient at zero.

    Shape:
        - x, y: ``[T, D]`` -> ``[T]``.

    Examples:
        >>> paired_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))
        tensor([5.])
    """
    check_choice("metric", metric, METRICS)
    x, y = check_same_space(check_embeddings(x, "x"), check_embeddings(y, "y"), "x", "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same rows, got {x.shape[0]} and {y.shape[0]}")
    return _paired_distance_unchecked(x, y, metric)


def _paired_distance_unchecked(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """:func:`paired_distance` for inputs already validated (internal fast path); ``x`` and
    ``y`` may be any broadcastable ``[..., D]``. Every metric in the difference form (exact
    to the dtype's rounding at any distance): ``sum((x - y)^2)``, and for the cosine distance
    ``1 - cos = ||x/|x| - y/|y| ||^2 / 2`` (1 when a row is zero)."""
    if metric == "cosine":
        xn, yn = normalize_embeddings(x), normalize_embeddings(y)
        half_sq = 0.5 * ((xn - yn) ** 2).sum(dim=-1)
        has_direction = (xn != 0).any(dim=-1) & (yn != 0).any(dim=-1)
        return torch.where(has_direction, half_sq, torch.ones_like(half_sq)).clamp(0.0, 2.0)
    sq = ((x - y) ** 2).sum(dim=-1)
    if metric == "sqeuclidean":
        return sq
    return _euclidean_from_squared(sq)


def _difference_form_matrix(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """All ``[N, M]`` distances in the difference form (as :func:`_paired_distance_unchecked`),
    detached: exact to the dtype's rounding where the Gram form of
    :func:`pairwise_distance` is off for close points, at O(N M D) without a matrix product
    (``torch.cdist``'s ``donot_use_mm_for_euclid_dist`` kernel, no ``N x M x D`` tensor).
    The values of a selection too large to recompute from its rows."""
    exact = "donot_use_mm_for_euclid_dist"
    with torch.no_grad():
        if metric == "cosine":
            xn, yn = normalize_embeddings(x), normalize_embeddings(y)
            d = torch.cdist(xn, yn, compute_mode=exact).square_().mul_(0.5)
            has_x, has_y = (xn != 0).any(dim=1), (yn != 0).any(dim=1)
            return d.masked_fill_(~(has_x[:, None] & has_y[None, :]), 1.0).clamp_(0.0, 2.0)
        d = torch.cdist(x, y, compute_mode=exact)
        return d.square_() if metric == "sqeuclidean" else d
