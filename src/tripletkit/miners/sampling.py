"""Sampling miners: distance-weighted sampling and uniformly random triplets.

Each is a pure function (the single source of truth) with its ``nn.Module`` form beside it.
Definitions as in :mod:`tripletkit.miners.triplet`: a positive of anchor ``a`` is another
sample with the same label (the pair of a sample with itself is never used), a negative is a
sample with a different label. Every function takes ``embeddings [N, D]`` and integer
``labels [N]``, then the hyper-parameters of the sampler; keyword-only: the reference set
``ref_embeddings [M, D]``, ``ref_labels [M]`` that positives and negatives are drawn from,
``anchor_offset``, ``normalize`` and the random source ``generator``. Memory is O(N M) plus
the output; no ``N x M x M`` tensor is built.

Randomness: the functions draw from ``generator`` when one is given (the numbers are drawn
on the generator's device and moved to the embeddings', so the same generator state gives
the same output on any device), else from torch's default generator of the embeddings'
device, which ``torch.manual_seed`` seeds, like every torch random function. The modules own
a generator seeded with ``seed=0`` by default (:class:`~tripletkit.miners._base.SeededMiner`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._batch import check_options, prepare
from .._checks import check_finite_real, check_positive_int, check_positive_real, to_host
from .._deprecation import refs_keyword_only
from .._masks import given_masks
from ..types import Triplets
from ._base import SeededMiner

__all__ = [
    "DistanceWeightedMiner",
    "RandomTripletMiner",
    "check_cutoffs",
    "distance_weighted_triplets",
    "random_triplets",
]


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for accumulating probabilities, except where the device lacks it (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform(count: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``count`` uniforms in [0, 1) from ``generator`` (drawn in float64 on its device) or
    from ``device``'s default generator, on ``device`` in :func:`_acc_dtype`."""
    where = device if generator is None else generator.device
    u = torch.rand(count, generator=generator, dtype=_acc_dtype(where), device=where)
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


def _draw_weighted(weights: Tensor, keep: Tensor, generator: torch.Generator | None) -> Triplets:
    """For every True ``(a, p)`` of ``keep``, row-major: one column ``n`` of row ``a`` drawn
    with probability ``weights[a, n] / weights[a].sum()``.

    Every row holding a True must have a positive total weight. Per row the weights are
    accumulated once (in float64 where the device has it) and each draw is a binary search
    of ``u * total`` in that cumulative sum, with ``u`` uniform in [0, 1). Every slot
    ``(a, p)`` draws (fixed shapes: no host read until the one that sizes the output).
    """
    n, m = weights.shape
    cdf = weights.to(_acc_dtype(weights.device)).cumsum(dim=1).contiguous()
    u = _uniform(n * m, generator, weights.device).view(n, m)
    cols = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    # A target below its row's total lands on a column of positive weight (cdf rises there);
    # u * total can round up to the total itself (column M): take the row's last positive one.
    last = (m - 1) - (weights > 0).flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    cols = torch.where(cols >= m, last, cols)
    a, p = keep.nonzero(as_tuple=True)
    return Triplets(a, p, cols[a, p])


# ---------------------------------------------------------------------------------------------
# Distance-weighted sampling


def check_cutoffs(cutoff: object, nonzero_loss_cutoff: object) -> tuple[float, float]:
    """Validate distance-weighted sampling's cutoffs: ``0 < cutoff < nonzero_loss_cutoff``."""
    low = check_positive_real(cutoff, "cutoff")
    high = check_finite_real(nonzero_loss_cutoff, "nonzero_loss_cutoff")
    if high <= low:
        raise ValueError(f"nonzero_loss_cutoff ({high}) must be greater than cutoff ({low})")
    return low, high


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


