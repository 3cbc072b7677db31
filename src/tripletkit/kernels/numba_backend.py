"""Selection and fused-loss kernels compiled with numba, for CPU arrays.

Same functions, same contract and same results as :mod:`tripletkit.kernels.torch_backend`
(read its docstring first), on zero-copy numpy views instead of tensors: ``dist`` is a
C-contiguous float32 or float64 ``[N, M]`` array, ``labels``, ``ref_labels`` and
``self_index`` are int64 (or, for a mask relation, ``labels`` and ``ref_labels`` are the
positive and negative bool masks ``[N, M]``: each anchor then reads its two mask rows where
it would compare labels, see :func:`_relation`). The dispatcher in :mod:`tripletkit.kernels`
converts to and from tensors.

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
thresholds instead (one per positive; ``P`` is usually much smaller than ``M``) and rank each
negative among them (:func:`_rank`), which is O(N M log P). Only :func:`triplet_region`,
whose output is ordered by ``d_an``, sorts the negatives.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

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

# Region codes handed to the kernels (a region's index in REGIONS), and the code that asks
# the row-writing kernel for semi-hard rows instead.
_KERNEL_REGIONS = ("valid", "active", "all", "hard", "semihard", "easy")
if set(REGIONS) != set(_KERNEL_REGIONS):  # a region added to the torch backend only
    raise ImportError(
        f"the numba kernels implement the regions {_KERNEL_REGIONS}, but the torch backend "
        f"defines {REGIONS}: add the missing ones to both backends"
    )
_VALID, _ACTIVE, _ALL, _HARD, _SEMIHARD, _EASY = (REGIONS.index(r) for r in _KERNEL_REGIONS)
_SEMI_HARD_ROWS = len(REGIONS)

# Explicit signatures of the parallel kernels, for the float32 and float64 distance matrices
# the wrappers hand them (C-contiguous; labels and indices int64) and for both kinds of
# relation (class labels, or the positive and negative masks of a mask relation): all are
# compiled, or loaded from numba's on-disk cache, when this module is first imported, so no
# call pays a compilation for its dtype.
_INDEX = numba.int64[::1]
_FLOATS = (numba.float32, numba.float64)
_MASK = numba.boolean[:, ::1]
#: The types of ``labels`` and ``ref_labels``: class labels ``[N]``, ``[M]`` or masks ``[N, M]``.
_RELATIONS = ((_INDEX, _INDEX), (_MASK, _MASK))


def _signatures(*args: object) -> list:
    """One ``void(...)`` signature per float type and kind of relation; ``"f"`` stands for
    the float scalar, ``"F"`` for the C-contiguous float matrix, ``"L"`` and ``"R"`` for
    the relation (``labels`` and ``ref_labels``)."""
    kinds = {"L": 0, "R": 1}
    return [
        numba.void(
            *(
                f
                if a == "f"
                else f[:, ::1]
                if a == "F"
                else rel[kinds[a]]
                if isinstance(a, str) and a in kinds
                else a
                for a in args
            )
        )
        for rel in _RELATIONS
        for f in _FLOATS
    ]


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Up to this many sorted values, _rank counts instead of bisecting.
_LINEAR_RANK_MAX = 16


# ---------------------------------------------------------------------------------------------
# The relation of one anchor: ``(label, ref_labels)`` is the anchor's label and the
# references' labels, or the anchor's rows of the positive and negative masks. The helpers
# below are chosen when a kernel is compiled (numba overloads), so the class-label path runs
# exactly the comparisons it always did.
# ---------------------------------------------------------------------------------------------


def _relation(labels, ref_labels, a):  # pragma: no cover - replaced by the overload in numba
    raise NotImplementedError


def _is_pos(label, ref_labels, j):  # pragma: no cover - replaced by the overload in numba
    raise NotImplementedError


def _is_neg(label, ref_labels, j):  # pragma: no cover - replaced by the overload in numba
    raise NotImplementedError


@overload(_relation)
def _relation_impl(labels, ref_labels, a):
    """Anchor ``a``'s relation: ``(labels[a], ref_labels)`` or its two mask rows."""
    if ref_labels.ndim == 2:
        return lambda labels, ref_labels, a: (labels[a], ref_labels[a])
    return lambda labels, ref_labels, a: (labels[a], ref_labels)


