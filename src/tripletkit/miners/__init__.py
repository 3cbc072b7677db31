"""Online miners: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

Triplet miners return :class:`~tripletkit.types.Triplets`; pair miners return
:class:`~tripletkit.types.Pairs`. Both are named tuples of int64 index tensors.
"""

from __future__ import annotations

from .triplet import BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletMarginMiner

__all__ = ["BatchAllMiner", "BatchHardMiner", "SemiHardMiner", "TripletMarginMiner"]
