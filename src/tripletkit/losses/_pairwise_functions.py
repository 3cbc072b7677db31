"""The contrastive and similarity losses' function forms (contrastive, multi-similarity, circle, supervised contrastive) and their parts; public under :mod:`tripletkit.losses.pairwise`, which adds the module forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._batch import check_options, prepare
from .._checks import (
    DeviceChecks,
    check_finite_real,
    check_index_tuple,
    check_positive_real,
    check_reduction,
)
from .._masks import given_masks
from ..distances import _paired_distance_unchecked
from ..types import Pairs, Triplets
from ._reduce import REDUCTIONS, Parts, in_input_dtype, reduce_parts, reduce_terms

__all__ = [
    "circle_loss",
    "circle_parts",
    "contrastive_loss",
    "contrastive_parts",
    "multi_similarity_loss",
    "multi_similarity_parts",
    "supcon_loss",
    "supcon_parts",
]

#: Mined pairs as the similarity losses accept them: ``Pairs`` or a 4-tuple, or ``Triplets``
#: / a 3-tuple ``(a, p, n)``, read as the positive pairs ``(a, p)`` and negative pairs
#: ``(a, n)``.
PairIndices = (
    Pairs | Triplets | tuple[Tensor, Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]
)


def contrastive_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced contrastive loss over every pair: see :func:`contrastive_loss`.

    Returns:
        :class:`~tripletkit.losses.Parts` ``(total, n_valid, n_active)``: the 0-dim sum of
        the terms of every anchor-reference pair other than a sample with itself (in the
        autograd graph), the number of those pairs and the number of positive terms; reduce
        with :func:`~tripletkit.losses.reduce_parts`.

    Examples:
        >>> import torch
        >>> total, n_valid, n_active = contrastive_parts(
        ...     torch.tensor([[0.0], [0.5], [3.0]]), torch.tensor([0, 0, 1]))
        >>> total.item(), int(n_valid), int(n_active)
        (1.0, 6, 2)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    pos_margin = check_finite_real(pos_margin, "pos_margin")
    neg_margin = check_finite_real(neg_margin, "neg_margin")
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        normalize=normalize,
    )
    pos, neg = b.masks()
    dist = b.distances(grad=True)
    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    terms = torch.where(pos, F.relu(dist - pos_margin), zero)
    terms = terms + torch.where(neg, F.relu(neg_margin - dist), zero)
    n_valid = pos.sum() + neg.sum()
    return Parts(terms.sum(), n_valid, (terms > 0).sum())


@in_input_dtype()
def contrastive_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: Pairs | tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    metric: str = "euclidean",
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006), with a positive margin.

    ``max(0, d - pos_margin)`` for a positive pair and ``max(0, neg_margin - d)`` for a
    negative pair. With ``pairs=None`` every ordered pair ``i != j`` of the batch is used
    (or every anchor-reference pair when references are given) and ``"mean"`` is over all
    of them; with explicit ``pairs`` the terms are the positive pairs' then the negative
    pairs', in order.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        pairs: ``Pairs`` or any 4-tuple ``(anchor_pos [P], positive [P], anchor_neg [Q],
            negative [Q])``, e.g. a pair miner's output.
        pos_margin, neg_margin: the margins of the positive and negative terms.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[P + Q]``;
            needs explicit pairs).
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.
        anchor_offset: with ``pairs=None`` and references given: the anchors are rows
            ``anchor_offset : anchor_offset + N`` of the references, so the pairs of a sample
            with itself are excluded (see :func:`~tripletkit.distributed.sharded_loss`).
        normalize: L2-normalise the embeddings first.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[P + Q]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> contrastive_loss(x, torch.tensor([0, 0, 1, 1]), reduction="sum")  # 2 x (0.5 + 4.4 + 0.9 + 0.4)
        tensor(12.4000)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    pos_margin = check_finite_real(pos_margin, "pos_margin")
    neg_margin = check_finite_real(neg_margin, "neg_margin")
    check_options(metric=metric)
    if pairs is None:
        if reduction == "none":
            raise ValueError("reduction='none' needs explicit pairs (e.g. from PairMarginMiner)")
        parts = contrastive_parts(
            embeddings,
            labels,
            pos_margin,
            neg_margin,
            metric,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            normalize=normalize,
        )
        return reduce_parts(*parts, reduction)
    if anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with pairs=None (explicit pairs name their rows)"
        )
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        metric=metric,
        matrix=False,
        normalize=normalize,
    )
    emb, ref = b.embeddings, b.ref_embeddings
    ap, p, an, n = check_index_tuple(pairs, "pairs", (4,), emb.shape[0], ref.shape[0], emb.device)
    terms = torch.cat(
        [
            F.relu(_paired_distance_unchecked(emb[ap], ref[p], metric) - pos_margin),
            F.relu(neg_margin - _paired_distance_unchecked(emb[an], ref[n], metric)),
        ]
    )
    return reduce_terms(terms, reduction, emb)


# ---------------------------------------------------------------------------------------------
# Similarity losses: multi-similarity, circle, supervised contrastive


def _pair_masks(pairs: object, n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[N, M]`` of mined pairs (``Pairs``/4-tuple, or
    ``Triplets``/3-tuple read as ``(a, p)`` and ``(a, n)`` pairs)."""
    idx = check_index_tuple(pairs, "pairs", (3, 4), n, m, device)
    ap, p, an, q = (idx[0], idx[1], idx[0], idx[2]) if len(idx) == 3 else idx
    pos = torch.zeros((n, m), dtype=torch.bool, device=device)
    neg = torch.zeros((n, m), dtype=torch.bool, device=device)
    pos[ap, p] = True
    neg[an, q] = True
    both = pos & neg

    def error() -> ValueError:
        a, j = (int(v) for v in both.nonzero()[0])
        return ValueError(
            f"pairs lists ({a}, {j}) both as a positive and as a negative pair; a pair is one "
            "or the other"
        )

    checks = DeviceChecks()
    checks.require(~both, error)
    checks.run()
    return pos, neg


