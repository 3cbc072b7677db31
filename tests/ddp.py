"""Running real multi-process DDP tests: a free port, a spawn of gloo workers with a
deadline, and the float64 comparison every such test makes.

A worker is a module-level function ``worker(rank, world, port, out_dir)`` that joins the
process group on ``port`` and saves its results to ``out_dir/rank{rank}.pt``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

__all__ = ["TOL", "assert_close", "free_port", "spawn_ranks"]

#: Tolerance of every multi-process comparison (float64 throughout).
TOL = 1e-9


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_ranks(
    worker: Callable[[int, int, int, str], None], world: int, out_dir: Path, timeout: float
) -> list[dict[str, Any]]:
    """Run ``worker`` in ``world`` processes, one thread each (the workers share the machine
    with everything else), and return every rank's saved results; fails the test when they
    do not finish within ``timeout`` seconds."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        context = mp.spawn(
            worker, args=(world, free_port(), str(out_dir)), nprocs=world, join=False
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"distributed workers did not finish within {timeout} s")
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def assert_close(actual: Any, expected: Any) -> None:
    """Equal to :data:`TOL`, relative and absolute."""
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL)
