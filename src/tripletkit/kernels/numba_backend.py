"""Selection and fused-loss kernels compiled with numba, for CPU arrays.

Same functions, same contract and same results as :mod:`tripletkit.kernels.torch_backend`
(read its docstring first), on zero-copy numpy views instead of tensors: ``dist`` is a
C-contiguous float32 or float64 ``[N, M]`` array, ``labels``, ``ref_labels`` and
``self_index`` are int64. The dispatcher in :mod:`tripletkit.kernels` converts to and from
tensors.

Layout of this module: thin Python wrappers (input checks, dtype handling, empty inputs,
region names) at the bottom call module-level ``@numba.njit`` kernels. Every parallel kernel
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
thresholds instead (one per positive, ``P`` is usually much smaller) and binary-search each
negative among them, which is O(N M log P). Only :func:`triplet_region`, whose output is
ordered by ``d_an``, sorts the negatives.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from .torch_backend import REGIONS

__all__ = [
    "REGIONS",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "semi_hard",
    "triplet_counts",
    "triplet_region",
]

# Region codes handed to the kernels, in the order of REGIONS.
_VALID, _ACTIVE, _ALL, _HARD, _SEMIHARD, _EASY = range(6)
assert REGIONS == ("valid", "active", "all", "hard", "semihard", "easy")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------------------------------
# Per-anchor helpers (called from inside the parallel loops)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _positives(label, ref_labels, own):
    """Columns of the anchor's positives (same label, not its own column), ascending."""
    m = ref_labels.shape[0]
    count = 0
    for j in range(m):
        if ref_labels[j] == label and j != own:
            count += 1
    cols = np.empty(count, dtype=np.int64)
    count = 0
    for j in range(m):
        if ref_labels[j] == label and j != own:
            cols[count] = j
            count += 1
    return cols


@numba.njit(cache=True)
def _count_negatives(label, ref_labels):
    """Number of references whose label differs from ``label``."""
    k = 0
    for j in range(ref_labels.shape[0]):
        if ref_labels[j] != label:
            k += 1
    return k


@numba.njit(cache=True)
def _sorted_negatives(row, label, ref_labels):
    """The anchor's negative distances sorted ascending and their columns; the sort is
    stable, so equal distances keep column order."""
    m = ref_labels.shape[0]
    k = _count_negatives(label, ref_labels)
    cols = np.empty(k, dtype=np.int64)
    vals = np.empty(k, dtype=row.dtype)
    k = 0
    for j in range(m):
        if ref_labels[j] != label:
            cols[k] = j
            vals[k] = row[j]
            k += 1
    order = np.argsort(vals, kind="mergesort")
    return vals[order], cols[order]


@numba.njit(cache=True)
def _region_bounds(svals, dap, t, region):
    """Slots ``[lo, hi)`` of the sorted negatives ``svals`` in ``region`` for one positive
    at distance ``dap`` with threshold ``t = dap + margin``; ``hi >= lo``."""
    k = svals.shape[0]
    if region == _VALID:
        return 0, k
    if region == _ACTIVE:
        return 0, np.searchsorted(svals, t, side="left")  # d_an < t
    le_margin = np.searchsorted(svals, t, side="right")  # d_an <= t
    if region == _ALL:
        return 0, le_margin
    le_ap = np.searchsorted(svals, dap, side="right")  # d_an <= d_ap
    if region == _HARD:
        return 0, le_ap
    if region == _SEMIHARD:
        return le_ap, max(le_margin, le_ap)
    return le_margin, k  # _EASY


