"""Brute-force references, written from the specification with explicit Python loops.

Nothing here calls tripletkit except :func:`tripletkit.distances.pairwise_distance`, which
gives the (detached) distance matrix that *selection* is based on, so that ties are broken
on exactly the numbers the library sees; ``tests/test_distances.py`` checks that matrix
against :func:`distance`, an explicit per-pair loop. Loss values are computed through
:func:`distance` on the embeddings themselves, so autograd through these loops is an
independent reference for the library's gradients.

Specification, as implemented below:

- positive of anchor ``a``: a reference ``j`` with the anchor's label and ``j`` not the
  anchor's own row (only when the anchors are among the references: no reference set, or
  ``anchor_offset``); negative: a reference with a different label; valid triplet: ``(a, p,
  n)`` with ``p`` a positive and ``n`` a negative of ``a``. Generalised to a relation
  (:func:`relation`): multi-hot labels ``[N, L]`` (positive: shares a label; negative:
  shares none; a sample without labels shares nothing) or explicit masks ``[N, M]`` (pairs
  in neither ignored); the own row is never a positive nor a negative.
- hinge ``max(0, d_ap - d_an + m)``; soft margin ``softplus(d_ap - d_an)``; smooth hinge
  ``softplus(d_ap - d_an + m)``; with the swap (Balntas et al. 2016) ``d_an`` is
  ``min(d(a, n), d(p, n))``, ``d(p, n)`` between the two references.
- ties between equal distances go to the lowest index.

Contents: distances; the selection of the triplet miners (:func:`region_triplets`,
:func:`batch_hard_triplets`, :func:`semi_hard_triplets`) and the statistics
(:func:`counts`); the triplet and contrastive losses; for the sampling and pair miners, random
problems (:func:`random_problem`), each anchor's positives and negatives (:func:`roles`),
distance-weighted sampling's probabilities (:func:`dw_probs_loop`) and the multi-similarity
and pair-margin pairs (:func:`ms_loop`, :func:`pm_loop`); the margin loss of Wu et al.
(:func:`margin_loop`, :func:`margin_reduce`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tripletkit.distances import pairwise_distance

Triplet = tuple[int, int, int]

REGIONS = ("valid", "active", "all", "hard", "semihard", "easy")


# --------------------------------------------------------------------------- distances


def distance(u: Tensor, v: Tensor, metric: str) -> Tensor:
    """Distance between two vectors ``[D]``, differentiable.

    Identical vectors are at distance exactly 0 with a zero gradient (for the Euclidean
    distance, whose derivative does not exist there, 0 is the subgradient of choice; for the
    other two metrics 0 is the true gradient at a minimum).
    """
    if torch.equal(u, v):
        return (u - v).sum() * 0
    if metric == "euclidean":
        return torch.sqrt(((u - v) ** 2).sum())
    if metric == "sqeuclidean":
        return ((u - v) ** 2).sum()
    if metric == "cosine":
        cos = (u * v).sum() / (torch.sqrt((u * u).sum()) * torch.sqrt((v * v).sum()))
        return 1 - cos
    raise AssertionError(metric)


def distance_matrix(x: Tensor, y: Tensor | None, metric: str) -> Tensor:
    """``[N, M]`` matrix of :func:`distance`, one pair at a time."""
    y = x if y is None else y
    rows = [
        torch.stack([distance(x[i], y[j], metric) for j in range(y.shape[0])])
        if y.shape[0]
        else x.new_zeros(0)
        for i in range(x.shape[0])
    ]
    return torch.stack(rows) if rows else x.new_zeros((0, y.shape[0]))


def normalize_rows(x: Tensor) -> Tensor:
    """Each row divided by its L2 norm."""
    return x / x.norm(dim=1, keepdim=True)


class LazyDistances:
    """``d[i, j]`` through :func:`distance`, computed on first use (differentiable)."""

    def __init__(self, x: Tensor, y: Tensor, metric: str) -> None:
        self.x, self.y, self.metric = x, y, metric
        self._cache: dict[tuple[int, int], Tensor] = {}

    def __call__(self, i: int, j: int) -> Tensor:
        if (i, j) not in self._cache:
            self._cache[(i, j)] = distance(self.x[i], self.y[j], self.metric)
        return self._cache[(i, j)]


# ---------------------------------------------------------------------- the problem


def self_index(n: int, has_ref: bool, anchor_offset: int | None) -> list[int]:
    """Each anchor's own column among the references, or -1 when it is not among them."""
    if not has_ref:
        return list(range(n))
    if anchor_offset is None:
        return [-1] * n
    return [anchor_offset + i for i in range(n)]


