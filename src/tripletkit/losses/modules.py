"""Deprecated module path (tripletkit 0.1): the triplet margin loss now lives in
:mod:`tripletkit.losses.triplet` and the contrastive loss in
:mod:`tripletkit.losses.pairwise`; import them from :mod:`tripletkit.losses`. Importing a
name from here still works, with a :class:`DeprecationWarning`."""

from __future__ import annotations

from .._deprecation import moved_module

__getattr__ = moved_module(
    "tripletkit.losses.modules",
    {
        name: "tripletkit.losses"
        for name in (
            "ContrastiveLoss",
            "TripletMarginLoss",
            "contrastive_loss",
            "contrastive_parts",
            "triplet_margin_loss",
        )
    },
)
