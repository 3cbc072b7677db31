"""Counting host synchronisations in the tests: the benchmarks' :class:`SyncCounter`.

On a GPU each synchronising operation stalls the pipeline until the device has caught up.
:class:`benchmarks.syncs.SyncCounter` counts them on any device (the CPU here) with a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`, plus tripletkit's own host reads;
``tests/test_bench_gpu.py`` checks that it counts what it should. The tests import it from
the benchmarks (never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.syncs import SyncCounter

__all__ = ["SyncCounter", "count_syncs"]


def count_syncs(fn: Callable[[], object]) -> SyncCounter:
    """Run ``fn`` under a :class:`SyncCounter` and return the counter."""
    with SyncCounter() as counter:
        fn()
    return counter
