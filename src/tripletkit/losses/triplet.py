"""Triplet losses: the fused batch-all, batch-hard and semi-hard losses (no triplet is ever
listed), the triplet margin loss over given triplets, and their ``nn.Module`` forms.

Definitions: see :mod:`tripletkit.miners.triplet`. Hinge ``max(0, d_ap - d_an + m)``; soft
margin ``softplus(d_ap - d_an)`` (``soft_margin=True``, Hermans et al. 2017: no margin); smooth
hinge ``softplus(d_ap - d_an + m)`` (``smooth=True``, pytorch-metric-learning's
``smooth_loss=True``). When there is no valid triplet (one
class, all labels distinct, empty batch) every loss is 0, still part of the graph, with a zero
gradient.

Signatures: ``fn(embeddings, labels, margin, metric, soft_margin, reduction, *,
ref_embeddings=None, ref_labels=None, anchor_offset=None, normalize=False, backend="auto",
..., smooth=False)``.
Each fused loss also has a ``*_parts`` form returning :class:`~tripletkit.losses.Parts`
(total and counts, before the reduction), which :mod:`tripletkit.distributed` builds on.
"""

from __future__ import annotations

from torch import Tensor

from .._batch import WidthMemory, check_options
from .._checks import (
    check_bool,
    check_nonnegative_int,
    check_rank_window,
    check_reduction,
)
from ..types import Triplets
from ._base import LossModule
from ._fused import triplet_terms
from ._reduce import (
    FUSED_REDUCTIONS,
    REDUCTIONS,
)
from ._triplet_functions import (  # the functions, re-exported under this path
    _check_terms,
    _check_triplets_per_anchor,
    batch_all_parts,
    batch_all_triplet_loss,
    batch_hard_parts,
    batch_hard_triplet_loss,
    semi_hard_parts,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)

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
    smooth: bool = False,
) -> dict[str, object]:
    """The validated hyper-parameters shared by every triplet loss module."""
    bound = {}
    if max_positives is not None:
        bound["max_positives"] = check_nonnegative_int(max_positives, "max_positives")
    margin, soft_margin, smooth = _check_terms(margin, soft_margin, smooth)
    return {
        **bound,
        "margin": margin,
        "soft_margin": soft_margin,
        "smooth": smooth,
        "reduction": check_reduction(reduction, reductions),
        **check_options(metric=metric, normalize=normalize, backend=backend),
    }


class _RemembersWidth(LossModule):
    """A fused loss module that, without ``max_positives``, remembers the width of its
    batches (:class:`~tripletkit._batch.WidthMemory`): with the input checks off it reads
    the largest number of positives of its first batch only, then verifies each batch's
    against it on the device, so it runs the bounded (fast) kernels without a host read."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._widths = WidthMemory()

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        anchor_offset: int | None = None,
    ) -> Tensor:
        options = self.options()
        if options.get("max_positives") is None:
            options["max_positives"] = self._widths
        return type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            **options,
        )


class BatchAllTripletLoss(_RemembersWidth):
    """Module form of :func:`batch_all_triplet_loss` (Hermans et al. 2017; "BA≠0" with the
    default ``reduction="mean_nonzero"``): ``loss(embeddings, labels)``.

    Without ``max_positives`` the module remembers its batches' largest number of positives
    (:class:`~tripletkit._batch.WidthMemory`): with the input checks off it reads it on the
    first call only, then verifies each batch against it on the device
    (``torch._assert_async``: a batch with more positives fails with a ``RuntimeError``
    naming ``max_positives``), so it runs the bounded kernels without a host read. Batches
    mined against a reference set are not remembered (pass ``max_positives``).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``.

    Examples:
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
        smooth: bool = False,
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
                smooth,
            )
        )


class BatchHardTripletLoss(LossModule):
    """Module form of :func:`batch_hard_triplet_loss` (Hermans et al. 2017):
    ``loss(embeddings, labels)``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[A]`` with ``reduction="none"``.

    Examples:
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
        smooth: bool = False,
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
                smooth,
            ),
        )


class SemiHardTripletLoss(_RemembersWidth):
    """Module form of :func:`semi_hard_triplet_loss` (Schroff et al. 2015, TensorFlow-Addons'
    selection): ``loss(embeddings, labels)``.

    Without ``max_positives`` the module remembers its batches' largest number of positives
    (:class:`~tripletkit._batch.WidthMemory`): with the input checks off it reads it on the
    first call only, then verifies each batch against it on the device
    (``torch._assert_async``: a batch with more positives fails with a ``RuntimeError``
    naming ``max_positives``), so it runs the bounded kernels without a host read. Batches
    mined against a reference set are not remembered (pass ``max_positives``).

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: ``[]``, or ``[P]`` with ``reduction="none"``.

    Examples:
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
        smooth: bool = False,
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
                smooth,
            )
        )


class TripletMarginLoss(LossModule):
    """Module form of :func:`triplet_margin_loss`: ``loss(embeddings, labels, triplets=None)``.

    ``smooth``, ``swap`` and ``triplets_per_anchor`` are pytorch-metric-learning's
    ``smooth_loss``, ``swap`` and ``triplets_per_anchor``; ``triplets_per_anchor=k`` draws
    from torch's default generator (``torch.manual_seed``), as the peer does.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; triplets: 3 x ``[T]``.
        - output: ``[]``, or ``[T]`` with ``reduction="none"``.

    Examples:
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
        smooth: bool = False,
        swap: bool = False,
        triplets_per_anchor: str | int = "all",
    ) -> None:
        options = _options(
            margin, metric, soft_margin, reduction, REDUCTIONS, normalize, backend, None, smooth
        )
        super().__init__(
            **options,
            swap=check_bool(swap, "swap"),
            triplets_per_anchor=_check_triplets_per_anchor(triplets_per_anchor),
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
