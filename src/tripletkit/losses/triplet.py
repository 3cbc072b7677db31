"""Triplet losses: the fused batch-all, batch-hard and semi-hard losses (no triplet is ever
listed), the triplet margin loss over given triplets, and their ``nn.Module`` forms.

Definitions: see :mod:`tripletkit.miners.triplet`. Hinge ``max(0, d_ap - d_an + m)``; soft
margin ``softplus(d_ap - d_an)`` (Hermans et al. 2017). When there is no valid triplet (one
class, all labels distinct, empty batch) every loss is 0, still part of the graph, with a zero
gradient.

Signatures: ``fn(embeddings, labels, margin, metric, soft_margin, reduction, *,
ref_embeddings=None, ref_labels=None, anchor_offset=None, normalize=False, backend="auto")``.
Each fused loss also has a ``*_parts`` form returning :class:`~tripletkit.losses.Parts`
(total and counts, before the reduction), which :mod:`tripletkit.distributed` builds on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._batch import Batch, check_options, prepare
from .._checks import (
    check_bool,
    check_finite_real,
    check_index_tuple,
    check_nonnegative_int,
    check_rank_window,
    check_reduction,
)
from ..distances import _paired_distance_unchecked
from ..types import Triplets
from . import _streaming
from ._base import LossModule
from ._fused import batch_all_sum, mined_terms, triplet_terms
from ._reduce import FUSED_REDUCTIONS, REDUCTIONS, Parts, reduce_parts, reduce_terms

__all__ = [
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "SemiHardTripletLoss",
    "TripletMarginLoss",
    "batch_all_parts",
    "batch_all_triplet_loss",
    "batch_hard_parts",
    "batch_hard_triplet_loss",
    "semi_hard_parts",
    "semi_hard_triplet_loss",
    "triplet_margin_loss",
    "triplet_terms",
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


def batch_all_parts(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Parts:
    """The un-reduced batch-all loss: see :func:`batch_all_triplet_loss`."""
    margin = check_finite_real(margin, "margin")
    soft_margin = check_bool(soft_margin, "soft_margin")
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
    return Parts(*(_streaming.batch_all_sum if streamed else batch_all_sum)(b, margin, soft_margin))


def batch_all_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Tensor:
    """Batch-all triplet loss over every valid triplet, without listing them.

    Hermans, Beyer & Leibe 2017 ("In Defense of the Triplet Loss"); with
    ``reduction="mean_nonzero"`` this is their "BA≠0" variant. The hinge version runs in
    O(N M log M) time and O(N M) memory at any label distribution (per anchor: one sort of
    the negatives, then a binary search and a prefix sum per positive); the soft-margin
    version sums every term in bounded-memory chunks.

    Args:
        embeddings: ``[N, D]`` float embeddings (float16/bfloat16 computed in float32).
        labels: ``[N]`` integer class labels.
        margin: ``m`` of the hinge ``max(0, d_ap - d_an + m)``; ignored with ``soft_margin``.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        soft_margin: use ``softplus(d_ap - d_an)`` instead of the hinge.
        reduction: ``"mean"`` (over valid triplets), ``"sum"`` or ``"mean_nonzero"``
            (over triplets with a positive loss; 0 when there are none).
        ref_embeddings: optional ``[M, D]`` references that positives and negatives are
            drawn from (e.g. a cross-batch memory), with ``ref_labels`` ``[M]``.
        anchor_offset: when the anchors are rows ``anchor_offset : anchor_offset + N`` of
            the references, the pairs of a sample with itself are excluded.
        normalize: L2-normalise the embeddings first.
        backend: ``"auto"`` (numba on CPU, torch elsewhere), ``"torch"``, ``"numba"`` or
            ``"streaming"`` (CPU, tile by tile without the ``[N, M]`` matrix: what ``"auto"``
            picks on CPU above :func:`~tripletkit.set_memory_budget`).
        max_positives: an upper bound on any anchor's number of positives, e.g. ``k - 1`` in
            P x K batches without references (:attr:`~tripletkit.samplers.PKBatchSampler.\
max_positives`). The torch kernels size their buffers with it instead of reading the
            batch's largest count on the host; it is checked against the batch while the
            input checks are on (:func:`~tripletkit.set_input_checks`). With checks off and
            no bound, the hinge loss takes a sort-based path (still exact, no host read) and
            the soft-margin loss reads the count itself (one host read).

    Returns:
        0-dim loss tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6]])
        >>> loss = batch_all_triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.2, reduction="sum")
        >>> round(loss.item(), 4)  # (0, 1, 2): 0.5 - 0.6 + 0.2 ; (1, 0, 2): 0.5 - 0.1 + 0.2
        0.7
    """
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
) -> tuple[Tensor, Tensor | None]:
    """The terms of the batch-hard (``hardest``) or semi-hard triplets and which are real."""
    margin = check_finite_real(margin, "margin")
    soft_margin = check_bool(soft_margin, "soft_margin")
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
    return (_streaming.mined_terms if streamed else mined_terms)(
        b, hardest, margin, soft_margin, windows
    )


def _mined_parts(terms: Tensor, valid: Tensor | None) -> Parts:
    if valid is None:
        n_valid = torch.full((), terms.numel(), dtype=torch.int64, device=terms.device)
    else:
        n_valid = valid.sum()
    return Parts(terms.sum(), n_valid, (terms > 0).sum())


def _mined_loss(terms: Tensor, valid: Tensor | None, reduction: str) -> Tensor:
    if reduction == "none":  # one term per real triplet: a data-dependent size
        return terms if valid is None else terms[valid]
    return reduce_parts(*_mined_parts(terms, valid), reduction)


def batch_hard_parts(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Parts:
    """The un-reduced batch-hard loss (with its rank windows): see
    :func:`batch_hard_triplet_loss`."""
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
        )
    )


def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017), in O(N M).

    For each anchor with at least one positive and one negative, one term with its farthest
    positive and nearest negative; anchors lacking either are excluded (not counted as 0).
    ``soft_margin=True`` gives their "BH soft-margin" loss. With rank windows, the terms of
    every combination of the positives ranked in ``positive_ranks`` and the negatives ranked
    in ``negative_ranks`` (see :func:`~tripletkit.miners.batch_hard_triplets`), e.g.
    ``negative_ranks=(2, 5)`` to skip the two hardest negatives.

    Args:
        embeddings, labels, margin, metric, soft_margin, ref_embeddings, ref_labels,
        anchor_offset, normalize, backend: as in :func:`batch_all_triplet_loss`.
        max_positives: accepted for symmetry with the other fused losses; batch-hard needs
            no bound.
        reduction: ``"mean"`` (over the triplets kept), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per kept triplet, by anchor, positive rank, negative rank:
            ``[T]``, one per kept anchor with the default windows).
        positive_ranks, negative_ranks: hardness-rank windows ``(lo, hi)`` (0 = hardest).

    Returns:
        0-dim loss, or ``[T]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """
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
    )
    return _mined_loss(terms, valid, reduction)


