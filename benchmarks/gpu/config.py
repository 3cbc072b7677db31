"""The GPU check's settings: sizes, budgets, one run's configuration, and small helpers that
every part (audit, profile, timing) shares."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..measure import TimedCall, TimingPolicy, cuda_timed_call, timed_call
from ..registry import LossFn
from ..speed import K_PER_CLASS

#: Batch sizes of a real run, and of the dry run.
DEFAULT_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DRY_SIZES = (64, 128)
#: Larger sizes of a real run (issue 18), for the variants in :data:`LARGE_VARIANTS` only:
#: cdist, the eager in-memory losses (skipped where their predicted memory exceeds the
#: device's) and the Triton rows (no ``N x N`` matrix). The dry run lists them as skipped.
LARGE_SIZES = (131072, 262144)
LARGE_VARIANTS = ("baseline", "eager", "triton")
#: The two sizes of the sync audit (the larger runs the kernels in several anchor chunks on
#: the CPU; on CUDA chunks are sized from the free memory).
AUDIT_SIZES = (1024, 4096)
#: ``N`` of the profiler breakdown (the dry run uses its largest size).
PROFILE_N = 16384
#: Seconds the audit, the profile and the timings may take together (``--budget-s``).
DEFAULT_BUDGET_S = 250.0
#: Share of the timing budget kept for the compiled losses, which run last (with at least
#: this, plus whatever the other methods left).
COMPILE_SHARE = 0.4
#: A configuration whose single forward + backward is predicted above this is skipped.
MAX_CALL_S = 20.0
#: Shares of the rest of the timing budget per method, by variant (normalised over the
#: methods run).
WEIGHTS = {"baseline": 1.0, "eager": 2.0, "peer": 1.0, "triton": 2.0}
#: Memory a configuration may be predicted to need: this share of the device's (CUDA) or
#: of the available memory (CPU, dry run: half).
MEMORY_SHARE = {"cuda": 0.9, "cpu": 0.5}
#: A compile at the next size is predicted at the last one times this (larger graphs).
COMPILE_GROWTH = 1.5

#: What ``python -m benchmarks.gpu`` prints without CUDA, and its exit status then.
NO_CUDA_MESSAGE = (
    "benchmarks.gpu: no CUDA device (torch.cuda.is_available() is False); nothing to "
    "measure. Use --dry-run to exercise the script on the CPU."
)
EXIT_NO_CUDA = 0


@dataclass
class GpuConfig:
    """One run: where, what sizes, how long."""

    device: str
    dry_run: bool
    sizes: list[int]
    audit_sizes: list[int]
    profile_n: int
    budget_s: float
    compile_backend: str
    compile: bool
    peers: bool
    audit: bool
    profile: bool
    out: Path
    policy: TimingPolicy
    seed: int = 0
    large_sizes: list[int] = field(default_factory=list)  # LARGE_VARIANTS only
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        """``time.perf_counter()`` value by which the three parts should be done."""
        return self.started + self.budget_s

    def timed_sizes(self) -> list[int]:
        """Every size of the timing part, ascending: :attr:`sizes`, then the
        :attr:`large_sizes` above them."""
        return sorted(set(self.sizes) | set(self.large_sizes))

    def planned(self, variant: str, n: int) -> bool:
        """Whether the timing part has a row for a method of ``variant`` at ``n``."""
        return n in self.sizes or (n in self.large_sizes and variant in LARGE_VARIANTS)

    @property
    def k(self) -> int:
        """Samples per class of every batch (``max_positives = k - 1``)."""
        return K_PER_CLASS


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of an exception, cut to 500 characters (a row's ``error``)."""
    return f"{type(exc).__name__}: {exc}"[:500]


def free_device_memory(device: str) -> None:
    """Collect garbage and, on CUDA, return the caching allocator's free blocks."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def timer_for(device: str) -> Callable[[LossFn, Tensor, Tensor], TimedCall]:
    """``timer(f, x, y)``: one timed forward + backward (CUDA events on CUDA, else
    ``time.perf_counter``)."""
    if device == "cuda":
        return cuda_timed_call
    return lambda f, x, y: timed_call(f, x, y, device)