@refs_keyword_only
def distance_weighted_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    generator: torch.Generator | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
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
        anchor_offset: the anchors are rows ``anchor_offset : anchor_offset + N`` of the
            references (their own rows are then not positives).
        normalize: L2-normalise the embeddings (and references) first.
        generator: the random source; torch's default generator of the embeddings' device
            when ``None``.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        :class:`~tripletkit.types.Triplets`, one row per positive pair whose anchor has a
        negative, ordered by anchor then positive.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: three ``[P]`` int64 tensors.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> t = distance_weighted_triplets(x, labels, generator=g)
        >>> t.num_triplets  # one per ordered positive pair
        8
        >>> bool((labels[t.anchor] == labels[t.positive]).all() and (labels[t.anchor] != labels[t.negative]).all())
        True
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    cutoff, nonzero_loss_cutoff = check_cutoffs(cutoff, nonzero_loss_cutoff)
    generator = _check_generator(generator)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric="euclidean",
        normalize=normalize,
        unit_norm="distance-weighted sampling",
    )
    pos, neg = b.masks()
    dist = b.distances()
    if dist.numel() == 0:
        return Triplets.empty(dist.device)
    probs = _distance_weights(dist, neg, b.embeddings.shape[1], cutoff, nonzero_loss_cutoff)
    return _draw_weighted(probs, pos & neg.any(dim=1, keepdim=True), generator)


# ---------------------------------------------------------------------------------------------
# Uniform sampling


