"""Triplet miner modules: thin ``nn.Module`` wrappers over :mod:`tripletkit.mining`.

Each miner stores its hyper-parameters and is called as
``miner(embeddings, labels, ref_embeddings=None, ref_labels=None) -> Triplets``. Mining runs
without autograd; feed the indices to a loss, e.g. :class:`~tripletkit.losses.TripletMarginLoss`
or any loss that takes a 3-tuple of index tensors.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import mining
from .._checks import check_choice, check_margin
from ..distances import METRICS
from ..kernels import BACKENDS
from ..types import Triplets

__all__ = ["BatchAllMiner", "BatchHardMiner", "SemiHardMiner", "TripletMarginMiner"]


class _TripletMiner(nn.Module):
    def __init__(self, metric: str, normalize: bool, backend: str) -> None:
        super().__init__()
        self.metric = check_choice("metric", metric, METRICS)
        self.normalize = bool(normalize)
        self.backend = check_choice("backend", backend, BACKENDS)

    def _common(self) -> dict:
        return {"metric": self.metric, "normalize": self.normalize, "backend": self.backend}


class BatchAllMiner(_TripletMiner):
    """Every valid triplet, or only the active ones (hinge > 0): Hermans et al. 2017.

    See :func:`tripletkit.mining.batch_all_triplets`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [1.0]])
        >>> BatchAllMiner(margin=0.2, active_only=False)(x, torch.tensor([0, 0, 1])).anchor
        tensor([0, 1])
    """

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        active_only: bool = True,
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(metric, normalize, backend)
        self.margin = check_margin(margin)
        self.active_only = bool(active_only)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        return mining.batch_all_triplets(
            embeddings,
            labels,
            ref_embeddings,
            ref_labels,
            margin=self.margin,
            active_only=self.active_only,
            **self._common(),
        )


class BatchHardMiner(_TripletMiner):
    """Per anchor its farthest positive and nearest negative (Hermans et al. 2017).

    See :func:`tripletkit.mining.batch_hard_triplets`. Anchors without a positive or
    without a negative yield no row.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[A]`` int64 tensors, one per kept anchor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> BatchHardMiner()(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 1, 2, 3]), positive=tensor([1, 0, 3, 2]), negative=tensor([2, 2, 1, 1]))
    """

    def __init__(
        self, metric: str = "euclidean", *, normalize: bool = False, backend: str = "auto"
    ) -> None:
        super().__init__(metric, normalize, backend)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        return mining.batch_hard_triplets(
            embeddings, labels, ref_embeddings, ref_labels, **self._common()
        )


class SemiHardMiner(_TripletMiner):
    """One semi-hard negative per positive pair, as FaceNet / TensorFlow-Addons pick it.

    See :func:`tripletkit.mining.semi_hard_triplets`; ``TripletMarginLoss(margin)`` over its
    output with ``reduction="mean"`` equals
    :func:`~tripletkit.losses.semi_hard_triplet_loss`. ``active_only=True`` drops rows whose
    hinge with ``margin`` is zero.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets`, one row per positive pair.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> SemiHardMiner(margin=0.2)(x, torch.tensor([0, 0, 1, 1])).negative
        tensor([2, 3, 0, 1])
    """

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        *,
        active_only: bool = False,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(metric, normalize, backend)
        self.margin = check_margin(margin)
        self.active_only = bool(active_only)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        return mining.semi_hard_triplets(
            embeddings,
            labels,
            ref_embeddings,
            ref_labels,
            margin=self.margin,
            active_only=self.active_only,
            **self._common(),
        )


class TripletMarginMiner(_TripletMiner):
    """Triplets by difficulty, with pytorch-metric-learning's ``TripletMarginMiner`` regions.

    With ``t = d_an - d_ap``: ``"all"`` ``t <= margin``, ``"hard"`` ``t <= 0``,
    ``"semihard"`` ``0 < t <= margin``, ``"easy"`` ``t > margin``. See
    :func:`tripletkit.mining.triplet_margin_triplets`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[T]`` int64 tensors.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
        >>> TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(x, torch.tensor([0, 0, 1, 1]))
        Triplets(anchor=tensor([0, 3]), positive=tensor([1, 2]), negative=tensor([2, 1]))
    """

    def __init__(
        self,
        margin: float = 0.2,
        type_of_triplets: str = "all",
        metric: str = "euclidean",
        *,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(metric, normalize, backend)
        self.margin = check_margin(margin)
        self.type_of_triplets = check_choice(
            "type_of_triplets", type_of_triplets, mining.TYPES_OF_TRIPLETS
        )

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        return mining.triplet_margin_triplets(
            embeddings,
            labels,
            ref_embeddings,
            ref_labels,
            margin=self.margin,
            type_of_triplets=self.type_of_triplets,
            **self._common(),
        )
