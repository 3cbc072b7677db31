"""Selection and fused-loss kernels in plain torch: the path every CUDA tensor takes.

Every kernel works on a *detached* distance matrix ``dist [N, M]`` (anchors x references),
the anchor labels ``labels [N]``, the reference labels ``ref_labels [M]`` and ``self_index
[N]``: the column of each anchor's own sample among the references, or -1 when the anchor is
not among them. A positive of anchor ``a`` is a reference ``j != self_index[a]`` with the
same label; a negative is a reference with a different label (see :mod:`tripletkit._masks`).
For multi-hot labels and explicit masks, ``labels`` and ``ref_labels`` are the positive and
negative masks ``[N, M]`` instead (a *mask relation*, own pairs already removed): the label
runs (``width`` slots read off sorted labels) then become a stable sort of each mask row.

Kernels never take part in autograd: they return selected indices, counts, or the gradient
of a sum of loss terms with respect to ``dist``. The autograd glue lives in
:mod:`tripletkit.losses`.

Designed for the GPU:

- **No host synchronisation**: shapes never depend on values; counts stay 0-dim tensors; no
  ``nonzero``, boolean-mask indexing or Python branch on a tensor value. The only kernel with
  a data-dependent output size, :func:`triplet_region`, reads its sizes in one
  :func:`~tripletkit._checks.to_host`. So the fused losses can be captured whole by
  ``torch.compile(fullgraph=True)``.
- **Counting, not sorting**: with ``width`` (an upper bound on any anchor's number of
  positives, e.g. ``k - 1`` in P x K batches), an anchor's positives are gathered into
  ``width`` slots and each negative is *ranked* among the positives' sorted thresholds
  (a binary search in ``width`` values): O(N M log width) and a handful of passes over the
  ``N x M`` matrix. Without ``width`` the slots span every column (``width = M``): still
  exact and synchronisation-free, at the cost of sorting each row.
- Work is chunked over anchors so that peak memory stays a few ``N x M`` matrices; chunks
  are sized from the device (:func:`chunk_elements`). No ``N x N x N`` tensor is built.

Ties between equal distances go to the lowest reference index, everywhere. The numba backend
(:mod:`tripletkit.kernels.numba_backend`) implements the same functions with the same results;
the tests run both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import to_host
from .._masks import is_mask_relation, pair_masks

__all__ = [
    "REGIONS",
    "SEMI_HARD_BUCKETS_MAX",
    "Selection",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "chunk_elements",
    "semi_hard",
    "triplet_counts",
    "triplet_region",
]

#: Triplet regions understood by :func:`triplet_region`, with ``t = d_an - d_ap``:
#: ``valid`` every valid triplet; ``active`` ``t < m`` (hinge > 0); ``all`` ``t <= m``;
#: ``hard`` ``t <= m`` and ``t <= 0``; ``semihard`` ``0 < t <= m``; ``easy`` ``t > m``
#: (pytorch-metric-learning's definitions: ``hard`` and ``semihard`` are subsets of ``all``
#: for every margin, and with ``m <= 0`` ``hard`` equals ``all`` and ``semihard`` is empty).
REGIONS = ("valid", "active", "all", "hard", "semihard", "easy")

#: Up to this ``width``, :func:`semi_hard` buckets the negatives by rank among the positives
#: (O(N M log width), a few passes over the ``N x M`` data); beyond it, or without a width,
#: it sorts each row (O(N M log M), and the selection spans every column: ``[N, M]``).
SEMI_HARD_BUCKETS_MAX = 128

# Elements of an anchor chunk (rows x references) processed at once on the CPU.
_CPU_CHUNK_ELEMENTS = 1 << 22
# On CUDA: this share of the free memory at the first call, in elements of ~64 bytes (the
# temporaries of a chunk), clamped to [_CPU_CHUNK_ELEMENTS, _CUDA_CHUNK_MAX].
_CUDA_FREE_SHARE = 0.25
_CUDA_BYTES_PER_ELEMENT = 64
_CUDA_CHUNK_MAX = 1 << 28
_cuda_chunks: dict[int, int] = {}


class Selection(NamedTuple):
    """Mined triplets in a fixed layout: broadcastable index tensors ``anchor``,
    ``positive``, ``negative`` and the mask ``valid`` of the slots that hold a triplet (of
    the broadcast shape), or ``valid=None`` when every slot does (a list of triplets).
    Slots that are not valid hold in-range indices, so gathering with them is safe."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    valid: Tensor | None


