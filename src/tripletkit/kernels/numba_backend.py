"""Selection and fused-loss kernels compiled with numba, for CPU arrays.

Same functions, same contract and same results as :mod:`tripletkit.kernels.torch_backend`
(read its docstring first), on zero-copy numpy views instead of tensors: ``dist`` is a
C-contiguous float32 or float64 ``[N, M]`` array, ``labels``, ``ref_labels`` and
``self_index`` are int64 (or, for a mask relation, ``labels`` and ``ref_labels`` are the
positive and negative bool masks ``[N, M]``: each anchor then reads its two mask rows where
it would compare labels, see :func:`._numba_kernels._relation`). The dispatcher in :mod:`tripletkit.kernels`
converts to and from tensors.

Layout: thin Python wrappers here (input checks, dtype handling, empty inputs, region
names) call the ``@numba.njit`` kernels of :mod:`._numba_kernels`. Every parallel kernel
runs ``prange`` over anchors only, and each anchor owns its row of every per-anchor output,
so results do not depend on the number of threads. Variable-length outputs are written in
two passes (length per anchor, prefix offsets, fill), which keeps the output order that of
the torch backend.

Numeric rules that make the results *identical* to the torch backend:

* ``t = d_ap + margin`` is computed in the dtype of ``dist`` (the margin is handed to the
  kernels as a scalar of that dtype), because every selection compares ``d_an`` with it.
* Sums of loss terms are accumulated in float64.
* No ``fastmath``: comparisons decide what is selected.
* Ties between equal distances go to the lowest reference index, everywhere.

Most kernels avoid sorting an anchor's ``M`` negatives: they sort the anchor's ``P``
thresholds instead (one per positive; ``P`` is usually much smaller than ``M``) and rank each
negative among them (:func:`._numba_kernels._rank`), which is O(N M log P). Only :func:`triplet_region`,
whose output is ordered by ``d_an``, sorts the negatives.
"""

from __future__ import annotations

import numpy as np

from ._numba_kernels import (
    _FLOAT_DTYPES,
    _SEMI_HARD_ROWS,
    REGIONS,
    _batch_all_kernel,
    _counts_kernel,
    _hard_kernel,
    _ranked_kernel,
    _rows_kernel,
)

__all__ = [
    "REGIONS",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "semi_hard",
    "triplet_counts",
    "triplet_region",
]


# ---------------------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------------------