@overload(_is_pos)
def _is_pos_impl(label, ref_labels, j):
    """Whether reference ``j`` shares the anchor's label (own column not excluded)."""
    if isinstance(label, types.Array):
        return lambda label, ref_labels, j: label[j]
    return lambda label, ref_labels, j: ref_labels[j] == label


@overload(_is_neg)
def _is_neg_impl(label, ref_labels, j):
    """Whether reference ``j`` is a negative of the anchor."""
    if isinstance(label, types.Array):
        return lambda label, ref_labels, j: ref_labels[j]
    return lambda label, ref_labels, j: ref_labels[j] != label


# ---------------------------------------------------------------------------------------------
# Per-anchor helpers (called from inside the parallel loops)
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _positives(label, ref_labels, own):
    """Columns of the anchor's positives (same label, not its own column), ascending."""
    m = ref_labels.shape[0]
    count = 0
    for j in range(m):
        if _is_pos(label, ref_labels, j) and j != own:
            count += 1
    cols = np.empty(count, dtype=np.int64)
    count = 0
    for j in range(m):
        if _is_pos(label, ref_labels, j) and j != own:
            cols[count] = j
            count += 1
    return cols


@numba.njit(cache=True)
def _count_negatives(label, ref_labels):
    """Number of references whose label differs from ``label``."""
    k = 0
    for j in range(ref_labels.shape[0]):
        if _is_neg(label, ref_labels, j):
            k += 1
    return k


@numba.njit(cache=True)
def _rank(sorted_values, v, inclusive):
    """Number of ``sorted_values`` below ``v`` (``inclusive``: at most ``v``).

    A binary search, except for the few values of a typical anchor's positives, where a
    branch-free count is several times faster than mispredicted binary-search branches.
    """
    n = sorted_values.shape[0]
    if n > _LINEAR_RANK_MAX:
        if inclusive:
            return np.searchsorted(sorted_values, v, side="right")
        return np.searchsorted(sorted_values, v, side="left")
    r = 0
    if inclusive:
        for i in range(n):
            r += sorted_values[i] <= v
    else:
        for i in range(n):
            r += sorted_values[i] < v
    return r


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
        if _is_neg(label, ref_labels, j):
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
        return 0, min(le_margin, le_ap)  # d_an <= d_ap and d_an <= t
    if region == _SEMIHARD:
        return le_ap, max(le_margin, le_ap)
    return le_margin, k  # _EASY


# ---------------------------------------------------------------------------------------------
# Batch-all losses
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _hinge_anchor(row, label, ref_labels, own, margin, g):
    """Hinge batch-all terms of one anchor: writes its gradient row ``g`` (zero on entry)
    and returns ``(total, n_valid, n_active)``.

    The thresholds ``t_p = d_ap + margin`` are sorted; a negative at ``v`` is active for
    the positives with ``t_p > v``, the last ``P - r`` of them where ``r = #{t_p <= v}``.
    Per bucket ``r`` the negatives' number and float64 sum are kept, and running sums over
    the sorted thresholds give each positive its count ``c_p`` and total ``S_p`` of active
    negatives, hence its term ``c_p * t_p - S_p`` and gradient ``c_p``; a negative's
    gradient is ``-(P - r)``.
    """
    pcols = _positives(label, ref_labels, own)
    npos = pcols.shape[0]
    if npos == 0:
        return 0.0, 0, 0
    thresholds = np.empty(npos, dtype=row.dtype)
    for i in range(npos):
        thresholds[i] = row[pcols[i]] + margin
    order = np.argsort(thresholds, kind="mergesort")
    tsorted = thresholds[order]
    bucket_count = np.zeros(npos + 1, dtype=np.int64)
    bucket_sum = np.zeros(npos + 1, dtype=np.float64)
    k = 0
    active = 0
    for j in range(ref_labels.shape[0]):
        if _is_neg(label, ref_labels, j):
            v = row[j]
            r = _rank(tsorted, v, True)
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
    return total, npos * k, active