def _similarities(
    embeddings: Tensor,
    labels: Tensor,
    pairs: object,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The cosine similarities ``[N, M]`` (in the autograd graph) and the positive and
    negative masks: every pair by label, or the given pairs."""
    if pairs is not None and anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with pairs=None (explicit pairs name their rows)"
        )
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        matrix=False,
        normalize=True,
    )
    sim = b.embeddings @ b.ref_embeddings.T
    if pairs is None:
        pos, neg = b.masks()
    else:
        pos, neg = _pair_masks(pairs, sim.shape[0], sim.shape[1], sim.device)
    return sim, pos, neg


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise ``log(sum(exp(x)))`` over ``mask`` ``[N, M] -> [N]``. A row without an entry
    gives the most negative finite number (``-inf`` when ``M = 0``); never NaN, in the
    forward or the backward pass, and masked entries get a zero gradient."""
    return torch.logsumexp(x.masked_fill(~mask, torch.finfo(x.dtype).min), dim=1)


def _log1p_exp(x: Tensor) -> Tensor:
    """``log(1 + exp(x))``, exact and stable for any ``x`` (0 at ``-inf``)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _anchor_parts(terms: Tensor, counted: Tensor) -> Parts:
    """Parts of per-anchor terms ``[N]`` (zero where not counted)."""
    return Parts(terms.sum(), counted.sum(), (counted & (terms > 0)).sum())


def _reduce_anchors(terms: Tensor, counted: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return terms[counted]
    return reduce_parts(*_anchor_parts(terms, counted), reduction)


def _ms_terms(
    embeddings: Tensor,
    labels: Tensor,
    pairs: object,
    alpha: float,
    beta: float,
    base: float,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
) -> tuple[Tensor, Tensor]:
    alpha = check_positive_real(alpha, "alpha")
    beta = check_positive_real(beta, "beta")
    base = check_finite_real(base, "base")
    sim, pos, neg = _similarities(
        embeddings, labels, pairs, ref_embeddings, ref_labels, anchor_offset
    )
    pos_lse = _masked_logsumexp(-alpha * (sim - base), pos)
    neg_lse = _masked_logsumexp(beta * (sim - base), neg)
    terms = _log1p_exp(pos_lse) / alpha + _log1p_exp(neg_lse) / beta
    return terms, torch.ones_like(terms, dtype=torch.bool)


def multi_similarity_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced multi-similarity loss: see :func:`multi_similarity_loss`.

    Returns:
        :class:`~tripletkit.losses.Parts` ``(total, n_valid, n_active)``: the sum of the
        anchors' terms (in the autograd graph), the number of anchors ``N`` and the number of
        anchors with a term > 0; reduce with :func:`~tripletkit.losses.reduce_parts`.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> total, n_valid, n_active = multi_similarity_parts(x, torch.tensor([0, 0, 1]))
        >>> round(total.item(), 4), int(n_valid), int(n_active)
        (0.6378, 3, 3)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    terms, counted = _ms_terms(
        embeddings, labels, pairs, alpha, beta, base, ref_embeddings, ref_labels, anchor_offset
    )
    return _anchor_parts(terms, counted)


@in_input_dtype()
def multi_similarity_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Multi-similarity loss (Wang, Han, Huang, Dong & Scott, CVPR 2019, "Multi-Similarity
    Loss with General Pair Weighting for Deep Metric Learning"), fused over the ``N x M``
    cosine-similarity matrix.

    With ``S`` the cosine similarity, ``P(a)`` and ``N(a)`` anchor ``a``'s positives and
    negatives, ``base`` the paper's ``lambda``, each anchor has the term

    ``1/alpha log(1 + sum_{p in P(a)} exp(-alpha (S_ap - base)))
    + 1/beta log(1 + sum_{n in N(a)} exp(beta (S_an - base)))``,

    computed as log-sum-exps (finite for any ``alpha``, ``beta``). An anchor without
    positives has no positive part (``log 1 = 0``) and one without negatives no negative
    part; every anchor is counted, so ``"mean"`` is over all ``N`` anchors (the paper's
    ``1/m sum_i``, and pytorch-metric-learning's ``MultiSimilarityLoss`` with its default
    ``MeanReducer``: equal on the same inputs, also with ``pairs`` and with a reference set).
    ``"mean_nonzero"`` averages over the anchors that have a pair. The loss does not mine:
    with ``pairs=None`` it sums over every pair; the paper's pair mining is
    :class:`~tripletkit.miners.MultiSimilarityMiner`, whose ``Pairs`` it takes (the authors'
    code then skips anchors left without a positive or without a negative pair; here, as in
    pytorch-metric-learning, such an anchor keeps the part it has).

    Args:
        embeddings: ``[N, D]`` (float16/bfloat16 computed in float32, the loss returned in
            their dtype); labels: ``[N]``.
        pairs: ``None`` (every pair), or mined ``Pairs``/4-tuple ``(anchor_pos [P],
            positive [P], anchor_neg [Q], negative [Q])``, or ``Triplets``/3-tuple read as
            the pairs ``(a, p)`` and ``(a, n)``; positives and negatives index the
            references. Only the listed pairs count (labels are not consulted).
        alpha: scale of the positive part (``> 0``); beta: of the negative part (``> 0``).
        base: the similarity offset ``lambda``.
        reduction: ``"mean"`` (over the ``N`` anchors), ``"sum"``, ``"mean_nonzero"`` (over
            anchors with a term > 0), or ``"none"`` (the ``[N]`` anchor terms).
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]`` (e.g. a
            :class:`~tripletkit.memory.CrossBatchMemory`); the anchors are then not among the
            references unless ``anchor_offset`` says where.
        anchor_offset: with ``pairs=None`` and references given: the anchors are rows
            ``anchor_offset : anchor_offset + N`` of the references (their own pairs are
            excluded).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[N]`` with ``reduction="none"``. Exactly 0, with a zero gradient,
        when there is no pair (fewer than two samples, or no reference).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[N]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> multi_similarity_loss(x, torch.tensor([0, 0, 1]), reduction="none")
        tensor([0.2187, 0.3189, 0.1001])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    terms, counted = _ms_terms(
        embeddings, labels, pairs, alpha, beta, base, ref_embeddings, ref_labels, anchor_offset
    )
    return _reduce_anchors(terms, counted, reduction)


def _circle_terms(
    embeddings: Tensor,
    labels: Tensor,
    pairs: object,
    m: float,
    gamma: float,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
) -> tuple[Tensor, Tensor]:
    m = check_finite_real(m, "m")
    gamma = check_positive_real(gamma, "gamma")
    sim, pos, neg = _similarities(
        embeddings, labels, pairs, ref_embeddings, ref_labels, anchor_offset
    )
    fixed = sim.detach()
    alpha_p = (1 + m - fixed).clamp_min(0)  # [O_p - s_p]_+, O_p = 1 + m
    alpha_n = (fixed + m).clamp_min(0)  # [s_n - O_n]_+, O_n = -m
    pos_lse = _masked_logsumexp(-gamma * alpha_p * (sim - (1 - m)), pos)  # Delta_p = 1 - m
    neg_lse = _masked_logsumexp(gamma * alpha_n * (sim - m), neg)  # Delta_n = m
    counted = pos.any(dim=1) & neg.any(dim=1)
    inner = torch.where(counted, pos_lse + neg_lse, torch.zeros_like(pos_lse))
    terms = torch.where(counted, _log1p_exp(inner), torch.zeros_like(inner))
    return terms, counted


def circle_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    m: float = 0.4,
    gamma: float = 80.0,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced circle loss: see :func:`circle_loss`.

    Returns:
        :class:`~tripletkit.losses.Parts` ``(total, n_valid, n_active)``: the sum of the
        terms of the anchors with a positive and a negative, their number and the number of
        them with a term > 0.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> total, n_valid, n_active = circle_parts(x, torch.tensor([0, 0, 1, 1]))
        >>> round(total.item(), 3), int(n_valid), int(n_active)
        (115.459, 4, 4)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    terms, counted = _circle_terms(
        embeddings, labels, pairs, m, gamma, ref_embeddings, ref_labels, anchor_offset
    )
    return _anchor_parts(terms, counted)


@in_input_dtype()
def circle_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    m: float = 0.4,
    gamma: float = 80.0,
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Circle loss with pair-wise labels (Sun, Cheng, Zhang, Zhang, Zheng, Wang & Wei, CVPR
    2020, "Circle Loss: A Unified Perspective of Pair Similarity Optimization"), fused over
    the ``N x M`` cosine-similarity matrix.

    With ``S`` the cosine similarity, ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``,
    ``Delta_n = m``, the weights ``alpha_p = [O_p - S_ap]_+`` and ``alpha_n = [S_an -
    O_n]_+`` (held constant in the backward pass, as in the paper's code and in
    pytorch-metric-learning), each anchor with at least one positive and one negative has
    the term

    ``log(1 + sum_{n in N(a)} exp(gamma alpha_n (S_an - Delta_n))
    * sum_{p in P(a)} exp(-gamma alpha_p (S_ap - Delta_p)))``,

    computed as ``softplus(logsumexp_n + logsumexp_p)`` (finite for any ``gamma``, also in
    float32). Anchors without a positive or without a negative are not counted.

    Reductions: ``"mean"`` is over the counted anchors. pytorch-metric-learning's
    ``CircleLoss`` (default ``AvgNonZeroReducer``) averages over the anchors whose term is
    > 0, which is the same unless a term underflows to exactly 0 (a softplus argument below
    about -745 in float64, -104 in float32); ``reduction="mean_nonzero"`` is exactly its
    reduction. Equal to it on the same inputs, also with ``pairs`` and a reference set.

    Args:
        embeddings: ``[N, D]`` (float16/bfloat16 computed in float32, the loss returned in
            their dtype); labels: ``[N]``.
        pairs: ``None`` (every pair) or mined pairs, as in :func:`multi_similarity_loss`.
        m: the relaxation margin (the paper suggests 0.25 for face recognition and person
            re-identification, 0.4 for fine-grained retrieval).
        gamma: the scale factor (``> 0``; the paper uses 256, 128 and 80 for those tasks).
        reduction: ``"mean"`` (over counted anchors), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (the ``[A]`` terms of the counted anchors, ascending).
        ref_embeddings, ref_labels, anchor_offset: as in :func:`multi_similarity_loss`.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[A]`` with ``reduction="none"``. Exactly 0, with a zero gradient,
        when no anchor has both a positive and a negative.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
        >>> circle_loss(x, torch.tensor([0, 0, 1, 1]), gamma=1.0, reduction="none")
        tensor([1.0435, 1.3820, 1.0435, 1.3820])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    terms, counted = _circle_terms(
        embeddings, labels, pairs, m, gamma, ref_embeddings, ref_labels, anchor_offset
    )
    return _reduce_anchors(terms, counted, reduction)


def _supcon_terms(
    embeddings: Tensor,
    labels: Tensor,
    pairs: object,
    temperature: float,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
) -> tuple[Tensor, Tensor]:
    temperature = check_positive_real(temperature, "temperature")
    sim, pos, neg = _similarities(
        embeddings, labels, pairs, ref_embeddings, ref_labels, anchor_offset
    )
    logits = sim / temperature
    lse = _masked_logsumexp(logits, pos | neg)
    n_pos = pos.sum(dim=1)
    counted = n_pos > 0
    mean_pos = torch.where(pos, logits, torch.zeros_like(logits)).sum(dim=1) / n_pos.clamp_min(1)
    terms = torch.where(counted, lse - mean_pos, torch.zeros_like(lse))
    return terms, counted


def supcon_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    temperature: float = 0.1,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced supervised contrastive loss: see :func:`supcon_loss`.

    Returns:
        :class:`~tripletkit.losses.Parts` ``(total, n_valid, n_active)``: the sum of the
        terms of the anchors with a positive, their number and the number of them with a
        term > 0.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> total, n_valid, n_active = supcon_parts(x, torch.tensor([0, 0, 1]), temperature=1.0)
        >>> round(total.item(), 4), int(n_valid), int(n_active)
        (0.9692, 2, 2)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    terms, counted = _supcon_terms(
        embeddings, labels, pairs, temperature, ref_embeddings, ref_labels, anchor_offset
    )
    return _anchor_parts(terms, counted)


@in_input_dtype()
def supcon_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    pairs: PairIndices | None = None,
    temperature: float = 0.1,
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot,
    Liu & Krishnan, NeurIPS 2020, "Supervised Contrastive Learning"; their L_out), fused
    over the ``N x M`` cosine-similarity matrix.

    With ``z = S / temperature``, ``P(a)`` the anchor's positives and ``A(a)`` all its
    pairs (positives and negatives: every reference except the anchor itself, or the listed
    pairs), each anchor with at least one positive has the term

    ``-1/|P(a)| sum_{p in P(a)} log(exp(z_ap) / sum_{j in A(a)} exp(z_aj))
    = logsumexp_{j in A(a)} z_aj - mean_{p in P(a)} z_ap``,

    computed stably; anchors without a positive are not counted. Each sample is one view
    (for two augmented views per image, concatenate them with repeated labels).

    Reductions: ``"mean"`` is over the anchors with a positive (the reference code's mean
    over all anchors when, as there, every anchor has one). pytorch-metric-learning's
    ``SupConLoss`` (default ``AvgNonZeroReducer``) gives the same value on the same inputs
    (also with ``pairs`` and references), except that (1) it returns 0 when the batch has
    no positive pair or no negative pair at all, where a one-class batch here has the
    paper's (positive) loss, and (2) it leaves out anchors whose term is exactly 0 (a single
    positive and no negative), which ``"mean"`` counts; ``"mean_nonzero"`` reproduces (2).
    Unlike the authors' code there is no ``temperature / base_temperature`` factor.

    Args:
        embeddings: ``[N, D]`` (float16/bfloat16 computed in float32, the loss returned in
            their dtype); labels: ``[N]``.
        pairs: ``None`` (every pair) or mined pairs, as in :func:`multi_similarity_loss`;
            the denominator then runs over the anchor's listed pairs.
        temperature: ``tau > 0``.
        reduction: ``"mean"`` (over anchors with a positive), ``"sum"``, ``"mean_nonzero"``,
            or ``"none"`` (the ``[A]`` terms of those anchors, ascending).
        ref_embeddings, ref_labels, anchor_offset: as in :func:`multi_similarity_loss`.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[A]`` with ``reduction="none"``. Exactly 0, with a zero gradient,
        when no anchor has a positive.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> supcon_loss(x, torch.tensor([0, 0, 1]), temperature=1.0, reduction="none")
        tensor([0.3711, 0.5981])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    terms, counted = _supcon_terms(
        embeddings, labels, pairs, temperature, ref_embeddings, ref_labels, anchor_offset
    )
    return _reduce_anchors(terms, counted, reduction)
