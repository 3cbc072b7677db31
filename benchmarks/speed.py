"""Speed and peak-memory benchmark of the fused triplet losses, side by side with their peers.

Measures forward + backward (``loss.backward()``) of every tripletkit strategy (batch-all
hinge and soft margin, batch-hard, semi-hard) for each backend, of the floor every online
miner pays (``torch.cdist(x, x)`` forward + ``.sum().backward()``), and of the peers
pytorch-metric-learning and online-triplet-loss when they are installed, over
``N in {128, ..., 8192}`` on every device present. Times are medians over repeats after
warm-up and are also reported as a ratio to ``torch.cdist`` at the same ``N``.

Usage::

    python -m benchmarks.speed                  # full run, CPU (and CUDA when present)
    python -m benchmarks.speed --quick          # CI smoke test, well under 30 s
    python -m benchmarks.speed --sizes 512 1024 --device cpu --no-peers --threads 2

Writes ``speed_<device>.json`` (``speed_<device>_quick.json`` with ``--quick``) and a
log-log plot of the same name (``.png``) to ``--out`` (default ``benchmarks/results/``),
prints a markdown table and checks the targets of the issue (PASS / FAIL / N/A).

Inputs: ``D = 128`` float32 normal embeddings; ``P x K`` labels with ``K = 8``
(``arange(N // 8).repeat_interleave(8)``, shuffled); plus a "two classes" configuration
(batch-all at ``N = 2048``, about 2.1e9 valid triplets). Peers are O(N^3): a method whose
run exceeded the time budget, whose predicted time or whose estimated memory is too large
is recorded as skipped at larger ``N``. A configuration that raises is recorded as an error
and the run carries on. Peak memory is the extra peak RSS of one call in a fresh subprocess
(peak reset through ``/proc/self/clear_refs``; ``ru_maxrss`` as a fallback) on CPU and
``torch.cuda.max_memory_allocated`` on CUDA.

Timings live here, never in unit tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .common import REPO_ROOT, RESULTS_DIR, machine_info, progress, save_json

__all__ = [
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "Method",
    "build_methods",
    "check_targets",
    "main",
    "make_inputs",
    "markdown_table",
    "plot_results",
]

#: Batch sizes of a full run and of ``--quick``.
DEFAULT_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_SIZES = (128, 256)
#: Embedding dimension, samples per class and margin of every configuration.
DIM = 128
K_PER_CLASS = 8
MARGIN = 0.2
#: ``N`` of the "two classes" batch-all configuration (``N^3 / 4`` valid triplets).
TWO_CLASS_N = 2048
#: Sizes at which the tripletkit strategies and cdist get a memory subprocess by default.
KEY_MEMORY_SIZES = (1024, 8192)
#: ``N`` of the pre-warm calls that absorb one-off costs (numba compilation).
PREWARM_N = 32
#: ``N`` at which the speed targets of the issue are checked.
TARGET_N = 1024
GIB = 1024**3

LossFn = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One measured method: ``make()`` returns ``f(embeddings, labels) -> 0-dim loss``.

    Attributes:
        name: identifier used in the JSON, the table and the plot.
        family: ``"baseline"`` (cdist), ``"tripletkit"`` or ``"peer"``.
        strategy: ``"cdist"``, ``"batch_all"``, ``"batch_all_soft"``, ``"batch_hard"``,
            ``"semi_hard"``.
        backend: the tripletkit backend (``"torch"`` / ``"numba"``), else ``None``.
        description: what exactly runs.
        make: builds the loss function (imports happen here, outside the timings).
        time_exponent: expected growth of the time with ``N``, used to predict whether the
            next size fits in the time budget (``None``: no prediction).
        memory_estimate: estimated peak bytes for ``(n, labels)``, used to skip
            configurations that cannot fit (``None``: O(N^2), never skipped).
        cuda: whether the method runs on CUDA tensors.
    """

    name: str
    family: str
    strategy: str
    backend: str | None
    description: str
    make: Callable[[], LossFn]
    time_exponent: float | None = None
    memory_estimate: Callable[[int, Tensor], float] | None = None
    cuda: bool = True


def _valid_triplets(labels: Tensor) -> int:
    """Number of valid triplets ``(a, p, n)`` of a label vector (``p != a``)."""
    _, counts = torch.unique(labels, return_counts=True)
    c = counts.to(torch.float64)
    n = float(labels.numel())
    return int(((c * (c - 1)) * (n - c)).sum().item())


def _pml_all_memory(n: int, labels: Tensor) -> float:
    # get_all_triplets_indices: an N^3 uint8 product while N^3 < INT_MAX (a per-anchor
    # loop beyond), then ~120 bytes per listed triplet (three int64 index vectors, the
    # gathered distances, the mask and the loss terms kept for backward).
    cube = float(n) ** 3 if float(n) ** 3 < 2**31 - 1 else 0.0
    return cube + 120.0 * _valid_triplets(labels)


