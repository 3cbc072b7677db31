"""tripletkit: online triplet mining and sampling for PyTorch.

Layout, from the bottom up: :mod:`~tripletkit.distances` (the ``[N, M]`` distance matrix)
-> :mod:`~tripletkit.kernels` (selection and fused-loss kernels, torch or numba) ->
:mod:`~tripletkit.mining` / :mod:`~tripletkit.sampling_miners` (pure mining functions) and
:mod:`~tripletkit.losses` -> thin modules in :mod:`~tripletkit.miners`; around them
:mod:`~tripletkit.samplers`, :mod:`~tripletkit.memory`, :mod:`~tripletkit.metrics`,
:mod:`~tripletkit.stats`, :mod:`~tripletkit.datasets` and :mod:`~tripletkit.distributed`.
"""

from __future__ import annotations

from . import (
    datasets,
    distances,
    distributed,
    losses,
    memory,
    metrics,
    miners,
    mining,
    samplers,
    stats,
    types,
)
from .distances import pairwise_distance
from .memory import CrossBatchMemory
from .metrics import retrieval_metrics
from .samplers import PKBatchSampler
from .stats import triplet_stats
from .types import Pairs, Triplets, TripletStats

__version__ = "0.1.0"

__all__ = [
    "CrossBatchMemory",
    "PKBatchSampler",
    "Pairs",
    "TripletStats",
    "Triplets",
    "datasets",
    "distances",
    "distributed",
    "losses",
    "memory",
    "metrics",
    "miners",
    "mining",
    "pairwise_distance",
    "retrieval_metrics",
    "samplers",
    "stats",
    "triplet_stats",
    "types",
]
