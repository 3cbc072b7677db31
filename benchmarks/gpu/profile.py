"""Part 2 of the GPU check, the profiler breakdown: kernel time of each eager fused loss,
grouped into families by kernel name (see :mod:`benchmarks.gpu`)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from ..speed import make_inputs
from .config import GpuConfig, describe_error, free_device_memory, timer_for
from .methods import GpuMethod

#: The kernel families of the profiler breakdown, in table order.
FAMILIES = (
    "GEMM",
    "sort",
    "searchsorted",
    "scatter/gather",
    "elementwise",
    "reduction",
    "copy",
    "other",
)

_FAMILY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern))
    for family, pattern in (
        # dtype conversions and device copies are copy_ kernels; memsets are copies too
        ("copy", r"memcpy|memset|copy|aten::(clone|contiguous|cat|stack|flip)$"),
        (
            "GEMM",
            r"gemm|gemv|nvjet|xmma|cutlass|cublas|triton_tem|splitkreduce|dot_kernel"
            r"|aten::(mm|addmm|bmm|baddbmm|mv|addmv|dot|matmul|linear)$",
        ),
        ("searchsorted", r"searchsorted|bucketize"),  # before "sort": it contains "sort"
        ("sort", r"sort|radix|topk"),
        (
            "scatter/gather",
            r"scatter|gather|index|take|embedding|masked_select|nonzero|aten::select_backward$",
        ),
        ("elementwise", r"elementwise|triton_poi|pointwise"),
        (
            "reduction",
            r"reduce|scan|triton_red|triton_per"
            r"|aten::(sum|mean|amax|amin|max|min|cumsum|cumprod|cummin|cummax|_cummin_helper"
            r"|_cummax_helper|any|all|argmax|argmin|logsumexp"
            r"|norm|linalg_vector_norm|prod|count_nonzero|aminmax|var|std)$",
        ),
        (
            "elementwise",
            r"aten::(add|sub|rsub|mul|div|neg|relu|threshold|threshold_backward|softplus"
            r"|softplus_backward|where|clamp|clamp_min|clamp_max|sqrt|rsqrt|pow|exp|log|log1p"
            r"|expm1|eq|ne|lt|le|gt|ge|logical_and|logical_or|logical_not|logical_xor"
            r"|bitwise_and|bitwise_or|bitwise_not|bitwise_xor|fill|zero|masked_fill|abs|sign"
            r"|sigmoid|maximum|minimum|addcmul|addcdiv|reciprocal|square|arange|full|ones|zeros"
            r"|ones_like|zeros_like|full_like|remainder|floor_divide|lerp|isfinite|isnan"
            r"|sgn|tanh|_softmax|_log_softmax)_?$",
        ),
    )
)


def kernel_family(name: str) -> str:
    """The family (one of :data:`FAMILIES`) of a CUDA kernel or, on the CPU, an aten
    operation, from its name: ``"ampere_sgemm_128x64_nn"`` and ``"nvjet_tst_..."`` are GEMM,
    ``"void at::native::...::vectorized_elementwise_kernel<...>"`` elementwise,
    ``"aten::searchsorted"`` searchsorted, ``"Memcpy DtoD"`` copy...; unknown names are
    ``"other"``. Patterns are tried in order (copy, GEMM, searchsorted, sort,
    scatter/gather, elementwise kernels, reductions, elementwise aten operations)."""
    low = name.lower()
    for family, pattern in _FAMILY_PATTERNS:
        if pattern.search(low):
            return family
    return "other"


def _kernel_times(prof: Any, device: str) -> list[tuple[str, float]]:
    """``(name, microseconds)`` of each CUDA kernel (and memcpy / memset) of a profile, or on
    the CPU of each operation's self time (summed by name)."""
    if device == "cuda":
        from torch.autograd import DeviceType

        out = []
        for e in prof.events():
            if getattr(e, "device_type", None) == DeviceType.CUDA:
                out.append((str(e.name), float(e.time_range.elapsed_us())))
        return out
    return [
        (str(e.key), float(e.self_cpu_time_total))
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    ]


def breakdown(times: Sequence[tuple[str, float]], top: int = 8) -> dict[str, Any]:
    """Group ``(name, microseconds)`` by :func:`kernel_family`.

    Returns:
        ``total_ms``, ``families`` (family -> ``{"ms", "share", "count"}``, every family
        present, in :data:`FAMILIES` order) and ``top`` (the ``top`` longest names with
        their family and time).
    """
    fams = {f: {"ms": 0.0, "share": 0.0, "count": 0} for f in FAMILIES}
    by_name: dict[str, float] = {}
    for name, us in times:
        f = fams[kernel_family(name)]
        f["ms"] += us / 1e3
        f["count"] += 1
        by_name[name] = by_name.get(name, 0.0) + us / 1e3
    total = sum(f["ms"] for f in fams.values())
    for f in fams.values():
        f["share"] = f["ms"] / total if total > 0 else 0.0
    longest = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_ms": total,
        "families": fams,
        "top": [{"name": k[:160], "family": kernel_family(k), "ms": v} for k, v in longest],
    }


def run_profile(cfg: GpuConfig, methods: list[GpuMethod]) -> dict[str, Any]:
    """One profiled forward + backward of each eager fused loss at ``cfg.profile_n``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if cfg.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    n = cfg.profile_n
    started = time.perf_counter()
    rows = []
    x, y = make_inputs(n, "pk", cfg.device, cfg.seed)
    for gm in (m for m in methods if m.variant == "eager"):
        row: dict[str, Any] = {"method": gm.name, "n": n}
        try:
            f = gm.method.make()
            timer_for(cfg.device)(f, x, y)  # warm-up
            with profile(activities=activities) as prof:
                timer_for(cfg.device)(f, x, y)
            times = _kernel_times(prof, cfg.device)
            if not times:
                raise RuntimeError("the profiler recorded no kernel (is CUPTI available?)")
            row.update(breakdown(times))
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001
            row.update(status="error", error=describe_error(exc))
        x.grad = None
        rows.append(row)
        free_device_memory(cfg.device)
    return {
        "n": n,
        "activity": "CUDA kernels (and memcpy / memset), device time"
        if cfg.device == "cuda"
        else "CPU operations, self CPU time (dry run)",
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
    }