def semi_hard_parts(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Parts:
    """The un-reduced semi-hard loss: see :func:`semi_hard_triplet_loss`."""
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
        )
    )


def semi_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Tensor:
    """Semi-hard triplet loss (Schroff, Kalenichenko & Philbin 2015, "FaceNet"), with the
    negative selection of TensorFlow-Addons' ``triplet_semihard_loss``.

    For every positive pair ``(a, p)`` whose anchor has a negative: the nearest negative
    farther than the positive (``d_an > d_ap``), or the farthest negative when none is.
    ``"mean"`` averages the hinge over those pairs. Unlike TensorFlow-Addons, a batch without
    positive pairs gives 0, not NaN. O(N M log M) time, O(N M) memory.

    Args:
        embeddings, labels, margin, metric, soft_margin, ref_embeddings, ref_labels,
        anchor_offset, normalize, backend, max_positives: as in
            :func:`batch_all_triplet_loss` (with checks off and no bound, the negatives of
            each row are sorted instead of bucketed: exact, no host read).
        reduction: ``"mean"`` (over those pairs), ``"sum"``, ``"mean_nonzero"``, or
            ``"none"`` (one term per pair, ordered by anchor then positive: ``[P]``).

    Returns:
        0-dim loss, or ``[P]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> semi_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), reduction="none")
        tensor([0.1000, 0.0000, 4.0000, 0.1000])
    """
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
    )
    return _mined_loss(terms, valid, reduction)