@numba.njit(cache=True)
def _softplus_sigmoid(x):
    """``(softplus(x), sigmoid(x))`` for a float64 ``x``, both numerically stable."""
    e = math.exp(-abs(x))
    softplus = max(x, 0.0) + math.log1p(e)
    if x >= 0.0:
        return softplus, 1.0 / (1.0 + e)
    return softplus, e / (1.0 + e)


@numba.njit(cache=True)
def _soft_anchor(row, label, ref_labels, own, margin, g):
    """Soft-margin batch-all terms ``softplus(d_ap - d_an + margin)`` of one anchor in
    O(P M), in float64: writes its gradient row ``g`` (zero on entry) and returns
    ``(total, n_valid)``."""
    pcols = _positives(label, ref_labels, own)
    npos = pcols.shape[0]
    if npos == 0:
        return 0.0, 0
    dap = np.empty(npos, dtype=np.float64)
    for i in range(npos):
        dap[i] = row[pcols[i]] + margin
    gpos = np.zeros(npos, dtype=np.float64)
    total = 0.0
    k = 0
    for j in range(ref_labels.shape[0]):
        if _is_neg(label, ref_labels, j):
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
    return total, npos * k


@numba.njit(
    _signatures(
        "F",
        "L",
        "R",
        _INDEX,
        "f",
        numba.boolean,
        "F",
        numba.float64[::1],
        numba.int64[:, ::1],
    ),
    cache=True,
    parallel=True,
)
def _batch_all_kernel(dist, labels, ref_labels, self_index, margin, soft, grad, totals, counts):
    """:func:`_soft_anchor` (``soft``) or :func:`_hinge_anchor` for every anchor: its total
    into ``totals[a]``, its numbers of valid and active triplets into ``counts[a]`` (active:
    hinge only) and its gradient into row ``a`` of ``grad`` (zero on entry)."""
    for a in prange(dist.shape[0]):
        label, refs = _relation(labels, ref_labels, a)
        if soft:
            total, valid = _soft_anchor(dist[a], label, refs, self_index[a], margin, grad[a])
            active = 0
        else:
            total, valid, active = _hinge_anchor(
                dist[a], label, refs, self_index[a], margin, grad[a]
            )
        totals[a] = total
        counts[a, 0] = valid
        counts[a, 1] = active


# ---------------------------------------------------------------------------------------------
# Mined triplets: one per anchor (batch-hard), per positive pair (semi-hard), per region
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _hard_anchor(row, label, ref_labels, own):
    """Farthest positive and nearest negative of one anchor (first column on ties), -1
    for none."""
    best_p = -1
    best_n = -1
    for j in range(ref_labels.shape[0]):
        v = row[j]
        if _is_pos(label, ref_labels, j):
            if j != own and (best_p < 0 or v > row[best_p]):
                best_p = j
        elif _is_neg(label, ref_labels, j) and (best_n < 0 or v < row[best_n]):
            best_n = j
    return best_p, best_n


@numba.njit(_signatures("F", "L", "R", _INDEX, _INDEX, _INDEX), cache=True, parallel=True)
def _hard_kernel(dist, labels, ref_labels, self_index, hardest_p, hardest_n):
    """:func:`_hard_anchor` for every anchor."""
    for a in prange(dist.shape[0]):
        label, refs = _relation(labels, ref_labels, a)
        p, n = _hard_anchor(dist[a], label, refs, self_index[a])
        hardest_p[a] = p
        hardest_n[a] = n


@numba.njit(cache=True)
def _member(label, ref_labels, j, positive):
    """Whether reference ``j`` is a positive (``positive``) or a negative of the anchor."""
    return _is_pos(label, ref_labels, j) if positive else _is_neg(label, ref_labels, j)


