"""Every mining function in one namespace (they live beside their modules in
:mod:`tripletkit.miners`; this module only re-exports them)."""

from __future__ import annotations

from .miners import (
    TYPES_OF_TRIPLETS,
    batch_all_triplets,
    batch_hard_triplets,
    distance_weighted_triplets,
    multi_similarity_pairs,
    pair_margin_pairs,
    random_triplets,
    semi_hard_triplets,
    triplet_margin_triplets,
)

__all__ = [
    "TYPES_OF_TRIPLETS",
    "batch_all_triplets",
    "batch_hard_triplets",
    "distance_weighted_triplets",
    "multi_similarity_pairs",
    "pair_margin_pairs",
    "random_triplets",
    "semi_hard_triplets",
    "triplet_margin_triplets",
]
