"""Online miners: pure functions and their ``nn.Module`` forms, one file per family.

- :mod:`.triplet`: batch-all, batch-hard, semi-hard and margin regions
  (:func:`batch_all_triplets` / :class:`BatchAllMiner`, ...).
- :mod:`.sampling`: distance-weighted and uniformly random triplets.
- :mod:`.pairs`: the pairs of the multi-similarity and contrastive losses.

Modules are called as ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``;
functions as ``fn(embeddings, labels, <hyper-parameters>, *, ref_embeddings=None,
ref_labels=None, ...)``. Triplet miners return :class:`~tripletkit.types.Triplets`, pair
miners :class:`~tripletkit.types.Pairs`: named tuples of int64 index tensors. Every miner
module records the :class:`MinerStats` of its last call in ``miner.stats`` (device tensors:
no synchronisation unless read).
"""

from __future__ import annotations

from ._base import Miner, MinerStats, SeededMiner, make_generator, miner_stats
from .pairs import MultiSimilarityMiner, PairMarginMiner, multi_similarity_pairs, pair_margin_pairs
from .sampling import (
    DistanceWeightedMiner,
    RandomTripletMiner,
    distance_weighted_triplets,
    random_triplets,
)
from .triplet import (
    TYPES_OF_TRIPLETS,
    BatchAllMiner,
    BatchHardMiner,
    SemiHardMiner,
    TripletMarginMiner,
    batch_all_triplets,
    batch_hard_triplets,
    semi_hard_triplets,
    triplet_margin_triplets,
)

__all__ = [
    "TYPES_OF_TRIPLETS",
    "BatchAllMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "Miner",
    "MinerStats",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "RandomTripletMiner",
    "SeededMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
    "batch_all_triplets",
    "batch_hard_triplets",
    "distance_weighted_triplets",
    "make_generator",
    "miner_stats",
    "multi_similarity_pairs",
    "pair_margin_pairs",
    "random_triplets",
    "semi_hard_triplets",
    "triplet_margin_triplets",
]
