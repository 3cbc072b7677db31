"""Triplet miner modules: thin ``nn.Module`` wrappers over :mod:`tripletkit.mining`.

Each miner stores its hyper-parameters (see :class:`~tripletkit.miners._base.Miner`) and is
called as
``miner(embeddings, labels, ref_embeddings=None, ref_labels=None) -> Triplets``. Mining runs
without autograd; feed the indices to a loss, e.g. :class:`~tripletkit.losses.TripletMarginLoss`
or any loss that takes a 3-tuple of index tensors.
"""

from __future__ import annotations

from .. import mining
from .._checks import check_bool, check_choice, check_margin
from ._base import Miner, common_options

__all__ = ["BatchAllMiner", "BatchHardMiner", "SemiHardMiner", "TripletMarginMiner"]


class BatchAllMiner(Miner):
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

    function = staticmethod(mining.batch_all_triplets)

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
            margin=check_margin(margin),
            active_only=check_bool(active_only, "active_only"),
            **common_options(metric, normalize, backend),
        )


class BatchHardMiner(Miner):
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

    function = staticmethod(mining.batch_hard_triplets)

    def __init__(
        self, metric: str = "euclidean", *, normalize: bool = False, backend: str = "auto"
    ) -> None:
        super().__init__(**common_options(metric, normalize, backend))


class SemiHardMiner(Miner):
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

    function = staticmethod(mining.semi_hard_triplets)

    def __init__(
        self,
        margin: float = 0.2,
        metric: str = "euclidean",
        *,
        active_only: bool = False,
        normalize: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            margin=check_margin(margin),
            active_only=check_bool(active_only, "active_only"),
            **common_options(metric, normalize, backend),
        )


class TripletMarginMiner(Miner):
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

    function = staticmethod(mining.triplet_margin_triplets)

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
            margin=check_margin(margin),
            type_of_triplets=check_choice(
                "type_of_triplets", type_of_triplets, mining.TYPES_OF_TRIPLETS
            ),
            **common_options(metric, normalize, backend),
        )
