"""Sampling and pair miner modules: thin ``nn.Module`` wrappers over
:mod:`tripletkit.sampling_miners`.

Each is called as ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.
:class:`DistanceWeightedMiner` and :class:`RandomTripletMiner` return
:class:`~tripletkit.types.Triplets` and own one :class:`torch.Generator` (seeded from ``seed``,
or from OS entropy when it is ``None``), so successive calls draw different samples while a
seeded run is reproducible; the global RNG is never used. The generator's state is saved in
the module's ``state_dict()`` (as extra state), so a run resumed from a checkpoint continues
the same stream. :class:`MultiSimilarityMiner` and
:class:`PairMarginMiner` return :class:`~tripletkit.types.Pairs`. Mining runs without autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import sampling_miners as sm
from .._checks import check_bool, check_margin, check_positive_int
from ._base import Miner, common_options

__all__ = [
    "DistanceWeightedMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "RandomTripletMiner",
]


class _SeededMiner(Miner):
    """A miner that owns a :class:`torch.Generator`, passed to its function on every call."""

    def __init__(self, seed: int | None, **options: object) -> None:
        super().__init__(**options)
        self.generator: torch.Generator = sm.make_generator(seed)
        self.seed = seed

    def options(self) -> dict[str, Any]:
        return {**super().options(), "generator": self.generator}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}".lstrip(", ")

    def manual_seed(self, seed: int) -> None:
        """Restart the miner's random stream from ``seed``."""
        self.generator = sm.make_generator(seed)
        self.seed = seed

    def get_extra_state(self) -> dict:
        """The generator's state travels in ``state_dict()``, so a resumed run draws on."""
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.seed = state["seed"]
        self.generator.set_state(state["generator_state"])


class DistanceWeightedMiner(_SeededMiner):
    """Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017).

    For every positive pair ``(a, p)``, one negative of ``a`` drawn with probability
    proportional to ``1 / q(d_an)``, ``q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2)``, with ``d``
    clipped below at ``cutoff`` and weight 0 at ``d >= nonzero_loss_cutoff``; an anchor whose
    negatives all have weight 0 draws uniformly among them. Needs unit-norm embeddings
    (ValueError otherwise) unless ``normalize=True``. See
    :func:`tripletkit.sampling_miners.distance_weighted_triplets`; pair it with
    :class:`~tripletkit.losses.MarginLoss` as the paper does.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``; optional ref_embeddings ``[M, D]``,
          ref_labels ``[M]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[P]`` int64 tensors, one row per
          positive pair whose anchor has a negative.

    Example:
        >>> import torch
        >>> miner = DistanceWeightedMiner(seed=0, normalize=True)
        >>> x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
        >>> miner(x, torch.tensor([0, 0, 1, 1, 2, 2])).num_triplets
        6
    """

    function = staticmethod(sm.distance_weighted_triplets)

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        *,
        normalize: bool = False,
        seed: int | None = None,
    ) -> None:
        cutoff, nonzero_loss_cutoff = sm.check_cutoffs(cutoff, nonzero_loss_cutoff)
        super().__init__(
            seed,
            cutoff=cutoff,
            nonzero_loss_cutoff=nonzero_loss_cutoff,
            normalize=check_bool(normalize, "normalize"),
        )


class RandomTripletMiner(_SeededMiner):
    """Uniformly random triplets, the baseline sampler.

    With ``num_triplets=None``, one uniformly drawn negative per positive pair (whose anchor
    has a negative); with ``num_triplets=T``, ``T`` triplets drawn uniformly from all valid
    triplets with replacement. See :func:`tripletkit.sampling_miners.random_triplets`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Triplets` of ``[P]`` (or ``[T]``) int64 tensors.

    Example:
        >>> import torch
        >>> miner = RandomTripletMiner(num_triplets=5, seed=0)
        >>> miner(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1])).num_triplets
        5
    """

    function = staticmethod(sm.random_triplets)

    def __init__(self, num_triplets: int | None = None, *, seed: int | None = None) -> None:
        if num_triplets is not None:
            check_positive_int(num_triplets, "num_triplets")
        super().__init__(seed, num_triplets=num_triplets)


class MultiSimilarityMiner(Miner):
    """The pair mining of the multi-similarity loss (Wang et al. 2019).

    With ``S = 1 - cosine distance``: negative pairs with ``S_an > min_p S_ap - epsilon`` and
    positive pairs with ``S_ap < max_n S_an + epsilon``; for the Euclidean metrics
    ``d_an < max_p d_ap + epsilon`` and ``d_ap > min_n d_an - epsilon``. See
    :func:`tripletkit.sampling_miners.multi_similarity_pairs`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Pairs`, each side ordered row-major.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
        >>> MultiSimilarityMiner(epsilon=0.1)(x, torch.tensor([0, 0, 1, 1])).num_negative
        6
    """

    function = staticmethod(sm.multi_similarity_pairs)

    def __init__(
        self, epsilon: float = 0.1, *, metric: str = "cosine", normalize: bool = False
    ) -> None:
        super().__init__(
            epsilon=check_margin(epsilon, "epsilon"), **common_options(metric, normalize)
        )


class PairMarginMiner(Miner):
    """The pairs with a non-zero contrastive loss: positive pairs with ``d > pos_margin``,
    negative pairs with ``d < neg_margin``, for :class:`~tripletkit.losses.ContrastiveLoss`.
    See :func:`tripletkit.sampling_miners.pair_margin_pairs`.

    Shape:
        - embeddings: ``[N, D]``, labels: ``[N]``.
        - output: :class:`~tripletkit.types.Pairs`, each side ordered row-major.

    Example:
        >>> import torch
        >>> from tripletkit.losses import ContrastiveLoss
        >>> x = torch.tensor([[0.0], [0.5], [0.8], [3.0]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> pairs = PairMarginMiner(pos_margin=0.0, neg_margin=1.0)(x, labels)
        >>> ContrastiveLoss(reduction="sum")(x, labels, pairs).backward()
    """

    function = staticmethod(sm.pair_margin_pairs)

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        *,
        metric: str = "euclidean",
        normalize: bool = False,
    ) -> None:
        super().__init__(
            pos_margin=check_margin(pos_margin, "pos_margin"),
            neg_margin=check_margin(neg_margin, "neg_margin"),
            **common_options(metric, normalize),
        )
