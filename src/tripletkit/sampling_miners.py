"""Sampling and pair miners as pure functions: the single source of truth behind
:mod:`tripletkit.miners.sampling`.

Definitions as in :mod:`tripletkit.mining`: a positive of anchor ``a`` is another sample with
the same label (the pair of a sample with itself is never used), a negative is a sample with
a different label. Every function takes ``embeddings [N, D]`` and integer ``labels [N]``,
optionally a reference set ``ref_embeddings [M, D]``, ``ref_labels [M]`` that positives and
negatives are drawn from (then the returned positives and negatives index the references), and
``anchor_offset`` when the anchors are rows ``anchor_offset : anchor_offset + N`` of the
references. Memory is O(N M) plus the output; no ``N x M x M`` tensor is built.

- :func:`distance_weighted_triplets`: distance-weighted sampling (Wu et al. 2017).
- :func:`random_triplets`: uniformly random triplets, the baseline sampler.
- :func:`multi_similarity_pairs`: the pair mining of the multi-similarity loss (Wang et al. 2019).
- :func:`pair_margin_pairs`: the pairs with a non-zero contrastive loss.

The random samplers draw from a :class:`torch.Generator` only (never the global RNG): the same
generator state gives the same output on any device, since the random numbers are drawn on
the generator's device and moved to the embeddings'.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._batch import Batch, check_anchor_offset, no_grad_prepare
from ._checks import check_margin, check_pair, check_positive_int
from .kernels import self_index_for
from .types import Pairs, Triplets

__all__ = [
    "check_cutoffs",
    "distance_weighted_triplets",
    "make_generator",
    "multi_similarity_pairs",
    "pair_margin_pairs",
    "random_triplets",
]


# ---------------------------------------------------------------------------------------------
# Shared helpers


def make_generator(seed: int | None = None) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed``, or from OS entropy when ``None``.

    Example:
        >>> g1, g2 = make_generator(0), make_generator(0)
        >>> bool(torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2)))
        True
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _check_generator(generator: object) -> torch.Generator:
    if generator is None:
        return make_generator(None)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _masks(labels: Tensor, ref_labels: Tensor, self_index: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[N, M]`` (the anchor's own column is neither)."""
    same = labels[:, None] == ref_labels[None, :]
    pos = same.clone()
    rows = torch.nonzero(self_index >= 0).squeeze(1)
    pos[rows, self_index[rows]] = False
    return pos, ~same


def _labels_only(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What :func:`~tripletkit._batch.prepare` checks and returns, without the distances:
    ``(labels, ref_labels, self_index)``, for samplers that never look at distances."""
    emb, lab, ref, ref_lab = check_pair(embeddings, labels, ref_embeddings, ref_labels)
    if ref is None or ref_lab is None:
        offset = check_anchor_offset(anchor_offset, emb.shape[0], emb.shape[0], has_ref=False)
        ref_lab = lab
    else:
        offset = check_anchor_offset(anchor_offset, emb.shape[0], ref.shape[0], has_ref=True)
    return lab, ref_lab, self_index_for(emb.shape[0], emb.device, offset)


def _acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for accumulating probabilities, except where the device lacks it (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform(count: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``count`` uniforms in [0, 1) from ``generator`` (drawn in float64 on its device), on
    ``device`` in :func:`_acc_dtype`."""
    u = torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device)
    return u.to(_acc_dtype(device)).to(device)


def _kth_true(mask: Tensor, rows: Tensor, k: Tensor) -> Tensor:
    """Column of the ``k[i]``-th (0-based) True entry of row ``rows[i]`` of ``mask [N, M]``.

    Exact integer search: rows are laid end to end as ``row * (M + 1) + running count``,
    a non-decreasing sequence, so one 1-D ``searchsorted`` answers every query.
    """
    n, m = mask.shape
    offsets = torch.arange(n, device=mask.device, dtype=torch.int64)[:, None] * (m + 1)
    flat = (offsets + mask.to(torch.int64).cumsum(dim=1)).reshape(-1)
    where = torch.searchsorted(flat, rows * (m + 1) + k, right=True)
    return where - rows * m


