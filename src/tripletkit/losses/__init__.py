"""Triplet and pairwise losses.

- Fused losses that never list the N³ triplets: :func:`batch_all_triplet_loss`,
  :func:`batch_hard_triplet_loss`, :func:`semi_hard_triplet_loss`.
- Modules over explicit triplets or pairs (a miner's output): :class:`TripletMarginLoss`,
  :class:`ContrastiveLoss`, and :class:`MarginLoss` (Wu et al. 2017, for distance-weighted
  sampling).
"""

from __future__ import annotations

from .fused import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    reduce_parts,
    semi_hard_triplet_loss,
)
from .margin import MarginLoss, margin_loss
from .modules import ContrastiveLoss, TripletMarginLoss, contrastive_loss, triplet_margin_loss

__all__ = [
    "ContrastiveLoss",
    "MarginLoss",
    "TripletMarginLoss",
    "batch_all_triplet_loss",
    "batch_hard_triplet_loss",
    "contrastive_loss",
    "margin_loss",
    "reduce_parts",
    "semi_hard_triplet_loss",
    "triplet_margin_loss",
]
