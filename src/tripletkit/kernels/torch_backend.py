"""Selection and fused-loss kernels in plain torch (any device).

Every kernel works on a *detached* distance matrix ``dist [N, M]`` (anchors x references),
the anchor labels ``labels [N]``, the reference labels ``ref_labels [M]`` and ``self_index
[N]``: the column of each anchor's own sample among the references, or -1 when the anchor is
not among them. A positive of anchor ``a`` is a reference ``j != self_index[a]`` with the
same label; a negative is a reference with a different label.

Kernels never take part in autograd: they return indices, counts, or the gradient of a sum
of loss terms with respect to ``dist``. The autograd glue lives in :mod:`tripletkit.losses`.

Work is chunked over anchors so that peak memory stays a few ``N x M`` matrices whatever the
label distribution; no ``N x N x N`` tensor is ever built. Ties between equal distances are
broken by the lowest reference index, everywhere.

The numba backend (:mod:`tripletkit.kernels.numba_backend`) implements the same functions
with the same results; the tests run both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._masks import pair_masks

__all__ = [
    "REGIONS",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "semi_hard",
    "triplet_counts",
    "triplet_region",
]

#: Triplet regions understood by :func:`triplet_region`, with ``t = d_an - d_ap``:
#: ``valid`` every valid triplet; ``active`` ``t < m`` (hinge > 0); ``all`` ``t <= m``;
#: ``hard`` ``t <= 0``; ``semihard`` ``0 < t <= m``; ``easy`` ``t > m``.
REGIONS = ("valid", "active", "all", "hard", "semihard", "easy")

# Elements of an anchor chunk (rows x references) processed at once.
_CHUNK_ELEMENTS = 1 << 22


def _chunks(n: int, m: int) -> list[tuple[int, int]]:
    rows = max(1, _CHUNK_ELEMENTS // max(m, 1))
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _masks(
    labels: Tensor, ref_labels: Tensor, self_index: Tensor, start: int, stop: int
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[stop - start, M]`` for a chunk of anchors."""
    return pair_masks(labels[start:stop], ref_labels, self_index[start:stop])