def _draw_weighted(weights: Tensor, pos: Tensor, generator: torch.Generator) -> Triplets:
    """For every True ``(a, p)`` of ``pos``, row-major: one column ``n`` of row ``a`` drawn
    with probability ``weights[a, n] / weights[a].sum()``.

    Every row holding a True must have a positive total weight. Per row the weights are
    accumulated once (in float64 where the device has it) and each draw is a binary search
    of ``u * total`` in that cumulative sum, with ``u`` uniform in [0, 1): memory O(R M) for
    the R rows that draw, one uniform per pair.
    """
    a, p = torch.nonzero(pos, as_tuple=True)
    if a.numel() == 0:
        return Triplets(a, p, p.clone())
    acc = _acc_dtype(weights.device)
    rows, inverse, counts = torch.unique_consecutive(a, return_inverse=True, return_counts=True)
    rank = torch.arange(a.shape[0], device=a.device) - (counts.cumsum(0) - counts)[inverse]
    sub = weights if rows.shape[0] == weights.shape[0] else weights[rows]
    cdf = sub.to(acc).cumsum(dim=1).contiguous()
    total = cdf[:, -1]
    targets = torch.zeros(rows.shape[0], int(counts.max()), dtype=acc, device=weights.device)
    targets[inverse, rank] = _uniform(a.shape[0], generator, weights.device) * total[inverse]
    cols = torch.searchsorted(cdf, targets, right=True)[inverse, rank]
    # A target below its row's total lands on a column of positive weight (cdf rises there);
    # u * total can round up to the total itself (column M): take the row's last positive one.
    over = torch.nonzero(cols >= sub.shape[1]).squeeze(1)
    if over.numel():
        hit = sub[inverse[over]] > 0
        cols[over] = (sub.shape[1] - 1) - hit.flip(1).to(torch.int8).argmax(dim=1)
    return Triplets(a, p, cols)


# ---------------------------------------------------------------------------------------------
# Distance-weighted sampling


def check_cutoffs(cutoff: object, nonzero_loss_cutoff: object) -> tuple[float, float]:
    """Validate distance-weighted sampling's cutoffs: ``0 < cutoff < nonzero_loss_cutoff``."""
    low = check_margin(cutoff, "cutoff")
    high = check_margin(nonzero_loss_cutoff, "nonzero_loss_cutoff")
    if low <= 0:
        raise ValueError(f"cutoff must be > 0, got {low}")
    if high <= low:
        raise ValueError(f"nonzero_loss_cutoff ({high}) must be greater than cutoff ({low})")
    return low, high


def _unit_norm_tolerance(dtype: torch.dtype) -> float:
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def _check_unit_norm(x: Tensor, name: str, tol: float) -> None:
    if x.numel() == 0:
        return
    x = x.detach()
    err = (x.norm(dim=1) - 1).abs()
    worst = int(err.argmax())
    if float(err[worst]) > tol:
        raise ValueError(
            f"distance-weighted sampling needs unit-norm {name}, but row {worst} has norm "
            f"{float(x[worst].norm()):.6g} (tolerance {tol:g}); L2-normalise them or pass "
            "normalize=True"
        )


