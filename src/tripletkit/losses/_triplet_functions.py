"""The triplet losses' function forms (batch-all, batch-hard, semi-hard, the triplet margin loss) and their parts; public under :mod:`tripletkit.losses.triplet`, which adds the module forms."""

from __future__ import annotations

import torch
from torch import Tensor

from .._batch import Batch, check_options, prepare
from .._checks import (
    check_bool,
    check_finite_real,
    check_index_tuple,
    check_margin,
    check_positive_int,
    check_rank_window,
    check_reduction,
)
from .._masks import given_masks
from ..distances import _paired_distance_unchecked
from ..kernels import triplet_region
from ..miners.sampling import _check_generator, _per_anchor_triplets
from ..types import Triplets
from . import _streaming, _triton
from ._fused import batch_all_sum, mined_terms, triplet_terms
from ._reduce import (
    FUSED_REDUCTIONS,
    REDUCTIONS,
    Parts,
    in_input_dtype,
    listed_terms,
    reduce_parts,
    reduce_terms,
)

__all__ = [
    "batch_all_parts",
    "batch_all_triplet_loss",
    "batch_hard_parts",
    "batch_hard_triplet_loss",
    "semi_hard_parts",
    "semi_hard_triplet_loss",
    "triplet_margin_loss",
]


def _batch(
    embeddings: Tensor,
    labels: Tensor,
    metric: str,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
    normalize: bool,
    backend: str,
    max_positives: int | None,
    need_width: bool = True,
) -> Batch:
    return prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        normalize=normalize,
        backend=backend,
        max_positives=max_positives,
        need_width=need_width,
    )


def _check_terms(margin: object, soft_margin: object, smooth: object) -> tuple[float, bool, bool]:
    """Validate the options that choose a triplet term (see :func:`triplet_terms`): a finite
    ``margin``, booleans ``soft_margin`` and ``smooth``, not both true."""
    margin = check_finite_real(margin, "margin")
    soft_margin = check_bool(soft_margin, "soft_margin")
    smooth = check_bool(smooth, "smooth")
    if soft_margin and smooth:
        raise ValueError(
            "soft_margin=True (softplus(d_ap - d_an), no margin) and smooth=True "
            "(softplus(d_ap - d_an + margin)) are two different losses: choose one"
        )
    return margin, soft_margin, smooth