@numba.njit(cache=True)
def _ranked_anchor(row, label, ref_labels, own, positive, lo, hi, out):
    """One anchor's positives (``positive``: hardness rank 0 = farthest) or negatives (rank
    0 = nearest) ranked ``lo .. hi - 1``, ties to the lower column, into ``out`` (-1 where
    the anchor has fewer)."""
    m = ref_labels.shape[0]
    count = 0
    for j in range(m):
        if _member(label, ref_labels, j, positive) and j != own:
            count += 1
    cols = np.empty(count, dtype=np.int64)
    keys = np.empty(count, dtype=row.dtype)
    count = 0
    for j in range(m):
        if _member(label, ref_labels, j, positive) and j != own:
            cols[count] = j
            keys[count] = -row[j] if positive else row[j]
            count += 1
    order = np.argsort(keys, kind="mergesort")  # stable: equal distances keep column order
    for r in range(lo, hi):
        out[r - lo] = cols[order[r]] if r < count else -1


@numba.njit(
    _signatures(
        "F",
        "L",
        "R",
        _INDEX,
        numba.int64,
        numba.int64,
        numba.int64,
        numba.int64,
        numba.int64[:, ::1],
        numba.int64[:, ::1],
    ),
    cache=True,
    parallel=True,
)
def _ranked_kernel(dist, labels, ref_labels, self_index, p_lo, p_hi, n_lo, n_hi, out_p, out_n):
    """:func:`_ranked_anchor` for every anchor, its positives and its negatives."""
    for a in prange(dist.shape[0]):
        own = self_index[a]
        label, refs = _relation(labels, ref_labels, a)
        _ranked_anchor(dist[a], label, refs, own, True, p_lo, p_hi, out_p[a])
        # a negative is never the anchor's own column (same label); -2 matches no column
        _ranked_anchor(dist[a], label, refs, -2, False, n_lo, n_hi, out_n[a])


@numba.njit(cache=True)
def _semi_hard_anchor(row, label, ref_labels, own, fill, out_p, out_n):
    """Number of one anchor's semi-hard rows (its positives if it has a negative, else 0);
    with ``fill`` also writes each positive (columns ascending) and its negative, into
    ``out_p`` and ``out_n`` of that length.

    Counting is one pass over the labels, without allocating; filling gathers the
    positives' columns and distances in one pass. The distances ``d_ap`` are then sorted; a
    negative at ``v`` is farther than the positives with ``d_ap < v``, the first ``r`` of
    them. Bucket ``r`` keeps the nearest such negative (first column on ties); a running
    minimum over the buckets from the top gives each positive its nearest farther negative.
    Without one, the first occurrence of the largest negative distance is taken.
    """
    m = ref_labels.shape[0]
    if not fill:
        npos = 0
        nneg = 0
        for j in range(m):
            if _is_neg(label, ref_labels, j):
                nneg += 1
            elif j != own and _is_pos(label, ref_labels, j):
                npos += 1
        return npos if nneg > 0 else 0
    npos = out_p.shape[0]
    if npos == 0:
        return 0
    pcols = np.empty(npos, dtype=np.int64)
    dap = np.empty(npos, dtype=row.dtype)
    i = 0
    for j in range(m):
        if _is_pos(label, ref_labels, j) and j != own:
            pcols[i] = j
            dap[i] = row[j]
            i += 1
    order = np.argsort(dap, kind="mergesort")
    dsorted = dap[order]
    bucket = np.full(npos + 1, -1, dtype=np.int64)
    largest = -1
    for j in range(m):
        if _is_neg(label, ref_labels, j):
            v = row[j]
            if largest < 0 or v > row[largest]:
                largest = j
            r = _rank(dsorted, v, False)
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
        out_p[q] = pcols[q]
        out_n[q] = best if best >= 0 else largest
    return npos


