"""The GPU check: host synchronisations, time, memory and a kernel breakdown on one CUDA device.

Usage::

    python -m benchmarks.gpu              # on a CUDA machine: under 5 minutes on one H200
    python -m benchmarks.gpu --dry-run    # the whole pipeline on the CPU at N = 64, 128 (CI)
    python -m benchmarks.gpu --budget-s 600 --sizes 4096 16384 65536

Without a CUDA device (and without ``--dry-run``) it prints one line, :data:`NO_CUDA_MESSAGE`,
and exits with status :data:`EXIT_NO_CUDA` (0: nothing to measure is not an error).

Three parts, run in this order, each recorded in the JSON and the markdown table:

1. **Sync audit.** Every public entry point (the three fused losses, hinge and soft margin,
   with the input checks on, off, and off with ``max_positives=k-1``; every miner of
   :mod:`tripletkit.miners`; :func:`~tripletkit.triplet_stats`;
   :class:`~tripletkit.losses.TripletMarginLoss` over mined triplets;
   :func:`~tripletkit.losses.contrastive_loss`, :func:`~tripletkit.losses.multi_similarity_loss`,
   :func:`~tripletkit.losses.circle_loss`, :func:`~tripletkit.losses.supcon_loss`) is called
   once to warm up, then once under ``torch.cuda.set_sync_debug_mode("warn")``: each
   synchronising CUDA call emits a warning, and the warnings are counted
   (:mod:`benchmarks.syncs`), at two sizes (:data:`AUDIT_SIZES`). Losses count forward +
   backward, miners one call. Each row is compared with its budget (:func:`audit_cases`):
   fused losses at most 2 with checks on, 0 with checks off and ``max_positives`` (0 without
   it too, except the soft-margin batch-all: 1, documented), miners at most 2 (1 with checks
   off: sizing their output), ``triplet_stats`` 2 and 1 (its result is Python ints), the
   other losses at most 2 and 0.
2. **Profiler breakdown** at ``N = 16384``: one forward + backward of each fused loss (eager)
   under :mod:`torch.profiler` with CUDA activity, kernel time grouped into families (GEMM,
   sort, searchsorted, scatter/gather, elementwise, reduction, copy, other) by kernel name
   (:func:`kernel_family`).
3. **Time and memory** of forward + backward, for ``N = 1024 ... 65536`` (``D = 128``,
   P x K labels with ``K = 8``, float32): ``torch.cdist(x, x).sum()``, each fused loss
   eager (``backend="torch"``, default checks) and compiled (``torch.compile(fullgraph=True,
   dynamic=False)``, inductor, input checks off and ``max_positives=k-1``: one graph without
   a host synchronisation), pytorch-metric-learning's ``TripletMarginMiner("all")`` +
   ``TripletMarginLoss`` and sentence-transformers' four batch triplet losses (when
   installed). Times are CUDA events, median of the repeats after warm-up; memory is
   ``torch.cuda.max_memory_allocated`` over the last repeat (peak statistics reset before
   it), minus what was allocated before; ratios are to ``cdist`` at the same ``N``. Compile
   time (the first call at a size minus the median) is recorded separately.

**Budget.** ``--budget-s`` (default :data:`DEFAULT_BUDGET_S`, leaving time for start-up
and output within 5 minutes) bounds the three parts together; the timing part gets what the
audit and the profile leave. It runs in two passes over the sizes (ascending): first cdist,
the eager losses and the peers, each within its share (:data:`WEIGHTS`) of the timing budget
less a reserve (:data:`COMPILE_SHARE`); then the compiled losses, with the reserve plus
whatever the first pass left. Each size is a fresh compile (``dynamic=False``: the kernels'
chunk loop unrolls, so a graph depends on ``N``). Before each ``(method, N)`` the cost is
predicted from the previous size (time exponent of the method: 3 for PML's all-triplets,
else 2; memory grown as ``N^2``, or the registry's estimate when larger; a compile as the
method's last one times :data:`COMPILE_GROWTH`, or the other methods' mean before its
first): a configuration whose predicted time would exceed the method's share or the pass's
deadline, whose single call would exceed :data:`MAX_CALL_S`, or whose memory would exceed
90 % of the device's, is skipped with the reason recorded (and so, in practice, are the
larger ones). A configuration that fails (out of memory included) is recorded as an error,
and the method stops there. Every figure the planning used is saved (``predicted``,
``method_budget_s``, ``spent_s``, ``compile_spent_s``): the first run on a GPU calibrates
the next one's ``--budget-s`` and ``--sizes``.

**Dry run** (``--dry-run``): the same pipeline on the CPU at ``N = 64, 128`` (audit at the
same sizes, profile at 128), CUDA-only parts replaced by CPU equivalents: the dispatch
counter of :mod:`benchmarks.syncs` (aten operations that read device values plus
tripletkit's host reads) instead of ``set_sync_debug_mode``, ``time.perf_counter`` instead
of CUDA events, the peak RSS instead of ``max_memory_allocated``, CPU activity (self CPU time
of aten operations) instead of CUDA kernels, and ``torch.compile`` with the ``aot_eager``
backend instead of inductor. Its numbers say nothing about a GPU: it checks that the script
runs, and it is part of the test suite (``tests/test_bench_gpu.py``).

**Outputs**: ``gpu.json`` and ``gpu.md`` in ``--out`` (default ``benchmarks/results/``);
the dry run writes ``gpu_dryrun.json`` and ``gpu_dryrun.md``, never a real run's files.
The markdown tables are also printed.
"""