def batch_all_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced batch-all loss: see :func:`batch_all_triplet_loss`."""
    labels = given_masks(labels, positive_mask, negative_mask)
    checked_margin = check_margin(margin)
    _, soft_margin, smooth = _check_terms(0.0, soft_margin, smooth)
    b = _batch(
        embeddings,
        labels,
        metric,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        normalize,
        backend,
        max_positives,
    )
    streamed = b.backend == "streaming"  # issue 18: no [N, M] matrix
    fused = _streaming.batch_all_sum if streamed else batch_all_sum
    if b.backend == "triton":  # issue 18: the Triton kernels, no [N, M] matrix either
        fused = _triton.batch_all_sum
    return Parts(*fused(b, checked_margin, soft_margin, smooth))


@in_input_dtype()
def batch_all_triplet_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean_nonzero",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Batch-all triplet loss over every valid triplet, without listing them.

    Hermans, Beyer & Leibe 2017 ("In Defense of the Triplet Loss"); with
    ``reduction="mean_nonzero"`` this is their "BA≠0" variant. The hinge version runs in
    O(N M log M) time and O(N M) memory at any label distribution (per anchor: one sort of
    the negatives, then a binary search and a prefix sum per positive); the soft-margin
    version sums every term in bounded-memory chunks.

    Args:
        embeddings: ``[N, D]`` float embeddings (float16/bfloat16 computed in float32, the
            loss returned in their dtype).
        labels: ``[N]`` class labels: integers (or floats of integral value), moved to the
            embeddings' device if needed.
        margin: ``m`` of the hinge ``max(0, d_ap - d_an + m)``; ignored with ``soft_margin``.
            A number, or a one-element tensor (e.g. a schedule on the GPU), which is never
            read on the host while the input checks are off
            (:func:`~tripletkit._checks.check_margin`).
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        soft_margin: use ``softplus(d_ap - d_an)`` instead of the hinge (Hermans et al.'s
            soft margin: no margin).
        reduction: ``"mean"`` (over valid triplets), ``"sum"`` or ``"mean_nonzero"``
            (over triplets with a positive loss; 0 when there are none).
        ref_embeddings: optional ``[M, D]`` references that positives and negatives are
            drawn from (e.g. a cross-batch memory), with ``ref_labels`` ``[M]``.
        anchor_offset: when the anchors are rows ``anchor_offset : anchor_offset + N`` of
            the references, the pairs of a sample with itself are excluded.
        normalize: L2-normalise the embeddings first.
        backend: ``"auto"`` (numba on CPU, torch elsewhere), ``"torch"``, ``"numba"``,
            ``"streaming"`` (CPU, tile by tile without the ``[N, M]`` matrix: what ``"auto"``
            picks on CPU above :func:`~tripletkit.set_memory_budget`) or ``"triton"`` (CUDA
            kernels without the ``[N, M]`` matrix; opt-in, class labels only, eager only:
            proven exact under Triton's CPU interpreter, not yet timed on a GPU).
        max_positives: an upper bound on any anchor's number of positives, e.g. ``k - 1`` in
            P x K batches without references (:attr:`~tripletkit.samplers.PKBatchSampler.\
max_positives`). The torch kernels size their buffers with it instead of reading the
            batch's largest count on the host; it is checked against the batch while the
            input checks are on (:func:`~tripletkit.set_input_checks`). With checks off and
            no bound, the hinge loss takes a sort-based path (still exact, no host read) and
            the soft-margin and smooth losses read the count themselves (one host read).
        smooth: use the smooth hinge ``softplus(d_ap - d_an + m)`` instead of the hinge
            (pytorch-metric-learning's ``smooth_loss=True``); not with ``soft_margin``.
            Every term is positive, so ``"mean_nonzero"`` is ``"mean"`` for it.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss tensor.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6]])
        >>> loss = batch_all_triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.2, reduction="sum")
        >>> round(loss.item(), 4)  # (0, 1, 2): 0.5 - 0.6 + 0.2 ; (1, 0, 2): 0.5 - 0.1 + 0.2
        0.7
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, FUSED_REDUCTIONS)
    parts = batch_all_parts(
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        normalize=normalize,
        backend=backend,
        max_positives=max_positives,
        smooth=smooth,
    )
    return reduce_parts(*parts, reduction)


def _mined(
    hardest: bool,
    embeddings: Tensor,
    labels: Tensor,
    margin: float,
    metric: str,
    soft_margin: bool,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
    normalize: bool,
    backend: str,
    max_positives: int | None,
    positive_ranks: object = (0, 1),
    negative_ranks: object = (0, 1),
    smooth: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The terms of the batch-hard (``hardest``) or semi-hard triplets and which are real."""
    checked_margin = check_margin(margin)
    _, soft_margin, smooth = _check_terms(0.0, soft_margin, smooth)
    windows = (
        check_rank_window(positive_ranks, "positive_ranks"),
        check_rank_window(negative_ranks, "negative_ranks"),
    )
    b = _batch(
        embeddings,
        labels,
        metric,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        normalize,
        backend,
        max_positives,
        need_width=not hardest,
    )
    streamed = b.backend == "streaming"  # issue 18: no [N, M] matrix
    mine = _streaming.mined_terms if streamed else mined_terms
    if b.backend == "triton":  # issue 18: the Triton kernels, no [N, M] matrix either
        mine = _triton.mined_terms  # type: ignore[assignment]
    return mine(b, hardest, checked_margin, soft_margin, windows, smooth)


def _mined_parts(terms: Tensor, valid: Tensor | None) -> Parts:
    if valid is None:
        n_valid = torch.full((), terms.numel(), dtype=torch.int64, device=terms.device)
    else:
        n_valid = valid.sum()
    return Parts(terms.sum(), n_valid, (terms > 0).sum())


def _mined_loss(terms: Tensor, valid: Tensor | None, reduction: str) -> Tensor:
    if reduction == "none":  # one term per real triplet: a data-dependent size, one read
        return listed_terms(terms, valid)
    return reduce_parts(*_mined_parts(terms, valid), reduction)


