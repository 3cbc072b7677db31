"""Online miners: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

Triplet miners return :class:`~tripletkit.types.Triplets`; pair miners return
:class:`~tripletkit.types.Pairs`. Both are named tuples of int64 index tensors.

- Exhaustive / hardest: :class:`BatchAllMiner`, :class:`BatchHardMiner`,
  :class:`SemiHardMiner`, :class:`TripletMarginMiner`.
- Sampling and pair mining: :class:`DistanceWeightedMiner`, :class:`RandomTripletMiner`,
  :class:`MultiSimilarityMiner`, :class:`PairMarginMiner`.
"""

from __future__ import annotations

from .sampling import (
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    RandomTripletMiner,
)
from .triplet import BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletMarginMiner

__all__ = [
    "BatchAllMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "RandomTripletMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
]