from __future__ import annotations

import argparse
import gc
import math
import re
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import tripletkit
from tripletkit import miners
from tripletkit.losses import (
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    circle_loss,
    contrastive_loss,
    multi_similarity_loss,
    semi_hard_triplet_loss,
    supcon_loss,
)

from .cli import UsageError
from .cli import run as run_command
from .common import GIB, RESULTS_DIR, new_result, progress, save_json
from .measure import PeakMemory, TimedCall, TimingPolicy, cuda_timed_call, thread_count, timed_call
from .registry import MARGIN, LossFn, Method, build_methods
from .report import format_bytes, md_table
from .speed import DIM, K_PER_CLASS, make_inputs
from .syncs import count_syncs

__all__ = [
    "AUDIT_SIZES",
    "COMPILE_SHARE",
    "DEFAULT_BUDGET_S",
    "DEFAULT_SIZES",
    "DRY_SIZES",
    "EXIT_NO_CUDA",
    "FAMILIES",
    "MAX_CALL_S",
    "NO_CUDA_MESSAGE",
    "PROFILE_N",
    "WEIGHTS",
    "AuditCase",
    "GpuMethod",
    "audit_cases",
    "gpu_methods",
    "kernel_family",
    "main",
    "markdown_report",
    "predict",
    "run",
]

#: Batch sizes of a real run, and of the dry run.
DEFAULT_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DRY_SIZES = (64, 128)
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
WEIGHTS = {"baseline": 1.0, "eager": 2.0, "peer": 1.0}
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

#: The fused losses (name -> function) of the audit, the profile and the compiled timings.
FUSED: dict[str, Callable[..., Tensor]] = {
    "batch_all_triplet_loss": batch_all_triplet_loss,
    "batch_hard_triplet_loss": batch_hard_triplet_loss,
    "semi_hard_triplet_loss": semi_hard_triplet_loss,
}
#: Host synchronisation budgets of the audit (per call; losses: forward + backward).
LOSS_BUDGET_CHECKED = 2
MINER_BUDGET = 2


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


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
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float:
        """``time.perf_counter()`` value by which the three parts should be done."""
        return self.started + self.budget_s

    @property
    def k(self) -> int:
        """Samples per class of every batch (``max_positives = k - 1``)."""
        return K_PER_CLASS


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _free_device_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------
# 1. Sync audit
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditCase:
    """One row of the sync audit.

    Attributes:
        entry: the public entry point (``"batch_all_triplet_loss"``, ``"BatchHardMiner"``...).
        kind: ``"fused loss"``, ``"miner"``, ``"statistics"`` or ``"loss"``.
        variant: what is passed or switched (``"hinge, checks off, max_positives=k-1"``...).
        checks: the state of :func:`tripletkit.set_input_checks` for the call.
        budget: the most host synchronisations the call may make.
        build: ``build(x, y)`` returns the audited call (losses: forward + backward on ``x``,
            which requires grad; miners see ``x`` detached). Anything it prepares (a
            miner's triplets for a loss) is not counted.
    """

    entry: str
    kind: str
    variant: str
    checks: bool
    budget: int
    build: Callable[[Tensor, Tensor], Callable[[], object]]


def _fused_case(name: str, soft: bool, checks: bool, bounded: bool, k: int) -> AuditCase:
    fn = FUSED[name]
    kw: dict[str, Any] = {"max_positives": k - 1} if bounded else {}
    if checks:
        budget = LOSS_BUDGET_CHECKED
    elif bounded:
        budget = 0
    else:  # documented: without a bound the soft-margin batch-all reads the largest count
        budget = 1 if (name == "batch_all_triplet_loss" and soft) else 0
    variant = ("soft margin" if soft else "hinge") + (", checks on" if checks else ", checks off")
    if bounded:
        variant += ", max_positives=k-1"

    def build(x: Tensor, y: Tensor) -> Callable[[], object]:
        return lambda: fn(x, y, MARGIN, soft_margin=soft, backend="torch", **kw).backward()

    return AuditCase(name, "fused loss", variant, checks, budget, build)