def chunk_elements(device: torch.device) -> int:
    """How many ``rows x columns`` elements a kernel processes at once on ``device``: a fixed
    4M on the CPU; on CUDA a quarter of the free memory at the first call (few, large
    chunks), remembered per device."""
    if device.type != "cuda":
        return _CPU_CHUNK_ELEMENTS
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _cuda_chunks:
        if torch.compiler.is_compiling():  # no device query inside a captured graph
            return _CPU_CHUNK_ELEMENTS * 16
        free, _ = torch.cuda.mem_get_info(index)
        elements = int(free * _CUDA_FREE_SHARE) // _CUDA_BYTES_PER_ELEMENT
        _cuda_chunks[index] = min(max(elements, _CPU_CHUNK_ELEMENTS), _CUDA_CHUNK_MAX)
    return _cuda_chunks[index]


def _chunks(n: int, per_row: int, device: torch.device) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` covering ``n`` anchors, each of at most
    :func:`chunk_elements` ``// per_row`` rows. Under ``torch.compile`` one chunk: chunking by
    the device's memory is an eager feature, and a loop whose trip count grows with ``n``
    would unroll into a graph that grows with the batch."""
    if torch.compiler.is_compiling():
        return [(0, n)] if n else []
    rows = max(1, chunk_elements(device) // max(per_row, 1))
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _masks(
    labels: Tensor, ref_labels: Tensor, self_index: Tensor, start: int, stop: int
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[stop - start, M]`` for a chunk of anchors."""
    if is_mask_relation(labels):
        return labels[start:stop], ref_labels[start:stop]
    return pair_masks(labels[start:stop], ref_labels, self_index[start:stop])


def _not_negative(labels: Tensor, ref_labels: Tensor, start: int, stop: int) -> Tensor:
    """``[stop - start, M]``: the references that are not negatives of a chunk's anchors
    (class labels: the same label, own column included)."""
    if is_mask_relation(labels):
        return ~ref_labels[start:stop]
    return labels[start:stop, None] == ref_labels[None, :]


def _negative(labels: Tensor, ref_labels: Tensor, start: int, stop: int) -> Tensor:
    """``[stop - start, M]``: the negatives of a chunk's anchors."""
    if is_mask_relation(labels):
        return ref_labels[start:stop]
    return labels[start:stop, None] != ref_labels[None, :]


class _LabelIndex(NamedTuple):
    """The references sorted by label (stably: ascending column within a label), so that an
    anchor's positives are one run of ``order``, found with a binary search."""

    sorted_labels: Tensor
    order: Tensor  # columns in label order
    position: Tensor  # each column's place in ``order``


def _label_index(ref_labels: Tensor) -> _LabelIndex:
    sorted_labels, order = torch.sort(ref_labels, stable=True)
    return _LabelIndex(sorted_labels, order, torch.argsort(order))


def _index(labels: Tensor, ref_labels: Tensor) -> _LabelIndex | None:
    """The label index of class labels; ``None`` for a mask relation (no label runs)."""
    return None if is_mask_relation(labels) else _label_index(ref_labels)


def _slots(
    index: _LabelIndex | None,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    start: int,
    stop: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_positive_slots` of a chunk of anchors; for a mask relation (``index`` None)
    the positives' columns are read off the mask with a stable sort of each row."""
    if index is not None:
        return _positive_slots(index, labels[start:stop], self_index[start:stop], width)
    pos, neg = labels[start:stop], ref_labels[start:stop]
    cols = torch.sort((~pos).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    used = torch.arange(width, device=pos.device) < pos.sum(dim=1, keepdim=True)
    return torch.where(used, cols, 0), used, neg.sum(dim=1)


def _positive_slots(
    index: _LabelIndex, labels: Tensor, own: Tensor, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The columns of the anchors' first ``width`` positives, ascending ``[R, width]`` (0 in
    unused slots), which slots are used ``[R, width]``, and each anchor's number of
    negatives ``[R]``: read off the label runs of ``index`` in O(R width) (no ``N x M``
    pass). An anchor's own column, when it is among the references, is skipped."""
    m = index.order.shape[0]
    lo = torch.searchsorted(index.sorted_labels, labels)
    hi = torch.searchsorted(index.sorted_labels, labels, right=True)
    own_col = own.clamp(0, max(m - 1, 0))
    own_in_run = (own >= 0) & (index.position[own_col] >= lo) & (index.position[own_col] < hi)
    own_at = torch.where(own_in_run, index.position[own_col] - lo, width + m)
    slot = torch.arange(width, device=labels.device)
    place = lo[:, None] + slot + (slot >= own_at[:, None])
    used = slot < (hi - lo - own_in_run.to(torch.int64))[:, None]
    cols = index.order[place.clamp_max(max(m - 1, 0))]
    return torch.where(used, cols, 0), used, m - (hi - lo)


#: Up to this many thresholds per anchor, ranks of CPU tensors are counted by comparisons
#: (``W`` passes over the matrix, which the CPU runs faster than a binary search); on other
#: devices, where each pass costs memory traffic, always a binary search (one pass).
_COUNT_RANK_MAX = 16
#: Whether CPU tensors take the counted ranks (``benchmarks.passes`` turns it off to count
#: the passes of the path every CUDA tensor takes).
COUNT_RANKS_ON_CPU = True


def _rank(sorted_values: Tensor, values: Tensor, right: bool) -> Tensor:
    """``#{s <= v}`` (``right``) or ``#{s < v}`` for each ``v`` of ``values [R, M]`` among
    the row's ``sorted_values [R, W]`` (int64): a binary search, or on the CPU, for small
    ``W``, counted (the same counts)."""
    w = sorted_values.shape[1]
    if not (COUNT_RANKS_ON_CPU and values.device.type == "cpu" and w <= _COUNT_RANK_MAX):
        return torch.searchsorted(sorted_values, values, right=right)
    # counted in uint8 (W <= 16 fits), widened once for the scatters that use it as an index
    rank = torch.zeros(values.shape, dtype=torch.uint8, device=values.device)
    hit = torch.empty(values.shape, dtype=torch.bool, device=values.device)
    compare = torch.le if right else torch.lt
    for i in range(w):
        compare(sorted_values[:, i : i + 1], values, out=hit)
        rank += hit.view(torch.uint8)
    return rank.long()


def _zero(device: torch.device) -> tuple[Tensor, Tensor]:
    """A float64 and an int64 zero, made on ``device`` (no host-to-device copy)."""
    return (
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros((), dtype=torch.int64, device=device),
    )


def batch_all_hinge(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float | Tensor,
    width: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum of ``max(0, d_ap - d_an + margin)`` over every valid triplet, without a sort of
    the negatives.

    Per anchor, the thresholds ``t_p = d_ap + margin`` of its positives are sorted (``width``
    slots, unused ones at ``+inf``). A negative at ``v`` is active for the positives with
    ``t_p > v``: with ``r = #{t_p <= v}`` (a binary search among the thresholds), for the last
    ``P - r`` of them, so its gradient is ``-(P - r)``. Bucketing the negatives by ``r``
    (their number and float64 sum), running sums over the buckets give each positive its
    count ``c_p`` and total ``S_p`` of active negatives: its terms sum to ``c_p * t_p - S_p``
    and its gradient is ``c_p``. The references with the anchor's label are searched at
    ``+inf``, which lands them in the last bucket (``width``), read by no positive and with
    the gradient 0. O(N M log width) time; exact for any ``width`` >= the largest number of
    positives (``None``: every column).

    Passes over the ``N x M`` data per chunk: the float64 copy of the distances with the
    same-label columns at ``+inf`` (one ``where``), the binary search, two scatters into the
    buckets, one gather of the gradient and the positives' counts written in place.

    Returns:
        ``(total, n_valid, n_active, grad)``: the sum (0-dim, dtype of ``dist``, accumulated
        in float64), the numbers of valid and of active triplets (0-dim int64 tensors), and
        ``d total / d dist`` ``[N, M]``.
    """
    n, m = dist.shape
    w = m if width is None else min(width, m)
    grad = torch.empty_like(dist)  # every row is written below
    total, n_valid = _zero(dist.device)
    n_active = torch.zeros_like(n_valid)
    if m == 0:
        return total.to(dist.dtype), n_valid, n_active, grad
    index = _index(labels, ref_labels)
    # one element, not 0-dim: a dimensioned operand promotes torch.where's result to float64
    inf64 = torch.full((1,), math.inf, dtype=torch.float64, device=dist.device)
    for start, stop in _chunks(n, 4 * m, dist.device):
        d = dist[start:stop]
        same = _not_negative(labels, ref_labels, start, stop)
        cols, used, n_neg = _slots(index, labels, ref_labels, self_index, start, stop, w)
        n_pos = used.sum(dim=1)
        thresholds = torch.where(used, d.gather(1, cols) + margin, math.inf)
        t_sorted, order = thresholds.sort(dim=1)
        # the negatives in float64 (the buckets' sums), the same-label columns at +inf
        v = torch.where(same, inf64, d)
        # r = #{t_p <= v}: a negative's bucket; +inf goes to bucket w (after every threshold)
        rank = _rank(t_sorted.to(torch.float64), v, right=True)
        count = torch.zeros(d.shape[0], w + 1, dtype=torch.int64, device=d.device)
        count.scatter_add_(
            1, rank, torch.ones((), dtype=torch.int64, device=d.device).expand_as(rank)
        )
        value = torch.zeros(d.shape[0], w + 1, dtype=torch.float64, device=d.device)
        value.scatter_add_(1, rank, v)
        c = count.cumsum(dim=1)[:, :w]  # active negatives of the i-th threshold
        live = torch.arange(w, device=d.device) < n_pos[:, None]
        s_sum = value.cumsum(dim=1)[:, :w]
        terms = c * t_sorted.to(torch.float64) - s_sum
        total += torch.where(live, terms, 0).sum()
        n_active += torch.where(live, c, 0).sum()
        n_valid += (n_pos * n_neg).sum()
        # A negative in bucket r has the gradient -(P - r), read from a small table whose
        # last bucket (the same-label columns, or no positive active) holds 0; then each
        # positive's count c goes to its column.
        table = torch.arange(w + 1, device=d.device) - n_pos[:, None]
        table[:, w] = 0
        g = grad[start:stop]
        torch.gather(table.to(dist.dtype), 1, rank, out=g)
        g.scatter_add_(1, cols.gather(1, order), torch.where(live, c, 0).to(dist.dtype))
    return total.to(dist.dtype), n_valid, n_active, grad


def batch_all_soft(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    width: int,
    margin: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of ``softplus(d_ap - d_an + margin)`` over every valid triplet: Hermans et al.
    2017's soft margin with ``margin = 0``, pytorch-metric-learning's smooth loss otherwise.

    Every triplet contributes, so this is O(N width M) time: one pass over the anchors'
    negatives per positive slot, ``width`` (>= the largest number of positives) slots.

    Returns:
        ``(total, n_valid, grad)`` as in :func:`batch_all_hinge`.
    """
    n, m = dist.shape
    w = min(width, m)
    grad = torch.zeros_like(dist)
    total, n_valid = _zero(dist.device)
    if m == 0:
        return total.to(dist.dtype), n_valid, grad
    index = _index(labels, ref_labels)
    for start, stop in _chunks(n, 2 * m, dist.device):
        d = dist[start:stop]
        neg = _negative(labels, ref_labels, start, stop)
        cols, used, n_neg = _slots(index, labels, ref_labels, self_index, start, stop, w)
        n_valid += (used.sum(dim=1) * n_neg).sum()
        g = torch.zeros_like(d)
        pos_grad = torch.zeros(d.shape[0], w, dtype=d.dtype, device=d.device)
        for i in range(w):
            x = d.gather(1, cols[:, i : i + 1]) + margin - d
            live = neg & used[:, i : i + 1]
            total += torch.where(live, torch.nn.functional.softplus(x), 0).sum(dtype=torch.float64)
            # d/d dap of sum_n softplus(dap - dan) = sum_n sigmoid; d/d dan = -sigmoid.
            s = torch.where(live, torch.sigmoid(x), 0)
            g -= s
            pos_grad[:, i] = s.sum(dim=1)
        g.scatter_add_(1, cols, pos_grad)
        grad[start:stop] = g
    return total.to(dist.dtype), n_valid, grad


#: Up to this rank, a window's members are picked by repeated arg-max (one pass over the row
#: each); beyond it, by a stable sort of the row.
_ITERATIVE_RANKS_MAX = 8


def _label_counts(index: _LabelIndex, labels: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """Each anchor's numbers of positives and of negatives ``[R]``, from the label runs of
    ``index`` (no ``N x M`` pass)."""
    m = index.order.shape[0]
    lo = torch.searchsorted(index.sorted_labels, labels)
    hi = torch.searchsorted(index.sorted_labels, labels, right=True)
    own_col = own.clamp(0, max(m - 1, 0))
    own_same = (own >= 0) & (index.sorted_labels[index.position[own_col]] == labels)
    return hi - lo - own_same.to(torch.int64), m - (hi - lo)


def _exclude_own(values: Tensor, own: Tensor, fill: float) -> None:
    """Set each row's own column (``own >= 0``) of ``values [R, M]`` to ``fill``, in place:
    an indexed write of ``R`` elements, not a pass over the matrix."""
    col = own.clamp_min(0)[:, None]
    keep = values.gather(1, col)
    values.scatter_(1, col, torch.where(own[:, None] >= 0, fill, keep))


def _ranked(
    d: Tensor, same: Tensor, own: Tensor, count: Tensor, lo: int, hi: int, farthest: bool
) -> tuple[Tensor, Tensor]:
    """Columns ``[R, hi - lo]`` of each row's members ranked ``lo .. hi - 1`` by distance, and
    which exist (a row with ``count`` members, fewer than ``hi``, leaves its last slots
    empty). The members are the positives (``farthest``: same label, own column excluded;
    rank 0 = farthest) or the negatives (other labels; rank 0 = nearest); ties go to the
    lower column."""
    r, m = d.shape
    fill = -math.inf if farthest else math.inf
    if hi <= _ITERATIVE_RANKS_MAX:
        best = torch.where(same, d, fill) if farthest else torch.where(same, fill, d)
        if farthest:
            _exclude_own(best, own, fill)
        picks = []
        for rank in range(hi):
            col = best.argmax(dim=1) if farthest else best.argmin(dim=1)
            picks.append(col)
            if rank + 1 < hi:  # the next rank is the best of those not picked yet
                best.scatter_(1, col[:, None], fill)
        cols = torch.stack(picks[lo:], dim=1)
    else:
        key = torch.where(same, -d, math.inf) if farthest else torch.where(same, math.inf, d)
        if farthest:
            _exclude_own(key, own, math.inf)
        cols = torch.sort(key, dim=1, stable=True).indices[:, lo:hi]
        if cols.shape[1] < hi - lo:  # fewer columns than the window: pad (the slots are empty)
            pad = cols.new_zeros(r, hi - lo - cols.shape[1])
            cols = torch.cat([cols, pad], dim=1)
    exists = torch.arange(lo, hi, device=d.device) < count[:, None]
    return torch.where(exists, cols, 0), exists


def batch_hard(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
) -> Selection:
    """Per anchor: the farthest positive and the nearest negative (Hermans et al. 2017),
    first column on ties; ``valid`` marks the anchors with at least one of each.

    With rank windows: the positives whose hardness rank (0 = farthest) lies in
    ``positive_ranks = [lo, hi)`` and the negatives whose rank (0 = nearest) lies in
    ``negative_ranks``, every combination (ties ranked by the lower column). The defaults
    are batch-hard's single triplet per anchor.

    Returns:
        :class:`Selection`: ``anchor [N]``, ``positive``, ``negative``, ``valid`` ``[N]``
        with the default windows; else ``anchor [N, 1, 1]``, ``positive [N, P, 1]``,
        ``negative [N, 1, Q]`` and ``valid [N, P, Q]`` (``P``, ``Q`` the windows' widths),
        so that reading the valid slots row-major orders the triplets by anchor, positive
        rank, then negative rank.
    """
    n, m = dist.shape
    default = positive_ranks == (0, 1) and negative_ranks == (0, 1)
    wp, wq = positive_ranks[1] - positive_ranks[0], negative_ranks[1] - negative_ranks[0]
    hardest_p, hardest_n, valid = [], [], []
    index = _index(labels, ref_labels) if m else None
    for start, stop in _chunks(n, m, dist.device):
        d = dist[start:stop]
        if m == 0:  # no references: argmax of an empty row is undefined
            none = torch.zeros(stop - start, wp, wq, dtype=torch.int64, device=d.device)
            hardest_p.append(none[:, :, 0])
            hardest_n.append(none[:, 0, :])
            valid.append(none.bool())
            continue
        own = self_index[start:stop]
        if index is None:  # a mask relation: positives and non-negatives differ
            pos, neg = labels[start:stop], ref_labels[start:stop]
            same, not_neg = pos, ~neg
            n_pos, n_neg = pos.sum(dim=1), neg.sum(dim=1)
        else:
            same = not_neg = labels[start:stop, None] == ref_labels[None, :]
            n_pos, n_neg = _label_counts(index, labels[start:stop], own)
        p_cols, p_ok = _ranked(d, same, own, n_pos, *positive_ranks, farthest=True)
        n_cols, n_ok = _ranked(d, not_neg, own, n_neg, *negative_ranks, farthest=False)
        hardest_p.append(p_cols)
        hardest_n.append(n_cols)
        valid.append(p_ok[:, :, None] & n_ok[:, None, :])
    positive = _cat(hardest_p, dist).reshape(n, wp)
    negative = _cat(hardest_n, dist).reshape(n, wq)
    ok = _cat_bool(valid, dist).reshape(n, wp, wq)
    anchor = torch.arange(n, device=dist.device)
    if default:
        return Selection(anchor, positive[:, 0], negative[:, 0], ok[:, 0, 0])
    return Selection(anchor[:, None, None], positive[:, :, None], negative[:, None, :], ok)


def _suffix_lexmin(values: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """For every bucket ``b`` of ``[R, B]``: the smallest value among buckets ``>= b`` and,
    among the buckets holding it, the smallest column: a suffix scan of the lexicographic
    minimum of ``(value, column)``, in ``ceil(log2 B)`` steps of ``O(R B)`` (Hillis-Steele)."""
    r, b = values.shape
    best, col = values, cols
    step = 1
    while step < b:
        pad_v = torch.full((r, step), math.inf, dtype=values.dtype, device=values.device)
        pad_c = torch.full((r, step), 2**62, dtype=cols.dtype, device=cols.device)
        later_v = torch.cat([best[:, step:], pad_v], dim=1)
        later_c = torch.cat([col[:, step:], pad_c], dim=1)
        take = (later_v < best) | ((later_v == best) & (later_c < col))
        best, col = torch.where(take, later_v, best), torch.where(take, later_c, col)
        step *= 2
    return best, col


def _semi_hard_buckets(
    d: Tensor, same: Tensor, cols: Tensor, used: Tensor, n_neg: Tensor, w: int
) -> tuple[Tensor, ...]:
    """Semi-hard negatives of each anchor's (at most ``w``) positives, by bucketing
    (``same``: the references with the anchor's label, i.e. not negatives).

    Passes over the ``N x M`` data: the negatives' values (same-label columns at ``+inf``),
    one binary search for the buckets, the buckets' nearest value and its lowest column
    (two scatters, one gather, one comparison), and the largest negative (one ``where``
    and an arg-max) for the positives with no farther negative."""
    m = d.shape[1]
    d_ap = torch.where(used, d.gather(1, cols), math.inf)
    d_sorted = d_ap.sort(dim=1).values
    v = torch.where(same, math.inf, d)
    # A negative at v is farther than the positives with d_ap < v: bucket r = #{d_ap < v}
    # (the same-label columns, at +inf, join bucket P with no effect on its minimum).
    rank = _rank(d_sorted, v, right=False)
    nearest = torch.full((d.shape[0], w + 1), math.inf, dtype=d.dtype, device=d.device)
    nearest.scatter_reduce_(1, rank, v, "amin")
    # The lowest column at each bucket's nearest value (an empty bucket's is never used).
    tie = v == nearest.gather(1, rank)
    columns = torch.arange(m, device=d.device)
    first_col = torch.full((d.shape[0], w + 1), m, dtype=torch.int64, device=d.device)
    first_col.scatter_reduce_(1, rank, torch.where(tie, columns, m), "amin")
    best, best_col = _suffix_lexmin(nearest, first_col)
    # Positive i's candidates are the negatives with v > d_ap_i: buckets from #{d_ap <= d_ap_i}.
    start = torch.searchsorted(d_sorted, d_ap, right=True).clamp_max(w)
    found = torch.isfinite(best.gather(1, start))
    largest = torch.where(same, -math.inf, d).argmax(dim=1, keepdim=True)
    negative = torch.where(found, best_col.gather(1, start), largest)
    return cols, negative, used & (n_neg > 0)[:, None]


def _semi_hard_sorted(d: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
    """Semi-hard negatives for every column (positive or not) of each anchor, by sorting."""
    s_vals, s_idx = torch.sort(torch.where(neg, d, math.inf), dim=1, stable=True)
    k = neg.sum(dim=1, keepdim=True)
    farther = torch.searchsorted(s_vals, d, right=True)  # first slot with d_an > d_ap
    largest = s_vals.gather(1, (k - 1).clamp_min(0))
    first_largest = torch.searchsorted(s_vals, largest)  # first occurrence of the largest
    slot = torch.where(farther < k, farther, first_largest).clamp_max(max(d.shape[1] - 1, 0))
    columns = torch.arange(d.shape[1], device=d.device).expand_as(d)
    return columns, s_idx.gather(1, slot), pos & (k > 0)


def semi_hard(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    width: int | None = None,
) -> Selection:
    """Semi-hard negatives (Schroff et al. 2015, as TensorFlow-Addons selects them).

    For every positive pair ``(a, p)`` whose anchor has a negative: the negative with the
    smallest ``d_an`` among those with ``d_an > d_ap`` (first column on ties); when no
    negative is farther than the positive, the first occurrence of the largest ``d_an``.

    With ``width`` up to :data:`SEMI_HARD_BUCKETS_MAX`, the positives sit in ``width``
    slots; the negatives are bucketed by their rank among the positives' distances, each
    bucket keeps its nearest negative, and suffix minima over the buckets answer every
    positive: O(N M log width), no sort. Otherwise every column is a slot and each row's
    negatives are sorted.

    Returns:
        :class:`Selection`: ``anchor [N, 1]``, ``positive``, ``negative`` and ``valid`` of
        shape ``[N, width]`` (positives in ascending column order) or ``[N, M]``; reading
        the valid slots row-major gives the pairs ordered by ``(a, p)``.
    """
    n, m = dist.shape
    buckets = width is not None and width <= SEMI_HARD_BUCKETS_MAX
    w = min(width, m) if buckets and width is not None else m
    parts: list[tuple[Tensor, ...]] = []
    index = _index(labels, ref_labels) if buckets and m else None
    for start, stop in _chunks(n, 4 * m if buckets else m, dist.device):
        d = dist[start:stop]
        if m == 0:
            empty = torch.zeros(stop - start, 0, dtype=torch.int64, device=d.device)
            parts.append((empty, empty, empty.bool()))
        elif buckets:
            same = _not_negative(labels, ref_labels, start, stop)
            slots = _slots(index, labels, ref_labels, self_index, start, stop, w)
            parts.append(_semi_hard_buckets(d, same, *slots, w))
        else:
            parts.append(_semi_hard_sorted(d, *_masks(labels, ref_labels, self_index, start, stop)))
    anchor = torch.arange(n, device=dist.device)[:, None]
    if not parts:
        empty = torch.zeros(0, w, dtype=torch.int64, device=dist.device)
        return Selection(anchor, empty, empty, empty.bool())
    positive, negative, valid = (torch.cat([p[i] for p in parts]) for i in range(3))
    return Selection(anchor, positive, negative, valid)


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
        return zeros, torch.minimum(le_margin, le_ap)
    if region == "semihard":
        return le_ap, torch.maximum(le_margin, le_ap)
    if region == "easy":
        return le_margin, kk
    raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")


def _region_runs(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    region: str,
    start: int,
    stop: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per (anchor, column) of a chunk, flattened: the first sorted slot of the run of
    negatives in ``region`` (``lo``), the run's length (0 unless the column is a positive),
    and the negatives' columns in sorted order ``[R * M]``."""
    d = dist[start:stop]
    pos, neg = _masks(labels, ref_labels, self_index, start, stop)
    svals, sidx = torch.sort(torch.where(neg, d, math.inf), dim=1, stable=True)
    lo, hi = _region_bounds(svals, d, neg.sum(dim=1), margin, region)
    lengths = torch.where(pos, (hi - lo).clamp_min(0), 0)
    return lo.reshape(-1), lengths.reshape(-1), sidx.reshape(-1)


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
    negatives, so the output is written run by run without any ``N x N x N`` mask. The sizes
    of the chunks' outputs are read in one host read; with several chunks the sorts are
    redone to write the rows (memory stays O(chunk)).

    Returns:
        ``(anchor, positive, negative)`` ordered by anchor, then positive, then increasing
        ``d_an`` (ties by index).
    """
    n, m = dist.shape
    chunks = _chunks(n, m, dist.device)
    if not chunks or m == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=dist.device)
        return empty, empty, empty
    args = (dist, labels, ref_labels, self_index, margin, region)
    runs = [_region_runs(*args, start, stop) for start, stop in chunks[:1]]
    totals = [_region_runs(*args, s, e)[1].sum() for s, e in chunks[1:]]
    sizes = to_host(torch.stack([runs[0][1].sum(), *totals]))
    out_a, out_p, out_n = [], [], []
    for i, ((start, stop), size) in enumerate(zip(chunks, sizes, strict=True)):
        lo, lengths, sidx = runs[0] if i == 0 else _region_runs(*args, start, stop)
        flat = torch.arange(lengths.shape[0], device=dist.device)
        pair = torch.repeat_interleave(flat, lengths, output_size=size)
        offsets = lengths.cumsum(0) - lengths
        within = torch.arange(size, device=dist.device) - offsets[pair]
        row = pair // m
        out_a.append(row + start)
        out_p.append(pair % m)
        out_n.append(sidx[row * m + lo[pair] + within])
    return _cat(out_a, dist), _cat(out_p, dist), _cat(out_n, dist)


def triplet_counts(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, margin: float
) -> Tensor:
    """Counts ``[valid, easy, semi_hard, hard]`` (int64 ``[4]``) of valid triplets without
    listing them, each negative ranked among the anchor's sorted positive distances.

    The regions of :data:`REGIONS`, which partition the valid triplets for every margin:
    easy ``d_an > d_ap + m``; semi-hard ``d_ap < d_an <= d_ap + m``; hard ``d_an <= d_ap``
    and ``d_an <= d_ap + m``. With ``l_p = min(d_ap + m, d_ap)`` a negative at ``v`` is hard
    for the positives with ``l_p >= v`` and not easy for those with ``d_ap + m >= v``.
    """
    n, m = dist.shape
    counts = torch.zeros(3, dtype=torch.int64, device=dist.device)  # valid, not easy, hard
    if m == 0:
        return torch.zeros(4, dtype=torch.int64, device=dist.device)
    index = _index(labels, ref_labels)
    for start, stop in _chunks(n, 2 * m, dist.device):
        d = dist[start:stop]
        neg = _negative(labels, ref_labels, start, stop)
        cols, used, n_neg = _slots(index, labels, ref_labels, self_index, start, stop, m)
        d_ap = d.gather(1, cols)
        n_pos = used.sum(dim=1)
        lower = torch.where(used, torch.minimum(d_ap + margin, d_ap), math.inf)
        lower = lower.sort(dim=1).values
        upper = torch.where(used, d_ap + margin, math.inf).sort(dim=1).values
        hard = n_pos[:, None] - torch.searchsorted(lower, d)  # #{l_p >= v}
        not_easy = n_pos[:, None] - torch.searchsorted(upper, d)  # #{d_ap + m >= v}
        counts += torch.stack(
            [
                (n_pos * n_neg).sum(),
                torch.where(neg, not_easy, 0).sum(),
                torch.where(neg, hard, 0).sum(),
            ]
        )
    valid, not_easy, hard = counts.unbind()
    easy = valid - not_easy
    return torch.stack([valid, easy, valid - easy - hard, hard])


def _cat(parts: list[Tensor], like: Tensor) -> Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=like.device)
    return torch.cat(parts).to(torch.int64)


def _cat_bool(parts: list[Tensor], like: Tensor) -> Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.bool, device=like.device)
    return torch.cat(parts)