def batch_hard_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced batch-hard loss (with its rank windows): see
    :func:`batch_hard_triplet_loss`."""
    labels = given_masks(labels, positive_mask, negative_mask)
    return _mined_parts(
        *_mined(
            True,
            embeddings,
            labels,
            margin,
            metric,
            soft_margin,
            ref_embeddings,
            ref_labels,
            anchor_offset,
            normalize,
            backend,
            max_positives,
            positive_ranks,
            negative_ranks,
            smooth,
        )
    )


@in_input_dtype()
def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017), in O(N M).

    For each anchor with at least one positive and one negative, one term with its farthest
    positive and nearest negative; anchors lacking either are excluded (not counted as 0).
    ``soft_margin=True`` gives their "BH soft-margin" loss. With rank windows, the terms of
    every combination of the positives ranked in ``positive_ranks`` and the negatives ranked
    in ``negative_ranks`` (see :func:`~tripletkit.miners.batch_hard_triplets`), e.g.
    ``negative_ranks=(2, 5)`` to skip the two hardest negatives.

    Args:
        embeddings, labels, margin, metric, soft_margin: as in :func:`batch_all_triplet_loss`.
        ref_embeddings, ref_labels, anchor_offset, normalize, backend, smooth: likewise.
        max_positives: accepted for symmetry with the other fused losses; batch-hard needs
            no bound.
        reduction: ``"mean"`` (over the triplets kept), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per kept triplet, by anchor, positive rank, negative rank:
            ``[T]``, one per kept anchor with the default windows). ``T`` depends on the
            data, so ``"none"`` reads it on the host: one host read, even with the input
            checks off (:func:`~tripletkit.losses._reduce.listed_terms`).
        positive_ranks, negative_ranks: hardness-rank windows ``(lo, hi)`` (0 = hardest).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[T]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    terms, valid = _mined(
        True,
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        normalize,
        backend,
        max_positives,
        positive_ranks,
        negative_ranks,
        smooth,
    )
    return _mined_loss(terms, valid, reduction)


def semi_hard_parts(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Parts:
    """The un-reduced semi-hard loss: see :func:`semi_hard_triplet_loss`."""
    labels = given_masks(labels, positive_mask, negative_mask)
    return _mined_parts(
        *_mined(
            False,
            embeddings,
            labels,
            margin,
            metric,
            soft_margin,
            ref_embeddings,
            ref_labels,
            anchor_offset,
            normalize,
            backend,
            max_positives,
            smooth=smooth,
        )
    )


@in_input_dtype()
def semi_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    smooth: bool = False,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Semi-hard triplet loss (Schroff, Kalenichenko & Philbin 2015, "FaceNet"), with the
    negative selection of TensorFlow-Addons' ``triplet_semihard_loss``.

    For every positive pair ``(a, p)`` whose anchor has a negative: the nearest negative
    farther than the positive (``d_an > d_ap``), or the farthest negative when none is.
    ``"mean"`` averages the hinge over those pairs. Unlike TensorFlow-Addons, a batch without
    positive pairs gives 0, not NaN. O(N M log M) time, O(N M) memory.

    Args:
        embeddings, labels, margin, metric, soft_margin: as in :func:`batch_all_triplet_loss`.
        ref_embeddings, ref_labels, anchor_offset, normalize, backend, smooth: likewise.
        max_positives: as in :func:`batch_all_triplet_loss` (with checks off and no bound,
            the negatives of each row are sorted instead of bucketed: exact, no host read).
        reduction: ``"mean"`` (over those pairs), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per pair, ordered by anchor then positive: ``[P]``; ``P``
            is read on the host, one host read even with the input checks off).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[P]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> semi_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.0000, 4.0000, 0.1000])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    terms, valid = _mined(
        False,
        embeddings,
        labels,
        margin,
        metric,
        soft_margin,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        normalize,
        backend,
        max_positives,
        smooth=smooth,
    )
    return _mined_loss(terms, valid, reduction)


def _check_triplets_per_anchor(value: object) -> str | int:
    """``"all"`` or a positive int (pytorch-metric-learning's ``triplets_per_anchor``)."""
    if value == "all" and isinstance(value, str):
        return "all"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"triplets_per_anchor must be 'all' or a positive int, got {value!r} "
            f"({type(value).__name__})"
        )
    return check_positive_int(value, "triplets_per_anchor")