def triplet_margin_loss(
    embeddings: Tensor,
    labels: Tensor,
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
) -> Tensor:
    """Triplet margin loss over given triplets (Weinberger & Saul 2009; Schroff et al. 2015).

    ``max(0, d(a, p) - d(a, n) + margin)`` (or ``softplus(d(a, p) - d(a, n))`` with
    ``soft_margin``) per row of ``triplets``; distances are computed for those rows only.
    With ``triplets=None`` every valid triplet is used, through the fused
    :func:`batch_all_triplet_loss` (no triplet is listed).

    Args:
        embeddings: ``[N, D]``. labels: ``[N]`` (only used when ``triplets`` is None).
        triplets: ``Triplets`` or any 3-tuple of ``[T]`` index tensors, e.g. a miner's
            output; positives and negatives index ``ref_embeddings`` when given.
        reduction: ``"mean"``, ``"sum"``, ``"mean_nonzero"``, or ``"none"`` (``[T]``, in
            the order of the triplets; needs explicit triplets).
        anchor_offset: with ``triplets=None`` and references given, as in
            :func:`batch_all_triplet_loss` (explicit triplets name their rows themselves).
        margin, metric, soft_margin, ref_embeddings, ref_labels, normalize, backend: as in
            :func:`batch_all_triplet_loss` (``backend`` only matters with ``triplets=None``).

    Returns:
        0-dim loss, or ``[T]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tripletkit.miners import batch_hard_triplets
        >>> x, y = torch.tensor([[0.0], [0.5], [0.6], [5.0]]), torch.tensor([0, 0, 1, 1])
        >>> triplet_margin_loss(x, y, batch_hard_triplets(x, y), margin=0.2, reduction="none")
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """
    check_reduction(reduction, REDUCTIONS)
    margin = check_finite_real(margin, "margin")
    soft_margin = check_bool(soft_margin, "soft_margin")
    if triplets is None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' needs explicit triplets (e.g. from BatchAllMiner(active_only=False))"
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
        )
    if anchor_offset is not None:
        raise ValueError(
            "anchor_offset only applies with triplets=None (explicit triplets name their rows)"
        )
    check_options(metric=metric)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        metric=metric,
        matrix=False,
        normalize=normalize,
        backend=backend,
    )
    emb, ref = b.embeddings, b.ref_embeddings
    a, p, n = check_index_tuple(triplets, "triplets", (3,), emb.shape[0], ref.shape[0], emb.device)
    anchors = emb[a]
    terms = triplet_terms(
        _paired_distance_unchecked(anchors, ref[p], metric),
        _paired_distance_unchecked(anchors, ref[n], metric),
        margin,
        soft_margin,
    )
    return reduce_terms(terms, reduction, emb)


# ---------------------------------------------------------------------------------------------
# Module forms


def _options(
    margin: float,
    metric: str,
    soft_margin: bool,
    reduction: str,
    reductions: tuple[str, ...],
    normalize: bool,
    backend: str,
    max_positives: int | None = None,
) -> dict[str, object]:
    """The validated hyper-parameters shared by every triplet loss module."""
    bound = {}
    if max_positives is not None:
        bound["max_positives"] = check_nonnegative_int(max_positives, "max_positives")
    return {
        **bound,
        "margin": check_finite_real(margin, "margin"),
        "soft_margin": check_bool(soft_margin, "soft_margin"),
        "reduction": check_reduction(reduction, reductions),
        **check_options(metric=metric, normalize=normalize, backend=backend),
    }


