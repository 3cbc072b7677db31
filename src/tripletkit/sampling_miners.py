"""Deprecated module path (tripletkit 0.1): its functions now live beside their modules in
:mod:`tripletkit.miners` (also re-exported by :mod:`tripletkit.mining`). Importing a name
from here still works, with a :class:`DeprecationWarning`."""

from __future__ import annotations

from ._deprecation import moved_module

__getattr__ = moved_module(
    "tripletkit.sampling_miners",
    {
        "distance_weighted_triplets": "tripletkit.miners",
        "random_triplets": "tripletkit.miners",
        "multi_similarity_pairs": "tripletkit.miners",
        "pair_margin_pairs": "tripletkit.miners",
        "make_generator": "tripletkit.miners",
        "check_cutoffs": "tripletkit.miners.sampling",
    },
)
