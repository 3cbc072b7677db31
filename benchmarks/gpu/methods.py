"""What the timing part (and the profile) measures: cdist, the eager fused losses, their
compiled forms, and the peers, each with its variant (which sets its share of the budget)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

from ..registry import MARGIN, LossFn, Method, build_methods
from ..speed import K_PER_CLASS, compiled_methods
from .config import WEIGHTS


@dataclass(frozen=True)
class GpuMethod:
    """A timed method: a :class:`~benchmarks.registry.Method` and its variant
    (``"baseline"``, ``"eager"``, ``"compiled"`` or ``"peer"``, which sets its share of the
    time: :data:`WEIGHTS`; compiled methods have none, they share what is left)."""

    method: Method
    variant: str

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def weight(self) -> float:
        return WEIGHTS.get(self.variant, 0.0)

    @property
    def memory_exponent(self) -> float:
        """Growth of the peak memory with ``N`` (predictions): 1 for the Triton rows
        (``O(N (D + K))``), 2 for the others (the ``N x N`` matrix)."""
        return 1.0 if self.variant == "triton" else 2.0


def matrix_floor(n: int, labels: Tensor) -> float:
    """Bytes of one float32 ``N x N`` matrix: the least an in-memory row (cdist, the eager
    fused losses) needs, its memory prediction before (and beside) any measured size."""
    return 4.0 * n * n


def _triton(strategy: str, k: int) -> Callable[[], LossFn]:
    """A fused loss on ``backend="triton"`` (issue 18: no ``[N, M]`` matrix), with
    ``max_positives=k-1`` (the kernels' slot width) and the default checks."""

    def make() -> LossFn:
        kw: dict[str, Any] = {"backend": "triton", "max_positives": k - 1}
        if strategy == "batch_all":
            return lambda x, y: batch_all_triplet_loss(x, y, MARGIN, reduction="mean_nonzero", **kw)
        if strategy == "batch_all_soft":
            return lambda x, y: batch_all_triplet_loss(
                x, y, soft_margin=True, reduction="mean", **kw
            )
        if strategy == "batch_hard":
            return lambda x, y: batch_hard_triplet_loss(x, y, MARGIN, **kw)
        if strategy == "semi_hard":
            return lambda x, y: semi_hard_triplet_loss(x, y, MARGIN, **kw)
        raise ValueError(f"unknown strategy {strategy!r}")

    return make


#: Why the dry run records the triton rows as skipped: Triton's CPU interpreter runs the
#: kernels in numpy, seconds per call at N = 64 (tests/test_triton.py proves their values).
TRITON_DRY_REASON = (
    "backend='triton' is timed on CUDA only (on the CPU, Triton's interpreter proves the "
    "kernels in tests/test_triton.py; its times mean nothing)"
)
#: Why the dry run records its rows at the large sizes (:data:`~.config.LARGE_SIZES`) as
#: skipped: they are planned for CUDA only.
LARGE_DRY_REASON = (
    "planned for CUDA only (sizes above the default ones: cdist, the eager losses, skipped "
    "where their predicted memory exceeds the device's, and the triton rows); the dry run "
    "lists them without running them"
)

#: The registry's peers that the GPU check times.
GPU_PEERS = ("pml_all", "st_batch_all", "st_batch_hard", "st_batch_hard_soft", "st_semi_hard")


def gpu_methods(
    peers: bool = True,
    compile: bool = True,
    compile_backend: str = "inductor",
    k: int = K_PER_CLASS,
    triton: bool = True,
) -> tuple[list[GpuMethod], list[str]]:
    """The timed methods, in run order at each size: cdist, the eager fused losses, their
    Triton forms (``triton``; issue 18), their compiled forms, then the peers
    (:data:`GPU_PEERS`, those installed); and the missing peers' distribution names."""
    methods, missing = build_methods(peers=peers, backends=("torch",))
    out = [
        GpuMethod(replace(m, memory_estimate=matrix_floor), "baseline")
        for m in methods
        if m.family == "baseline"
    ]
    eager = [replace(m, memory_estimate=matrix_floor) for m in methods if m.family == "tripletkit"]
    out += [GpuMethod(m, "eager") for m in eager]
    if triton:
        for m in eager:
            fused = Method(
                f"{m.strategy}[triton]",
                "tripletkit",
                m.strategy,
                "triton",
                f"the {m.strategy} loss on backend='triton' (no [N, M] matrix), "
                f"max_positives={k - 1}, default checks",
                _triton(m.strategy, k),
                time_exponent=m.time_exponent,
            )
            out.append(GpuMethod(fused, "triton"))
    if compile:
        out += [GpuMethod(m, "compiled") for m in compiled_methods(eager, compile_backend, k)]
    out += [GpuMethod(m, "peer") for m in methods if m.name in GPU_PEERS]
    missing = [d for d in missing if d != "online-triplet-loss"]  # not timed here
    return out, missing
