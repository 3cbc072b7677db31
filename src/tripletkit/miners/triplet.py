"""Triplet mining by distance: batch-all, batch-hard, semi-hard and margin regions.

Each strategy is a pure function (the single source of truth) with its ``nn.Module`` form
beside it. Definitions (``d_ap``: anchor-positive distance, ``d_an``: anchor-negative
distance, ``m``: margin): a positive of anchor ``a`` is another sample with the same label; a
negative is a sample with a different label; a *valid* triplet is ``(a, p, n)`` with ``p`` a
positive and ``n`` a negative of ``a``. Ties between equal distances go to the lowest index.

Every function takes ``embeddings [N, D]`` and integer ``labels [N]``, then the
hyper-parameters that define the strategy; keyword-only: a reference set
``ref_embeddings [M, D]``, ``ref_labels [M]`` that positives and negatives are drawn from
(then ``positive`` and ``negative`` index the references), ``anchor_offset`` when the anchors
are rows ``anchor_offset : anchor_offset + N`` of the references, ``normalize`` and
``backend``. Each returns :class:`~tripletkit.types.Triplets`. Memory is O(N M + T) for T
output rows; no ``N x M x M`` tensor is built. Mining runs without autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._batch import Batch, check_options, prepare
from .._checks import (
    check_bool,
    check_choice,
    check_finite_real,
    check_nonnegative_int,
    check_rank_window,
)
from .._deprecation import refs_keyword_only
from .._masks import given_masks
from ..kernels import Selection, batch_hard, semi_hard, triplet_region
from ..types import Triplets
from ._base import Miner

__all__ = [
    "TYPES_OF_TRIPLETS",
    "BatchAllMiner",
    "BatchHardMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
    "batch_all_triplets",
    "batch_hard_triplets",
    "semi_hard_triplets",
    "triplet_margin_triplets",
]

#: ``type_of_triplets`` values of :func:`triplet_margin_triplets` (pytorch-metric-learning's).
TYPES_OF_TRIPLETS = ("all", "hard", "semihard", "easy")


def _mined_batch(
    embeddings: Tensor,
    labels: Tensor,
    metric: str,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
    anchor_offset: int | None,
    normalize: bool,
    backend: str,
    max_positives: int | None = None,
    need_width: bool = False,
) -> tuple[Batch, Tensor]:
    """The prepared batch and its detached distance matrix."""
    b = prepare(
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
    return b, b.distances()


def _listed(sel: Selection, keep: Tensor | None = None) -> Triplets:
    """The triplets of a selection's valid slots (and ``keep``), row-major: one host read
    for the number of rows (none for a listed selection)."""
    a, p, n = torch.broadcast_tensors(sel.anchor, sel.positive, sel.negative)
    mask = sel.valid if keep is None else keep if sel.valid is None else sel.valid & keep
    if mask is None:
        return Triplets(a, p, n)
    rows = mask.nonzero(as_tuple=True)
    return Triplets(a[rows], p[rows], n[rows])


@refs_keyword_only
def batch_all_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    active_only: bool = True,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Triplets:
    """Every valid triplet, or with ``active_only`` those with ``d_ap - d_an + m > 0``
    (the non-zero terms of Hermans et al.'s batch-all loss, "BA≠0").

    Rows are ordered by anchor, then positive, then increasing ``d_an``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [1.0]])
        >>> batch_all_triplets(x, torch.tensor([0, 0, 1]), margin=0.2, active_only=False)
        Triplets(anchor=tensor([0, 1]), positive=tensor([1, 0]), negative=tensor([2, 2]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    margin = check_finite_real(margin, "margin")
    region = "active" if check_bool(active_only, "active_only") else "valid"
    b, dist = _mined_batch(
        embeddings, labels, metric, ref_embeddings, ref_labels, anchor_offset, normalize, backend
    )
    return Triplets(
        *triplet_region(dist, b.labels, b.ref_labels, b.self_index, margin, region, b.backend)
    )


@refs_keyword_only
def batch_hard_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    metric: str = "euclidean",
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Triplets:
    """Batch-hard triplets (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss").

    One triplet per anchor that has at least one positive and one negative: its farthest
    positive and its nearest negative. Anchors lacking either are left out.

    Rank windows (as open-metric-learning's n-hard miner takes rank ranges): per anchor, the
    positives whose hardness rank (0 = farthest) lies in ``positive_ranks = (lo, hi)``,
    i.e. ``lo <= rank < hi``, and the negatives whose rank (0 = nearest) lies in
    ``negative_ranks``, every combination; ties are ranked by the lower index, and an anchor
    with fewer positives or negatives than a window contributes the ranks it has. The
    defaults ``(0, 1)`` are batch-hard; ``negative_ranks=(2, 5)`` skips the two hardest
    negatives, which are often mislabelled samples. Rows are ordered by anchor, positive
    rank, then negative rank.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [0.5], [1.0], [3.0]])
        >>> batch_hard_triplets(x, torch.tensor([0, 0, 0, 1, 2]))
        Triplets(anchor=tensor([0, 1, 2]), positive=tensor([2, 2, 0]), negative=tensor([3, 3, 3]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    windows = _windows(positive_ranks, negative_ranks)
    b, dist = _mined_batch(
        embeddings, labels, metric, ref_embeddings, ref_labels, anchor_offset, normalize, backend
    )
    return _listed(batch_hard(dist, b.labels, b.ref_labels, b.self_index, b.backend, *windows))


def _windows(
    positive_ranks: object, negative_ranks: object
) -> tuple[tuple[int, int], tuple[int, int]]:
    return (
        check_rank_window(positive_ranks, "positive_ranks"),
        check_rank_window(negative_ranks, "negative_ranks"),
    )


@refs_keyword_only
def semi_hard_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    active_only: bool = False,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Triplets:
    """Semi-hard triplets as FaceNet (Schroff et al. 2015) and TensorFlow-Addons mine them.

    For every positive pair ``(a, p)`` whose anchor has a negative: the negative with the
    smallest ``d_an`` among those with ``d_an > d_ap``; when none is farther than the
    positive, the negative with the largest ``d_an``. With ``active_only`` only the rows
    whose hinge ``d_ap - d_an + m`` is positive are kept (the margin plays no other role).
    ``max_positives`` bounds any anchor's number of positives, as in
    :func:`~tripletkit.losses.batch_all_triplet_loss`.

    Rows are ordered by anchor, then positive.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> semi_hard_triplets(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), negative=tensor([2, 3, 0, 1]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    margin = check_finite_real(margin, "margin")
    active_only = check_bool(active_only, "active_only")
    b, dist = _mined_batch(
        embeddings,
        labels,
        metric,
        ref_embeddings,
        ref_labels,
        anchor_offset,
        normalize,
        backend,
        max_positives,
        need_width=True,
    )
    sel = semi_hard(dist, b.labels, b.ref_labels, b.self_index, b.backend, b.width)
    keep = None
    if active_only:
        keep = dist[sel.anchor, sel.positive] - dist[sel.anchor, sel.negative] + margin > 0
    return _listed(sel, keep)


@refs_keyword_only
def triplet_margin_triplets(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    type_of_triplets: str = "all",
    metric: str = "euclidean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Triplets:
    """Valid triplets by region of ``t = d_an - d_ap``, with pytorch-metric-learning's
    ``TripletMarginMiner`` regions: ``"all"`` ``t <= m``; ``"hard"`` ``t <= m`` and
    ``t <= 0``; ``"semihard"`` ``0 < t <= m``; ``"easy"`` ``t > m``. ``"hard"`` and
    ``"semihard"`` are subsets of ``"all"`` for every margin: with ``m <= 0``, ``"hard"``
    is ``"all"`` and ``"semihard"`` is empty.

    Rows are ordered by anchor, then positive, then increasing ``d_an``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> triplet_margin_triplets(x, torch.tensor([0, 0, 1, 1]), type_of_triplets="hard")
        Triplets(anchor=tensor([1, 2, 2]), positive=tensor([0, 3, 3]), negative=tensor([2, 1, 0]))
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    margin = check_finite_real(margin, "margin")
    check_choice("type_of_triplets", type_of_triplets, TYPES_OF_TRIPLETS)
    b, dist = _mined_batch(
        embeddings, labels, metric, ref_embeddings, ref_labels, anchor_offset, normalize, backend
    )
    return Triplets(
        *triplet_region(
            dist, b.labels, b.ref_labels, b.self_index, margin, type_of_triplets, b.backend
        )
    )


# ---------------------------------------------------------------------------------------------
# Module forms


class BatchAllMiner(Miner):
    """Every valid triplet, or only the active ones (hinge > 0): Hermans et al. 2017.

    See :func:`batch_all_triplets`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [1.0]])
        >>> BatchAllMiner(margin=0.2, active_only=False)(x, torch.tensor([0, 0, 1])).anchor
        tensor([0, 1])
    """

    function = staticmethod(batch_all_triplets)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        active_only: bool = True,
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            margin=check_finite_real(margin, "margin"),
            active_only=check_bool(active_only, "active_only"),
            **check_options(metric=metric, normalize=normalize, backend=backend),
        )


class BatchHardMiner(Miner):
    """Per anchor its farthest positive and nearest negative (Hermans et al. 2017), or every
    combination of the positives and negatives in the hardness-rank windows
    ``positive_ranks`` and ``negative_ranks`` (``[lo, hi)``; 0 = hardest).

    See :func:`batch_hard_triplets`. Anchors without a positive or without a negative yield
    no row.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[A]`` int64 tensors, one per kept anchor.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> BatchHardMiner()(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), negative=tensor([2, 2, 1, 1]))
        >>> BatchHardMiner(negative_ranks=(1, 2))(x, torch.tensor([0, 0, 1, 1])).negative
        tensor([3, 3, 0, 0])
    """

    function = staticmethod(batch_hard_triplets)

    def __init__(
        self,
        metric: str = "euclidean",
        positive_ranks: tuple[int, int] = (0, 1),
        negative_ranks: tuple[int, int] = (0, 1),
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        windows = _windows(positive_ranks, negative_ranks)
        super().__init__(
            positive_ranks=windows[0],
            negative_ranks=windows[1],
            **check_options(metric=metric, normalize=normalize, backend=backend),
        )


class SemiHardMiner(Miner):
    """One semi-hard negative per positive pair, as FaceNet / TensorFlow-Addons pick it.

    See :func:`semi_hard_triplets`; ``TripletMarginLoss(margin)`` over its output with
    ``reduction="mean"`` equals :func:`~tripletkit.losses.semi_hard_triplet_loss`.
    ``active_only=True`` drops rows whose hinge with ``margin`` is zero.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets`, one row per positive pair.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> SemiHardMiner(margin=0.2)(x, torch.tensor([0, 0, 1, 1])).negative
        tensor([2, 3, 0, 1])
    """

    function = staticmethod(semi_hard_triplets)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        active_only: bool = False,
        *,
        normalize: bool = False,
        backend: str = "auto",
        max_positives: int | None = None,
    ) -> None:
        bound = {}
        if max_positives is not None:
            bound["max_positives"] = check_nonnegative_int(max_positives, "max_positives")
        super().__init__(
            **bound,
            margin=check_finite_real(margin, "margin"),
            active_only=check_bool(active_only, "active_only"),
            **check_options(metric=metric, normalize=normalize, backend=backend),
        )


class TripletMarginMiner(Miner):
    """Triplets by difficulty, with pytorch-metric-learning's ``TripletMarginMiner`` regions.

    With ``t = d_an - d_ap``: ``"all"`` ``t <= margin``, ``"hard"`` ``t <= margin`` and
    ``t <= 0``, ``"semihard"`` ``0 < t <= margin``, ``"easy"`` ``t > margin`` (``"hard"``
    and ``"semihard"`` are subsets of ``"all"`` for every margin). See
    :func:`triplet_margin_triplets`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 3]), positive=tensor([1, 2]), negative=tensor([2, 1]))
    """

    function = staticmethod(triplet_margin_triplets)

    def __init__(
        self,
        margin: float = 0.2,
        type_of_triplets: str = "all",
        metric: str = "euclidean",
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            margin=check_finite_real(margin, "margin"),
            type_of_triplets=check_choice("type_of_triplets", type_of_triplets, TYPES_OF_TRIPLETS),
            **check_options(metric=metric, normalize=normalize, backend=backend),
        )