def label_values(labels: Tensor) -> list:
    """Class labels ``[N]`` as ints; multi-hot labels ``[N, L]`` as the sets of their labels."""
    if labels.dim() == 2:
        return [frozenset(i for i, v in enumerate(row) if v) for row in labels.tolist()]
    return [int(v) for v in labels.tolist()]


def shares(u: object, v: object) -> bool:
    """Two class labels are equal; two sets of labels have one in common."""
    if isinstance(u, frozenset):
        assert isinstance(v, frozenset)
        return bool(u & v)
    return u == v


def relation(
    labels: Tensor | None,
    ref_labels: Tensor | None,
    own: list[int],
    m: int,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Per anchor: its positives and its negatives among the ``m`` references, ascending, by
    explicit loops over the pairs, from labels (class or multi-hot) or from masks (a missing
    mask is the complement of the other). The own row (``own``) is in neither."""
    n = len(own)
    if positive_mask is not None or negative_mask is not None:
        pm = positive_mask.tolist() if positive_mask is not None else None
        nm = negative_mask.tolist() if negative_mask is not None else None
        is_pos = [[pm[a][j] if pm else not nm[a][j] for j in range(m)] for a in range(n)]  # type: ignore[index]
        is_neg = [[nm[a][j] if nm else not pm[a][j] for j in range(m)] for a in range(n)]  # type: ignore[index]
    else:
        assert labels is not None
        lab = label_values(labels)
        rlab = lab if ref_labels is None else label_values(ref_labels)
        is_pos = [[shares(lab[a], rlab[j]) for j in range(m)] for a in range(n)]
        is_neg = [[not shares(lab[a], rlab[j]) for j in range(m)] for a in range(n)]
    pos = [[j for j in range(m) if is_pos[a][j] and j != own[a]] for a in range(n)]
    neg = [[j for j in range(m) if is_neg[a][j] and j != own[a]] for a in range(n)]
    return pos, neg


class Problem:
    """Labels and the selection matrix of a mining problem, as plain Python values."""

    def __init__(
        self,
        dist: Tensor,
        labels: Tensor | None,
        ref_labels: Tensor | None = None,
        anchor_offset: int | None = None,
        *,
        has_ref: bool | None = None,
        positive_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> None:
        self.d: list[list[float]] = dist.detach().double().tolist()
        self.n, self.m = dist.shape
        if has_ref is None:
            has_ref = ref_labels is not None
        self.own = self_index(self.n, has_ref, anchor_offset)
        self._pos, self._neg = relation(
            labels, ref_labels, self.own, self.m, positive_mask, negative_mask
        )

    def positives(self, a: int) -> list[int]:
        return self._pos[a]

    def negatives(self, a: int) -> list[int]:
        return self._neg[a]

    def valid(self) -> list[Triplet]:
        """Every valid triplet, ordered by anchor, positive, negative index."""
        return [
            (a, p, n) for a in range(self.n) for p in self.positives(a) for n in self.negatives(a)
        ]


def problem(
    x: Tensor,
    labels: Tensor,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    metric: str = "euclidean",
    normalize: bool = False,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Problem:
    """The :class:`Problem` of ``x`` (and a reference set), with the library's matrix."""
    x = x.detach()
    ref = None if ref is None else ref.detach()
    if normalize:
        x = normalize_rows(x)
        ref = None if ref is None else normalize_rows(ref)
    return Problem(
        pairwise_distance(x, ref, metric),
        labels,
        ref_labels,
        anchor_offset,
        has_ref=ref is not None,
        positive_mask=positive_mask,
        negative_mask=negative_mask,
    )


# --------------------------------------------------------------------------- selection


def in_region(d_ap: float, d_an: float, margin: float, region: str) -> bool:
    """Whether a valid triplet with distances ``d_ap``, ``d_an`` lies in ``region``."""
    t = d_an - d_ap
    if region == "valid":
        return True
    if region == "active":
        return d_ap - d_an + margin > 0
    if region == "all":
        return t <= margin
    if region == "hard":  # pytorch-metric-learning's: a subset of "all" for every margin
        return t <= margin and t <= 0
    if region == "semihard":
        return 0 < t <= margin
    if region == "easy":
        return t > margin
    raise AssertionError(region)


def region_triplets(pb: Problem, margin: float, region: str) -> list[Triplet]:
    """Valid triplets in ``region``, in the documented order: anchor, positive, then
    increasing ``d_an`` with ties by the lower negative index."""
    out = [
        (a, p, n) for (a, p, n) in pb.valid() if in_region(pb.d[a][p], pb.d[a][n], margin, region)
    ]
    return sorted(out, key=lambda t: (t[0], t[1], pb.d[t[0]][t[2]], t[2]))


def _argbest(values: Sequence[tuple[float, int]], better: Callable[[float, float], bool]) -> int:
    """Index of the best value; on ties the first one (values are listed by index)."""
    best_v, best_j = values[0]
    for v, j in values[1:]:
        if better(v, best_v):
            best_v, best_j = v, j
    return best_j


def batch_hard_triplets(pb: Problem) -> list[Triplet]:
    """Per anchor with a positive and a negative: farthest positive, nearest negative."""
    out = []
    for a in range(pb.n):
        pos, neg = pb.positives(a), pb.negatives(a)
        if not pos or not neg:
            continue
        p = _argbest([(pb.d[a][j], j) for j in pos], lambda v, b: v > b)
        n = _argbest([(pb.d[a][j], j) for j in neg], lambda v, b: v < b)
        out.append((a, p, n))
    return out


def hardness_rank(pb: Problem, a: int, j: int, among: list[int], farthest: bool) -> int:
    """Rank of reference ``j`` among ``among`` for anchor ``a``: how many of them are harder
    (farther when ``farthest``, else nearer), or as hard with a lower index."""
    dj = pb.d[a][j]
    harder = [q for q in among if (pb.d[a][q] > dj if farthest else pb.d[a][q] < dj)]
    tied = [q for q in among if pb.d[a][q] == dj and q < j]
    return len(harder) + len(tied)


def ranked_triplets(
    pb: Problem, positive_ranks: tuple[int, int], negative_ranks: tuple[int, int]
) -> list[Triplet]:
    """Rank windows: per anchor, every combination of the positives whose hardness rank
    (0 = farthest) lies in ``positive_ranks`` and the negatives whose rank (0 = nearest)
    lies in ``negative_ranks``; ordered by anchor, positive rank, negative rank."""
    out = []
    for a in range(pb.n):
        pos, neg = pb.positives(a), pb.negatives(a)
        p_rank = {j: hardness_rank(pb, a, j, pos, True) for j in pos}
        n_rank = {j: hardness_rank(pb, a, j, neg, False) for j in neg}
        ps = sorted((r, j) for j, r in p_rank.items() if positive_ranks[0] <= r < positive_ranks[1])
        ns = sorted((r, j) for j, r in n_rank.items() if negative_ranks[0] <= r < negative_ranks[1])
        out += [(a, p, n) for _, p in ps for _, n in ns]
    return out


def semi_hard_triplets(pb: Problem) -> list[Triplet]:
    """For every positive pair whose anchor has a negative: the nearest negative farther
    than the positive, else the farthest negative. Ordered by anchor, then positive."""
    out = []
    for a in range(pb.n):
        neg = pb.negatives(a)
        if not neg:
            continue
        for p in pb.positives(a):
            farther = [(pb.d[a][j], j) for j in neg if pb.d[a][j] > pb.d[a][p]]
            if farther:
                n = _argbest(farther, lambda v, b: v < b)
            else:
                n = _argbest([(pb.d[a][j], j) for j in neg], lambda v, b: v > b)
            out.append((a, p, n))
    return out


def counts(pb: Problem, margin: float) -> tuple[int, int, int, int]:
    """``(valid, easy, semi_hard, hard)``: the valid triplets in each of the regions
    ``"easy"``, ``"semihard"``, ``"hard"`` of :func:`in_region`, counted one by one."""
    valid = easy = semi = hard = 0
    for a, p, n in pb.valid():
        d_ap, d_an = pb.d[a][p], pb.d[a][n]
        valid += 1
        easy += in_region(d_ap, d_an, margin, "easy")
        semi += in_region(d_ap, d_an, margin, "semihard")
        hard += in_region(d_ap, d_an, margin, "hard")
    return valid, easy, semi, hard


# -------------------------------------------------------------------------- losses


def hinge(d_ap: Tensor, d_an: Tensor, margin: float) -> Tensor:
    """``max(0, d_ap - d_an + m)``, with gradient 0 at the kink."""
    v = d_ap - d_an + margin
    return v if v > 0 else v * 0


def softplus(v: Tensor) -> Tensor:
    """``log(1 + exp(v))`` of a 0-dim tensor, written stably (each branch is smooth, so the
    derivative at 0 is 1/2)."""
    if v > 0:
        return v + torch.log1p(torch.exp(-v))
    return torch.log1p(torch.exp(v))


def term(
    d_ap: Tensor, d_an: Tensor, margin: float, soft_margin: bool, smooth: bool = False
) -> Tensor:
    """One triplet's term: smooth hinge, soft margin or hinge."""
    if smooth:
        return softplus(d_ap - d_an + margin)
    return softplus(d_ap - d_an) if soft_margin else hinge(d_ap, d_an, margin)


def reduce(terms: list[Tensor], reduction: str, zero: Tensor) -> Tensor:
    """``mean`` over all terms, ``sum``, ``mean_nonzero`` over terms > 0, or ``none``.

    ``zero`` is a 0-dim zero in the graph of the inputs, so that an empty list still gives
    a loss that backpropagates (a zero gradient).
    """
    if reduction == "none":
        return torch.stack(terms) if terms else zero.reshape(1)[:0]
    total = zero
    for t in terms:
        total = total + t
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = len(terms)
    elif reduction == "mean_nonzero":
        count = sum(1 for t in terms if float(t.detach()) > 0)
    else:
        raise AssertionError(reduction)
    return total / count if count else total


def graph_zero(*tensors: Tensor | None) -> Tensor:
    """A 0-dim zero connected to every given tensor."""
    out = None
    for t in tensors:
        if t is not None:
            z = t.sum() * 0
            out = z if out is None else out + z
    assert out is not None
    return out


def _inputs(x: Tensor, ref: Tensor | None, normalize: bool) -> tuple[Tensor, Tensor]:
    if normalize:
        x = normalize_rows(x)
        ref = None if ref is None else normalize_rows(ref)
    return x, (x if ref is None else ref)


def fused_triplets(kind: str, pb: Problem) -> list[Triplet]:
    """The triplets a fused loss sums over: ``batch_all``, ``batch_hard`` or ``semi_hard``."""
    if kind == "batch_all":
        return pb.valid()
    if kind == "batch_hard":
        return batch_hard_triplets(pb)
    if kind == "semi_hard":
        return semi_hard_triplets(pb)
    raise AssertionError(kind)


def fused_terms(
    kind: str,
    x: Tensor,
    labels: Tensor,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    normalize: bool = False,
    anchor_offset: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> tuple[list[Tensor], Tensor]:
    """The loss terms of a fused loss (in selection order) and a graph-connected zero."""
    pb = problem(
        x,
        labels,
        ref,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
        positive_mask=positive_mask,
        negative_mask=negative_mask,
    )
    xs, rs = _inputs(x, ref, normalize)
    d = LazyDistances(xs, rs, metric)
    terms = [
        term(d(a, p), d(a, n), margin, soft_margin, smooth) for a, p, n in fused_triplets(kind, pb)
    ]
    return terms, graph_zero(x, ref)


def fused_loss(kind: str, *args: object, reduction: str = "mean", **kwargs: object) -> Tensor:
    """Reference for the fused losses: ``kind`` in ``batch_all``, ``batch_hard``,
    ``semi_hard``; the arguments of :func:`fused_terms`. Differentiable in ``x`` and
    ``ref``."""
    terms, zero = fused_terms(kind, *args, **kwargs)  # type: ignore[arg-type]
    return reduce(terms, reduction, zero)


def triplet_margin_loss(
    x: Tensor,
    triplets: Sequence[Triplet],
    ref: Tensor | None = None,
    *,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    normalize: bool = False,
    smooth: bool = False,
    swap: bool = False,
) -> Tensor:
    """The hinge (soft margin, smooth hinge) of each given triplet, reduced; with ``swap``
    the negative distance is the smaller of ``d(a, n)`` and ``d(p, n)``."""
    xs, rs = _inputs(x, ref, normalize)
    d = LazyDistances(xs, rs, metric)
    between = LazyDistances(rs, rs, metric)
    terms = []
    for a, p, n in triplets:
        d_an = torch.minimum(d(a, n), between(p, n)) if swap else d(a, n)
        terms.append(term(d(a, p), d_an, margin, soft_margin, smooth))
    return reduce(terms, reduction, graph_zero(x, ref))


def contrastive_loss(
    x: Tensor,
    labels: Tensor,
    pairs: tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]] | None = None,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    reduction: str = "mean",
    normalize: bool = False,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Contrastive loss: ``max(0, d - pos_margin)`` for same-label pairs and
    ``max(0, neg_margin - d)`` otherwise, over ordered pairs ``i != j`` (every
    anchor-reference pair with a reference set, bar each anchor's own row with
    ``anchor_offset``) or over the given ``(positive pairs, negative pairs)``, positive terms
    first."""
    xs, rs = _inputs(x, ref, normalize)
    d = LazyDistances(xs, rs, metric)

    def relu(v: Tensor) -> Tensor:
        return v if v > 0 else v * 0

    terms = []
    if pairs is None:
        n, m = x.shape[0], (x if ref is None else ref).shape[0]
        own = self_index(n, ref is not None, anchor_offset)
        pos, neg = relation(labels, ref_labels, own, m, positive_mask, negative_mask)
        for i in range(n):
            for j in range(m):
                if j in pos[i]:
                    terms.append(relu(d(i, j) - pos_margin))
                elif j in neg[i]:
                    terms.append(relu(neg_margin - d(i, j)))
    else:
        positive, negative = pairs
        terms = [relu(d(i, j) - pos_margin) for i, j in positive]
        terms += [relu(neg_margin - d(i, j)) for i, j in negative]
    return reduce(terms, reduction, graph_zero(x, ref))


# ------------------------------------------------------- sampling and pair miners


@dataclass
class SamplingProblem:
    """Anchors, labels and an optional reference set, as tensors (the inputs of the sampling
    and pair miners and of the margin loss)."""

    emb: Tensor
    labels: Tensor
    ref: Tensor | None
    ref_labels: Tensor | None
    offset: int | None
    #: an explicit relation (``labels`` and ``ref_labels`` then ``None``), as :func:`relation`
    positive_mask: Tensor | None = None
    negative_mask: Tensor | None = None

    @property
    def kwargs(self) -> dict:
        """The reference set and anchor offset as the functions take them: by keyword."""
        out: dict = {}
        if self.ref is not None:
            out.update(ref_embeddings=self.ref, ref_labels=self.ref_labels)
        if self.offset is not None:
            out["anchor_offset"] = self.offset
        return out

    @property
    def args(self) -> tuple:
        """``(embeddings, labels, ref_embeddings, ref_labels)``, as a module's ``forward``
        takes them (positionally, a contract)."""
        return (self.emb, self.labels, self.ref, self.ref_labels)

    @property
    def refs(self) -> tuple[Tensor, Tensor]:
        if self.ref is None:
            return self.emb, self.labels
        assert (
            self.ref_labels is not None
            or self.positive_mask is not None
            or self.negative_mask is not None
        )
        return self.ref, self.ref_labels  # type: ignore[return-value]

    def self_index(self) -> list[int]:
        return self_index(self.emb.shape[0], self.ref is not None, self.offset)


#: How the anchors meet the references in :func:`random_problem`: no reference set, a
#: reference set without the anchors, or a reference set holding the anchors at an offset.
MODES = ("self", "ref", "offset")


def random_problem(
    seed: int, n: int, d: int, classes: int, mode: str = "self", unit: bool = False
) -> SamplingProblem:
    """``n`` float64 anchors of width ``d`` with labels in ``[0, classes)``; in the modes
    ``"ref"`` and ``"offset"`` a few more rows before and after form the reference set (with
    the anchors in between for ``"offset"``). ``unit``: unit-norm rows."""
    rng = np.random.default_rng(seed)

    def block(rows: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(rng.normal(size=(rows, d)))
        if unit:
            x = x / x.norm(dim=1, keepdim=True)
        return x, torch.from_numpy(rng.integers(0, classes, size=rows))

    emb, labels = block(n)
    if mode == "self":
        return SamplingProblem(emb, labels, None, None, None)
    before, lb = block(int(rng.integers(0, 4)))
    after, la = block(int(rng.integers(0, 4)))
    if mode == "ref":
        return SamplingProblem(emb, labels, torch.cat([before, after]), torch.cat([lb, la]), None)
    ref = torch.cat([before, emb, after])
    return SamplingProblem(emb, labels, ref, torch.cat([lb, labels, la]), before.shape[0])


def roles(p: SamplingProblem) -> tuple[list[list[int]], list[list[int]]]:
    """Per anchor: its positives and its negatives among the references, by explicit loops."""
    ref, ref_labels = p.refs
    return relation(
        p.labels, ref_labels, p.self_index(), ref.shape[0], p.positive_mask, p.negative_mask
    )


def dw_probs_loop(
    emb: Tensor, ref: Tensor, neg: list[list[int]], cutoff: float, nzlc: float
) -> list[dict[int, float]]:
    """Distance-weighted sampling probabilities by the paper's formula, one anchor at a time."""
    n = emb.shape[1]
    out = []
    for a in range(emb.shape[0]):
        logw: dict[int, float] = {}
        for j in neg[a]:
            d = max(math.dist(emb[a].tolist(), ref[j].tolist()), cutoff)
            if d < nzlc:
                logq = (n - 2) * math.log(d) + (n - 3) / 2 * math.log(1 - d * d / 4)
                logw[j] = -logq
        if not logw:  # fallback: uniform over every negative
            out.append({j: 1 / len(neg[a]) for j in neg[a]})
            continue
        top = max(logw.values())
        w = {j: math.exp(v - top) for j, v in logw.items()}
        s = sum(w.values())
        out.append({j: w.get(j, 0.0) / s for j in neg[a]})
    return out


def ms_loop(p: SamplingProblem, epsilon: float, metric: str) -> tuple[list, list]:
    """The multi-similarity pairs, positive then negative, each row-major: the paper's
    similarity rule for ``"cosine"``, its distance form for the other metrics."""
    ref, _ = p.refs
    dist = pairwise_distance(p.emb, ref, metric).tolist()
    pos, neg = roles(p)
    keep_pos, keep_neg = [], []
    for a in range(len(pos)):
        if metric == "cosine":  # the paper's similarity form
            sim = [1 - v for v in dist[a]]
            for j in range(len(sim)):
                if j in pos[a] and neg[a] and sim[j] < max(sim[n] for n in neg[a]) + epsilon:
                    keep_pos.append((a, j))
            for j in range(len(sim)):
                if j in neg[a] and pos[a] and sim[j] > min(sim[q] for q in pos[a]) - epsilon:
                    keep_neg.append((a, j))
        else:
            for j in range(len(dist[a])):
                if (
                    j in pos[a]
                    and neg[a]
                    and dist[a][j] > min(dist[a][n] for n in neg[a]) - epsilon
                ):
                    keep_pos.append((a, j))
            for j in range(len(dist[a])):
                if (
                    j in neg[a]
                    and pos[a]
                    and dist[a][j] < max(dist[a][q] for q in pos[a]) + epsilon
                ):
                    keep_neg.append((a, j))
    return keep_pos, keep_neg


def pm_loop(
    p: SamplingProblem, pos_margin: float, neg_margin: float, metric: str
) -> tuple[list, list]:
    """The pairs with a non-zero contrastive term, positive then negative, row-major."""
    ref, _ = p.refs
    dist = pairwise_distance(p.emb, ref, metric).tolist()
    pos, neg = roles(p)
    keep_pos = [(a, j) for a in range(len(pos)) for j in pos[a] if dist[a][j] > pos_margin]
    keep_neg = [(a, j) for a in range(len(neg)) for j in neg[a] if dist[a][j] < neg_margin]
    return keep_pos, keep_neg


# -------------------------------------------------------------------- margin loss


def margin_loop(
    emb: Tensor,
    labels: Tensor,
    pos_pairs: list[tuple[int, int]],
    neg_pairs: list[tuple[int, int]],
    beta: Tensor,
    margin: float,
    nu: float,
    metric: str = "euclidean",
    ref: Tensor | None = None,
) -> tuple[list[Tensor], int]:
    """Margin loss of Wu et al. 2017: the pair terms (hinge + nu * beta) and the number of
    non-zero hinges, one pair at a time (differentiable in ``emb``, ``ref`` and ``beta``)."""
    ref = emb if ref is None else ref
    terms, active = [], 0

    def dist(i: int, j: int) -> Tensor:
        x, y = emb[i], ref[j]
        if metric == "cosine":
            return 1 - (x @ y) / (x.norm() * y.norm())
        sq = ((x - y) ** 2).sum()
        return sq if metric == "sqeuclidean" else sq.sqrt()

    for sign, pairs in ((1.0, pos_pairs), (-1.0, neg_pairs)):
        for a, j in pairs:
            b = beta[0] if beta.numel() == 1 else beta[int(labels[a])]
            hinge = torch.clamp(margin + sign * (dist(a, j) - b), min=0)
            active += int(hinge.item() > 0)
            terms.append(hinge + nu * b)
    return terms, active


def margin_reduce(terms: list[Tensor], active: int, reduction: str) -> Tensor:
    """The margin loss's reductions: ``"none"`` the terms, ``"sum"`` their sum, ``"mean"``
    and ``"mean_nonzero"`` their sum over the number of non-zero hinges (the paper's)."""
    out = torch.stack(terms)
    if reduction == "sum":
        return out.sum()
    if reduction in ("mean", "mean_nonzero"):
        return out.sum() / max(active, 1)
    assert reduction == "none", reduction
    return out


# --------------------------------------------------------------------------- helpers


def as_list(triplets: Sequence[Tensor]) -> list[Triplet]:
    """Mined ``(anchor, positive, negative)`` index tensors as a list of tuples."""
    a, p, n = (t.tolist() for t in triplets)
    return list(zip(a, p, n, strict=True))


# ------------------------------------------------------- similarity losses (issue 12)
#
# Multi-similarity, circle and supervised contrastive losses on the cosine similarity
# S(u, v) = <u, v> / (|u| |v|), one anchor at a time, every sum an explicit loop. An anchor's
# positives and negatives are those of :class:`Problem` (label rule, own row excluded), or,
# given ``pairs = (positive pairs, negative pairs)``, the *distinct* listed references.


def cosine_similarity(u: Tensor, v: Tensor) -> Tensor:
    """``<u, v> / (|u| |v|)`` of two vectors ``[D]``, differentiable; 0 (with a zero
    gradient) when either is the zero vector."""
    nu, nv = torch.sqrt((u * u).sum()), torch.sqrt((v * v).sum())
    if float(nu.detach()) == 0 or float(nv.detach()) == 0:
        return (u * v).sum() * 0
    return (u * v).sum() / (nu * nv)


def _stable_logsumexp(values: Sequence[Tensor]) -> Tensor:
    """``log(sum(exp(v)))`` of a non-empty list of 0-dim tensors, shifted by the largest."""
    top = max(float(v.detach()) for v in values)
    total = values[0] * 0
    for v in values:
        total = total + torch.exp(v - top)
    return top + torch.log(total)


def anchor_pairs(
    labels: Tensor,
    ref_labels: Tensor | None,
    m: int,
    *,
    pairs: tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]] | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
    has_ref: bool | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Per anchor: (positives, negatives) as sorted lists of reference indices."""
    mask = positive_mask if positive_mask is not None else negative_mask
    n = labels.shape[0] if labels is not None else mask.shape[0]  # type: ignore[union-attr]
    has_ref = ref_labels is not None if has_ref is None else has_ref
    if pairs is not None:
        positive, negative = pairs
        return [
            (sorted({j for i, j in positive if i == a}), sorted({j for i, j in negative if i == a}))
            for a in range(n)
        ]
    own = self_index(n, has_ref, anchor_offset)
    pos, neg = relation(labels, ref_labels, own, m, positive_mask, negative_mask)
    return list(zip(pos, neg, strict=True))


def similarity_loss_terms(
    kind: str,
    x: Tensor,
    labels: Tensor,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    pairs: tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]] | None = None,
    anchor_offset: int | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    m: float = 0.4,
    gamma: float = 80.0,
    temperature: float = 0.1,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> tuple[list[Tensor], list[bool]]:
    """Per-anchor terms of ``kind`` (``"multi_similarity"``, ``"circle"``, ``"supcon"``) and
    whether each anchor is counted.

    - multi_similarity: ``1/alpha log(1 + sum_p exp(-alpha (S_ap - base))) + 1/beta log(1 +
      sum_n exp(beta (S_an - base)))``; an empty sum is 0; every anchor is counted.
    - circle: ``log(1 + sum_n exp(gamma a_n (S_an - m)) sum_p exp(-gamma a_p (S_ap - 1 +
      m)))`` with the constants ``a_p = max(0, 1 + m - S_ap)``, ``a_n = max(0, S_an + m)``
      (plain floats: no gradient through them); counted with a positive and a negative.
    - supcon: ``-1/|P| sum_p log(exp(S_ap / t) / sum_{j in P u N} exp(S_aj / t))``; counted
      with a positive.
    """
    refs = x if ref is None else ref
    per_anchor = anchor_pairs(
        labels,
        ref_labels,
        refs.shape[0],
        pairs=pairs,
        anchor_offset=anchor_offset,
        positive_mask=positive_mask,
        negative_mask=negative_mask,
        has_ref=ref is not None,
    )
    sims: dict[tuple[int, int], Tensor] = {}

    def s(a: int, j: int) -> Tensor:
        if (a, j) not in sims:
            sims[(a, j)] = cosine_similarity(x[a], refs[j])
        return sims[(a, j)]

    zero = graph_zero(x, ref)
    terms: list[Tensor] = []
    counted: list[bool] = []
    for a, (pos, neg) in enumerate(per_anchor):
        if kind == "multi_similarity":
            term = zero
            if pos:
                term = (
                    term
                    + softplus(_stable_logsumexp([-alpha * (s(a, p) - base) for p in pos])) / alpha
                )
            if neg:
                term = (
                    term
                    + softplus(_stable_logsumexp([beta * (s(a, q) - base) for q in neg])) / beta
                )
            terms.append(term)
            counted.append(True)
        elif kind == "circle":
            if not pos or not neg:
                terms.append(zero)
                counted.append(False)
                continue
            pos_logits = []
            for p in pos:
                weight = max(0.0, 1 + m - float(s(a, p).detach()))
                pos_logits.append(-gamma * weight * (s(a, p) - (1 - m)))
            neg_logits = []
            for q in neg:
                weight = max(0.0, float(s(a, q).detach()) + m)
                neg_logits.append(gamma * weight * (s(a, q) - m))
            terms.append(softplus(_stable_logsumexp(pos_logits) + _stable_logsumexp(neg_logits)))
            counted.append(True)
        elif kind == "supcon":
            if not pos:
                terms.append(zero)
                counted.append(False)
                continue
            denominator = _stable_logsumexp([s(a, j) / temperature for j in pos + neg])
            total = zero
            for p in pos:
                total = total + (s(a, p) / temperature - denominator)
            terms.append(-total / len(pos))
            counted.append(True)
        else:
            raise AssertionError(kind)
    return terms, counted


def similarity_loss(kind: str, *args: object, reduction: str = "mean", **kwargs: object) -> Tensor:
    """Reference for the similarity losses: the counted anchors' terms of
    :func:`similarity_loss_terms`, reduced (``"none"``: the counted terms, anchors
    ascending). Differentiable in ``x`` and ``ref``."""
    terms, counted = similarity_loss_terms(kind, *args, **kwargs)  # type: ignore[arg-type]
    x = args[0]
    ref = args[2] if len(args) > 2 else kwargs.get("ref")
    kept = [t for t, c in zip(terms, counted, strict=True) if c]
    return reduce(kept, reduction, graph_zero(x, ref))  # type: ignore[arg-type]