def _sorted_negatives(d: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: negative distances sorted ascending (+inf padding), their columns, and the
    number of negatives. The sort is stable, so equal distances keep index order."""
    vals = torch.where(neg, d, torch.full_like(d, float("inf")))
    svals, sidx = torch.sort(vals, dim=1, stable=True)
    return svals, sidx, neg.sum(dim=1)


def batch_all_hinge(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, margin: float
) -> tuple[Tensor, int, int, Tensor]:
    """Sum of ``max(0, d_ap - d_an + margin)`` over every valid triplet, in O(N M log M).

    Per anchor the negatives' distances are sorted once; for a positive with threshold
    ``t = d_ap + margin`` the active negatives are those with ``d_an < t``: a binary search
    gives their count ``c`` and a prefix sum ``S`` their total, so the anchor-positive row
    contributes ``c * t - S``. The gradient of the sum is ``c`` at ``(a, p)`` and minus the
    number of positives that make ``n`` active at ``(a, n)``.

    Returns:
        ``(total, n_valid, n_active, grad)``: the sum (0-dim, dtype of ``dist``,
        accumulated in float64), the number of valid and of active triplets, and
        ``d total / d dist`` of shape ``[N, M]``.
    """
    n, m = dist.shape
    grad = torch.zeros_like(dist)
    total = torch.zeros((), dtype=torch.float64, device=dist.device)
    n_valid = torch.zeros((), dtype=torch.int64, device=dist.device)
    n_active = torch.zeros((), dtype=torch.int64, device=dist.device)
    for start, stop in _chunks(n, m):
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        svals, sidx, k = _sorted_negatives(d, neg)
        finite = torch.where(neg.sum(1, keepdim=True) > torch.arange(m, device=d.device), svals, 0)
        prefix = torch.nn.functional.pad(finite.to(torch.float64).cumsum(dim=1), (1, 0))
        t = d + margin
        count = torch.searchsorted(svals, t, side="left")  # negatives with d_an < t
        count = torch.where(pos, count, 0)
        s = torch.gather(prefix, 1, count)
        terms = count.to(torch.float64) * t.to(torch.float64) - s
        total += torch.where(pos, terms, 0).sum()
        n_valid += (pos.sum(1) * k).sum()
        n_active += count.sum()
        # Gradient: +count at a positive; at the negative in sorted slot j, minus the number
        # of positives with count > j (those whose threshold exceeds it): a histogram of
        # the counts, summed from the right, then scattered back to the columns.
        hist = torch.zeros((d.shape[0], m + 1), dtype=torch.int64, device=d.device)
        hist.scatter_add_(1, count, pos.to(torch.int64))
        above = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # above[:, j] = #{count > j}
        g = torch.zeros_like(count).scatter_(1, sidx, -above) + count
        grad[start:stop] = g.to(dist.dtype)
    return total.to(dist.dtype), int(n_valid), int(n_active), grad


def batch_all_soft(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor
) -> tuple[Tensor, int, Tensor]:
    """Sum of ``softplus(d_ap - d_an)`` over every valid triplet (Hermans et al. 2017).

    Every triplet contributes, so this is O(N P M) time for ``P`` positives per anchor, in
    chunks of anchor-positive pairs that keep memory at O(N M).

    Returns:
        ``(total, n_valid, grad)`` as in :func:`batch_all_hinge`.
    """
    n, m = dist.shape
    grad = torch.zeros_like(dist)
    total = torch.zeros((), dtype=torch.float64, device=dist.device)
    n_valid = 0
    pairs_per_chunk = max(1, _CHUNK_ELEMENTS // max(m, 1))
    for start, stop in _chunks(n, m):
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        pa, pp = torch.nonzero(pos, as_tuple=True)
        for s0 in range(0, pa.shape[0], pairs_per_chunk):
            a = pa[s0 : s0 + pairs_per_chunk]
            p = pp[s0 : s0 + pairs_per_chunk]
            dap = d[a, p]
            rows_neg = neg[a]
            x = dap[:, None] - d[a]
            terms = torch.nn.functional.softplus(x)
            total += torch.where(rows_neg, terms, 0).to(torch.float64).sum()
            w = torch.where(rows_neg, torch.sigmoid(x), 0)
            # d/d dap of sum_n softplus(dap - dan) = sum_n sigmoid; d/d dan = -sigmoid.
            grad[start + a, p] += w.sum(dim=1)
            grad[start:stop].index_add_(0, a, -w)
            n_valid += int(rows_neg.sum())
    return total.to(dist.dtype), n_valid, grad


def batch_hard(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor with a positive and a negative: the farthest positive and the nearest
    negative (Hermans et al. 2017). Anchors lacking either are left out.

    Returns:
        ``(anchor, positive, negative)`` int64 index tensors, anchors ascending.
    """
    n, m = dist.shape
    out_a, out_p, out_n = [], [], []
    for start, stop in _chunks(n, m):
        if m == 0:  # no references: nothing to mine
            break
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        hardest_p = torch.where(pos, d, torch.full_like(d, float("-inf"))).argmax(dim=1)
        hardest_n = torch.where(neg, d, torch.full_like(d, float("inf"))).argmin(dim=1)
        keep = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).squeeze(1)
        out_a.append(keep + start)
        out_p.append(hardest_p[keep])
        out_n.append(hardest_n[keep])
    return _cat(out_a, dist), _cat(out_p, dist), _cat(out_n, dist)