def _distance_weights(
    dist: Tensor, neg: Tensor, dim: int, cutoff: float, nonzero_loss_cutoff: float
) -> Tensor:
    """Per-anchor sampling probabilities of the negatives ``[N, M]`` (rows sum to 1; rows
    without a negative are all 0).

    ``w(d) = 1 / q(d)`` with ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``, the density of the
    distance between two points drawn uniformly on the unit sphere of R^n; ``d`` is clipped
    below at ``cutoff`` and negatives with ``d >= nonzero_loss_cutoff`` get weight 0. Computed
    as ``log w`` and exponentiated after subtracting each row's maximum, so no power of ``d``
    is ever formed. Anchors whose negatives all have weight 0 get a uniform distribution over
    all of their negatives.
    """
    d = dist.clamp_min(cutoff)
    tiny = torch.finfo(d.dtype).tiny
    # d can exceed 2 by rounding when the rows are unit-norm within a tolerance only.
    one_minus = (1.0 - 0.25 * d * d).clamp_min(tiny)
    log_w = -(dim - 2.0) * torch.log(d) - ((dim - 3.0) / 2.0) * torch.log(one_minus)
    eligible = neg & (d < nonzero_loss_cutoff)
    log_w = torch.where(eligible, log_w, torch.full_like(log_w, -math.inf))
    row_max = log_w.amax(dim=1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    w = torch.exp(log_w - row_max)
    fallback = ~eligible.any(dim=1)
    w = torch.where(fallback[:, None], neg.to(w.dtype), w)
    total = w.sum(dim=1, keepdim=True)
    return w / torch.where(total > 0, total, torch.ones_like(total))


def distance_weighted_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    normalize: bool = False,
    generator: torch.Generator | None = None,
    anchor_offset: int | None = None,
) -> Triplets:
    """Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling Matters
    in Deep Embedding Learning").

    On unit-norm embeddings in R^n, for every positive pair ``(a, p)`` whose anchor has a
    negative, one negative ``n`` of ``a`` is drawn with probability proportional to
    ``1 / q(d_an)``, where ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)`` is the density of the
    distance between uniform points on the sphere: negatives are drawn evenly over distances
    instead of concentrating near ``sqrt(2)``. As in the paper, ``d`` is the Euclidean
    distance clipped below at ``cutoff`` (bounding the weight of very close negatives), and
    negatives at ``d >= nonzero_loss_cutoff`` (which give a zero margin loss) have weight 0.
    The weights are computed in log space and normalised per anchor.

    Fallback: an anchor whose negatives all have weight 0 (all at ``d >= nonzero_loss_cutoff``)
    draws uniformly among all of its negatives.

    Args:
        embeddings: ``[N, D]`` unit-norm embeddings (each row's norm within
            ``max(1e-3, 4 * eps(dtype))`` of 1, else a ValueError), or any embeddings with
            ``normalize=True``.
        labels: ``[N]`` integer labels.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]`` (also unit-norm).
        cutoff: lower clip of the distance in the weights; ``0 < cutoff < nonzero_loss_cutoff``.
        nonzero_loss_cutoff: negatives at or beyond this distance are not drawn (bar the
            fallback).
        normalize: L2-normalise the embeddings (and references) first.
        generator: the random source; a fresh one seeded from OS entropy when ``None``.
        anchor_offset: the anchors are rows ``anchor_offset : anchor_offset + N`` of the
            references (their own rows are then not positives).

    Returns:
        :class:`~tripletkit.types.Triplets`, one row per positive pair whose anchor has a
        negative, ordered by anchor then positive.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: three ``[P]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(8, 16, generator=make_generator(0)), dim=1)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> t = distance_weighted_triplets(x, labels, generator=make_generator(1))
        >>> t.num_triplets  # one per ordered positive pair
        8
        >>> bool((labels[t.anchor] == labels[t.positive]).all() and (labels[t.anchor] != labels[t.negative]).all())
        True
    """
    cutoff, nonzero_loss_cutoff = check_cutoffs(cutoff, nonzero_loss_cutoff)
    generator = _check_generator(generator)
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric="euclidean",
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    if not normalize:
        in_dtypes = [embeddings.dtype]
        if isinstance(ref_embeddings, Tensor):
            in_dtypes.append(ref_embeddings.dtype)
        tol = max(_unit_norm_tolerance(dt) for dt in in_dtypes)
        _check_unit_norm(b.embeddings, "embeddings", tol)
        if ref_embeddings is not None:
            _check_unit_norm(b.ref_embeddings, "ref_embeddings", tol)
    pos, neg = _masks(b.labels, b.ref_labels, b.self_index)
    if b.dist.numel() == 0:
        return Triplets.empty(b.dist.device)
    probs = _distance_weights(b.dist, neg, b.embeddings.shape[1], cutoff, nonzero_loss_cutoff)
    return _draw_weighted(probs, pos & neg.any(dim=1, keepdim=True), generator)


