"""The ``@numba.njit`` kernels behind :mod:`tripletkit.kernels.numba_backend` (read its
docstring first: contract, layout and numeric rules). Per-anchor helpers, then one parallel
kernel per family (batch-all, batch-hard and rank windows, mined rows, counts), each declared
for float32 and float64 distances and for both kinds of relation (class labels, or the
positive and negative masks of a mask relation, see :func:`_relation`) and compiled on first
use of each."""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from .torch_backend import REGIONS

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

# The declared signatures of the parallel kernels, for the float32 and float64 distance
# matrices the wrappers hand them (C-contiguous; labels and indices int64) and for both kinds
# of relation (class labels, or the positive and negative masks of a mask relation). They are
# compiled lazily, on the first call of each (or loaded from numba's on-disk cache), so an
# import costs nothing and a user pays only for the dtypes and relations they use; the
# wrappers' input conversion makes every call match one of them (tests check that the
# kernels compile nothing else: :data:`SIGNATURES`).
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


#: The declared signatures of each parallel kernel, by name (see :func:`_parallel_kernel`).
SIGNATURES: dict[str, list] = {}


#: The arguments every parallel kernel takes first: ``dist, labels, ref_labels, self_index``.
_KERNEL_HEAD = ("F", "L", "R", _INDEX)


def _parallel_kernel(*rest: object):  # type: ignore[no-untyped-def]
    """``@numba.njit(cache=True, parallel=True)``, compiled on first call, with the kernel's
    declared signatures (:func:`_signatures` of :data:`_KERNEL_HEAD` then ``rest``, the
    kernel's own arguments) recorded in :data:`SIGNATURES`."""

    def decorate(fn):  # type: ignore[no-untyped-def]
        SIGNATURES[fn.__name__] = _signatures(*_KERNEL_HEAD, *rest)
        return numba.njit(cache=True, parallel=True)(fn)

    return decorate


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Up to this many sorted values, _rank counts instead of bisecting.
_LINEAR_RANK_MAX = 16


# ---------------------------------------------------------------------------------------------
# The relation of one anchor: ``(label, ref_labels)`` is the anchor's label and the
# references' labels, or the anchor's rows of the positive and negative masks. The helpers
# below are chosen when a kernel is compiled (numba overloads), so the class-label path runs
# exactly the comparisons it always did.
# ---------------------------------------------------------------------------------------------


def _relation(labels, ref_labels, a):
    """Anchor ``a``'s relation: ``(labels[a], ref_labels)``, or its two mask rows. This
    Python body runs without the JIT (``NUMBA_DISABLE_JIT``); compiled code uses the
    overload below."""
    if ref_labels.ndim == 2:
        return labels[a], ref_labels[a]
    return labels[a], ref_labels


def _is_pos(label, ref_labels, j):
    """Whether reference ``j`` shares the anchor's label (own column not excluded)."""
    if isinstance(label, np.ndarray):
        return label[j]
    return ref_labels[j] == label


def _is_neg(label, ref_labels, j):
    """Whether reference ``j`` is a negative of the anchor."""
    if isinstance(label, np.ndarray):
        return ref_labels[j]
    return ref_labels[j] != label


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


@_parallel_kernel("f", numba.boolean, "F", numba.float64[::1], numba.int64[:, ::1])
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


@_parallel_kernel(_INDEX, _INDEX)
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


@_parallel_kernel(
    numba.int64, numba.int64, numba.int64, numba.int64, numba.int64[:, ::1], numba.int64[:, ::1]
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


@_parallel_kernel("f", numba.int64, numba.boolean, _INDEX, _INDEX, _INDEX, _INDEX)
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


@_parallel_kernel("f", numba.int64[:, ::1])
def _counts_kernel(dist, labels, ref_labels, self_index, margin, counts):
    """:func:`_counts_anchor` for every anchor, into ``counts[a]``."""
    for a in prange(dist.shape[0]):
        label, refs = _relation(labels, ref_labels, a)
        valid, easy, hard = _counts_anchor(dist[a], label, refs, self_index[a], margin)
        counts[a, 0] = valid
        counts[a, 1] = easy
        counts[a, 2] = hard