def _miners(k: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Every miner of :mod:`tripletkit.miners` (the triplet miners on the torch backend)."""
    return {
        "BatchAllMiner": lambda: miners.BatchAllMiner(backend="torch"),
        "BatchHardMiner": lambda: miners.BatchHardMiner(backend="torch"),
        "SemiHardMiner": lambda: miners.SemiHardMiner(backend="torch"),
        "SemiHardMiner(max_positives=k-1)": lambda: miners.SemiHardMiner(
            backend="torch", max_positives=k - 1
        ),
        "TripletMarginMiner('semihard')": lambda: miners.TripletMarginMiner(
            type_of_triplets="semihard", backend="torch"
        ),
        "MultiSimilarityMiner": miners.MultiSimilarityMiner,
        "PairMarginMiner": miners.PairMarginMiner,
        "RandomTripletMiner": miners.RandomTripletMiner,
        "DistanceWeightedMiner": lambda: miners.DistanceWeightedMiner(normalize=True),
    }


def _miner_case(name: str, make: Callable[[], torch.nn.Module], checks: bool) -> AuditCase:
    def build(x: Tensor, y: Tensor) -> Callable[[], object]:
        miner = make()
        xd = x.detach()
        return lambda: miner(xd, y)

    budget = MINER_BUDGET if checks else MINER_BUDGET - 1  # sizing the output: one read
    variant = "checks on" if checks else "checks off"
    return AuditCase(name, "miner", variant, checks, budget, build)


def _other_cases(checks: bool) -> list[AuditCase]:
    variant = "checks on" if checks else "checks off"
    loss_budget = LOSS_BUDGET_CHECKED if checks else 0

    def stats(x: Tensor, y: Tensor) -> Callable[[], object]:
        xd = x.detach()
        return lambda: tripletkit.triplet_stats(xd, y, MARGIN, backend="torch")

    def triplet_margin(x: Tensor, y: Tensor) -> Callable[[], object]:
        triplets = miners.BatchHardMiner(backend="torch")(x.detach(), y)
        loss = TripletMarginLoss(MARGIN)
        return lambda: loss(x, y, triplets).backward()

    def fused(fn: Callable[..., Tensor]) -> Callable[[Tensor, Tensor], Callable[[], object]]:
        return lambda x, y: lambda: fn(x, y).backward()

    return [
        # Its result is a tuple of Python ints: one read even with checks off.
        AuditCase("triplet_stats", "statistics", variant, checks, 2 if checks else 1, stats),
        AuditCase(
            "TripletMarginLoss",
            "loss",
            variant + ", BatchHardMiner triplets",
            checks,
            loss_budget,
            triplet_margin,
        ),
        AuditCase(
            "contrastive_loss", "loss", variant, checks, loss_budget, fused(contrastive_loss)
        ),
        AuditCase(
            "multi_similarity_loss",
            "loss",
            variant,
            checks,
            loss_budget,
            fused(multi_similarity_loss),
        ),
        AuditCase("circle_loss", "loss", variant, checks, loss_budget, fused(circle_loss)),
        AuditCase("supcon_loss", "loss", variant, checks, loss_budget, fused(supcon_loss)),
    ]


def audit_cases(k: int = K_PER_CLASS) -> list[AuditCase]:
    """Every row of the sync audit, with its budget (see the module docstring)."""
    cases = [
        _fused_case(name, soft, checks, bounded, k)
        for name in FUSED
        for soft in (False, True)
        for checks, bounded in ((True, False), (False, False), (False, True))
    ]
    for checks in (True, False):
        cases += [_miner_case(name, make, checks) for name, make in _miners(k).items()]
    for checks in (True, False):
        cases += _other_cases(checks)
    return cases


def run_audit(cfg: GpuConfig) -> dict[str, Any]:
    """The sync audit: one row per case and size (see :func:`audit_cases`)."""
    rows: list[dict[str, Any]] = []
    cases = audit_cases(cfg.k)
    started = time.perf_counter()
    bar = progress(total=len(cases) * len(cfg.audit_sizes), desc="sync audit", leave=False)
    with bar:
        for n in cfg.audit_sizes:
            x, y = make_inputs(n, "pk", cfg.device, cfg.seed)
            for case in cases:
                bar.set_postfix_str(f"{case.entry} N={n}")
                rows.append(_audit_row(case, x, y, n, cfg.device))
                bar.update()
            del x, y
            _free_device_memory(cfg.device)
    return {
        "how": 'torch.cuda.set_sync_debug_mode("warn"): one warning per synchronising call'
        if cfg.device == "cuda"
        else "dispatch counter (CPU proxy for the dry run)",
        "sizes": cfg.audit_sizes,
        "rows": rows,
        "passed": all(r["passed"] for r in rows),
        "elapsed_s": time.perf_counter() - started,
    }


def _audit_row(case: AuditCase, x: Tensor, y: Tensor, n: int, device: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "entry": case.entry,
        "kind": case.kind,
        "variant": case.variant,
        "n": n,
        "budget": case.budget,
    }
    try:
        with tripletkit.set_input_checks(case.checks):
            call = case.build(x, y)
            call()  # warm-up: one-off costs (lazy initialisation, chunk sizes) are not counted
            x.grad = None
            row.update(count_syncs(call, device))
    except Exception as exc:  # noqa: BLE001 - a failing entry point is a result
        row.update(syncs=None, error=_error(exc), passed=False)
        return row
    finally:
        x.grad = None
    row["passed"] = row["syncs"] <= case.budget
    return row


# --------------------------------------------------------------------------------------
# 2. Profiler breakdown
# --------------------------------------------------------------------------------------

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
            _timer(cfg.device)(f, x, y)  # warm-up
            with profile(activities=activities) as prof:
                _timer(cfg.device)(f, x, y)
            times = _kernel_times(prof, cfg.device)
            if not times:
                raise RuntimeError("the profiler recorded no kernel (is CUPTI available?)")
            row.update(breakdown(times))
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001
            row.update(status="error", error=_error(exc))
        x.grad = None
        rows.append(row)
        _free_device_memory(cfg.device)
    return {
        "n": n,
        "activity": "CUDA kernels (and memcpy / memset), device time"
        if cfg.device == "cuda"
        else "CPU operations, self CPU time (dry run)",
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------
# 3. Time and memory
# --------------------------------------------------------------------------------------


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


def _compiled(strategy: str, k: int, backend: str) -> Callable[[], LossFn]:
    """``torch.compile(fullgraph=True, dynamic=False)`` of a fused loss with
    ``max_positives=k-1``, called with the input checks off."""

    def make() -> LossFn:
        kw: dict[str, Any] = {"backend": "torch", "max_positives": k - 1}
        fn: LossFn
        if strategy == "batch_all":
            fn = lambda x, y: batch_all_triplet_loss(  # noqa: E731
                x, y, MARGIN, reduction="mean_nonzero", **kw
            )
        elif strategy == "batch_all_soft":
            fn = lambda x, y: batch_all_triplet_loss(  # noqa: E731
                x, y, soft_margin=True, reduction="mean", **kw
            )
        elif strategy == "batch_hard":
            fn = lambda x, y: batch_hard_triplet_loss(x, y, MARGIN, **kw)  # noqa: E731
        elif strategy == "semi_hard":
            fn = lambda x, y: semi_hard_triplet_loss(x, y, MARGIN, **kw)  # noqa: E731
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)

        def f(x: Tensor, y: Tensor) -> Tensor:
            with tripletkit.set_input_checks(False):
                return compiled(x, y)

        return f

    return make


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
        for m in eager:
            compiled = Method(
                f"{m.strategy}[compiled]",
                "tripletkit",
                m.strategy,
                "torch",
                f"torch.compile(fullgraph=True, dynamic=False, backend={compile_backend!r}) of "
                f"the {m.strategy} loss, input checks off, max_positives={k - 1}",
                _compiled(m.strategy, k, compile_backend),
                time_exponent=m.time_exponent,
            )
            out.append(GpuMethod(compiled, "compiled"))
    out += [GpuMethod(m, "peer") for m in methods if m.name in GPU_PEERS]
    missing = [d for d in missing if d != "online-triplet-loss"]  # not timed here
    return out, missing


def _timer(device: str) -> Callable[[LossFn, Tensor, Tensor], TimedCall]:
    if device == "cuda":
        return cuda_timed_call
    return lambda f, x, y: timed_call(f, x, y, device)


@dataclass
class _History:
    """What the sizes measured so far say about a method."""

    n: int = 0
    median_s: float = 0.0
    peak_bytes: float = 0.0
    compile_s: float | None = None
    spent_s: float = 0.0
    compile_spent_s: float = 0.0
    stopped: str | None = None  # why larger sizes are not run (an error)


def predict(
    gm: GpuMethod, n: int, labels: Tensor, hist: _History, policy: TimingPolicy
) -> dict[str, float | None]:
    """Predicted cost of ``(method, n)`` from the previous size.

    Returns:
        ``call_s`` (one forward + backward, ``None`` before any measurement), ``run_s``
        (every call of the measurement), ``compile_s`` (compiled methods, ``None`` before
        their first compile) and ``memory_bytes`` (``None`` when unknown).
    """
    call = run = comp = None
    mem = gm.method.memory_estimate(n, labels) if gm.method.memory_estimate else None
    if hist.n:
        exponent = gm.method.time_exponent or 2.0
        call = hist.median_s * (n / hist.n) ** exponent
        warmups = 1 + (1 if call <= 1.0 and policy.warmups > 1 else 0)
        run = call * (warmups + policy.repeats(call))
        grown = hist.peak_bytes * (n / hist.n) ** 2
        mem = grown if mem is None else max(mem, grown)
        if hist.compile_s is not None:
            comp = hist.compile_s * COMPILE_GROWTH
    return {"call_s": call, "run_s": run, "compile_s": comp, "memory_bytes": mem}


def _skip_reason(
    gm: GpuMethod,
    guess: dict[str, float | None],
    hist: _History,
    allot_s: float,
    deadline: float,
    mem_limit: float,
) -> str | None:
    if hist.stopped:
        return hist.stopped
    mem = guess["memory_bytes"]
    if mem is not None and mem > mem_limit:
        return f"predicted peak memory {mem / GIB:.1f} GiB > limit {mem_limit / GIB:.1f} GiB"
    call, run, comp = guess["call_s"], guess["run_s"], guess["compile_s"]
    if call is not None and call > MAX_CALL_S:
        return f"one call predicted at {call:.1f} s > {MAX_CALL_S:.0f} s"
    if run is not None and hist.spent_s + run > allot_s:
        return (
            f"predicted {run:.1f} s would exceed the method's time budget "
            f"({hist.spent_s:.1f} of {allot_s:.1f} s spent)"
        )
    total = (run or 0.0) + (comp or 0.0)
    if time.perf_counter() + total > deadline:
        what = f"{total:.1f} s" + (f" (compile {comp:.1f} s)" if comp else "")
        return f"predicted {what} would pass the deadline of this pass (--budget-s)"
    return None


def time_config(
    f: LossFn, x: Tensor, y: Tensor, device: str, policy: TimingPolicy
) -> dict[str, Any]:
    """Warm up, time the repeats and measure the peak memory of the last one.

    Returns:
        ``first_call_s`` (the first call: compilation, lazy initialisation), ``times_s``,
        ``repeats``, ``median_s``, ``min_s``, ``cpu_median_s`` (process CPU time),
        ``memory`` (see :class:`~benchmarks.measure.PeakMemory`) and the last ``loss``.
    """
    timer = _timer(device)
    first = timer(f, x, y)
    estimate = first.wall_s
    for _ in range(policy.warmups - 1):
        if estimate > 1.0:
            break
        estimate = timer(f, x, y).wall_s
    repeats = policy.repeats(estimate)
    calls: list[TimedCall] = []
    probe = PeakMemory(device, release_cache=False)
    for i in range(repeats):
        if i == repeats - 1:
            probe.start()
        calls.append(timer(f, x, y))
    memory = probe.stop()
    times = [c.wall_s for c in calls]
    return {
        "first_call_s": first.wall_s,
        "times_s": times,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_median_s": statistics.median(c.cpu_s for c in calls),
        "memory": memory,
        "loss": float(calls[-1].loss.item()),
    }


def _memory_limit(device: str) -> float:
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        return MEMORY_SHARE["cuda"] * total - torch.cuda.memory_allocated()
    from .measure import available_bytes

    return MEMORY_SHARE["cpu"] * available_bytes("cpu")


@contextmanager
def _recompile_limit(sizes: int) -> Iterator[None]:
    """Let dynamo compile each function once per size (``dynamic=False``), then restore."""
    config = torch._dynamo.config
    saved = {
        n: getattr(config, n) for n in ("recompile_limit", "cache_size_limit") if hasattr(config, n)
    }
    for name, value in saved.items():
        setattr(config, name, max(value, sizes + 2))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


def _compile_warmup(cfg: GpuConfig) -> float | None:
    """Compile and run a trivial function once, so that the compile backend's one-off
    start-up (imports, worker pool) is not charged to the first loss. Returns its time."""
    if not cfg.compile:
        return None
    t0 = time.perf_counter()
    try:
        torch._dynamo.reset()
        x = torch.ones(8, device=cfg.device, requires_grad=True)
        g = torch.compile(lambda t: (t * 2).sum(), fullgraph=True, backend=cfg.compile_backend)
        g(x).backward()
    except Exception:  # noqa: BLE001 - the compiled methods will report the error
        pass
    return time.perf_counter() - t0


def run_timing(cfg: GpuConfig, methods: list[GpuMethod]) -> dict[str, Any]:
    """Time every ``(method, N)`` that fits the budget (see the module docstring)."""
    with _recompile_limit(len(cfg.sizes)):
        return _run_timing(cfg, methods)


def _run_timing(cfg: GpuConfig, methods: list[GpuMethod]) -> dict[str, Any]:
    started = time.perf_counter()
    compile_warmup_s = _compile_warmup(cfg)
    budget = max(cfg.deadline - time.perf_counter(), 0.0)
    first = [m for m in methods if m.variant != "compiled"]
    compiled = [m for m in methods if m.variant == "compiled"]
    reserve = COMPILE_SHARE * budget if compiled else 0.0
    total_weight = sum(m.weight for m in first) or 1.0
    allot = {m.name: (budget - reserve) * m.weight / total_weight for m in first}
    run = _TimingRun(cfg, {m.name: _History() for m in methods}, _memory_limit(cfg.device))
    bar = progress(total=len(methods) * len(cfg.sizes), desc="timing", leave=False)
    with bar:
        # Pass 1: cdist, the eager losses and the peers, each within its share.
        run.sweep(first, allot, cfg.deadline - reserve, bar)
        # Pass 2: the compiled losses, with the time left (at least the reserve).
        run.sweep(compiled, dict.fromkeys((m.name for m in compiled), math.inf), cfg.deadline, bar)
    run.made.clear()
    _free_device_memory(cfg.device)
    _attach_ratios(run.rows)
    return {
        "timer": "CUDA events" if cfg.device == "cuda" else "time.perf_counter (dry run)",
        "memory": "torch.cuda.max_memory_allocated over the last repeat, minus the memory "
        "allocated before it"
        if cfg.device == "cuda"
        else "peak RSS over the last repeat minus the RSS before it (dry run)",
        "compile_backend": cfg.compile_backend if cfg.compile else None,
        "compile_warmup_s": compile_warmup_s,
        "budget_s": budget,
        "method_budget_s": allot,
        "compile_reserve_s": reserve,
        "spent_s": {name: h.spent_s for name, h in run.hist.items()},
        "compile_spent_s": {m.name: run.hist[m.name].compile_spent_s for m in compiled},
        "memory_limit_bytes": run.mem_limit,
        "rows": run.rows,
        "elapsed_s": time.perf_counter() - started,
    }


@dataclass
class _TimingRun:
    """The state of the timing part: histories, built methods and result rows."""

    cfg: GpuConfig
    hist: dict[str, _History]
    mem_limit: float
    made: dict[str, LossFn | BaseException] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def sweep(
        self, methods: list[GpuMethod], allot: dict[str, float], deadline: float, bar: Any
    ) -> None:
        """Every size in ascending order, every method at that size: skip or measure."""
        if not methods:
            return
        for n in self.cfg.sizes:
            x, y = make_inputs(n, "pk", self.cfg.device, self.cfg.seed)
            for gm in methods:
                bar.set_postfix_str(f"{gm.name} N={n}")
                self.one(gm, n, x, y, allot[gm.name], deadline)
                bar.update()
            del x, y
            _free_device_memory(self.cfg.device)

    def _compile_guess(self, gm: GpuMethod) -> float | None:
        """Before a method's first compile: the mean of the other methods' last ones."""
        if gm.variant != "compiled":
            return None
        seen = [h.compile_s for h in self.hist.values() if h.compile_s is not None]
        return statistics.fmean(seen) if seen else None

    def one(
        self, gm: GpuMethod, n: int, x: Tensor, y: Tensor, allot: float, deadline: float
    ) -> None:
        h = self.hist[gm.name]
        row: dict[str, Any] = {"method": gm.name, "variant": gm.variant, "n": n}
        self.rows.append(row)
        guess = predict(gm, n, y, h, self.cfg.policy)
        if guess["compile_s"] is None:
            guess["compile_s"] = self._compile_guess(gm)
        row["predicted"] = guess
        reason = _skip_reason(gm, guess, h, allot, deadline, self.mem_limit)
        if reason is not None:
            row.update(status="skipped", reason=reason)
            return
        t0 = time.perf_counter()
        _measure(gm, self.made, x, y, self.cfg, row, h)
        comp = row.get("compile_s") or 0.0
        h.compile_spent_s += comp
        h.spent_s += max(time.perf_counter() - t0 - comp, 0.0)


def _measure(
    gm: GpuMethod,
    made: dict[str, LossFn | BaseException],
    x: Tensor,
    y: Tensor,
    cfg: GpuConfig,
    row: dict[str, Any],
    h: _History,
) -> None:
    """Time one configuration into ``row``; update the method's history."""
    n = row["n"]
    if gm.name not in made:
        try:
            made[gm.name] = gm.method.make()
        except Exception as exc:  # noqa: BLE001
            made[gm.name] = exc
    f = made[gm.name]
    if isinstance(f, BaseException):
        row.update(status="error", error="could not build the method: " + _error(f))
        h.stopped = "the method could not be built"
        return
    try:
        row.update(time_config(f, x, y, cfg.device, cfg.policy))
    except Exception as exc:  # noqa: BLE001 - out of memory included: a result
        row.update(
            status="error",
            error=_error(exc),
            traceback=traceback.format_exc(limit=-3)[-1500:],
        )
        h.stopped = f"stopped after an error at N={n}"
        x.grad = None
        _free_device_memory(cfg.device)
        return
    row["status"] = "ok"
    if gm.variant == "compiled":
        row["compile_s"] = max(row["first_call_s"] - row["median_s"], 0.0)
        h.compile_s = row["compile_s"]
    h.n, h.median_s = n, row["median_s"]
    h.peak_bytes = float(row["memory"]["extra_peak_bytes"])
    x.grad = None


def _attach_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_cdist``: each median over cdist's at the same ``N``."""
    base = {r["n"]: r["median_s"] for r in rows if r["method"] == "cdist" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and base.get(r["n"]):
            r["ratio_to_cdist"] = r["median_s"] / base[r["n"]]


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"


def _names(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in rows))


def _find(rows: list[dict[str, Any]], method: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"] == method and r["n"] == n), None)


def _cell(r: dict[str, Any] | None, what: str) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return "skip" if r["status"] == "skipped" else "error"
    if what == "time":
        text = _ms(r["median_s"])
        if "ratio_to_cdist" in r:
            text += f" ({r['ratio_to_cdist']:.3g}x)"
        return text
    if what == "memory":
        return format_bytes(r["memory"]["extra_peak_bytes"])
    return _ms(r["compile_s"]) if r.get("compile_s") is not None else ""


def _grid(rows: list[dict[str, Any]], what: str, names: list[str] | None = None) -> str:
    names = names or _names(rows)
    sizes = sorted({r["n"] for r in rows})
    cells = [[n, *(_cell(_find(rows, name, n), what) for name in names)] for n in sizes]
    return md_table(["N", *names], cells, "r" * (len(names) + 1))


def _audit_table(audit: dict[str, Any]) -> str:
    rows = audit["rows"]
    sizes = audit["sizes"]
    keys = list(dict.fromkeys((r["entry"], r["variant"]) for r in rows))
    cells = []
    for entry, variant in keys:
        mine = [r for r in rows if (r["entry"], r["variant"]) == (entry, variant)]
        by_n = {r["n"]: r for r in mine}
        counts = [
            "" if n not in by_n else ("error" if by_n[n]["syncs"] is None else by_n[n]["syncs"])
            for n in sizes
        ]
        verdict = "PASS" if all(r["passed"] for r in mine) else "FAIL"
        cells.append([entry, variant, *counts, f"<= {mine[0]['budget']}", verdict])
    header = ["entry point", "variant", *(f"N={n}" for n in sizes), "budget", "result"]
    return md_table(header, cells, "ll" + "r" * len(sizes) + "rl")


def _profile_table(profile: dict[str, Any]) -> str:
    cells = []
    for r in profile["rows"]:
        if r["status"] != "ok":
            cells.append([r["method"], "error", *[""] * len(FAMILIES)])
            continue
        fams = r["families"]
        cells.append(
            [
                r["method"],
                f"{r['total_ms']:.3g} ms",
                *(
                    f"{fams[f]['ms']:.3g} ms ({100 * fams[f]['share']:.0f}%)"
                    if fams[f]["count"]
                    else ""
                    for f in FAMILIES
                ),
            ]
        )
    return md_table(["method", "total", *FAMILIES], cells, "l" + "r" * (len(FAMILIES) + 1))


def _notes(rows: list[dict[str, Any]]) -> str | None:
    notes = [r for r in rows if r["status"] != "ok"]
    if not notes:
        return None
    return "\n".join(
        f"- {r['method']} N={r['n']}: {r['status']}: {r.get('reason') or r.get('error')}"
        for r in notes
    )


def markdown_report(result: dict[str, Any]) -> str:
    """The markdown of a run: machine, sync audit, times, memory, compile times, profiler
    breakdown, and the configurations skipped or failed."""
    cfg, machine = result["config"], result["machine"]
    dry = cfg["dry_run"]
    title = "# GPU check (`python -m benchmarks.gpu`)" + (" — dry run on the CPU" if dry else "")
    where = machine.get("cuda_device") if not dry else machine.get("cpu")
    parts = [
        title,
        f"Device: {where}; torch {machine.get('torch')}; commit {machine.get('git_commit')}; "
        f"{machine.get('timestamp')}. D = {cfg['dim']}, P x K labels with K = "
        f"{cfg['k_per_class']}, float32, margin {cfg['margin']}."
        + (
            " Dry run: CPU stand-ins for the CUDA-only parts; the numbers say nothing about a GPU."
            if dry
            else ""
        ),
    ]
    audit = result.get("sync_audit")
    if audit:
        verdict = "all within budget" if audit["passed"] else "SOME OVER BUDGET"
        parts += [
            f"## Sync audit: host synchronisations per call ({verdict})",
            f"Counted with {audit['how']}. Losses: forward + backward; miners: one call.",
            _audit_table(audit),
        ]
    profile = result.get("profile")
    if profile:
        parts += [
            f"## Profiler breakdown at N = {profile['n']} (eager, one forward + backward)",
            f"Time of {profile['activity']}, by family.",
            _profile_table(profile),
        ]
    timing = result.get("timing")
    if timing:
        rows = timing["rows"]
        timed = set(_names(rows))
        names = [n for n in result.get("methods", {}) if n in timed] or _names(rows)
        parts += [
            "## Forward + backward time (median after warm-up; ratio to torch.cdist)",
            f"Timer: {timing['timer']}.",
            _grid(rows, "time", names),
            "## Peak memory (extra over the inputs)",
            f"{timing['memory']}.",
            _grid(rows, "memory", names),
        ]
        compiled = [n for n in names if n.endswith("[compiled]")]
        if compiled:
            parts += [
                "## Compile time (first call at a size minus the median)",
                f"Backend {timing['compile_backend']!r}; its one-off start-up "
                f"({timing['compile_warmup_s'] or 0:.1f} s) is not included.",
                _grid(rows, "compile", compiled),
            ]
        notes = _notes(rows)
        if notes:
            parts += ["## Skipped and failed configurations", notes]
    missing = cfg.get("peers_missing")
    if missing:
        parts.append("Peers not installed (not measured): " + ", ".join(missing) + ".")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="Sync audit, time, memory and kernel breakdown of tripletkit on one GPU.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the whole pipeline on the CPU at tiny sizes (CI); writes gpu_dryrun.*",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    p.add_argument("--sizes", type=int, nargs="+", help="timed batch sizes")
    p.add_argument("--audit-sizes", type=int, nargs="+", help="sizes of the sync audit")
    p.add_argument("--profile-n", type=int, help=f"N of the profiler breakdown ({PROFILE_N})")
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for audit + profile + timings (default {DEFAULT_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--compile-backend",
        help="torch.compile backend (default inductor; aot_eager in a dry run)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the compiled losses")
    p.add_argument("--no-peers", action="store_true", help="skip PML and sentence-transformers")
    p.add_argument("--no-audit", action="store_true", help="skip the sync audit")
    p.add_argument("--no-profile", action="store_true", help="skip the profiler breakdown")
    p.add_argument("--threads", type=int, help="torch threads (CPU work, dry run)")
    return p


def _config(args: argparse.Namespace) -> GpuConfig:
    dry = bool(args.dry_run)
    sizes = sorted(set(args.sizes or (DRY_SIZES if dry else DEFAULT_SIZES)))
    audit_sizes = sorted(set(args.audit_sizes or (DRY_SIZES if dry else AUDIT_SIZES)))
    if min(sizes + audit_sizes) < 2 * K_PER_CLASS:
        raise UsageError(f"every size must be at least {2 * K_PER_CLASS} (two classes)")
    policy = (
        TimingPolicy(target_s=0.01, min_repeats=2, max_repeats=3, budget_s=MAX_CALL_S, warmups=1)
        if dry
        else TimingPolicy(target_s=0.5, min_repeats=3, max_repeats=20, budget_s=MAX_CALL_S)
    )
    return GpuConfig(
        device="cpu" if dry else "cuda",
        dry_run=dry,
        sizes=sizes,
        audit_sizes=audit_sizes,
        profile_n=args.profile_n or (max(sizes) if dry else PROFILE_N),
        budget_s=float(args.budget_s),
        compile_backend=args.compile_backend or ("aot_eager" if dry else "inductor"),
        compile=not args.no_compile,
        peers=not args.no_peers,
        audit=not args.no_audit,
        profile=not args.no_profile,
        out=args.out,
        policy=policy,
    )


def _config_json(cfg: GpuConfig, missing: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": cfg.device,
        "dry_run": cfg.dry_run,
        "sizes": cfg.sizes,
        "audit_sizes": cfg.audit_sizes,
        "profile_n": cfg.profile_n,
        "dim": DIM,
        "k_per_class": cfg.k,
        "max_positives": cfg.k - 1,
        "margin": MARGIN,
        "dtype": "float32",
        "budget_s": cfg.budget_s,
        "compile": cfg.compile,
        "compile_backend": cfg.compile_backend,
        "peers": cfg.peers,
        "peers_missing": missing,
        "timing": {
            "target_s": cfg.policy.target_s,
            "min_repeats": cfg.policy.min_repeats,
            "max_repeats": cfg.policy.max_repeats,
            "warmups": cfg.policy.warmups,
            "max_call_s": MAX_CALL_S,
            "weights": WEIGHTS,
            "compile_share": COMPILE_SHARE,
        },
    }
    if cfg.dry_run:
        out["stand_ins"] = {
            "sync audit": "dispatch counter instead of torch.cuda.set_sync_debug_mode",
            "timer": "time.perf_counter instead of CUDA events",
            "memory": "peak RSS instead of torch.cuda.max_memory_allocated",
            "profiler": "CPU activity (self CPU time of operations) instead of CUDA kernels",
            "compile backend": f"{cfg.compile_backend} instead of inductor",
        }
    else:
        props = torch.cuda.get_device_properties(0)
        out["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_memory_gib": props.total_memory / GIB,
            "cuda_version": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return out


def _paths(cfg: GpuConfig) -> tuple[Path, Path]:
    stem = "gpu_dryrun" if cfg.dry_run else "gpu"
    return cfg.out / f"{stem}.json", cfg.out / f"{stem}.md"


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the check; returns the result as saved to JSON, or ``None`` (after printing
    :data:`NO_CUDA_MESSAGE`) when there is no CUDA device and no ``--dry-run``."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return None
    cfg = _config(args)
    with thread_count(args.threads):
        return _run(cfg)


def _run(cfg: GpuConfig) -> dict[str, Any]:
    methods, missing = gpu_methods(cfg.peers, cfg.compile, cfg.compile_backend, cfg.k)
    result = new_result("gpu", config=_config_json(cfg, missing))
    result["methods"] = {
        m.name: {
            "description": m.method.description,
            "variant": m.variant,
            "family": m.method.family,
            "strategy": m.method.strategy,
        }
        for m in methods
    }
    if cfg.audit:
        result["sync_audit"] = run_audit(cfg)
    if cfg.profile:
        result["profile"] = run_profile(cfg, methods)
    result["timing"] = run_timing(cfg, methods)
    json_path, md_path = _paths(cfg)
    result["files"] = {"json": str(json_path), "md": str(md_path)}
    result["elapsed_s"] = time.perf_counter() - cfg.started
    text = markdown_report(result)
    save_json(json_path, result)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    print(text)
    print(f"Wrote {json_path} and {md_path} ({result['elapsed_s']:.0f} s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: :func:`run`, then the exit status (0; :data:`EXIT_NO_CUDA` without
    CUDA)."""
    result = run(argv)
    return EXIT_NO_CUDA if result is None else 0


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.gpu")