# ---------------------------------------------------------------------------------------------
# Uniform sampling


def random_triplets(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    num_triplets: int | None = None,
    generator: torch.Generator | None = None,
    anchor_offset: int | None = None,
) -> Triplets:
    """Uniformly random triplets: the baseline that every informed sampler is measured against.

    With ``num_triplets=None``: for every positive pair ``(a, p)`` whose anchor has a
    negative, one negative drawn uniformly among ``a``'s negatives; rows ordered by anchor
    then positive. With ``num_triplets=T``: ``T`` triplets drawn independently and uniformly
    from all valid triplets (with replacement), without listing them: a positive pair is
    picked with probability proportional to its anchor's number of negatives, then a
    negative uniformly; rows in the order drawn. No distance is computed (the embeddings are
    only validated); all draws are exact integer arithmetic on the generator's uniforms.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        num_triplets: ``T >= 1``, or ``None`` for one triplet per positive pair.
        generator: the random source; a fresh one seeded from OS entropy when ``None``.
        anchor_offset: as in :func:`distance_weighted_triplets`.

    Returns:
        :class:`~tripletkit.types.Triplets` (empty when there is no valid triplet).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: three ``[P]`` (or ``[T]``) int64 tensors.

    Example:
        >>> import torch
        >>> x, labels = torch.zeros(5, 2), torch.tensor([0, 0, 1, 1, 2])
        >>> random_triplets(x, labels, generator=make_generator(0)).num_triplets
        4
        >>> random_triplets(x, labels, num_triplets=10, generator=make_generator(0)).num_triplets
        10
    """
    if num_triplets is not None:
        num_triplets = check_positive_int(num_triplets, "num_triplets")
    generator = _check_generator(generator)
    lab, ref_lab, self_index = _labels_only(
        embeddings, labels, ref_embeddings, ref_labels, anchor_offset
    )
    device = lab.device
    if lab.numel() == 0 or ref_lab.numel() == 0:
        return Triplets.empty(device)
    pos, neg = _masks(lab, ref_lab, self_index)
    n_neg = neg.sum(dim=1)
    if num_triplets is None:
        a, p = torch.nonzero(pos & (n_neg > 0)[:, None], as_tuple=True)
        if a.numel() == 0:
            return Triplets.empty(device)
        count = n_neg[a]
        u = _uniform(a.shape[0], generator, device)
        k = torch.minimum((u * count.to(u.dtype)).floor().to(torch.int64), count - 1)
        return Triplets(a, p, _kth_true(neg, a, k))
    per_anchor = pos.sum(dim=1) * n_neg
    total = int(per_anchor.sum())
    if total == 0:
        return Triplets.empty(device)
    # One integer in [0, total) per triplet indexes the valid triplets anchor by anchor,
    # positive by positive, negative by negative.
    t = torch.randint(0, total, (num_triplets,), generator=generator, device=generator.device)
    t = t.to(device)
    cum = per_anchor.cumsum(0)
    a = torch.searchsorted(cum, t, right=True)
    r = t - (cum - per_anchor)[a]
    return Triplets(a, _kth_true(pos, a, r // n_neg[a]), _kth_true(neg, a, r % n_neg[a]))


# ---------------------------------------------------------------------------------------------
# Pair miners


def _prepared(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    metric: str,
    normalize: bool,
    anchor_offset: int | None,
) -> tuple[Batch, Tensor, Tensor]:
    b = no_grad_prepare(
        embeddings,
        labels,
        ref_embeddings,
        ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=anchor_offset,
    )
    pos, neg = _masks(b.labels, b.ref_labels, b.self_index)
    return b, pos, neg


def _pairs(pos: Tensor, neg: Tensor) -> Pairs:
    ap, p = torch.nonzero(pos, as_tuple=True)
    an, n = torch.nonzero(neg, as_tuple=True)
    return Pairs(ap, p, an, n)


def multi_similarity_pairs(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    epsilon: float = 0.1,
    metric: str = "cosine",
    normalize: bool = False,
    anchor_offset: int | None = None,
) -> Pairs:
    """The pair mining of the multi-similarity loss (Wang, Han, Huang, Dong & Scott 2019,
    "Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning").

    With the cosine similarity ``S = 1 - d`` (``metric="cosine"``), a negative pair
    ``(a, n)`` is kept if ``S_an > min_p S_ap - epsilon`` (harder than the anchor's hardest
    positive, up to ``epsilon``) and a positive pair ``(a, p)`` if
    ``S_ap < max_n S_an + epsilon``. For the distance metrics the same rule reads
    ``d_an < max_p d_ap + epsilon`` and ``d_ap > min_n d_an - epsilon``; this distance form is
    what is computed for every metric (for cosine it is the similarity form rewritten). An
    anchor without positives keeps no negative pair and an anchor without negatives keeps no
    positive pair. The same pairs as pytorch-metric-learning's ``MultiSimilarityMiner``
    (there ordered by similarity within an anchor).

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        epsilon: the slack ``epsilon`` of both rules.
        metric: ``"cosine"`` (the paper's), ``"euclidean"`` or ``"sqeuclidean"``.
        normalize: L2-normalise the embeddings first (implied by ``"cosine"``).
        anchor_offset: as in :func:`distance_weighted_triplets`.

    Returns:
        :class:`~tripletkit.types.Pairs`; positive and negative pairs each ordered row-major
        (by anchor, then reference index).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: ``[P]``, ``[P]``, ``[Q]``, ``[Q]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
        >>> multi_similarity_pairs(x, torch.tensor([0, 0, 1, 1]), epsilon=0.1)
        Pairs(anchor_pos=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), anchor_neg=tensor([0, 1, 1, 2, 2, 3]), negative=tensor([2, 2, 3, 0, 1, 1]))
    """
    epsilon = check_margin(epsilon, "epsilon")
    b, pos, neg = _prepared(
        embeddings, labels, ref_embeddings, ref_labels, metric, normalize, anchor_offset
    )
    if b.dist.numel() == 0:
        return Pairs.empty(b.dist.device)
    d = b.dist
    inf = torch.full_like(d, math.inf)
    hardest_pos = torch.where(pos, d, -inf).amax(dim=1, keepdim=True)  # -inf: no positive
    hardest_neg = torch.where(neg, d, inf).amin(dim=1, keepdim=True)  # +inf: no negative
    return _pairs(pos & (d > hardest_neg - epsilon), neg & (d < hardest_pos + epsilon))


def pair_margin_pairs(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    normalize: bool = False,
    anchor_offset: int | None = None,
) -> Pairs:
    """The pairs with a non-zero contrastive loss: positive pairs with ``d > pos_margin`` and
    negative pairs with ``d < neg_margin`` (the terms of
    :func:`~tripletkit.losses.contrastive_loss` with the same margins that are not 0).

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        pos_margin: positive pairs closer than or at this distance are dropped.
        neg_margin: negative pairs at or beyond this distance are dropped.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        normalize: L2-normalise the embeddings first.
        anchor_offset: as in :func:`distance_weighted_triplets`.

    Returns:
        :class:`~tripletkit.types.Pairs`; positive and negative pairs each ordered row-major.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: ``[P]``, ``[P]``, ``[Q]``, ``[Q]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.8], [3.0]])
        >>> pair_margin_pairs(x, torch.tensor([0, 0, 1, 1]), pos_margin=0.1, neg_margin=1.0)
        Pairs(anchor_pos=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), anchor_neg=tensor([0, 1, 2, 2]), negative=tensor([2, 2, 0, 1]))
    """
    pos_margin = check_margin(pos_margin, "pos_margin")
    neg_margin = check_margin(neg_margin, "neg_margin")
    b, pos, neg = _prepared(
        embeddings, labels, ref_embeddings, ref_labels, metric, normalize, anchor_offset
    )
    return _pairs(pos & (b.dist > pos_margin), neg & (b.dist < neg_margin))