def _inputs(
    dist: np.ndarray, labels: np.ndarray, ref_labels: np.ndarray, self_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes and dtypes; returns C-contiguous arrays (no copy when already so)."""
    dist = np.asarray(dist)
    if dist.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dist must be float32 or float64, got {dist.dtype}")
    if dist.ndim != 2:
        raise ValueError(f"dist must be 2-D [N, M], got shape {dist.shape}")
    n, m = dist.shape
    self_index = np.ascontiguousarray(self_index, dtype=np.int64)
    if np.ndim(labels) == 2:  # a mask relation: the positive and negative masks [N, M]
        labels = np.ascontiguousarray(labels, dtype=np.bool_)
        ref_labels = np.ascontiguousarray(ref_labels, dtype=np.bool_)
        if labels.shape != (n, m) or ref_labels.shape != (n, m) or self_index.shape != (n,):
            raise ValueError(
                f"dist is {n} x {m} but the masks and self_index have shapes "
                f"{labels.shape}, {ref_labels.shape} and {self_index.shape}"
            )
        return np.ascontiguousarray(dist), labels, ref_labels, self_index
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    ref_labels = np.ascontiguousarray(ref_labels, dtype=np.int64)
    if labels.shape != (n,) or self_index.shape != (n,) or ref_labels.shape != (m,):
        raise ValueError(
            f"dist is {n} x {m} but labels, ref_labels and self_index have shapes "
            f"{labels.shape}, {ref_labels.shape} and {self_index.shape}"
        )
    return np.ascontiguousarray(dist), labels, ref_labels, self_index


def _empty_triplets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)


def _rows(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: np.floating,
    mode: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs :func:`_rows_kernel` twice: lengths per anchor, prefix sums, then the rows."""
    args = (dist, labels, ref_labels, self_index, margin, mode)
    offsets = np.zeros(dist.shape[0] + 1, dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    _rows_kernel(*args, False, offsets, empty, empty, empty)
    np.cumsum(offsets, out=offsets)
    out = [np.empty(offsets[-1], dtype=np.int64) for _ in range(3)]
    _rows_kernel(*args, True, offsets, *out)
    return out[0], out[1], out[2]


def batch_all_hinge(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: float,
) -> tuple[float, int, int, np.ndarray]:
    """Sum of ``max(0, d_ap - d_an + margin)`` over every valid triplet, in O(N M log P).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.
        margin: the hinge margin (applied in the dtype of ``dist``).

    Returns:
        ``(total, n_valid, n_active, grad)``: the float64-accumulated sum, the numbers of
        valid and of active triplets, and ``d total / d dist`` (``[N, M]``, dtype of
        ``dist``).
    """
    return _batch_all(dist, labels, ref_labels, self_index, margin, soft=False)


def batch_all_soft(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: float = 0.0,
) -> tuple[float, int, np.ndarray]:
    """Sum of ``softplus(d_ap - d_an + margin)`` over every valid triplet, in O(N P M)
    (Hermans et al. 2017's soft margin with ``margin = 0``).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.
        margin: added inside the softplus (applied in the dtype of ``dist``).

    Returns:
        ``(total, n_valid, grad)`` as in :func:`batch_all_hinge`; terms and gradients are
        computed in float64.
    """
    total, n_valid, _, grad = _batch_all(dist, labels, ref_labels, self_index, margin, soft=True)
    return total, n_valid, grad


def _batch_all(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: float,
    soft: bool,
) -> tuple[float, int, int, np.ndarray]:
    """The wrapper shared by the hinge and soft-margin batch-all kernels."""
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    grad = np.zeros_like(dist)
    if n == 0 or m == 0:
        return 0.0, 0, 0, grad
    totals = np.zeros(n, dtype=np.float64)
    counts = np.zeros((n, 2), dtype=np.int64)
    margin_ = dist.dtype.type(margin)
    _batch_all_kernel(dist, labels, ref_labels, self_index, margin_, soft, grad, totals, counts)
    n_valid, n_active = counts.sum(axis=0)
    return float(totals.sum()), int(n_valid), int(n_active), grad


def batch_hard(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per anchor with a positive and a negative: the farthest positive and the nearest
    negative, first column on ties; with rank windows, every combination of the positives
    ranked in ``positive_ranks = [lo, hi)`` (0 = farthest) and the negatives ranked in
    ``negative_ranks`` (0 = nearest).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.
        positive_ranks, negative_ranks: the windows ``(lo, hi)``.

    Returns:
        ``(anchor, positive, negative)`` int64 arrays, ordered by anchor, positive rank,
        negative rank.
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return _empty_triplets()
    if positive_ranks == (0, 1) and negative_ranks == (0, 1):
        hardest_p = np.empty(n, dtype=np.int64)
        hardest_n = np.empty(n, dtype=np.int64)
        _hard_kernel(dist, labels, ref_labels, self_index, hardest_p, hardest_n)
        keep = np.flatnonzero((hardest_p >= 0) & (hardest_n >= 0))
        return keep.astype(np.int64, copy=False), hardest_p[keep], hardest_n[keep]
    (p_lo, p_hi), (n_lo, n_hi) = positive_ranks, negative_ranks
    out_p = np.empty((n, p_hi - p_lo), dtype=np.int64)
    out_n = np.empty((n, n_hi - n_lo), dtype=np.int64)
    _ranked_kernel(dist, labels, ref_labels, self_index, p_lo, p_hi, n_lo, n_hi, out_p, out_n)
    p = np.broadcast_to(out_p[:, :, None], (n, p_hi - p_lo, n_hi - n_lo))
    q = np.broadcast_to(out_n[:, None, :], p.shape)
    a = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None, None], p.shape)
    both = (p >= 0) & (q >= 0)
    return a[both], p[both], q[both]


def semi_hard(
    dist: np.ndarray, labels: np.ndarray, ref_labels: np.ndarray, self_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Semi-hard negatives as TensorFlow-Addons selects them, in O(N M log P).

    For every positive pair whose anchor has a negative: the nearest negative farther than
    the positive, else the first occurrence of the largest negative distance.

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.

    Returns:
        ``(anchor, positive, negative)`` int64 arrays, one row per pair, ordered by
        ``(anchor, positive)``.
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return _empty_triplets()
    margin_ = dist.dtype.type(0)
    return _rows(dist, labels, ref_labels, self_index, margin_, _SEMI_HARD_ROWS)


def triplet_region(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: float,
    region: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every valid triplet in ``region`` (one of :data:`REGIONS`), in O(N M log M + T).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.
        margin: the margin (applied in the dtype of ``dist``).
        region: ``"valid"``, ``"active"``, ``"all"``, ``"hard"``, ``"semihard"`` or
            ``"easy"``.

    Returns:
        ``(anchor, positive, negative)`` int64 arrays ordered by anchor, then positive,
        then increasing ``d_an`` (ties by index).

    Raises:
        ValueError: for an unknown ``region``.
    """
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return _empty_triplets()
    margin_ = dist.dtype.type(margin)
    code = REGIONS.index(region)
    return _rows(dist, labels, ref_labels, self_index, margin_, code)


def triplet_counts(
    dist: np.ndarray,
    labels: np.ndarray,
    ref_labels: np.ndarray,
    self_index: np.ndarray,
    margin: float,
) -> tuple[int, int, int, int]:
    """Counts ``(valid, easy, semi_hard, hard)`` of valid triplets, in O(N M log P).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.
        margin: the margin (applied in the dtype of ``dist``).

    Returns:
        easy: ``d_an > d_ap + m``; semi-hard: ``d_ap < d_an <= d_ap + m``; hard:
        ``d_an <= d_ap`` and ``d_an <= d_ap + m`` (the regions of :data:`REGIONS`, which
        partition the valid triplets for every margin: with a negative margin nothing is
        semi-hard and the three add up to ``valid``).
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return 0, 0, 0, 0
    counts = np.zeros((n, 3), dtype=np.int64)
    _counts_kernel(dist, labels, ref_labels, self_index, dist.dtype.type(margin), counts)
    valid, easy, hard = (int(c) for c in counts.sum(axis=0))
    return valid, easy, valid - easy - hard, hard