def _otl_all_memory(n: int, labels: Tensor) -> float:
    # Several N^3 float32 and bool tensors (measured: ~21 bytes per N^3 element).
    return 24.0 * float(n) ** 3


def _cdist() -> LossFn:
    def f(x: Tensor, y: Tensor) -> Tensor:
        return torch.cdist(x, x).sum()

    return f


def _tripletkit(strategy: str, backend: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        from tripletkit.losses.fused import (
            batch_all_triplet_loss,
            batch_hard_triplet_loss,
            semi_hard_triplet_loss,
        )

        if strategy == "batch_all":
            return lambda x, y: batch_all_triplet_loss(
                x, y, MARGIN, reduction="mean_nonzero", backend=backend
            )
        if strategy == "batch_all_soft":
            return lambda x, y: batch_all_triplet_loss(
                x, y, soft_margin=True, reduction="mean", backend=backend
            )
        if strategy == "batch_hard":
            return lambda x, y: batch_hard_triplet_loss(x, y, MARGIN, backend=backend)
        if strategy == "semi_hard":
            return lambda x, y: semi_hard_triplet_loss(x, y, MARGIN, backend=backend)
        raise ValueError(f"unknown strategy {strategy!r}")

    return make


def _pml(kind: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        from pytorch_metric_learning import losses, miners

        miner: Any
        if kind == "batch_hard":
            miner = miners.BatchHardMiner()
        else:
            miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets=kind)
        loss_fn = losses.TripletMarginLoss(margin=MARGIN)

        def f(x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(x, y, miner(x, y))

        return f

    return make


def _otl(kind: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        from online_triplet_loss import losses as otl

        if kind == "batch_all":

            def f(x: Tensor, y: Tensor) -> Tensor:
                loss, _fraction_positive = otl.batch_all_triplet_loss(y, x, MARGIN)
                return loss

            return f
        return lambda x, y: otl.batch_hard_triplet_loss(y, x, MARGIN)

    return make


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def build_methods(
    peers: bool = True, backends: Sequence[str] = ("torch", "numba")
) -> tuple[list[Method], list[str]]:
    """The methods to measure, and the peers that were asked for but are not installed.

    Args:
        peers: include pytorch-metric-learning and online-triplet-loss when installed.
        backends: tripletkit backends to measure.
    """
    methods = [
        Method(
            "cdist",
            "baseline",
            "cdist",
            None,
            "torch.cdist(x, x) forward + .sum().backward() (the floor of any online miner)",
            _cdist,
            time_exponent=2.0,
        )
    ]
    for strategy in ("batch_all", "batch_all_soft", "batch_hard", "semi_hard"):
        for backend in backends:
            methods.append(
                Method(
                    f"{strategy}[{backend}]",
                    "tripletkit",
                    strategy,
                    backend,
                    f"tripletkit {strategy} loss, backend={backend!r}",
                    _tripletkit(strategy, backend),
                    cuda=backend != "numba",
                )
            )
    missing: list[str] = []
    if not peers:
        return methods, missing
    if _installed("pytorch_metric_learning"):
        pml_doc = "pytorch-metric-learning {} + TripletMarginLoss(margin=0.2) (default LpDistance)"
        methods += [
            Method(
                "pml_all",
                "peer",
                "batch_all",
                None,
                pml_doc.format("TripletMarginMiner(margin=0.2, type_of_triplets='all')"),
                _pml("all"),
                time_exponent=3.0,
                memory_estimate=_pml_all_memory,
            ),
            Method(
                "pml_semihard",
                "peer",
                "semi_hard",
                None,
                pml_doc.format("TripletMarginMiner(margin=0.2, type_of_triplets='semihard')"),
                _pml("semihard"),
                time_exponent=3.0,
                memory_estimate=_pml_all_memory,
            ),
            Method(
                "pml_batch_hard",
                "peer",
                "batch_hard",
                None,
                pml_doc.format("BatchHardMiner()"),
                _pml("batch_hard"),
                time_exponent=2.0,
            ),
        ]
    else:
        missing.append("pytorch-metric-learning")
    if _installed("online_triplet_loss"):
        methods += [
            Method(
                "otl_batch_all",
                "peer",
                "batch_all",
                None,
                "online_triplet_loss.losses.batch_all_triplet_loss(labels, x, margin=0.2)",
                _otl("batch_all"),
                time_exponent=3.0,
                memory_estimate=_otl_all_memory,
            ),
            Method(
                "otl_batch_hard",
                "peer",
                "batch_hard",
                None,
                "online_triplet_loss.losses.batch_hard_triplet_loss(labels, x, margin=0.2)",
                _otl("batch_hard"),
                time_exponent=2.0,
            ),
        ]
    else:
        missing.append("online-triplet-loss")
    return methods, missing


# --------------------------------------------------------------------------------------
# Inputs, timing and memory
# --------------------------------------------------------------------------------------


def make_inputs(
    n: int, labels_kind: str = "pk", device: str = "cpu", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Embeddings ``[n, 128]`` (standard normal, float32, ``requires_grad``) and labels.

    Args:
        n: batch size.
        labels_kind: ``"pk"`` (classes of ``K = 8`` samples) or ``"two_classes"``.
        device: ``"cpu"`` or ``"cuda"``.
        seed: the same seed gives the same inputs on every run and in every subprocess.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
    if labels_kind == "pk":
        labels = torch.arange(max(n // K_PER_CLASS, 1)).repeat_interleave(K_PER_CLASS)[:n]
        if labels.numel() < n:  # n not a multiple of K: pad the last class
            labels = torch.cat([labels, labels.new_full((n - labels.numel(),), int(labels[-1]))])
    elif labels_kind == "two_classes":
        labels = torch.arange(2).repeat_interleave((n + 1) // 2)[:n]
    else:
        raise ValueError(f"unknown labels_kind {labels_kind!r}")
    labels = labels[torch.randperm(n, generator=gen)]
    x = torch.randn(n, DIM, generator=gen, dtype=torch.float32)
    x = x.to(device).requires_grad_(True)
    return x, labels.to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _call(f: LossFn, x: Tensor, y: Tensor, device: str) -> tuple[float, Tensor]:
    """One forward + backward; returns its wall time in seconds and the (detached) loss."""
    wall, _cpu, loss = _call_cpu(f, x, y, device)
    return wall, loss


def _call_cpu(f: LossFn, x: Tensor, y: Tensor, device: str) -> tuple[float, float, Tensor]:
    """One forward + backward: wall time, process CPU time (all threads) and the loss."""
    x.grad = None
    _sync(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss = f(x, y)
    loss.backward()
    _sync(device)
    t1 = time.perf_counter()
    return t1 - t0, time.process_time() - c0, loss.detach()


@dataclass
class TimingPolicy:
    """How many warm-ups and repeats a configuration gets.

    Attributes:
        target_s: repeats fill about this many seconds...
        min_repeats, max_repeats: ...within these bounds.
        budget_s: a call slower than this is not repeated. Peers (O(N^3)) are then skipped
            at larger ``N``, and so is a peer whose predicted time exceeds ``2 * budget_s``;
            tripletkit and cdist always run, with a single call when over the budget.
        warmups: warm-up calls (the first one also compiles numba kernels); a first call
            slower than ``1 s`` counts as the only warm-up.
    """

    target_s: float = 0.5
    min_repeats: int = 3
    max_repeats: int = 20
    budget_s: float = 10.0
    warmups: int = 2


def time_method(
    f: LossFn, x: Tensor, y: Tensor, device: str, policy: TimingPolicy
) -> dict[str, Any]:
    """Warm up, then time ``f`` forward + backward; returns the timing fields of a result:
    ``times_s`` (wall), ``median_s`` (the headline figure), ``min_s``, ``cpu_times_s`` and
    ``cpu_median_s`` (process CPU time, all threads: steadier on a busy machine),
    ``repeats``, ``first_call_s`` (the first warm-up) and the last ``loss``."""
    first, first_cpu, loss = _call_cpu(f, x, y, device)
    out: dict[str, Any] = {"first_call_s": first}
    if first > policy.budget_s:
        out.update(times_s=[first], cpu_times_s=[first_cpu], repeats=1, over_budget=True)
    else:
        estimate = first
        for _ in range(policy.warmups - 1):
            if estimate > 1.0:
                break
            estimate, loss = _call(f, x, y, device)
        repeats = math.ceil(policy.target_s / max(estimate, 1e-6))
        repeats = min(repeats, max(1, int(policy.budget_s / max(estimate, 1e-6))))
        repeats = max(policy.min_repeats, min(policy.max_repeats, repeats))
        times, cpu = [], []
        for _ in range(repeats):
            dt, dc, loss = _call_cpu(f, x, y, device)
            times.append(dt)
            cpu.append(dc)
        out.update(times_s=times, cpu_times_s=cpu, repeats=repeats, over_budget=False)
    out["median_s"] = statistics.median(out["times_s"])
    out["min_s"] = min(out["times_s"])
    if out.get("cpu_times_s"):
        out["cpu_median_s"] = statistics.median(out["cpu_times_s"])
    out["loss"] = float(loss.item())
    return out


def _proc_status() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process in bytes (Linux), else ``{}``."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return values


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return "VmHWM" in _proc_status()


def _maxrss_bytes() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _malloc_trim() -> None:
    """Hand the C heap's free memory back to the OS (glibc), so that memory freed by the
    warm-up can neither inflate the baseline nor hide part of the peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory_here(
    method: Method, n: int, labels_kind: str, device: str, seed: int = 0
) -> dict[str, Any]:
    """Extra peak memory of one forward + backward at ``N = n``, measured in this process.

    The inputs are allocated and the method warmed up at a small ``N`` (compilation,
    thread pools, lazy imports), then one call at ``n`` is measured. On CPU, meant to run
    in a fresh process (see :func:`measure_memory_subprocess`): the peak RSS is reset
    through ``/proc/self/clear_refs`` and the extra peak is ``VmHWM`` after the call minus
    ``VmRSS`` before it; without ``clear_refs``, the growth of ``ru_maxrss`` over the call.
    On CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
    """
    f = method.make()
    x, y = make_inputs(n, labels_kind, device, seed)
    xs, ys = make_inputs(min(n, 64), labels_kind, device, seed)
    _call(f, xs, ys, device)
    del xs, ys
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _call(f, x, y, device)
        peak = torch.cuda.max_memory_allocated()
        how = "torch.cuda.max_memory_allocated"
    else:
        _malloc_trim()
        if _reset_peak_rss():
            base = _proc_status()["VmRSS"]
            _call(f, x, y, device)
            peak = _proc_status()["VmHWM"]
            how = "VmHWM after /proc/self/clear_refs"
        else:
            base = _maxrss_bytes()
            _call(f, x, y, device)
            peak = _maxrss_bytes()
            how = "ru_maxrss growth"
    return {
        "extra_peak_bytes": max(peak - base, 0),
        "baseline_bytes": base,
        "peak_bytes": peak,
        "how": how,
    }


def measure_memory_subprocess(
    method: Method,
    n: int,
    labels_kind: str,
    device: str,
    threads: int | None,
    peers: bool,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Run :func:`measure_memory_here` in a fresh interpreter; errors are returned, not raised."""
    spec = {
        "method": method.name,
        "n": n,
        "labels": labels_kind,
        "device": device,
        "threads": threads,
        "peers": peers,
    }
    cmd = [sys.executable, "-m", "benchmarks.speed", "--memory-child", json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory subprocess timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"memory subprocess exit {proc.returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _memory_child(spec_json: str) -> int:
    """Entry point of the memory subprocess: prints one JSON line."""
    spec = json.loads(spec_json)
    _set_threads(spec.get("threads"))
    methods, _ = build_methods(peers=bool(spec.get("peers", True)))
    method = next(m for m in methods if m.name == spec["method"])
    try:
        result = measure_memory_here(method, int(spec["n"]), spec["labels"], spec["device"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result), flush=True)
    return 0


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    torch.set_num_threads(threads)
    _set_numba_threads(threads)


def _set_numba_threads(threads: int) -> None:
    try:
        import numba

        most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
        numba.set_num_threads(min(threads, most))
    except Exception:  # noqa: BLE001 - numba missing or its threading layer unavailable
        pass


def _numba_threads() -> int | None:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


def _available_bytes(device: str) -> float:
    """Free memory on ``device``: ``MemAvailable`` on CPU, ``mem_get_info`` on CUDA."""
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 8.0 * GIB


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines one benchmark run on one device."""

    device: str
    sizes: list[int]
    quick: bool
    peers: bool
    threads: int | None
    memory: str  # "key", "all" or "none"
    two_class_n: int | None
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    mem_limit_bytes: float = 0.0
    seed: int = 0


def _entry(method: Method, n: int, labels_kind: str, device: str) -> dict[str, Any]:
    return {
        "method": method.name,
        "family": method.family,
        "strategy": method.strategy,
        "backend": method.backend,
        "device": device,
        "n": n,
        "labels": labels_kind,
        "status": "pending",
    }


def _skip_reason(
    method: Method,
    n: int,
    labels: Tensor,
    cfg: RunConfig,
    over_budget_at: dict[str, tuple[int, float]],
    last_ok: dict[str, tuple[int, float]],
) -> str | None:
    if cfg.device == "cuda" and not method.cuda:
        return "runs on CPU tensors only"
    if method.family == "peer" and method.name in over_budget_at:
        n0, t0 = over_budget_at[method.name]
        return f"a run at N={n0} took {t0:.1f} s > budget {cfg.policy.budget_s:.0f} s"
    if method.time_exponent is not None and method.family == "peer" and method.name in last_ok:
        n0, t0 = last_ok[method.name]
        predicted = t0 * (n / n0) ** method.time_exponent
        if predicted > 2 * cfg.policy.budget_s:
            return (
                f"predicted {predicted:.0f} s per run from {t0:.2f} s at N={n0} "
                f"(O(N^{method.time_exponent:g}); budget {cfg.policy.budget_s:.0f} s)"
            )
    if method.memory_estimate is not None:
        need = method.memory_estimate(n, labels)
        if need > cfg.mem_limit_bytes:
            return (
                f"estimated memory {need / GIB:.1f} GiB > limit {cfg.mem_limit_bytes / GIB:.1f} GiB"
            )
    return None


def _plan(methods: list[Method], cfg: RunConfig) -> list[tuple[Method, int, str]]:
    """Configurations in run order: sizes ascending (cdist first), then the two-class one."""
    plan = [(m, n, "pk") for n in sorted(cfg.sizes) for m in methods]
    if cfg.two_class_n:
        for m in methods:
            # Hinge only: the soft margin sums every one of the ~N^3 / 4 terms (minutes).
            if m.family != "peer" and m.strategy in ("cdist", "batch_all"):
                plan.append((m, cfg.two_class_n, "two_classes"))
    return plan


def _memory_wanted(method: Method, n: int, labels_kind: str, cfg: RunConfig) -> bool:
    if cfg.memory == "none":
        return False
    if cfg.memory == "all" or cfg.device == "cuda":
        return True
    if cfg.quick:
        default_backend = "numba" if cfg.device == "cpu" else "torch"
        return (
            method.strategy == "batch_all"
            and method.backend == default_backend
            and labels_kind == "pk"
            and n == max(cfg.sizes)
        )
    return method.family != "peer" and labels_kind == "pk" and n in KEY_MEMORY_SIZES


def prewarm(f: LossFn, device: str, seed: int = 0, n: int = PREWARM_N) -> dict[str, Any]:
    """Two calls at a tiny ``N`` before a method's first measurement: the first one pays the
    one-off costs (numba compilation or cache loading, thread pools, lazy imports), kept out
    of every timing. ``one_off_s`` (first minus second call) is that cost; for numba
    methods it is the compile (or cache-load) time."""
    x, y = make_inputs(n, "pk", device, seed)
    first, _ = _call(f, x, y, device)
    second, _ = _call(f, x, y, device)
    return {
        "n": n,
        "first_call_s": first,
        "second_call_s": second,
        "one_off_s": max(first - second, 0.0),
    }


def run_device(
    methods: list[Method], cfg: RunConfig
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Time every planned configuration on one device, then measure the memory ones.

    Returns:
        The result entries, and per method the :func:`prewarm` figures (or its error).
    """
    results: list[dict[str, Any]] = []
    over_budget_at: dict[str, tuple[int, float]] = {}
    last_ok: dict[str, tuple[int, float]] = {}
    made: dict[str, LossFn | BaseException] = {}
    warm_info: dict[str, dict[str, Any]] = {}
    inputs_key: tuple[int, str] | None = None
    x = y = torch.empty(0)
    plan = _plan(methods, cfg)
    bar = progress(plan, desc=f"speed [{cfg.device}]", total=len(plan), leave=False)
    for method, n, labels_kind in bar:
        set_postfix = getattr(bar, "set_postfix_str", None)
        if set_postfix is not None:
            set_postfix(f"{method.name} N={n}{' 2cls' if labels_kind != 'pk' else ''}")
        entry = _entry(method, n, labels_kind, cfg.device)
        results.append(entry)
        if inputs_key != (n, labels_kind):
            x, y = make_inputs(n, labels_kind, cfg.device, cfg.seed)
            inputs_key = (n, labels_kind)
        reason = _skip_reason(method, n, y, cfg, over_budget_at, last_ok)
        if reason is not None:
            entry.update(status="skipped", reason=reason)
            continue
        if method.name not in made:
            try:
                fn = method.make()
                made[method.name] = fn
                warm_info[method.name] = prewarm(fn, cfg.device, cfg.seed)
            except Exception as exc:  # noqa: BLE001 - remembered, reported at every size
                made[method.name] = exc
                warm_info[method.name] = {
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                    "traceback": traceback.format_exc(limit=-3)[-1500:],
                }
        f = made[method.name]
        if isinstance(f, BaseException):
            entry.update(
                status="error", error="pre-warm failed: " + warm_info[method.name]["error"]
            )
            continue
        try:
            gc.collect()
            entry.update(time_method(f, x, y, cfg.device, cfg.policy))
        except Exception as exc:  # noqa: BLE001 - a failed configuration is a result
            entry.update(
                status="error",
                error=f"{type(exc).__name__}: {exc}"[:500],
                traceback=traceback.format_exc(limit=-3)[-1500:],
            )
            x.grad = None
            gc.collect()
            if cfg.device == "cuda":
                torch.cuda.empty_cache()
            continue
        entry["status"] = "ok"
        if entry.pop("over_budget"):
            over_budget_at[method.name] = (n, entry["median_s"])
            entry["note"] = "over the time budget: a single run, not repeated"
        elif labels_kind == "pk":
            last_ok[method.name] = (n, entry["median_s"])
    x = y = torch.empty(0)
    made.clear()
    gc.collect()
    _attach_ratios(results)

    todo = [
        e
        for e, (m, n, lk) in zip(results, plan, strict=True)
        if e["status"] == "ok" and _memory_wanted(m, n, lk, cfg)
    ]
    by_name = {m.name: m for m in methods}
    for e in progress(todo, desc=f"memory [{cfg.device}]", total=len(todo), leave=False):
        method = by_name[e["method"]]
        if cfg.device == "cuda":
            try:
                e["memory"] = measure_memory_here(method, e["n"], e["labels"], "cuda", cfg.seed)
            except Exception as exc:  # noqa: BLE001
                e["memory"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        else:
            e["memory"] = measure_memory_subprocess(
                method, e["n"], e["labels"], cfg.device, cfg.threads, cfg.peers
            )
    return results, warm_info


def _attach_ratios(results: list[dict[str, Any]]) -> None:
    """``ratio_to_cdist``: each median over the cdist median at the same device, N and
    label configuration (any cdist at that N when the same labels were not timed)."""
    base: dict[tuple[str, int, str], float] = {}
    for e in results:
        if e["method"] == "cdist" and e["status"] == "ok":
            base[(e["device"], e["n"], e["labels"])] = e["median_s"]
    for e in results:
        ref = base.get((e["device"], e["n"], e["labels"]))
        if ref is None:
            ref = next(
                (t for (d, n, _), t in base.items() if (d, n) == (e["device"], e["n"])), None
            )
        if e["status"] == "ok" and ref:
            e["ratio_to_cdist"] = e["median_s"] / ref


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def _find(
    results: list[dict[str, Any]], method: str, n: int, labels: str = "pk"
) -> dict[str, Any] | None:
    for e in results:
        if e["method"] == method and e["n"] == n and e["labels"] == labels:
            return e
    return None


def _ok(e: dict[str, Any] | None) -> bool:
    return e is not None and e["status"] == "ok"


def _why_missing(e: dict[str, Any] | None) -> str:
    if e is None:
        return "not measured"
    if e["status"] == "ok":
        return "no memory figure: " + str((e.get("memory") or {}).get("error", "not measured"))
    return f"{e['status']}: {e.get('reason') or e.get('error')}"


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"name", "passed": True | False | None, "detail"}``.

    ``passed`` is ``None`` (N/A) when a configuration the target needs was not measured.
    Speed targets are checked at ``N = 1024`` for both tripletkit backends; the one
    ``backend="auto"`` picks on the device is flagged ``default_backend``.
    """
    results = result["results"]
    device = result["config"]["device"]
    auto = "numba" if device == "cpu" else "torch"
    backends = result["config"]["backends"]
    targets: list[dict[str, Any]] = []

    def add(name: str, passed: bool | None, detail: str, backend: str | None = None) -> None:
        targets.append(
            {
                "name": name,
                "passed": passed,
                "detail": detail,
                "backend": backend,
                "default_backend": backend is None or backend == auto,
            }
        )

    n = TARGET_N
    for strategy, limit in (("batch_all", 3.0), ("semi_hard", 3.0), ("batch_hard", 1.5)):
        for b in backends:
            e = _find(results, f"{strategy}[{b}]", n)
            name = f"N={n} {strategy}[{b}] <= {limit:g}x cdist"
            if _ok(e) and e is not None and "ratio_to_cdist" in e:
                r = e["ratio_to_cdist"]
                add(name, r <= limit, f"{r:.2f}x ({1e3 * e['median_s']:.1f} ms)", b)
            else:
                add(name, None, _why_missing(e), b)
    peer = _find(results, "pml_all", n)
    for b in backends:
        e = _find(results, f"batch_all[{b}]", n)
        name = f"N={n} batch_all[{b}] >= 30x faster than PML all-triplets"
        if _ok(e) and _ok(peer) and e is not None and peer is not None:
            speedup = peer["median_s"] / e["median_s"]
            add(name, speedup >= 30.0, f"{speedup:.1f}x faster", b)
        else:
            add(name, None, _why_missing(e if not _ok(e) else peer), b)
    big = 8192
    for b in backends:
        e = _find(results, f"batch_all[{b}]", big)
        name = f"N={big} batch_all[{b}] extra peak memory < 2 GiB"
        mem = (e or {}).get("memory") or {}
        if _ok(e) and "extra_peak_bytes" in mem:
            extra = mem["extra_peak_bytes"]
            add(name, extra < 2 * GIB, f"{extra / GIB:.3f} GiB ({mem.get('how')})", b)
        else:
            add(name, None, _why_missing(e), b)
    if "numba" in backends and "torch" in backends:
        for strategy in ("batch_all", "semi_hard"):
            en = _find(results, f"{strategy}[numba]", n)
            et = _find(results, f"{strategy}[torch]", n)
            name = f"N={n} {strategy}: numba at least as fast as torch"
            if _ok(en) and _ok(et) and en is not None and et is not None:
                tn, tt = en["median_s"], et["median_s"]
                add(name, tn <= tt, f"numba {1e3 * tn:.1f} ms vs torch {1e3 * tt:.1f} ms")
            else:
                add(name, None, _why_missing(en if not _ok(en) else et))
    return targets


def _cell(e: dict[str, Any] | None) -> str:
    if e is None:
        return ""
    if e["status"] == "skipped":
        return "skip"
    if e["status"] == "error":
        return "error"
    ms = 1e3 * e["median_s"]
    text = f"{ms:.3g} ms" if ms < 1000 else f"{ms:,.0f} ms"
    if "ratio_to_cdist" in e:
        text += f" ({e['ratio_to_cdist']:.3g}x)"
    return text


def _format_bytes(b: float) -> str:
    if b >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / 1024**2:.1f} MiB"


def markdown_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Markdown tables of a run: time (and ratio to cdist) per ``N`` and method, the
    two-class configuration, the extra peak memory measured, and the skips and errors.

    Args:
        results: the dict returned for one device (see :func:`main`) or its ``"results"``.
    """
    rows = results["results"] if isinstance(results, dict) else results
    names: list[str] = []
    for e in rows:
        if e["method"] not in names:
            names.append(e["method"])
    parts: list[str] = []
    sizes = sorted({e["n"] for e in rows if e["labels"] == "pk"})
    if sizes:
        lines = ["| N | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for n in sizes:
            cells = [_cell(_find(rows, name, n)) for name in names]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    two = [e for e in rows if e["labels"] == "two_classes"]
    if two:
        lines = ["| two classes, N | method | time (ratio to cdist) |", "|---:|---|---:|"]
        lines += [f"| {e['n']} | {e['method']} | {_cell(e)} |" for e in two]
        parts.append("\n".join(lines))
    mem = [e for e in rows if e.get("memory")]
    if mem:
        lines = ["| memory, N | method | extra peak |", "|---:|---|---:|"]
        for e in mem:
            m = e["memory"]
            value = _format_bytes(m["extra_peak_bytes"]) if "extra_peak_bytes" in m else "error"
            lines.append(f"| {e['n']} | {e['method']} | {value} |")
        parts.append("\n".join(lines))
    notes = [e for e in rows if e["status"] in ("skipped", "error")]
    if notes:
        lines = []
        for e in notes:
            why = e.get("reason") or e.get("error")
            lines.append(f"- {e['method']} N={e['n']} ({e['labels']}): {e['status']}: {why}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot_results(result: dict[str, Any], path: Path) -> Path | None:
    """Log-log plot: time vs N (left) and ratio to cdist vs N (right), one line per method
    (P x K configurations only). Returns ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [e for e in result["results"] if e["labels"] == "pk" and e["status"] == "ok"]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(13, 5.5))
    names: list[str] = []
    for e in rows:
        if e["method"] not in names:
            names.append(e["method"])
    strategy_colors = {
        "batch_all": "tab:blue",
        "batch_all_soft": "tab:cyan",
        "batch_hard": "tab:red",
        "semi_hard": "tab:green",
    }
    peer_colors = iter(["tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:orange"])
    for name in names:
        pts = sorted(((e["n"], e) for e in rows if e["method"] == name), key=lambda p: p[0])
        first = pts[0][1]
        family, backend = first["family"], first["backend"]
        if family == "baseline":
            style: dict[str, Any] = {"color": "black", "linestyle": "-", "marker": "x"}
        elif family == "tripletkit":
            style = {
                "color": strategy_colors.get(first["strategy"], "tab:gray"),
                "linestyle": "--" if backend == "numba" else "-",
                "marker": "o",
            }
        else:
            style = {"color": next(peer_colors, "tab:gray"), "linestyle": ":", "marker": "s"}
        style.update(markersize=4, label=name)
        ns = [n for n, _ in pts]
        ax_t.plot(ns, [1e3 * e["median_s"] for _, e in pts], **style)
        ratios = [(n, e["ratio_to_cdist"]) for n, e in pts if "ratio_to_cdist" in e]
        if ratios and family != "baseline":
            ax_r.plot([n for n, _ in ratios], [r for _, r in ratios], **style)
    sizes = sorted({e["n"] for e in rows})
    for ax, ylabel in ((ax_t, "forward + backward time (ms)"), (ax_r, "time / torch.cdist time")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if sizes:
            ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("batch size N (P x K, K = 8, D = 128)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_r.axhline(1.0, color="black", linewidth=0.8, label="cdist")
    ax_t.legend(fontsize=7, ncol=2)
    machine = result.get("machine", {})
    fig.suptitle(
        f"tripletkit speed on {result['config']['device']} ({machine.get('cpu', '?')}, "
        f"torch threads: {machine.get('torch_threads', '?')})"
        + (" [quick]" if result["config"]["quick"] else "")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_targets(targets: list[dict[str, Any]]) -> None:
    for t in targets:
        verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["passed"]]
        flag = "" if t["default_backend"] else "  (non-default backend)"
        print(f"  [{verdict}] {t['name']}: {t['detail']}{flag}")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Speed and peak memory of tripletkit's fused losses vs torch.cdist and peers.",
    )
    p.add_argument("--quick", action="store_true", help="CI smoke test: N in {128, 256}")
    p.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default 128 ... 8192)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        nargs="+",
        help="devices (default: cpu, plus cuda when available)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="output folder (default benchmarks/results/), or a .json file path",
    )
    p.add_argument("--no-peers", action="store_true", help="skip PML and online-triplet-loss")
    p.add_argument("--threads", type=int, help="torch and numba threads")
    p.add_argument(
        "--memory",
        choices=("key", "all", "none"),
        default="key",
        help="peak-memory runs: key configurations (default), all, or none",
    )
    p.add_argument("--budget", type=float, default=10.0, help="time budget per run (s)")
    p.add_argument(
        "--mem-limit-gb",
        type=float,
        help="skip configurations estimated above this (default: half the free memory)",
    )
    p.add_argument(
        "--two-class-n",
        type=int,
        help=f"N of the two-class batch-all configuration (default {TWO_CLASS_N}; 0: none)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p


def _json_path(out: Path, device: str, suffix: str, several: bool) -> Path:
    """``out/speed_<device><suffix>.json``; when ``out`` itself ends in ``.json`` it is the
    file (with ``_<device>`` inserted when several devices run)."""
    if out.suffix == ".json":
        return out.with_name(f"{out.stem}_{device}.json") if several else out
    return out / f"speed_{device}{suffix}.json"


def _devices(requested: list[str] | None) -> list[str]:
    if requested:
        return list(dict.fromkeys(requested))
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{device: result}`` with each result as saved to JSON.

    A result holds ``machine`` (:func:`~benchmarks.common.machine_info`), ``config``,
    ``methods`` (name -> description, family, strategy, backend, :func:`prewarm` figures
    and, for numba, ``compile_s``), ``results`` (one entry per configuration with
    ``status`` ``"ok"`` / ``"skipped"`` / ``"error"``, ``median_s``, ``times_s``,
    ``ratio_to_cdist``, ``first_call_s``, ``memory``...), ``targets`` (see
    :func:`check_targets`), ``files`` and ``elapsed_s``. The torch and numba thread
    counts are restored on return.
    """
    args = _parser().parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return {}
    saved_threads = (torch.get_num_threads(), _numba_threads())
    _set_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(saved_threads[0])
        if saved_threads[1] is not None:
            _set_numba_threads(saved_threads[1])


def _run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if any(n < 2 for n in sizes):
        raise SystemExit("every size must be at least 2")
    if args.two_class_n is not None:
        two_class_n = args.two_class_n or None
    else:
        two_class_n = max(sizes) if args.quick else TWO_CLASS_N
    policy = (
        TimingPolicy(target_s=0.05, min_repeats=1, max_repeats=2, budget_s=args.budget, warmups=1)
        if args.quick
        else TimingPolicy(budget_s=args.budget)
    )
    methods, missing = build_methods(peers=not args.no_peers)
    out_dir: Path = args.out
    suffix = "_quick" if args.quick else ""
    runs: dict[str, Any] = {}
    devices = _devices(args.device)
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("CUDA is not available: skipping --device cuda", file=sys.stderr)
            continue
        started = time.perf_counter()
        limit = args.mem_limit_gb * GIB if args.mem_limit_gb else 0.5 * _available_bytes(device)
        cfg = RunConfig(
            device=device,
            sizes=sorted(set(sizes)),
            quick=args.quick,
            peers=not args.no_peers,
            threads=args.threads,
            memory=args.memory,
            two_class_n=two_class_n,
            policy=policy,
            mem_limit_bytes=limit,
        )
        results, warm_info = run_device(methods, cfg)
        result: dict[str, Any] = {
            "benchmark": "speed",
            "machine": machine_info(),
            "config": {
                "device": device,
                "sizes": cfg.sizes,
                "dim": DIM,
                "k_per_class": K_PER_CLASS,
                "margin": MARGIN,
                "dtype": "float32",
                "two_class_n": two_class_n,
                "quick": args.quick,
                "peers": not args.no_peers,
                "peers_missing": missing,
                "backends": sorted({m.backend for m in methods if m.backend}),
                "threads": args.threads,
                "numba_threads": _numba_threads(),
                "memory": args.memory,
                "mem_limit_gib": limit / GIB,
                "timing": dataclasses.asdict(policy),
            },
            "methods": {
                m.name: {
                    "description": m.description,
                    "family": m.family,
                    "strategy": m.strategy,
                    "backend": m.backend,
                    "prewarm": warm_info.get(m.name),
                    "compile_s": (warm_info.get(m.name) or {}).get("one_off_s")
                    if m.backend == "numba"
                    else None,
                }
                for m in methods
            },
            "results": results,
        }
        result["targets"] = check_targets(result)
        json_path = _json_path(out_dir, device, suffix, several=len(devices) > 1)
        png_path = None if args.no_plot else plot_results(result, json_path.with_suffix(".png"))
        result["files"] = {"json": str(json_path), "png": str(png_path) if png_path else None}
        result["elapsed_s"] = time.perf_counter() - started
        save_json(json_path, result)
        print(f"\n## Speed on {device} (forward + backward; median, ratio to torch.cdist)\n")
        print(markdown_table(result))
        print("\nTargets:")
        _print_targets(result["targets"])
        print(f"\nWrote {json_path}" + (f" and {png_path}" if png_path else ""))
        print(f"({result['elapsed_s']:.0f} s)")
        runs[device] = result
    return runs


if __name__ == "__main__":
    main()