def semi_hard(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-hard negatives (Schroff et al. 2015, as TensorFlow-Addons selects them).

    For every positive pair ``(a, p)`` whose anchor has a negative: the negative with the
    smallest ``d_an`` among those with ``d_an > d_ap``; when no negative is farther than the
    positive, the negative with the largest ``d_an``.

    Returns:
        ``(anchor, positive, negative)``, one row per such pair, ordered by ``(a, p)``.
    """
    n, m = dist.shape
    out_a, out_p, out_n = [], [], []
    for start, stop in _chunks(n, m):
        if m == 0:  # no references: nothing to mine
            break
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        svals, sidx, k = _sorted_negatives(d, neg)
        pos = pos & (k > 0)[:, None]
        a, p = torch.nonzero(pos, as_tuple=True)
        farther = torch.searchsorted(svals, d.contiguous(), side="right")[a, p]  # first d_an > d_ap
        ka = k[a]
        largest = torch.gather(svals, 1, (k - 1).clamp_min(0)[:, None])  # [B, 1]
        first_largest = torch.searchsorted(svals, largest, side="left").squeeze(1)[a]
        slot = torch.where(farther < ka, farther, first_largest)
        out_a.append(a + start)
        out_p.append(p)
        out_n.append(sidx[a, slot])
    return _cat(out_a, dist), _cat(out_p, dist), _cat(out_n, dist)


def _region_bounds(
    svals: Tensor, d: Tensor, k: Tensor, margin: float, region: str
) -> tuple[Tensor, Tensor]:
    """Slots ``[lo, hi)`` of the sorted negatives in ``region`` for every (anchor, ref)."""
    zeros = torch.zeros_like(d, dtype=torch.int64)
    kk = k[:, None].expand_as(zeros)
    if region == "valid":
        return zeros, kk
    if region == "active":
        return zeros, torch.searchsorted(svals, d + margin, side="left")
    le_margin = torch.searchsorted(svals, d + margin, side="right")  # d_an <= d_ap + m
    if region == "all":
        return zeros, le_margin
    le_ap = torch.searchsorted(svals, d.contiguous(), side="right")  # d_an <= d_ap
    if region == "hard":
        return zeros, le_ap
    if region == "semihard":
        return le_ap, torch.maximum(le_margin, le_ap)
    if region == "easy":
        return le_margin, kk
    raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")


def triplet_region(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    region: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Every valid triplet in ``region`` (see :data:`REGIONS`), listed in O(N M log M + T).

    For a fixed anchor-positive pair each region is a contiguous run of the anchor's sorted
    negatives, so the output is written run by run without any ``N x N x N`` mask.

    Returns:
        ``(anchor, positive, negative)`` ordered by anchor, then positive, then increasing
        ``d_an`` (ties by index).
    """
    n, m = dist.shape
    out_a, out_p, out_n = [], [], []
    for start, stop in _chunks(n, m):
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        svals, sidx, k = _sorted_negatives(d, neg)
        lo, hi = _region_bounds(svals, d, k, margin, region)
        a, p = torch.nonzero(pos, as_tuple=True)
        lo_ap, hi_ap = lo[a, p], hi[a, p]
        lengths = (hi_ap - lo_ap).clamp_min(0)
        total = int(lengths.sum())
        if total == 0:
            continue
        rep_a = torch.repeat_interleave(a, lengths)
        rep_p = torch.repeat_interleave(p, lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(total, device=d.device) - torch.repeat_interleave(offsets, lengths)
        slots = torch.repeat_interleave(lo_ap, lengths) + within
        out_a.append(rep_a + start)
        out_p.append(rep_p)
        out_n.append(sidx[rep_a, slots])
    return _cat(out_a, dist), _cat(out_p, dist), _cat(out_n, dist)


def triplet_counts(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, margin: float
) -> tuple[int, int, int, int]:
    """Counts ``(valid, easy, semi_hard, hard)`` of valid triplets without listing them.

    easy: ``d_an > d_ap + m``; semi-hard: ``d_ap < d_an <= d_ap + m``; hard: ``d_an <= d_ap``.
    """
    n, m = dist.shape
    valid = easy = hard = 0
    for start, stop in _chunks(n, m):
        d = dist[start:stop]
        pos, neg = _masks(labels, ref_labels, self_index, start, stop)
        svals, _, k = _sorted_negatives(d, neg)
        le_margin = torch.searchsorted(svals, d + margin, side="right")
        le_ap = torch.searchsorted(svals, d.contiguous(), side="right")
        le_margin = torch.maximum(le_margin, le_ap)  # a negative margin cannot make hard easy
        kk = k[:, None].expand_as(le_ap)
        valid += int(torch.where(pos, kk, 0).sum())
        easy += int(torch.where(pos, kk - le_margin, 0).sum())
        hard += int(torch.where(pos, le_ap, 0).sum())
    return valid, easy, valid - easy - hard, hard


def _cat(parts: list[Tensor], like: Tensor) -> Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=like.device)
    return torch.cat(parts).to(torch.int64)
