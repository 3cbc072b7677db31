"""Triplet and pairwise losses: pure functions and their ``nn.Module`` forms, one file per
loss family.

- :mod:`.triplet`: the fused losses that never list the N³ triplets
  (:func:`batch_all_triplet_loss` / :class:`BatchAllTripletLoss`,
  :func:`batch_hard_triplet_loss` / :class:`BatchHardTripletLoss`,
  :func:`semi_hard_triplet_loss` / :class:`SemiHardTripletLoss`) and the triplet margin loss
  over a miner's triplets (:func:`triplet_margin_loss` / :class:`TripletMarginLoss`).
- :mod:`.pairwise`: the contrastive loss (:func:`contrastive_loss` / :class:`ContrastiveLoss`)
  and the losses on cosine similarities, fused over the ``N x M`` matrix or over mined pairs:
  multi-similarity (:func:`multi_similarity_loss` / :class:`MultiSimilarityLoss`), circle
  (:func:`circle_loss` / :class:`CircleLoss`) and supervised contrastive
  (:func:`supcon_loss` / :class:`SupConLoss`).
- :mod:`.margin`: the margin loss of Wu et al. 2017 with a learnable boundary
  (:func:`margin_loss` / :class:`MarginLoss`), for distance-weighted sampling.

Un-reduced forms (``*_parts``) return :class:`Parts`; :func:`reduce_parts` reduces them.
"""

from __future__ import annotations

from ._reduce import FUSED_REDUCTIONS, REDUCTIONS, Parts, reduce_parts
from .margin import MarginLoss, margin_loss
from .pairwise import (
    CircleLoss,
    ContrastiveLoss,
    MultiSimilarityLoss,
    SupConLoss,
    circle_loss,
    circle_parts,
    contrastive_loss,
    contrastive_parts,
    multi_similarity_loss,
    multi_similarity_parts,
    supcon_loss,
    supcon_parts,
)
from .triplet import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    SemiHardTripletLoss,
    TripletMarginLoss,
    batch_all_parts,
    batch_all_triplet_loss,
    batch_hard_parts,
    batch_hard_triplet_loss,
    semi_hard_parts,
    semi_hard_triplet_loss,
    triplet_margin_loss,
    triplet_terms,
)

__all__ = [
    "FUSED_REDUCTIONS",
    "REDUCTIONS",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "CircleLoss",
    "ContrastiveLoss",
    "MarginLoss",
    "MultiSimilarityLoss",
    "Parts",
    "SemiHardTripletLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "batch_all_parts",
    "batch_all_triplet_loss",
    "batch_hard_parts",
    "batch_hard_triplet_loss",
    "circle_loss",
    "circle_parts",
    "contrastive_loss",
    "contrastive_parts",
    "margin_loss",
    "multi_similarity_loss",
    "multi_similarity_parts",
    "reduce_parts",
    "semi_hard_parts",
    "semi_hard_triplet_loss",
    "supcon_loss",
    "supcon_parts",
    "triplet_margin_loss",
    "triplet_terms",
]
