"""Counting host synchronisations and transfers in the tests: the benchmarks' counters.

On a GPU each synchronising operation stalls the pipeline until the device has caught up,
and so does a copy from pageable host memory onto the device.
:class:`benchmarks.syncs.SyncCounter` counts the reads of device values on any device (the
CPU here) with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, plus tripletkit's
own host reads; :class:`benchmarks.syncs.TransferCounter` adds the copies between the host
and a device, seen on ``meta`` tensors without a GPU. ``tests/test_bench_gpu.py`` and
``tests/test_transfers.py`` check that they count what they should. The tests import them
from the benchmarks (never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.syncs import SyncCounter, TransferCounter

__all__ = ["SyncCounter", "TransferCounter", "count_syncs", "count_transfers"]


def count_syncs(fn: Callable[[], object]) -> SyncCounter:
    """Run ``fn`` under a :class:`SyncCounter` and return the counter."""
    with SyncCounter() as counter:
        fn()
    return counter


def count_transfers(fn: Callable[[], object]) -> TransferCounter:
    """Run ``fn`` under a :class:`TransferCounter` and return the counter (give it tensors
    on ``meta``, or any device that is not the CPU)."""
    with TransferCounter() as counter:
        fn()
    return counter
