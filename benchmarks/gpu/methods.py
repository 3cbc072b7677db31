"""What the timing part (and the profile) measures: cdist, the eager fused losses, their
compiled forms, and the peers, each with its variant (which sets its share of the budget)."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Method, build_methods
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


#: The registry's peers that the GPU check times.
GPU_PEERS = ("pml_all", "st_batch_all", "st_batch_hard", "st_batch_hard_soft", "st_semi_hard")


def gpu_methods(
    peers: bool = True,
    compile: bool = True,
    compile_backend: str = "inductor",
    k: int = K_PER_CLASS,
) -> tuple[list[GpuMethod], list[str]]:
    """The timed methods, in run order at each size: cdist, the eager fused losses, their
    compiled forms, then the peers (:data:`GPU_PEERS`, those installed); and the missing
    peers' distribution names."""
    methods, missing = build_methods(peers=peers, backends=("torch",))
    out = [GpuMethod(m, "baseline") for m in methods if m.family == "baseline"]
    eager = [m for m in methods if m.family == "tripletkit"]
    out += [GpuMethod(m, "eager") for m in eager]
    if compile:
        out += [GpuMethod(m, "compiled") for m in compiled_methods(eager, compile_backend, k)]
    out += [GpuMethod(m, "peer") for m in methods if m.name in GPU_PEERS]
    missing = [d for d in missing if d != "online-triplet-loss"]  # not timed here
    return out, missing