class BatchAllTripletLoss(LossModule):
    """Module form of :func:`batch_all_triplet_loss` (Hermans et al. 2017; "BA≠0" with the
    default ``reduction="mean_nonzero"``): ``loss(embeddings, labels)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6]], requires_grad=True)
        >>> loss = BatchAllTripletLoss(margin=0.2, reduction="sum")(x, torch.tensor([0, 0, 1]))
        >>> round(loss.item(), 4)
        0.7
        >>> loss.backward()
    """

    function = staticmethod(batch_all_triplet_loss)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        soft_margin: bool = False,
        reduction: str = "mean_nonzero",
        *,
        normalize: bool = False,
        backend: str = "auto",
        max_positives: int | None = None,
    ) -> None:
        super().__init__(
            **_options(
                margin,
                metric,
                soft_margin,
                reduction,
                FUSED_REDUCTIONS,
                normalize,
                backend,
                max_positives,
            )
        )


class BatchHardTripletLoss(LossModule):
    """Module form of :func:`batch_hard_triplet_loss` (Hermans et al. 2017):
    ``loss(embeddings, labels)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> BatchHardTripletLoss(reduction="none")(x, torch.tensor([0, 0, 1, 1]))
        tensor([0.1000, 0.6000, 4.5000, 0.1000])
    """

    function = staticmethod(batch_hard_triplet_loss)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        soft_margin: bool = False,
        reduction: str = "mean",
        positive_ranks: tuple[int, int] = (0, 1),
        negative_ranks: tuple[int, int] = (0, 1),
        *,
        normalize: bool = False,
        backend: str = "auto",
        max_positives: int | None = None,
    ) -> None:
        super().__init__(
            positive_ranks=check_rank_window(positive_ranks, "positive_ranks"),
            negative_ranks=check_rank_window(negative_ranks, "negative_ranks"),
            **_options(
                margin,
                metric,
                soft_margin,
                reduction,
                REDUCTIONS,
                normalize,
                backend,
                max_positives,
            ),
        )


class SemiHardTripletLoss(LossModule):
    """Module form of :func:`semi_hard_triplet_loss` (Schroff et al. 2015, TensorFlow-Addons'
    selection): ``loss(embeddings, labels)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[P]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> SemiHardTripletLoss(reduction="none")(x, torch.tensor([0, 0, 1, 1]))
        tensor([0.1000, 0.0000, 4.0000, 0.1000])
    """

    function = staticmethod(semi_hard_triplet_loss)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        soft_margin: bool = False,
        reduction: str = "mean",
        *,
        normalize: bool = False,
        backend: str = "auto",
        max_positives: int | None = None,
    ) -> None:
        super().__init__(
            **_options(
                margin,
                metric,
                soft_margin,
                reduction,
                REDUCTIONS,
                normalize,
                backend,
                max_positives,
            )
        )


class TripletMarginLoss(LossModule):
    """Module form of :func:`triplet_margin_loss`: ``loss(embeddings, labels, triplets=None)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; triplets: 3 x ``[T]``.
        - output: ``[]``, or ``[T]`` with ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tripletkit.miners import BatchHardMiner
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> loss = TripletMarginLoss(margin=0.2)(x, labels, BatchHardMiner()(x, labels))
        >>> loss.backward()
    """

    function = staticmethod(triplet_margin_loss)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        soft_margin: bool = False,
        reduction: str = "mean",
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            **_options(margin, metric, soft_margin, reduction, REDUCTIONS, normalize, backend)
        )

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        triplets: Triplets | tuple[Tensor, Tensor, Tensor] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        anchor_offset: int | None = None,
    ) -> Tensor:
        return triplet_margin_loss(
            embeddings,
            labels,
            triplets,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            **self.options(),
        )