@numba.njit(cache=True)
def _region_anchor(row, label, ref_labels, own, margin, region, fill, out_p, out_n):
    """Number of one anchor's triplets in ``region``; with ``fill`` also writes their
    positives and negatives, by positive, then by increasing ``d_an`` (first column on
    ties). Counting and filling take the runs from the same sorted negatives."""
    pcols = _positives(label, ref_labels, own)
    if pcols.shape[0] == 0:
        return 0
    svals, scols = _sorted_negatives(row, label, ref_labels)
    w = 0
    for i in range(pcols.shape[0]):
        p = pcols[i]
        dap = row[p]
        lo, hi = _region_bounds(svals, dap, dap + margin, region)
        if fill:
            for s in range(lo, hi):
                out_p[w] = p
                out_n[w] = scols[s]
                w += 1
        else:
            w += hi - lo
    return w


@numba.njit(
    _signatures(
        "F",
        "L",
        "R",
        _INDEX,
        "f",
        numba.int64,
        numba.boolean,
        _INDEX,
        _INDEX,
        _INDEX,
        _INDEX,
    ),
    cache=True,
    parallel=True,
)
def _rows_kernel(
    dist, labels, ref_labels, self_index, margin, mode, fill, offsets, out_a, out_p, out_n
):
    """Mined rows of every anchor, semi-hard (``mode == _SEMI_HARD_ROWS``) or in the region
    ``mode``, in two calls. ``fill=False``: ``offsets[a + 1]`` = number of anchor ``a``'s
    rows. ``fill=True``, ``offsets`` now cumulative: writes them from ``offsets[a]`` on."""
    for a in prange(dist.shape[0]):
        start = 0
        stop = 0
        if fill:
            start = offsets[a]
            stop = offsets[a + 1]
            if stop == start:
                continue
        row = dist[a]
        label, refs = _relation(labels, ref_labels, a)
        own = self_index[a]
        p = out_p[start:stop]
        n = out_n[start:stop]
        if mode == _SEMI_HARD_ROWS:
            count = _semi_hard_anchor(row, label, refs, own, fill, p, n)
        else:
            count = _region_anchor(row, label, refs, own, margin, mode, fill, p, n)
        if fill:
            for i in range(start, stop):
                out_a[i] = a
        else:
            offsets[a + 1] = count


# ---------------------------------------------------------------------------------------------
# Triplet counts
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _counts_anchor(row, label, ref_labels, own, margin):
    """``(valid, easy, hard)`` triplet counts of one anchor.

    With ``l_p = min(d_ap + margin, d_ap)``, a negative at ``v`` is hard for the positives
    with ``l_p >= v`` and not easy for those with ``d_ap + margin >= v``; both numbers are
    ranks of ``v`` among the sorted ``l_p`` and ``d_ap + margin``.
    """
    pcols = _positives(label, ref_labels, own)
    npos = pcols.shape[0]
    if npos == 0:
        return 0, 0, 0
    lower = np.empty(npos, dtype=row.dtype)
    upper = np.empty(npos, dtype=row.dtype)
    for i in range(npos):
        d = row[pcols[i]]
        upper[i] = d + margin
        lower[i] = min(upper[i], d)
    lower = lower[np.argsort(lower, kind="mergesort")]
    upper = upper[np.argsort(upper, kind="mergesort")]
    k = 0
    hard = 0
    not_easy = 0
    for j in range(ref_labels.shape[0]):
        if _is_neg(label, ref_labels, j):
            v = row[j]
            k += 1
            hard += npos - _rank(lower, v, False)
            not_easy += npos - _rank(upper, v, False)
    return npos * k, npos * k - not_easy, hard


@numba.njit(_signatures("F", "L", "R", _INDEX, "f", numba.int64[:, ::1]), cache=True, parallel=True)
def _counts_kernel(dist, labels, ref_labels, self_index, margin, counts):
    """:func:`_counts_anchor` for every anchor, into ``counts[a]``."""
    for a in prange(dist.shape[0]):
        label, refs = _relation(labels, ref_labels, a)
        valid, easy, hard = _counts_anchor(dist[a], label, refs, self_index[a], margin)
        counts[a, 0] = valid
        counts[a, 1] = easy
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
