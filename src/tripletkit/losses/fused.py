"""Deprecated module path (tripletkit 0.1): the fused losses now live in
:mod:`tripletkit.losses.triplet`; import them from :mod:`tripletkit.losses`. Importing a
name from here still works, with a :class:`DeprecationWarning`."""

from __future__ import annotations

from .._deprecation import moved_module

__getattr__ = moved_module(
    "tripletkit.losses.fused",
    {
        name: "tripletkit.losses"
        for name in (
            "batch_all_parts",
            "batch_all_triplet_loss",
            "batch_hard_parts",
            "batch_hard_triplet_loss",
            "reduce_parts",
            "semi_hard_parts",
            "semi_hard_triplet_loss",
            "triplet_terms",
            "Parts",
        )
    },
)
