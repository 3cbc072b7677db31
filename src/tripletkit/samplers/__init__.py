"""P x K batch sampling for online triplet mining.

Batch-hard and batch-all mining need many positives *and* negatives in every batch, which a
uniformly shuffled loader does not guarantee. :class:`PKBatchSampler` builds each batch from
``p`` classes with ``k`` samples each, following Hermans, Beyer & Leibe (2017), "In Defense of
the Triplet Loss for Person Re-Identification". Two variants choose *which* classes meet:

- :class:`HardClassPKBatchSampler` puts classes that the model confuses into the same batch
  (class-level hard mining: Suh et al. 2019; Smirnov et al. 2017);
- :class:`CategoryPKBatchSampler` draws ``c`` super-categories and ``p`` classes from each,
  so that negatives share a category;
- :class:`NeighbourPKBatchSampler` puts anchors with their nearest samples of other classes,
  mined over the whole dataset and refreshed from the training loop (ANCE-style refreshed
  negatives, Xiong et al. 2020; :mod:`tripletkit.neighbours`).

All four share one drawing procedure (``_draw.py``: each class's indices are shuffled and
cut into groups of ``k``, and groups are dealt to batches so that no batch holds a class
twice) and one base (``_base.py``: epochs, replicas, an exact ``len``, ``state_dict``). One
file per sampler family: ``pk.py``, ``hard_class.py``, ``category.py``, ``neighbour.py``.
"""

from __future__ import annotations

from ._draw import SMALL_CLASSES
from .category import CategoryPKBatchSampler
from .hard_class import HardClassPKBatchSampler
from .neighbour import NeighbourPKBatchSampler
from .pk import PKBatchSampler

__all__ = [
    "SMALL_CLASSES",
    "CategoryPKBatchSampler",
    "HardClassPKBatchSampler",
    "NeighbourPKBatchSampler",
    "PKBatchSampler",
]
