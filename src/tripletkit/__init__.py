"""tripletkit: online triplet mining and sampling for PyTorch.

Layout, from the bottom up (no module imports one from a higher floor):

1. :mod:`~tripletkit._checks` (every validation), :mod:`~tripletkit.types` (result tuples),
   :mod:`~tripletkit._masks` (who is a positive or negative of whom),
   :mod:`~tripletkit._world` (distributed world size and rank);
2. :mod:`~tripletkit.distances` (the ``[N, M]`` distance matrix);
3. :mod:`~tripletkit.kernels` (selection and fused-loss kernels, torch or numba, one
   dispatcher);
4. ``_batch.prepare`` (the one first step: validate, normalise, distances, backend);
5. :mod:`~tripletkit.miners` and :mod:`~tripletkit.losses` (pure functions with their
   ``nn.Module`` forms, one file per family), :mod:`~tripletkit.stats`;
6. around them :mod:`~tripletkit.samplers`, :mod:`~tripletkit.memory`,
   :mod:`~tripletkit.metrics`, :mod:`~tripletkit.datasets`, :mod:`~tripletkit.distributed`.
"""

from __future__ import annotations

from . import (
    datasets,
    distances,
    distributed,
    gradcache,
    losses,
    memory,
    metrics,
    miners,
    mining,
    samplers,
    stats,
    types,
)
from ._checks import input_checks_enabled, set_input_checks
from ._deprecation import refuse_removed_modules as _refuse_removed_modules
from .distances import paired_distance, pairwise_distance
from .kernels import get_memory_budget, set_memory_budget
from .memory import CrossBatchMemory
from .metrics import RetrievalMetrics, retrieval_metrics
from .samplers import PKBatchSampler
from .stats import triplet_stats
from .types import Pairs, Triplets, TripletStats

__version__ = "0.3.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)

_refuse_removed_modules()  # importing a module path removed in 0.3 names its new home

__all__ = [
    "CrossBatchMemory",
    "PKBatchSampler",
    "Pairs",
    "RetrievalMetrics",
    "TripletStats",
    "Triplets",
    "datasets",
    "get_memory_budget",
    "input_checks_enabled",
    "distances",
    "distributed",
    "gradcache",
    "losses",
    "memory",
    "metrics",
    "miners",
    "mining",
    "paired_distance",
    "pairwise_distance",
    "retrieval_metrics",
    "samplers",
    "set_input_checks",
    "set_memory_budget",
    "stats",
    "triplet_stats",
    "types",
]