# ---------------------------------------------------------------------------------------------
# Batch-all losses
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def _batch_all_hinge_kernel(dist, labels, ref_labels, self_index, margin, grad, totals, counts):
    """Hinge batch-all per anchor: ``totals[a]`` the float64 sum, ``counts[a]`` the numbers
    of valid and of active triplets; writes row ``a`` of ``grad`` (zero on entry).

    The thresholds ``t_p = d_ap + margin`` are sorted; a negative at ``v`` is active for
    the positives with ``t_p > v``, the last ``P - r`` of them where ``r = #{t_p <= v}``.
    Per bucket ``r`` the negatives' number and sum are kept, and a running sum over the
    sorted thresholds gives each positive its count ``c_p`` and total ``S_p`` of active
    negatives, hence the term ``c_p * t_p - S_p`` and the gradients ``c_p`` at ``(a, p)``
    and ``-(P - r)`` at ``(a, n)``.
    """
    n, m = dist.shape
    for a in prange(n):
        row = dist[a]
        g = grad[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        npos = pcols.shape[0]
        if npos == 0:
            continue
        thresholds = np.empty(npos, dtype=dist.dtype)
        for i in range(npos):
            thresholds[i] = row[pcols[i]] + margin
        order = np.argsort(thresholds)
        tsorted = thresholds[order]
        bucket_count = np.zeros(npos + 1, dtype=np.int64)
        bucket_sum = np.zeros(npos + 1, dtype=np.float64)
        k = 0
        active = 0
        for j in range(m):
            if ref_labels[j] != label:
                v = row[j]
                r = np.searchsorted(tsorted, v, side="right")
                k += 1
                active += npos - r
                g[j] = -(npos - r)
                bucket_count[r] += 1
                bucket_sum[r] += v
        c = 0
        s = 0.0
        total = 0.0
        for i in range(npos):
            c += bucket_count[i]
            s += bucket_sum[i]
            g[pcols[order[i]]] = c
            total += c * np.float64(tsorted[i]) - s
        totals[a] = total
        counts[a, 0] = npos * k
        counts[a, 1] = active


@numba.njit(cache=True)
def _softplus_sigmoid(x):
    """``(softplus(x), sigmoid(x))`` for a float64 ``x``, both numerically stable."""
    e = math.exp(-abs(x))
    softplus = max(x, 0.0) + math.log1p(e)
    if x >= 0.0:
        return softplus, 1.0 / (1.0 + e)
    return softplus, e / (1.0 + e)


@numba.njit(cache=True, parallel=True)
def _batch_all_soft_kernel(dist, labels, ref_labels, self_index, grad, totals, counts):
    """Soft-margin batch-all per anchor, O(P M): ``totals[a]``, ``counts[a]`` (valid
    triplets) and row ``a`` of ``grad`` (zero on entry), accumulated in float64."""
    n, m = dist.shape
    for a in prange(n):
        row = dist[a]
        g = grad[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        npos = pcols.shape[0]
        if npos == 0:
            continue
        dap = np.empty(npos, dtype=np.float64)
        for i in range(npos):
            dap[i] = row[pcols[i]]
        gpos = np.zeros(npos, dtype=np.float64)
        total = 0.0
        k = 0
        for j in range(m):
            if ref_labels[j] != label:
                v = np.float64(row[j])
                k += 1
                gneg = 0.0
                for i in range(npos):
                    softplus, sigmoid = _softplus_sigmoid(dap[i] - v)
                    total += softplus
                    gpos[i] += sigmoid
                    gneg += sigmoid
                g[j] = -gneg
        for i in range(npos):
            g[pcols[i]] = gpos[i]
        totals[a] = total
        counts[a] = npos * k


# ---------------------------------------------------------------------------------------------
# One triplet per anchor or per positive pair
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def _batch_hard_kernel(dist, labels, ref_labels, self_index, hardest_p, hardest_n):
    """Per anchor the farthest positive and the nearest negative (first column on ties), or
    -1 where the anchor has none."""
    n, m = dist.shape
    for a in prange(n):
        row = dist[a]
        label = labels[a]
        own = self_index[a]
        best_p = -1
        best_n = -1
        for j in range(m):
            v = row[j]
            if ref_labels[j] == label:
                if j != own and (best_p < 0 or v > row[best_p]):
                    best_p = j
            elif best_n < 0 or v < row[best_n]:
                best_n = j
        hardest_p[a] = best_p
        hardest_n[a] = best_n


@numba.njit(cache=True, parallel=True)
def _semi_hard_lengths(labels, ref_labels, self_index, lengths):
    """Rows each anchor contributes to :func:`semi_hard`: its positives if it has a
    negative, else none."""
    for a in prange(labels.shape[0]):
        label = labels[a]
        if _count_negatives(label, ref_labels) > 0:
            lengths[a] = _positives(label, ref_labels, self_index[a]).shape[0]


@numba.njit(cache=True, parallel=True)
def _semi_hard_fill(dist, labels, ref_labels, self_index, offsets, out_a, out_p, out_n):
    """Writes anchor ``a``'s semi-hard rows at ``offsets[a]`` onwards, positives ascending.

    The distances ``d_ap`` are sorted; a negative at ``v`` is farther than the positives
    with ``d_ap < v``, the first ``r`` of them. Bucket ``r`` keeps the nearest such
    negative (first column on ties); a running minimum over the buckets from the top gives
    each positive its nearest farther negative. Without one, the first occurrence of the
    largest negative distance is taken.
    """
    n, m = dist.shape
    for a in prange(n):
        start = offsets[a]
        if offsets[a + 1] == start:
            continue
        row = dist[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        npos = pcols.shape[0]
        dap = np.empty(npos, dtype=dist.dtype)
        for i in range(npos):
            dap[i] = row[pcols[i]]
        order = np.argsort(dap)
        dsorted = dap[order]
        bucket = np.full(npos + 1, -1, dtype=np.int64)
        largest = -1
        for j in range(m):
            if ref_labels[j] != label:
                v = row[j]
                if largest < 0 or v > row[largest]:
                    largest = j
                r = np.searchsorted(dsorted, v, side="left")
                if r > 0 and (bucket[r] < 0 or v < row[bucket[r]]):
                    bucket[r] = j
        best = -1
        for i in range(npos - 1, -1, -1):
            cand = bucket[i + 1]
            if cand >= 0 and (
                best < 0 or row[cand] < row[best] or (row[cand] == row[best] and cand < best)
            ):
                best = cand
            q = order[i]
            out_a[start + q] = a
            out_p[start + q] = pcols[q]
            out_n[start + q] = best if best >= 0 else largest


# ---------------------------------------------------------------------------------------------
# Triplet regions and counts
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, parallel=True)
def _region_lengths(dist, labels, ref_labels, self_index, margin, region, lengths):
    """Number of triplets of each anchor in ``region``."""
    for a in prange(dist.shape[0]):
        row = dist[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        if pcols.shape[0] == 0:
            continue
        svals, _ = _sorted_negatives(row, label, ref_labels)
        total = 0
        for i in range(pcols.shape[0]):
            dap = row[pcols[i]]
            lo, hi = _region_bounds(svals, dap, dap + margin, region)
            total += hi - lo
        lengths[a] = total


@numba.njit(cache=True, parallel=True)
def _region_fill(dist, labels, ref_labels, self_index, margin, region, offsets, out_a, out_p, out_n):
    """Writes anchor ``a``'s triplets in ``region`` at ``offsets[a]`` onwards, by positive,
    then by increasing ``d_an`` (first column on ties)."""
    for a in prange(dist.shape[0]):
        w = offsets[a]
        if offsets[a + 1] == w:
            continue
        row = dist[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        svals, scols = _sorted_negatives(row, label, ref_labels)
        for i in range(pcols.shape[0]):
            p = pcols[i]
            dap = row[p]
            lo, hi = _region_bounds(svals, dap, dap + margin, region)
            for s in range(lo, hi):
                out_a[w] = a
                out_p[w] = p
                out_n[w] = scols[s]
                w += 1


@numba.njit(cache=True, parallel=True)
def _triplet_counts_kernel(dist, labels, ref_labels, self_index, margin, counts):
    """Per anchor ``(valid, easy, hard)`` counts.

    With ``u_p = max(d_ap + margin, d_ap)``, a negative at ``v`` is hard for the positives
    with ``d_ap >= v`` and not easy for those with ``u_p >= v``; both counts come from a
    binary search among the sorted ``d_ap`` and ``u_p``.
    """
    n, m = dist.shape
    for a in prange(n):
        row = dist[a]
        label = labels[a]
        pcols = _positives(label, ref_labels, self_index[a])
        npos = pcols.shape[0]
        if npos == 0:
            continue
        dap = np.empty(npos, dtype=dist.dtype)
        upper = np.empty(npos, dtype=dist.dtype)
        for i in range(npos):
            d = row[pcols[i]]
            dap[i] = d
            upper[i] = max(d + margin, d)
        dap.sort()
        upper.sort()
        k = 0
        hard = 0
        not_easy = 0
        for j in range(m):
            if ref_labels[j] != label:
                v = row[j]
                k += 1
                hard += npos - np.searchsorted(dap, v, side="left")
                not_easy += npos - np.searchsorted(upper, v, side="left")
        counts[a, 0] = npos * k
        counts[a, 1] = npos * k - not_easy
        counts[a, 2] = hard


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
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    ref_labels = np.ascontiguousarray(ref_labels, dtype=np.int64)
    self_index = np.ascontiguousarray(self_index, dtype=np.int64)
    if labels.shape != (n,) or self_index.shape != (n,) or ref_labels.shape != (m,):
        raise ValueError(
            f"dist is {n} x {m} but labels, ref_labels and self_index have shapes "
            f"{labels.shape}, {ref_labels.shape} and {self_index.shape}"
        )
    return np.ascontiguousarray(dist), labels, ref_labels, self_index


def _empty_triplets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.empty(0, dtype=np.int64) for _ in range(3))  # type: ignore[return-value]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


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
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    grad = np.zeros_like(dist)
    if n == 0 or m == 0:
        return 0.0, 0, 0, grad
    totals = np.zeros(n, dtype=np.float64)
    counts = np.zeros((n, 2), dtype=np.int64)
    _batch_all_hinge_kernel(
        dist, labels, ref_labels, self_index, dist.dtype.type(margin), grad, totals, counts
    )
    n_valid, n_active = counts.sum(axis=0)
    return float(totals.sum()), int(n_valid), int(n_active), grad


def batch_all_soft(
    dist: np.ndarray, labels: np.ndarray, ref_labels: np.ndarray, self_index: np.ndarray
) -> tuple[float, int, np.ndarray]:
    """Sum of ``softplus(d_ap - d_an)`` over every valid triplet, in O(N P M).

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.

    Returns:
        ``(total, n_valid, grad)`` as in :func:`batch_all_hinge`; terms and gradients are
        computed in float64.
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return 0.0, 0, np.zeros_like(dist)
    grad = np.zeros((n, m), dtype=np.float64)
    totals = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    _batch_all_soft_kernel(dist, labels, ref_labels, self_index, grad, totals, counts)
    return float(totals.sum()), int(counts.sum()), grad.astype(dist.dtype, copy=False)


def batch_hard(
    dist: np.ndarray, labels: np.ndarray, ref_labels: np.ndarray, self_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per anchor with a positive and a negative: the farthest positive and the nearest
    negative, first column on ties.

    Args:
        dist: distances ``[N, M]``, float32 or float64.
        labels: anchor labels ``[N]``.
        ref_labels: reference labels ``[M]``.
        self_index: column of each anchor among the references, or -1, ``[N]``.

    Returns:
        ``(anchor, positive, negative)`` int64 arrays, anchors ascending.
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return _empty_triplets()
    hardest_p = np.empty(n, dtype=np.int64)
    hardest_n = np.empty(n, dtype=np.int64)
    _batch_hard_kernel(dist, labels, ref_labels, self_index, hardest_p, hardest_n)
    keep = np.flatnonzero((hardest_p >= 0) & (hardest_n >= 0))
    return keep.astype(np.int64, copy=False), hardest_p[keep], hardest_n[keep]


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
    lengths = np.zeros(n, dtype=np.int64)
    _semi_hard_lengths(labels, ref_labels, self_index, lengths)
    offsets = _offsets(lengths)
    out = [np.empty(offsets[-1], dtype=np.int64) for _ in range(3)]
    _semi_hard_fill(dist, labels, ref_labels, self_index, offsets, *out)
    return out[0], out[1], out[2]


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
    code = REGIONS.index(region)
    margin_ = dist.dtype.type(margin)
    lengths = np.zeros(n, dtype=np.int64)
    _region_lengths(dist, labels, ref_labels, self_index, margin_, code, lengths)
    offsets = _offsets(lengths)
    out = [np.empty(offsets[-1], dtype=np.int64) for _ in range(3)]
    _region_fill(dist, labels, ref_labels, self_index, margin_, code, offsets, *out)
    return out[0], out[1], out[2]


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
        ``d_an <= d_ap``. With a negative margin nothing hard counts as easy, so the three
        always add up to ``valid``.
    """
    dist, labels, ref_labels, self_index = _inputs(dist, labels, ref_labels, self_index)
    n, m = dist.shape
    if n == 0 or m == 0:
        return 0, 0, 0, 0
    counts = np.zeros((n, 3), dtype=np.int64)
    _triplet_counts_kernel(
        dist, labels, ref_labels, self_index, dist.dtype.type(margin), counts
    )
    valid, easy, hard = (int(c) for c in counts.sum(axis=0))
    return valid, easy, valid - easy - hard, hard