@in_input_dtype()
def triplet_margin_loss(
    embeddings: Tensor,
    labels: Tensor | None,
    triplets: Triplets | tuple[Tensor, Tensor, Tensor] | None = None,
    margin: float = 0.2,
    metric: str = "euclidean",
    soft_margin: bool = False,
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    smooth: bool = False,
    swap: bool = False,
    triplets_per_anchor: str | int = "all",
    generator: torch.Generator | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Triplet margin loss over given triplets (Weinberger & Saul 2009; Schroff et al. 2015).

    ``max(0, d(a, p) - d(a, n) + margin)`` (``softplus(d(a, p) - d(a, n))`` with
    ``soft_margin``, ``softplus(d(a, p) - d(a, n) + margin)`` with ``smooth``) per row of
    ``triplets``; distances are computed for those rows only. With ``triplets=None`` every
    valid triplet is used, through the fused :func:`batch_all_triplet_loss` (no triplet is
    listed), or ``triplets_per_anchor`` random ones per anchor.

    The options named as in pytorch-metric-learning's ``TripletMarginLoss`` mean what they
    mean there: ``smooth`` is its ``smooth_loss``, ``swap`` and ``triplets_per_anchor`` are
    its options of the same names (its default reducer is ``reduction="mean_nonzero"``, its
    default distance normalises the embeddings: ``normalize=True``).

    Args:
        embeddings: ``[N, D]``. labels: ``[N]`` (only used when ``triplets`` is None).
        triplets: ``Triplets`` or any 3-tuple of ``[T]`` index tensors, e.g. a miner's
            output; positives and negatives index ``ref_embeddings`` when given.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[T]``, in
            the order of the triplets; needs explicit triplets or ``triplets_per_anchor``).
        anchor_offset: with ``triplets=None`` and references given, as in
            :func:`batch_all_triplet_loss` (explicit triplets name their rows themselves).
        margin, metric, soft_margin, ref_embeddings, ref_labels, normalize, backend, smooth:
            as in :func:`batch_all_triplet_loss` (``backend`` only matters with
            ``triplets=None``).
        swap: the distance swap of Balntas et al. 2016 ("Learning local feature descriptors
            with triplets and shallow convolutional neural networks"): ``d(a, n)`` is
            replaced by ``min(d(a, n), d(p, n))``, the harder of the two negative distances
            (gradients flow through whichever is taken). With ``triplets=None`` and
            ``triplets_per_anchor="all"`` the valid triplets are then listed (O(T) memory,
            as the peer does). ``d(p, n)`` is the distance between the two references;
            pytorch-metric-learning reads it from row ``p`` of the *anchors'* distance
            matrix, which is the same only without a reference set.
        triplets_per_anchor: with ``triplets=None``: ``"all"`` (every valid triplet) or
            ``k >= 1``: for every anchor with a positive and a negative, ``k`` triplets drawn
            independently, the positive uniformly among its positives and the negative
            uniformly among its negatives (with replacement), as pytorch-metric-learning
            draws them; ``reduction="none"`` lists their terms by anchor. Ignored with
            explicit ``triplets`` (as by the peer).
        generator: the random source of ``triplets_per_anchor=k``; torch's default generator
            of the embeddings' device when ``None`` (what the module form uses, as the peer
            and ``torch.nn.Dropout`` do: seed it with ``torch.manual_seed``).
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        0-dim loss, or ``[T]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from tripletkit.miners import batch_hard_triplets
        >>> x, y = torch.tensor([[0.0], [0.5], [0.6], [5.0]]), torch.tensor([0, 0, 1, 1])
        >>> triplet_margin_loss(x, y, batch_hard_triplets(x, y), margin=0.2, reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
        >>> triplet_margin_loss(x, y, batch_hard_triplets(x, y), reduction="none", swap=True)
        tensor([0.6000, 0.6000, 4.5000, 4.5000])
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    check_reduction(reduction, REDUCTIONS)
    margin, soft_margin, smooth = _check_terms(margin, soft_margin, smooth)
    swap = check_bool(swap, "swap")
    per_anchor = _check_triplets_per_anchor(triplets_per_anchor)
    generator = _check_generator(generator)
    if triplets is None and per_anchor == "all" and not swap:
        if reduction == "none":
            raise ValueError(
                "reduction='none' needs explicit triplets (e.g. from BatchAllMiner(active_only=False))"
                " or triplets_per_anchor=k"
            )
        return batch_all_triplet_loss(
            embeddings,
            labels,
            margin,
            metric,
            soft_margin,
            reduction,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            normalize=normalize,
            backend=backend,
            smooth=smooth,
        )
    if triplets is not None and anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with triplets=None (explicit triplets name their rows)"
        )
    check_options(metric=metric)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        matrix=triplets is None and per_anchor == "all",
        normalize=normalize,
        backend=backend,
    )
    emb, ref = b.embeddings, b.ref_embeddings
    valid = None
    if triplets is not None:
        a, p, n = check_index_tuple(
            triplets, "triplets", (3,), emb.shape[0], ref.shape[0], emb.device
        )
    elif isinstance(per_anchor, str):  # "all" with swap: every valid triplet, listed
        a, p, n = triplet_region(
            b.distances(), b.labels, b.ref_labels, b.self_index, 0.0, "valid", b.backend
        )
    else:
        a, p, n, valid = _per_anchor_triplets(*b.masks(), per_anchor, generator)
        if reduction == "none" or ref.shape[0] == 0:  # list the anchors that have triplets
            keep = valid.reshape(-1).nonzero().squeeze(1)  # (one host read)
            a, p, n = (t.reshape(-1)[keep] for t in (a, p, n))
            valid = None
    anchors = emb[a]
    positives, negatives = ref[p], ref[n]
    d_an = _paired_distance_unchecked(anchors, negatives, metric)
    if swap:
        d_an = torch.minimum(d_an, _paired_distance_unchecked(positives, negatives, metric))
    d_ap = _paired_distance_unchecked(anchors, positives, metric)
    terms = triplet_terms(d_ap, d_an, margin, soft_margin, smooth=smooth)
    if valid is not None:
        return _mined_loss(torch.where(valid, terms, 0), valid, reduction)
    return reduce_terms(terms, reduction, emb)