@refs_keyword_only
def random_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    num_triplets: int | None = None,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    generator: torch.Generator | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
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
        anchor_offset: as in :func:`distance_weighted_triplets`.
        generator: the random source; torch's default generator of the embeddings' device
            when ``None``.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        :class:`~tripletkit.types.Triplets` (empty when there is no valid triplet).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``.
        - output: three ``[P]`` (or ``[T]``) int64 tensors.

    Examples:
        >>> import torch
        >>> x, labels = torch.zeros(5, 2), torch.tensor([0, 0, 1, 1, 2])
        >>> random_triplets(x, labels, generator=torch.Generator().manual_seed(0)).num_triplets
        4
        >>> random_triplets(x, labels, num_triplets=10).num_triplets
        10
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    if num_triplets is not None:
        num_triplets = check_positive_int(num_triplets, "num_triplets")
    generator = _check_generator(generator)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        matrix=False,
    )
    device = b.labels.device
    n, m = b.embeddings.shape[0], b.ref_embeddings.shape[0]
    if n == 0 or m == 0:
        return Triplets.empty(device)
    pos, neg = b.masks()
    n_neg = neg.sum(dim=1)
    if num_triplets is None:  # every slot draws; the positive pairs keep theirs
        u = _uniform(n * m, generator, device).view(n, m)
        count = n_neg[:, None]
        k = torch.minimum((u * count.to(u.dtype)).floor().to(torch.int64), count - 1)
        rows = torch.arange(n, device=device)[:, None].expand(n, m)
        cols = _kth_true(neg, rows.reshape(-1), k.clamp_min(0).reshape(-1)).view(n, m)
        a, p = (pos & (count > 0)).nonzero(as_tuple=True)
        return Triplets(a, p, cols[a, p])
    per_anchor = pos.sum(dim=1) * n_neg
    (total,) = to_host(per_anchor.sum().reshape(1))
    if total == 0:
        return Triplets.empty(device)
    # One integer in [0, total) per triplet indexes the valid triplets anchor by anchor,
    # positive by positive, negative by negative.
    where = device if generator is None else generator.device
    t = torch.randint(0, total, (num_triplets,), generator=generator, device=where).to(device)
    cum = per_anchor.cumsum(0)
    a = torch.searchsorted(cum, t, right=True)
    r = t - (cum - per_anchor)[a]
    return Triplets(a, _kth_true(pos, a, r // n_neg[a]), _kth_true(neg, a, r % n_neg[a]))


def _per_anchor_triplets(
    pos: Tensor, neg: Tensor, k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``k`` random triplets per anchor, as pytorch-metric-learning's
    ``TripletMarginLoss(triplets_per_anchor=k)`` draws them: for every anchor with at least
    one positive and one negative, ``k`` independent draws of a positive uniformly among its
    positives and a negative uniformly among its negatives (with replacement).

    Fixed shapes, no host read: every anchor draws; ``valid`` marks the anchors that have
    both (the other rows hold in-range indices).

    Args:
        pos, neg: the positive and negative masks ``[N, M]``.
        k: draws per anchor, ``>= 1``.
        generator: the random source (see the module docstring).

    Returns:
        ``(anchor, positive, negative, valid)``, each ``[N, k]``.
    """
    n, m = pos.shape
    device = pos.device
    n_pos, n_neg = pos.sum(dim=1, keepdim=True), neg.sum(dim=1, keepdim=True)
    rows = torch.arange(n, device=device)[:, None].expand(n, k)
    u = _uniform(2 * n * k, generator, device).view(2, n, k)
    columns = []
    for mask, count, draws in ((pos, n_pos, u[0]), (neg, n_neg, u[1])):
        j = torch.minimum((draws * count.to(draws.dtype)).floor().to(torch.int64), count - 1)
        cols = _kth_true(mask, rows.reshape(-1), j.clamp_min(0).reshape(-1)).view(n, k)
        columns.append(cols.clamp(0, max(m - 1, 0)))
    valid = ((n_pos > 0) & (n_neg > 0)).expand(n, k)
    return rows, columns[0], columns[1], valid


# ---------------------------------------------------------------------------------------------
# Module forms


class DistanceWeightedMiner(SeededMiner):
    """Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017).

    For every positive pair ``(a, p)``, one negative of ``a`` drawn with probability
    proportional to ``1 / q(d_an)``, ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``, with ``d``
    clipped below at ``cutoff`` and weight 0 at ``d >= nonzero_loss_cutoff``; an anchor whose
    negatives all have weight 0 draws uniformly among them. Needs unit-norm embeddings
    (ValueError otherwise) unless ``normalize=True``. See :func:`distance_weighted_triplets`;
    pair it with :class:`~tripletkit.losses.MarginLoss` as the paper does. The miner owns a
    generator seeded with ``seed`` (see :class:`~tripletkit.miners._base.SeededMiner`).

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[P]`` int64 tensors, one row per
          positive pair whose anchor has a negative.

    Examples:
        >>> import torch
        >>> miner = DistanceWeightedMiner(normalize=True, seed=0)
        >>> x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
        >>> miner(x, torch.tensor([0, 0, 1, 1, 2, 2])).num_triplets
        6
    """

    function = staticmethod(distance_weighted_triplets)

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        *,
        normalize: bool = False,
        seed: int | None = 0,
    ) -> None:
        cutoff, nonzero_loss_cutoff = check_cutoffs(cutoff, nonzero_loss_cutoff)
        super().__init__(
            seed,
            cutoff=cutoff,
            nonzero_loss_cutoff=nonzero_loss_cutoff,
            **check_options(normalize=normalize),
        )


class RandomTripletMiner(SeededMiner):
    """Uniformly random triplets, the baseline sampler.

    With ``num_triplets=None``, one uniformly drawn negative per positive pair (whose anchor
    has a negative); with ``num_triplets=T``, ``T`` triplets drawn uniformly from all valid
    triplets with replacement. See :func:`random_triplets`. The miner owns a generator seeded
    with ``seed``.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[P]`` (or ``[T]``) int64 tensors.

    Examples:
        >>> import torch
        >>> miner = RandomTripletMiner(num_triplets=5, seed=0)
        >>> miner(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])).num_triplets
        5
    """

    function = staticmethod(random_triplets)

    def __init__(self, num_triplets: int | None = None, *, seed: int | None = 0) -> None:
        if num_triplets is not None:
            check_positive_int(num_triplets, "num_triplets")
        super().__init__(seed, num_triplets=num_triplets)
