"""Speed and peak-memory benchmark of the fused triplet losses, side by side with their peers.

Measures forward + backward (``loss.backward()``) of every tripletkit strategy (batch-all
hinge and soft margin, batch-hard, semi-hard) for each backend, of the floor every online
miner pays (``torch.cdist(x, x)`` forward + ``.sum().backward()``), and of the peers
pytorch-metric-learning and online-triplet-loss when they are installed, on every device
present. Times are medians over repeats after warm-up, printed with their spread (quartiles,
and min-max in the JSON), and are also reported as a ratio to ``torch.cdist`` at the same
``N`` (the cdist time of every ``N`` is printed with them).

The targets' ratios (``N = 1024``) do not come from that sweep, where cdist ran minutes
before the method on a machine whose load may have changed: the *targets rows* time each
tripletkit method alternating with cdist in one process, :data:`TARGET_ROUNDS` rounds of
:data:`TARGET_CALLS` calls, and take the median of the per-round ratios (min-max printed).
The *thread-scaling rows* time cdist and every numba loss at 1 and at 2 threads, alternating
the same way, and report ``t(2 threads) / t(1 thread)``: a loss whose parallel scaling is
lost shows there, even when its 1-thread time is unchanged (a target, judged when the
1-thread calls had a core to themselves). The JSON records the machine (CPU model, usable
cores, torch / numba versions, load average at the start and at the end).

Plans:

- default (:data:`DEFAULT_SIZES`, about 2 minutes on 2 CPU cores plus about 1.5 for the
  streaming rows, part of ``python -m benchmarks``): ``N in {128, 512, 1024}`` for every method, plus ``N = 8192``
  for ``cdist`` and batch-all on both backends (the targets' rows: the ratios at
  ``N = 1024``, the memory at ``N = 8192``); memory runs for ``cdist``, the default backend
  and batch-all at the key sizes;
- ``--full`` (:data:`FULL_SIZES`, about 8 minutes): ``N in {128, ..., 8192}`` for every
  method, memory runs for every tripletkit method and ``cdist`` at the key sizes;
- ``--quick``: a CI smoke test, well under 30 s.

**Streaming rows** (issue 18, CPU only): batch-all (hinge), batch-hard and semi-hard with
``backend="streaming"`` (no ``N x N`` matrix), named ``<strategy>[streaming]``, at
``N = 16,384`` in the default plan (:data:`STREAMING_SIZES`; measured on a loaded 2-core
machine: 58 s of CPU time in the three calls, 100 s of wall time with the interpreters'
start-up and warm-up) and also at ``N = 65,536`` with ``--full``
(:data:`FULL_STREAMING_SIZES`: minutes per loss); none with ``--quick`` or ``--sizes``
unless ``--streaming-sizes`` asks. Each row is one forward + backward in a fresh
interpreter (the memory subprocess, after a warm-up at a small ``N``): its wall and CPU
time and its extra peak memory come from the same call (one repeat: a call takes seconds
to minutes). The target row "extra peak <= 256 MiB at ``N = 65,536``" (per loss;
:data:`benchmarks.common.STREAMING_TARGET_BYTES`, shared with
:mod:`benchmarks.streaming`) is judged with ``--full`` and reads "not measured" otherwise.

**Compiled rows** (``--compile``, on by default except with ``--quick``): each fused loss's
compiled form (:func:`compiled_loss`: ``torch.compile(fullgraph=True, dynamic=False)``,
``--compile-backend``, default inductor; input checks off, ``max_positives=k-1``), named
``<strategy>[compiled]``, timed beside its eager row (``<strategy>[torch]``) at the target
``N`` (every size with ``--full`` or ``--sizes``). ``dynamic=False`` compiles once per
``N`` (the pre-warm compiles a trivial function instead, for the backend's start-up): at
each size a first call pays the compile (its time minus the median is the row's
``compile_s``, reported apart), then the usual warm-up and repeats give the steady-state
median, which never includes a compile. The JSON's ``compiled`` block and the printed
"compiled vs eager" table set each loss's compiled median beside its eager one, with the
compile time and the difference of the two loss values. No memory run for compiled rows.

Usage::

    python -m benchmarks.speed                  # default plan, CPU (and CUDA when present)
    python -m benchmarks.speed --full           # every size up to 8192
    python -m benchmarks.speed --quick          # CI smoke test
    python -m benchmarks.speed --sizes 512 1024 --device cpu --no-peers --threads 2
    python -m benchmarks.speed --no-compile     # without the compiled rows
    python -m benchmarks.speed --streaming-sizes    # without the streaming rows

Writes ``speed_<device>.json`` (``speed_<device>_full.json`` with ``--full``,
``speed_<device>_quick.json`` with ``--quick``) and a log-log plot of the same name
(``.png``) to ``--out`` (default ``benchmarks/results/``), prints a markdown table and checks
the targets of the issue (PASS / FAIL / N/A).

Inputs: ``D = 128`` float32 normal embeddings; ``P x K`` labels with ``K = 8``
(``arange(N // 8).repeat_interleave(8)``, shuffled); plus a "two classes" configuration
(batch-all at ``N = 2048``, about 2.1e9 valid triplets). Peers are O(N^3): a method whose
run exceeded the time budget, whose predicted time or whose estimated memory is too large
is recorded as skipped at larger ``N``. A configuration that raises is recorded as an error
and the run carries on. Peak memory is the extra peak RSS of one call in a fresh subprocess
(peak reset through ``/proc/self/clear_refs``; ``ru_maxrss`` as a fallback) on CPU and
``torch.cuda.max_memory_allocated`` on CUDA, at key configurations.

This module holds the plan (which configuration runs, which is skipped or gets a memory
run), the run loop, the targets and the CLI. The methods are listed in
:mod:`benchmarks.registry`, timed and measured by :mod:`benchmarks.measure`, and tabulated
and plotted by :mod:`benchmarks.report`.

Timings live here, never in unit tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import torch
from torch import Tensor

import tripletkit
from tripletkit.kernels import DEFAULT_MEMORY_BUDGET
from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

from .cli import UsageError
from .cli import run as run_command
from .common import (
    GIB,
    MIB,
    RESULTS_DIR,
    STREAMING_LOSSES,
    STREAMING_TARGET_BYTES,
    STREAMING_TARGET_N,
    load_average,
    machine_info,
    new_result,
    progress,
    save_json,
)
from .measure import (
    TimedCall,
    TimingPolicy,
    available_bytes,
    interleaved_rounds,
    numba_threads,
    peak_memory,
    run_json_child,
    set_threads,
    spread,
    thread_count,
    time_method,
    timed_call,
)
from .measure import prewarm as prewarm_inputs
from .registry import MARGIN, LossFn, Method, build_methods
from .report import find_entry
from .report import plot_speed as plot_results
from .report import speed_table as markdown_table

__all__ = [
    "DEFAULT_SIZES",
    "FULL_SIZES",
    "FULL_STREAMING_SIZES",
    "STREAMING_SIZES",
    "QUICK_SIZES",
    "Method",
    "build_methods",
    "check_targets",
    "with_compiled",
    "compiled_rows",
    "compiled_table",
    "compile_warmup",
    "compiled_loss",
    "compiled_methods",
    "is_compiled",
    "recompile_limit",
    "main",
    "measure_streaming_rows",
    "measure_target_rows",
    "measure_thread_scaling",
    "spread_table",
    "streaming_methods",
    "streaming_rows_text",
    "target_rows_text",
    "make_inputs",
    "markdown_table",
    "plot_results",
]

#: Batch sizes of the default plan, of ``--full`` and of ``--quick``.
DEFAULT_SIZES = (128, 512, 1024)
FULL_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_SIZES = (128, 256)
#: The default plan also times these sizes, for ``cdist`` and batch-all only (both
#: backends: the memory targets' size).
DEFAULT_LARGE_SIZES = (8192,)
#: Embedding dimension and samples per class of every configuration (margin: ``MARGIN``).
DIM = 128
K_PER_CLASS = 8
#: ``N`` of the "two classes" batch-all configuration (``N^3 / 4`` valid triplets).
TWO_CLASS_N = 2048
#: Sizes at which the tripletkit strategies and cdist get a memory subprocess by default.
KEY_MEMORY_SIZES = (1024, 8192)
#: ``N`` of the pre-warm calls that absorb one-off costs (numba compilation).
PREWARM_N = 32
#: ``N`` at which the speed targets of the issue are checked.
TARGET_N = 1024
#: Rounds, and calls per round, of the targets rows (each tripletkit method alternating with
#: cdist in one process; the ratio is the median of the per-round ratios) and of the
#: thread-scaling rows (each numba loss at 1 and at 2 threads, alternating).
TARGET_ROUNDS = 5
TARGET_CALLS = 3
#: The thread counts of the scaling rows, and the limit of the scaling target: with 2
#: threads a numba loss should take at most this share of its 1-thread time.
SCALING_THREADS = (1, 2)
SCALING_LIMIT = 0.85
#: The scaling target is only judged when the 1-thread calls got at least this share of a
#: core (process CPU time over wall time): below it, other processes were taking the CPU.
QUIET_CPU_SHARE = 0.9
#: Sizes of the streaming rows (``backend="streaming"``, CPU only) in the default plan and
#: with ``--full``; their target's size is :data:`~benchmarks.common.STREAMING_TARGET_N`.
STREAMING_SIZES = (16384,)
FULL_STREAMING_SIZES = (16384, STREAMING_TARGET_N)
#: Seconds a streaming row's subprocess may take (N = 65,536: minutes per loss on 2 cores).
STREAMING_TIMEOUT_S = 3600.0
#: The module the memory subprocess runs (``python -m benchmarks.speed --memory-child``).
_MODULE = "benchmarks.speed"


# --------------------------------------------------------------------------------------
# Inputs and memory runs
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


def prewarm(f: LossFn, device: str, seed: int = 0, n: int = PREWARM_N) -> dict[str, Any]:
    """:func:`benchmarks.measure.prewarm` on :func:`make_inputs` at a tiny ``N``: two calls
    before a method's first measurement, the first paying the one-off costs (numba
    compilation or cache loading, thread pools, lazy imports). ``one_off_s`` (first minus
    second call) is that cost; for numba methods it is the compile (or cache-load) time."""
    x, y = make_inputs(n, "pk", device, seed)
    return prewarm_inputs(f, x, y, device)


def measure_memory_here(
    method: Method, n: int, labels_kind: str, device: str, seed: int = 0
) -> dict[str, Any]:
    """Extra peak memory of one forward + backward at ``N = n``, measured in this process.

    The inputs are allocated and the method warmed up at a small ``N`` (compilation,
    thread pools, lazy imports), then one call at ``n`` is measured by
    :func:`benchmarks.measure.peak_memory`. On CPU, meant to run in a fresh process (see
    :func:`measure_memory_subprocess`).

    Returns:
        :func:`~benchmarks.measure.peak_memory`'s fields, and the measured call's
        ``wall_s``, ``cpu_s`` (process CPU time, all threads) and ``loss``.
    """
    f = method.make()
    x, y = make_inputs(n, labels_kind, device, seed)
    xs, ys = make_inputs(min(n, 64), labels_kind, device, seed)
    timed_call(f, xs, ys, device)
    del xs, ys
    calls: list[TimedCall] = []
    memory = peak_memory(lambda: calls.append(timed_call(f, x, y, device)), device)
    call = calls[0]
    return {**memory, "wall_s": call.wall_s, "cpu_s": call.cpu_s, "loss": float(call.loss)}


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
    args = ["--memory-child", json.dumps(spec)]
    return run_json_child(_MODULE, args, timeout_s, what="memory subprocess")


def _memory_child(spec_json: str) -> int:
    """Entry point of the memory subprocess: prints one JSON line."""
    spec = json.loads(spec_json)
    set_threads(spec.get("threads"))
    methods, _ = build_methods(peers=bool(spec.get("peers", True)))
    methods += streaming_methods()
    method = next(m for m in methods if m.name == spec["method"])
    try:
        result = measure_memory_here(method, int(spec["n"]), spec["labels"], spec["device"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result), flush=True)
    return 0


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


# --------------------------------------------------------------------------------------
# Compiled forms (torch.compile), shared with the GPU check
# --------------------------------------------------------------------------------------

#: Name suffix of a compiled method (``"semi_hard[compiled]"``).
COMPILED = "[compiled]"


def compiled_loss(
    strategy: str, k: int = K_PER_CLASS, backend: str = "inductor"
) -> Callable[[], LossFn]:
    """``make()`` of the compiled form of a fused loss: ``torch.compile(fullgraph=True,
    dynamic=False, backend=backend)`` with ``max_positives=k-1``, called with the input
    checks off (one graph per ``N``, no host synchronisation). ``strategy`` is one of
    :data:`~benchmarks.registry.SPEED_STRATEGIES`, with the eager row's margin and
    reduction."""

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


def compiled_methods(
    eager: Iterable[Method], backend: str = "inductor", k: int = K_PER_CLASS
) -> list[Method]:
    """The compiled form (:func:`compiled_loss`) of each tripletkit method of ``eager``, in
    its order, named ``<strategy>[compiled]`` (the torch backend: what ``torch.compile``
    traces)."""
    return [
        Method(
            f"{m.strategy}{COMPILED}",
            "tripletkit",
            m.strategy,
            "torch",
            f"torch.compile(fullgraph=True, dynamic=False, backend={backend!r}) of the "
            f"{m.strategy} loss, input checks off, max_positives={k - 1}",
            compiled_loss(m.strategy, k, backend),
            time_exponent=m.time_exponent,
        )
        for m in dict((m.strategy, m) for m in eager if m.family == "tripletkit").values()
    ]


def is_compiled(method: Method | str) -> bool:
    """Whether a method (or a method's name) is a compiled form."""
    return (method if isinstance(method, str) else method.name).endswith(COMPILED)


def compile_warmup(device: str, backend: str = "inductor") -> dict[str, Any]:
    """Compile and run a trivial function once (a compiled method's pre-warm), so that the
    backend's one-off start-up (imports, worker pools) is not charged to the first loss's
    compile. Returns ``{"compile_warmup_s": seconds}``; an error is left to the loss."""
    t0 = time.perf_counter()
    try:
        x = torch.ones(8, device=device, requires_grad=True)
        g = torch.compile(lambda t: (t * 2).sum(), fullgraph=True, backend=backend)
        g(x).backward()
    except Exception:  # noqa: BLE001 - the compiled methods will report the error
        pass
    return {"compile_warmup_s": time.perf_counter() - t0}


@contextmanager
def recompile_limit(sizes: int) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------
# The plan
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
    large_sizes: tuple[int, ...] = ()  # timed for cdist and batch-all only
    full: bool = False
    target_rounds: int = TARGET_ROUNDS
    target_calls: int = TARGET_CALLS
    compile_sizes: tuple[int, ...] = ()  # sizes of the compiled rows (none: not run)
    compile_backend: str = "inductor"
    streaming_sizes: tuple[int, ...] = ()  # sizes of the streaming rows (CPU only)

    @property
    def target_n(self) -> int:
        """``N`` of the targets and thread-scaling rows: :data:`TARGET_N`, or the largest
        size when the run does not include it (``--quick``, ``--sizes``)."""
        return TARGET_N if TARGET_N in self.sizes else max(self.sizes)

    @property
    def default_backend(self) -> str:
        return "numba" if self.device == "cpu" else "torch"

    def large_methods(self) -> tuple[str, ...]:
        """The methods timed at :attr:`large_sizes`: the memory targets' rows."""
        return ("cdist", "batch_all[numba]", "batch_all[torch]")


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
    """Configurations in run order: sizes ascending (cdist first), the large sizes of the
    default plan (cdist and batch-all), then the two-class one."""
    plan = [
        (m, n, "pk")
        for n in sorted(cfg.sizes)
        for m in methods
        if not is_compiled(m) or n in cfg.compile_sizes
    ]
    for n in sorted(set(cfg.large_sizes) - set(cfg.sizes)):
        plan += [(m, n, "pk") for m in methods if m.name in cfg.large_methods()]
    if cfg.two_class_n:
        for m in methods:
            # Hinge only: the soft margin sums every one of the ~N^3 / 4 terms (minutes).
            if m.family != "peer" and m.strategy in ("cdist", "batch_all") and not is_compiled(m):
                plan.append((m, cfg.two_class_n, "two_classes"))
    return plan


def streaming_methods() -> list[Method]:
    """The methods of the streaming rows: ``<strategy>[streaming]`` for batch-all (hinge,
    ``reduction="mean_nonzero"``), batch-hard and semi-hard (the registry's losses on
    ``backend="streaming"``: CPU tensors only, no ``N x N`` matrix)."""
    methods, _ = build_methods(peers=False, backends=("streaming",))
    return [
        dataclasses.replace(m, cuda=False)
        for m in methods
        if m.family == "tripletkit" and m.strategy in STREAMING_LOSSES
    ]


def _streaming_plan(cfg: RunConfig) -> list[tuple[Method, int]]:
    """The streaming rows in run order: sizes ascending, each loss (none on CUDA)."""
    if cfg.device != "cpu":
        return []
    return [(m, n) for n in sorted(set(cfg.streaming_sizes)) for m in streaming_methods()]


def _memory_wanted(method: Method, n: int, labels_kind: str, cfg: RunConfig) -> bool:
    if cfg.memory == "none" or is_compiled(method):  # a subprocess would compile again
        return False
    if cfg.memory == "all" or cfg.device == "cuda":
        return True
    if cfg.quick:
        return (
            method.strategy == "batch_all"
            and method.backend == cfg.default_backend
            and labels_kind == "pk"
            and n == max(cfg.sizes)
        )
    key = method.family != "peer" and labels_kind == "pk" and n in KEY_MEMORY_SIZES
    if cfg.full or not key:
        return key
    # Default plan: cdist, the default backend, and the memory targets' rows.
    return method.backend in (None, cfg.default_backend) or method.name in cfg.large_methods()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class _DeviceRun:
    """What :func:`run_device` carries from one configuration to the next on one device:
    the methods built (or why they failed), their pre-warm figures, the current inputs and
    what the timings so far predict for the peers."""

    cfg: RunConfig
    over_budget_at: dict[str, tuple[int, float]] = field(default_factory=dict)
    last_ok: dict[str, tuple[int, float]] = field(default_factory=dict)
    made: dict[str, LossFn | BaseException] = field(default_factory=dict)
    warm_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    inputs_key: tuple[int, str] | None = None
    x: Tensor = field(default_factory=lambda: torch.empty(0))
    y: Tensor = field(default_factory=lambda: torch.empty(0))
    extra: dict[str, Any] = field(default_factory=dict)  # targets and thread-scaling rows

    def inputs(self, n: int, labels_kind: str) -> tuple[Tensor, Tensor]:
        """The inputs of a configuration, made once for all methods at that size."""
        if self.inputs_key != (n, labels_kind):
            self.x, self.y = make_inputs(n, labels_kind, self.cfg.device, self.cfg.seed)
            self.inputs_key = (n, labels_kind)
        return self.x, self.y

    def loss_fn(self, method: Method) -> LossFn | BaseException:
        """The method's loss function, built and pre-warmed on first use, or the exception
        that stopped it (remembered, reported at every size)."""
        if method.name not in self.made:
            try:
                fn = method.make()
                self.made[method.name] = fn
                if is_compiled(method):  # no compile at a size it is not timed at
                    self.warm_info[method.name] = compile_warmup(
                        self.cfg.device, self.cfg.compile_backend
                    )
                else:
                    self.warm_info[method.name] = prewarm(fn, self.cfg.device, self.cfg.seed)
            except Exception as exc:  # noqa: BLE001
                self.made[method.name] = exc
                self.warm_info[method.name] = {
                    "error": _error(exc),
                    "traceback": traceback.format_exc(limit=-3)[-1500:],
                }
        return self.made[method.name]

    def measure(self, method: Method, entry: dict[str, Any]) -> None:
        """Skip, time or record the failure of one configuration, updating ``entry``."""
        n, labels_kind = entry["n"], entry["labels"]
        x, y = self.inputs(n, labels_kind)
        reason = _skip_reason(method, n, y, self.cfg, self.over_budget_at, self.last_ok)
        if reason is not None:
            entry.update(status="skipped", reason=reason)
            return
        f = self.loss_fn(method)
        if isinstance(f, BaseException):
            error = self.warm_info[method.name]["error"]
            entry.update(status="error", error="pre-warm failed: " + error)
            return
        try:
            gc.collect()
            compile_call_s = (
                timed_call(f, x, y, self.cfg.device).wall_s if is_compiled(method) else None
            )
            entry.update(time_method(f, x, y, self.cfg.device, self.cfg.policy))
        except Exception as exc:  # noqa: BLE001 - a failed configuration is a result
            entry.update(
                status="error",
                error=_error(exc),
                traceback=traceback.format_exc(limit=-3)[-1500:],
            )
            x.grad = None
            gc.collect()
            if self.cfg.device == "cuda":
                torch.cuda.empty_cache()
            return
        entry["status"] = "ok"
        if compile_call_s is not None:  # this N's compile, apart from the steady state
            entry["compile_call_s"] = compile_call_s
            entry["compile_s"] = max(compile_call_s - entry["median_s"], 0.0)
        if entry.pop("over_budget"):
            self.over_budget_at[method.name] = (n, entry["median_s"])
            entry["note"] = "over the time budget: a single run, not repeated"
        elif labels_kind == "pk":
            self.last_ok[method.name] = (n, entry["median_s"])

    def release(self) -> None:
        """Drop the inputs and the built methods before the memory runs."""
        self.x = self.y = torch.empty(0)
        self.made.clear()
        gc.collect()


def run_device(
    methods: list[Method], cfg: RunConfig
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Time every planned configuration on one device, then the targets and thread-scaling
    rows, then measure the memory ones.

    Returns:
        The result entries, per method the :func:`prewarm` figures (or its error), and
        ``{"target_rows": ..., "thread_scaling": ..., "rows_elapsed_s": ...}`` (see
        :func:`measure_target_rows` and :func:`measure_thread_scaling`; the seconds both
        took).
    """
    with recompile_limit(len(cfg.compile_sizes)):  # one graph per size
        return _run_device(methods, cfg)


def _run_device(
    methods: list[Method], cfg: RunConfig
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    results: list[dict[str, Any]] = []
    state = _DeviceRun(cfg)
    plan = _plan(methods, cfg)
    bar = progress(plan, desc=f"speed [{cfg.device}]", total=len(plan), leave=False)
    for method, n, labels_kind in bar:
        bar.set_postfix_str(f"{method.name} N={n}{' 2cls' if labels_kind != 'pk' else ''}")
        entry = _entry(method, n, labels_kind, cfg.device)
        results.append(entry)
        state.measure(method, entry)
    started = time.perf_counter()
    state.extra = {
        "target_rows": measure_target_rows(state, methods, results),
        "thread_scaling": measure_thread_scaling(state, methods, results),
    }
    state.extra["rows_elapsed_s"] = time.perf_counter() - started
    state.release()
    _attach_ratios(results)
    if any(is_compiled(m) for m in methods):
        state.extra["compiled"] = {
            "backend": cfg.compile_backend,
            "sizes": list(cfg.compile_sizes),
            "rows": compiled_rows(results),
        }
    _measure_memory(methods, plan, results, cfg)
    results += measure_streaming_rows(cfg)
    return results, state.warm_info, state.extra


#: What a streaming row's figures are (its ``note``).
STREAMING_NOTE = (
    "one forward + backward in a fresh interpreter after a warm-up at a small N: time and "
    "extra peak memory of the same call (one repeat)"
)


def measure_streaming_rows(
    cfg: RunConfig, plan: list[tuple[Method, int]] | None = None
) -> list[dict[str, Any]]:
    """The streaming rows: each ``(method, N)`` of ``plan`` (default: :attr:`RunConfig.
    streaming_sizes` x :func:`streaming_methods`, none on CUDA) measured by one call in
    the memory subprocess (:func:`measure_memory_subprocess`, at most
    :data:`STREAMING_TIMEOUT_S`).

    Returns:
        Result entries (as the sweep's, ``labels="pk"``): with status ``"ok"``,
        ``median_s`` / ``times_s`` (the call's wall time), ``cpu_median_s`` /
        ``cpu_times_s``, ``repeats`` (1), ``loss``, ``memory`` (the subprocess's
        :func:`~benchmarks.measure.peak_memory` fields), ``matrix_bytes`` (the float32
        ``N x N`` matrix the row never holds) and ``note``; else status ``"error"`` and the
        ``error``.
    """
    plan = _streaming_plan(cfg) if plan is None else plan
    rows: list[dict[str, Any]] = []
    bar = progress(plan, desc=f"streaming [{cfg.device}]", total=len(plan), leave=False)
    for method, n in bar:
        bar.set_postfix_str(f"{method.name} N={n}")
        entry = _entry(method, n, "pk", cfg.device)
        rows.append(entry)
        got = measure_memory_subprocess(
            method, n, "pk", cfg.device, cfg.threads, peers=False, timeout_s=STREAMING_TIMEOUT_S
        )
        if "error" in got:
            entry.update(status="error", error=got["error"])
            continue
        timing = {k: got.pop(k) for k in ("wall_s", "cpu_s", "loss")}
        entry.update(
            status="ok",
            median_s=timing["wall_s"],
            times_s=[timing["wall_s"]],
            cpu_median_s=timing["cpu_s"],
            cpu_times_s=[timing["cpu_s"]],
            repeats=1,
            loss=timing["loss"],
            memory=got,
            matrix_bytes=4 * n * n,
            note=STREAMING_NOTE,
        )
    return rows


def compiled_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each compiled row beside its eager one (``<strategy>[torch]`` at the same ``N``).

    Returns:
        Per compiled entry: ``loss`` (the strategy), ``n``, ``compiled`` and ``eager`` (the
        method names), ``status`` (the compiled entry's), and when both were timed
        ``compiled_median_s``, ``eager_median_s``, ``speedup`` (eager over compiled
        median), ``compile_s`` (the compile at this ``N``, not in the medians) and
        ``loss_abs_diff`` (compiled minus eager loss value, absolute).
    """
    rows = []
    for e in results:
        if not is_compiled(e["method"]) or e["labels"] != "pk":
            continue
        eager_name = f"{e['strategy']}[torch]"
        row: dict[str, Any] = {
            "loss": e["strategy"],
            "n": e["n"],
            "compiled": e["method"],
            "eager": eager_name,
            "status": e["status"],
        }
        if e["status"] != "ok":
            row["reason"] = e.get("reason") or e.get("error")
        eager = find_entry(results, eager_name, e["n"])
        if e["status"] == "ok" and eager is not None and eager["status"] == "ok":
            row.update(
                compiled_median_s=e["median_s"],
                eager_median_s=eager["median_s"],
                speedup=eager["median_s"] / e["median_s"],
                compile_s=e.get("compile_s"),
                loss_abs_diff=abs(e["loss"] - eager["loss"]),
            )
        rows.append(row)
    return rows


def compiled_table(compiled: dict[str, Any]) -> str:
    """The printed "compiled vs eager" table of a result's ``compiled`` block: one row per
    loss and ``N``; the compile time in its own column, outside both medians."""
    rows = compiled.get("rows") or []
    header = (
        f"Compiled (torch.compile, backend {compiled.get('backend')!r}) vs eager (torch "
        "backend), forward + backward median; compile: the first call at that N minus the "
        "median, not in it"
    )
    lines = [
        header,
        "",
        "| loss | N | eager | compiled | eager / compiled | compile | loss difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "compiled_median_s" not in r:
            why = r.get("reason") or "eager row not timed"
            lines.append(f"| {r['loss']} | {r['n']} | | {r['status']}: {why} | | | |")
            continue
        compile_s = r.get("compile_s")
        lines.append(
            f"| {r['loss']} | {r['n']} | {_ms(r['eager_median_s'])} | "
            f"{_ms(r['compiled_median_s'])} | {r['speedup']:.2f}x | "
            f"{'' if compile_s is None else f'{compile_s:.1f} s'} | {r['loss_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def _ok_at(results: list[dict[str, Any]], name: str, n: int) -> bool:
    e = find_entry(results, name, n)
    return e is not None and e["status"] == "ok"


def _wall(f: LossFn, x: Tensor, y: Tensor, device: str) -> Callable[[], float]:
    return lambda: timed_call(f, x, y, device).wall_s


def measure_target_rows(
    state: _DeviceRun, methods: list[Method], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The targets rows: at :attr:`RunConfig.target_n`, each tripletkit method alternating
    with ``cdist`` in this process, :attr:`RunConfig.target_rounds` rounds of
    :attr:`RunConfig.target_calls` calls each (median per round).

    Returns:
        One row per method timed OK at that ``N``: ``method``, ``n``, ``rounds``,
        ``calls_per_round``, the per-round medians ``times_s`` and ``cdist_times_s``, their
        medians ``median_s`` and ``cdist_median_s``, the per-round ratios ``ratios`` and
        their spread ``ratio`` (see :func:`benchmarks.measure.spread`; the targets read
        ``ratio["median"]``) and the ``load_average`` before the rows.
    """
    cfg = state.cfg
    n = cfg.target_n
    by_name = {m.name: m for m in methods}
    if "cdist" not in by_name or not _ok_at(results, "cdist", n):
        return []
    x, y = state.inputs(n, "pk")
    cdist = state.loss_fn(by_name["cdist"])
    rows: list[dict[str, Any]] = []
    for m in methods:
        f = state.loss_fn(m) if m.family == "tripletkit" and _ok_at(results, m.name, n) else None
        if f is None or isinstance(f, BaseException) or isinstance(cdist, BaseException):
            continue
        load = load_average()
        calls = {"cdist": _wall(cdist, x, y, cfg.device), m.name: _wall(f, x, y, cfg.device)}
        try:
            per_round = interleaved_rounds(calls, cfg.target_rounds, cfg.target_calls)
        except Exception as exc:  # noqa: BLE001 - recorded, the run carries on
            rows.append({"method": m.name, "n": n, "error": _error(exc)})
            continue
        ratios = [t / c for t, c in zip(per_round[m.name], per_round["cdist"], strict=True)]
        rows.append(
            {
                "method": m.name,
                "n": n,
                "rounds": cfg.target_rounds,
                "calls_per_round": cfg.target_calls,
                "times_s": per_round[m.name],
                "cdist_times_s": per_round["cdist"],
                "median_s": statistics.median(per_round[m.name]),
                "cdist_median_s": statistics.median(per_round["cdist"]),
                "ratios": ratios,
                "ratio": spread(ratios),
                "load_average": load,
            }
        )
    return rows


def measure_thread_scaling(
    state: _DeviceRun, methods: list[Method], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """Thread scaling of ``cdist`` and every numba loss at :attr:`RunConfig.target_n`:
    :data:`SCALING_THREADS` alternating, :attr:`RunConfig.target_rounds` rounds of
    :attr:`RunConfig.target_calls` calls each (median per round).

    Returns:
        ``{"skipped": reason}`` (not on CPU, or fewer than 2 usable cores), else
        ``{"n", "threads", "usable_cores", "rows"}`` with per method ``method``, the
        per-round medians ``times_s`` (``{"1": [...], "2": [...]}``), ``median_s`` per
        thread count, ``scaling`` (the spread of the per-round ratios ``t(2) / t(1)``),
        ``cpu_share_1`` (median process CPU time over wall time of the 1-thread calls: near
        1 on a quiet machine) and the ``load_average`` before the row.
    """
    cfg = state.cfg
    cores = machine_info()["usable_cores"] or 1
    if cfg.device != "cpu":
        return {"skipped": "thread scaling is measured on the CPU"}
    if cores < max(SCALING_THREADS):
        return {"skipped": f"needs {max(SCALING_THREADS)} usable cores, this process has {cores}"}
    n = cfg.target_n
    x, y = state.inputs(n, "pk")
    rows = []
    for m in methods:
        wanted = m.name == "cdist" or (m.family == "tripletkit" and m.backend == "numba")
        f = state.loss_fn(m) if wanted and _ok_at(results, m.name, n) else None
        if f is None or isinstance(f, BaseException):
            continue
        shares: list[float] = []

        def at(threads: int, f: LossFn = f, shares: list[float] = shares) -> Callable[[], float]:
            def call() -> float:
                with thread_count(threads):
                    c = timed_call(f, x, y, cfg.device)
                if threads == 1:
                    shares.append(c.cpu_s / max(c.wall_s, 1e-9))
                return c.wall_s

            return call

        load = load_average()
        calls = {str(t): at(t) for t in SCALING_THREADS}
        per_round = interleaved_rounds(calls, cfg.target_rounds, cfg.target_calls)
        one, two = (per_round[str(t)] for t in SCALING_THREADS)
        rows.append(
            {
                "method": m.name,
                "times_s": per_round,
                "median_s": {t: statistics.median(v) for t, v in per_round.items()},
                "scaling": spread([b / a for a, b in zip(one, two, strict=True)]),
                "cpu_share_1": statistics.median(shares),
                "load_average": load,
            }
        )
    return {"n": n, "threads": list(SCALING_THREADS), "usable_cores": cores, "rows": rows}


def _measure_memory(
    methods: list[Method],
    plan: list[tuple[Method, int, str]],
    results: list[dict[str, Any]],
    cfg: RunConfig,
) -> None:
    """Add ``memory`` to the timed entries :func:`_memory_wanted` selects: in this process
    on CUDA, in a fresh subprocess on CPU."""
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
                e["memory"] = {"error": _error(exc)}
        else:
            e["memory"] = measure_memory_subprocess(
                method, e["n"], e["labels"], cfg.device, cfg.threads, cfg.peers
            )


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
# Targets
# --------------------------------------------------------------------------------------


class _Check(NamedTuple):
    name: str
    passed: bool | None
    detail: str
    backend: str | None = None
    default: bool | None = None  # whether "auto" picks the backend there (None: by name)


def _ok(e: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return e is not None and e["status"] == "ok"


def _why_missing(e: dict[str, Any] | None) -> str:
    if e is None:
        return "not measured"
    if e["status"] == "ok":
        return "no memory figure: " + str((e.get("memory") or {}).get("error", "not measured"))
    return f"{e['status']}: {e.get('reason') or e.get('error')}"


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms"


def _ratio_checks(
    results: list[dict[str, Any]], backends: list[str], rows: list[dict[str, Any]]
) -> Iterable[_Check]:
    """Each ratio from the targets rows (median of the per-round ratios, with their
    min-max), else from the sweep's medians; the detail names the cdist time."""
    n = TARGET_N
    by_method = {r["method"]: r for r in rows if r.get("n") == n and "ratio" in r}
    cdist = find_entry(results, "cdist", n)
    for strategy, limit in (("batch_all", 3.0), ("semi_hard", 3.0), ("batch_hard", 1.5)):
        for b in backends:
            method = f"{strategy}[{b}]"
            e = find_entry(results, method, n)
            name = f"N={n} {method} <= {limit:g}x cdist"
            row = by_method.get(method)
            if row is not None:
                r = row["ratio"]
                detail = (
                    f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] over "
                    f"{row['rounds']} rounds ({_ms(row['median_s'])}; cdist "
                    f"{_ms(row['cdist_median_s'])})"
                )
                yield _Check(name, r["median"] <= limit, detail, b)
            elif _ok(e) and _ok(cdist) and "ratio_to_cdist" in e:
                r = e["ratio_to_cdist"]
                detail = f"{r:.2f}x ({_ms(e['median_s'])}; cdist {_ms(cdist['median_s'])})"
                yield _Check(name, r <= limit, detail, b)
            else:
                yield _Check(name, None, _why_missing(e), b)


def _scaling_checks(scaling: dict[str, Any]) -> Iterable[_Check]:
    """Each numba loss with 2 threads at most :data:`SCALING_LIMIT` of its 1-thread time;
    N/A where the 1-thread calls did not get :data:`QUIET_CPU_SHARE` of a core."""
    for row in scaling.get("rows", []):
        if row["method"] == "cdist":
            continue
        lo, hi = SCALING_THREADS
        name = f"N={scaling['n']} {row['method']} t({hi} threads) / t({lo}) <= {SCALING_LIMIT:g}"
        r = row["scaling"]
        detail = (
            f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}] "
            f"({_ms(row['median_s'][str(lo)])} -> {_ms(row['median_s'][str(hi)])})"
        )
        share = row["cpu_share_1"]
        if share < QUIET_CPU_SHARE:
            detail += f"; machine busy: 1-thread calls got {share:.0%} of a core"
            yield _Check(name, None, detail, "numba")
        else:
            yield _Check(name, r["median"] <= SCALING_LIMIT, detail, "numba")


def _peer_checks(results: list[dict[str, Any]], backends: list[str]) -> Iterable[_Check]:
    n = TARGET_N
    peer = find_entry(results, "pml_all", n)
    for b in backends:
        e = find_entry(results, f"batch_all[{b}]", n)
        name = f"N={n} batch_all[{b}] >= 30x faster than PML all-triplets"
        if _ok(e) and _ok(peer):
            speedup = peer["median_s"] / e["median_s"]
            yield _Check(name, speedup >= 30.0, f"{speedup:.1f}x faster", b)
        else:
            yield _Check(name, None, _why_missing(e if not _ok(e) else peer), b)


def _memory_checks(results: list[dict[str, Any]], backends: list[str]) -> Iterable[_Check]:
    big = 8192
    floor = find_entry(results, "cdist", big)
    for b in backends:
        e = find_entry(results, f"batch_all[{b}]", big)
        name = f"N={big} batch_all[{b}] extra peak memory < 2 GiB"
        mem = (e or {}).get("memory") or {}
        if _ok(e) and "extra_peak_bytes" in mem:
            extra = mem["extra_peak_bytes"]
            yield _Check(name, extra < 2 * GIB, f"{extra / GIB:.3f} GiB ({mem.get('how')})", b)
        else:
            yield _Check(name, None, _why_missing(e), b)
        if b != "torch":
            continue
        # The GPU path's target: the weights of the distance backward written once.
        name = f"N={big} batch_all[{b}] extra peak memory <= 1.5x cdist"
        base = (floor or {}).get("memory") or {}
        if _ok(e) and _ok(floor) and "extra_peak_bytes" in mem and "extra_peak_bytes" in base:
            ratio = mem["extra_peak_bytes"] / base["extra_peak_bytes"]
            mib = (mem["extra_peak_bytes"] / 2**20, base["extra_peak_bytes"] / 2**20)
            detail = f"{ratio:.2f}x cdist's ({mib[0]:.0f} MiB; cdist {mib[1]:.0f} MiB)"
            yield _Check(name, ratio <= 1.5, detail, b)
        else:
            yield _Check(name, None, _why_missing(e if not _ok(e) else floor), b)


def _streaming_checks(results: list[dict[str, Any]]) -> Iterable[_Check]:
    """Issue 18's memory target, per streaming loss: extra peak at most
    :data:`~benchmarks.common.STREAMING_TARGET_BYTES` at ``N =``
    :data:`~benchmarks.common.STREAMING_TARGET_N` (a ``--full`` row: N/A otherwise).
    There ``backend="auto"`` picks the streaming path on CPU (the matrix is over the
    default memory budget)."""
    n, limit = STREAMING_TARGET_N, STREAMING_TARGET_BYTES
    picked_by_auto = 4 * n * n > DEFAULT_MEMORY_BUDGET
    for strategy in STREAMING_LOSSES:
        method = f"{strategy}[streaming]"
        e = find_entry(results, method, n)
        name = f"N={n} {method} extra peak memory <= {limit / MIB:.0f} MiB"
        mem = (e or {}).get("memory") or {}
        if _ok(e) and "extra_peak_bytes" in mem:
            extra = mem["extra_peak_bytes"]
            detail = (
                f"{extra / MIB:.0f} MiB ({mem.get('how')}; one N x N float32 matrix: "
                f"{4 * n * n / GIB:.0f} GiB)"
            )
            yield _Check(name, extra <= limit, detail, "streaming", picked_by_auto)
        else:
            why = _why_missing(e) + (" (a --full row)" if e is None else "")
            yield _Check(name, None, why, "streaming", picked_by_auto)


def _backend_checks(results: list[dict[str, Any]], backends: list[str]) -> Iterable[_Check]:
    if "numba" not in backends or "torch" not in backends:
        return
    n = TARGET_N
    for strategy in ("batch_all", "semi_hard"):
        en = find_entry(results, f"{strategy}[numba]", n)
        et = find_entry(results, f"{strategy}[torch]", n)
        name = f"N={n} {strategy}: numba at least as fast as torch"
        if _ok(en) and _ok(et):
            tn, tt = en["median_s"], et["median_s"]
            yield _Check(name, tn <= tt, f"numba {1e3 * tn:.1f} ms vs torch {1e3 * tt:.1f} ms")
        else:
            yield _Check(name, None, _why_missing(en if not _ok(en) else et))


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"name", "passed": True | False | None, "detail",
    "backend", "default_backend"}``.

    ``passed`` is ``None`` (N/A) when a configuration the target needs was not measured.
    Speed targets are checked at ``N = 1024`` for both tripletkit backends, from the
    targets rows (``result["target_rows"]``) when present; the thread-scaling targets from
    ``result["thread_scaling"]``; on CPU, the streaming memory target from the streaming
    rows at ``N = 65,536`` (``--full``). The backend ``backend="auto"`` picks on the device
    is flagged ``default_backend``.
    """
    results = result["results"]
    auto = "numba" if result["config"]["device"] == "cpu" else "torch"
    backends = result["config"]["backends"]
    checks = [
        *_ratio_checks(results, backends, result.get("target_rows") or []),
        *(
            check
            for checks_of in (_peer_checks, _memory_checks, _backend_checks)
            for check in checks_of(results, backends)
        ),
        *_scaling_checks(result.get("thread_scaling") or {}),
        *(_streaming_checks(results) if result["config"]["device"] == "cpu" else ()),
    ]
    return [
        {
            "name": c.name,
            "passed": c.passed,
            "detail": c.detail,
            "backend": c.backend,
            "default_backend": c.default
            if c.default is not None
            else c.backend is None or c.backend == auto,
        }
        for c in checks
    ]


def _machine_line(machine: dict[str, Any]) -> str:
    """Where the figures come from: CPU, cores, versions and load averages."""
    load = machine.get("load_average_start") or []
    end = machine.get("load_average_end") or []
    return (
        f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} usable cores; torch "
        f"{machine.get('torch')}, numba {machine.get('numba')}; load average "
        f"{'/'.join(map(str, load))} at the start, {'/'.join(map(str, end))} at the end.\n"
    )


def _cdist_line(results: list[dict[str, Any]]) -> str:
    """The reference every ratio divides by: cdist's median at each ``N``."""
    times = [
        f"N={e['n']}{' two classes' if e['labels'] != 'pk' else ''} {_ms(e['median_s'])}"
        for e in results
        if e["method"] == "cdist" and e["status"] == "ok"
    ]
    return "Every ratio is to torch.cdist forward + backward at the same N: " + (
        ", ".join(times) if times else "cdist was not timed"
    )


def spread_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the spread over repeats of cdist and the tripletkit methods:
    per ``N`` (P x K labels) and method, ``median [q1-q3] (repeats)`` in ms."""
    rows = [
        e for e in results if e["status"] == "ok" and e["labels"] == "pk" and e["family"] != "peer"
    ]
    names = list(dict.fromkeys(e["method"] for e in rows))
    sizes = sorted({e["n"] for e in rows})
    lines = [
        "Spread over repeats, ms: median [first-third quartile] (repeats)",
        "",
        "| N | " + " | ".join(names) + " |",
        "| ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for n in sizes:
        cells = []
        for name in names:
            e = find_entry(rows, name, n)
            if e is None:
                cells.append("")
                continue
            q1, q3 = e.get("q1_s", e["median_s"]), e.get("q3_s", e["median_s"])
            cells.append(
                f"{1e3 * e['median_s']:.3g} [{1e3 * q1:.3g}-{1e3 * q3:.3g}] ({e['repeats']})"
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_rows_text(result: dict[str, Any]) -> str:
    """The targets rows and the thread-scaling rows, as printed."""
    lines = []
    rows = result.get("target_rows") or []
    if rows:
        first = rows[0]
        lines.append(
            f"Targets rows (N={first.get('n')}: each method alternating with cdist, "
            f"{first.get('rounds')} rounds x {first.get('calls_per_round')} calls; ratio = "
            "median of the per-round ratios [min-max]):"
        )
        for r in rows:
            if "error" in r:
                lines.append(f"  {r['method']}: error {r['error']}")
                continue
            q = r["ratio"]
            lines.append(
                f"  {r['method']}: {q['median']:.2f}x [{q['min']:.2f}-{q['max']:.2f}] "
                f"({_ms(r['median_s'])}; cdist {_ms(r['cdist_median_s'])})"
            )
    scaling = result.get("thread_scaling") or {}
    if "skipped" in scaling:
        lines.append(f"Thread scaling: skipped ({scaling['skipped']})")
    elif scaling.get("rows"):
        lo, hi = scaling["threads"]
        lines.append(
            f"Thread scaling (N={scaling['n']}, {lo} and {hi} threads alternating): "
            f"t({hi}) / t({lo}), median [min-max] of the rounds"
        )
        for r in scaling["rows"]:
            q = r["scaling"]
            lines.append(
                f"  {r['method']}: {q['median']:.2f} [{q['min']:.2f}-{q['max']:.2f}] "
                f"({_ms(r['median_s'][str(lo)])} -> {_ms(r['median_s'][str(hi)])}; "
                f"1-thread calls got {r['cpu_share_1']:.0%} of a core)"
            )
    return "\n".join(lines)


def streaming_rows_text(results: list[dict[str, Any]]) -> str:
    """The streaming rows, as printed: per loss and ``N``, the call's wall and CPU time and
    its extra peak memory beside the ``N x N`` float32 matrix it never holds ("" when the
    run had none)."""
    rows = [e for e in results if e.get("backend") == "streaming"]
    if not rows:
        return ""
    lines = [f"Streaming rows (backend='streaming', CPU; {STREAMING_NOTE}):"]
    for e in rows:
        if e["status"] != "ok":
            lines.append(f"  {e['method']} N={e['n']}: {e['status']} {e.get('error', '')}")
            continue
        extra = e["memory"]["extra_peak_bytes"]
        lines.append(
            f"  {e['method']} N={e['n']}: {e['median_s']:.2f} s (CPU {e['cpu_median_s']:.2f} s), "
            f"extra peak {extra / MIB:.0f} MiB (N x N float32: {e['matrix_bytes'] / MIB:,.0f} MiB)"
        )
    return "\n".join(lines)


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
    plan = p.add_mutually_exclusive_group()
    plan.add_argument("--quick", action="store_true", help="CI smoke test: N in {128, 256}")
    plan.add_argument(
        "--full", action="store_true", help="every size 128 ... 8192, every memory run"
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", help="batch sizes (default 128 512 1024, and 8192)"
    )
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
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time the compiled form of each fused loss beside its eager row (default: on, "
        "off with --quick)",
    )
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (default inductor)"
    )
    p.add_argument(
        "--streaming-sizes",
        type=int,
        nargs="*",
        help="sizes of the streaming rows (CPU; default 16384, with --full also 65536; none "
        "with --quick or --sizes; the option alone: none)",
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{device: result}`` with each result as saved to JSON.

    A result holds ``machine`` (:func:`~benchmarks.common.machine_info`), ``config``,
    ``methods`` (name -> description, family, strategy, backend, :func:`prewarm` figures
    and, for numba, ``compile_s``), ``results`` (one entry per configuration with
    ``status`` ``"ok"`` / ``"skipped"`` / ``"error"``, ``median_s``, ``times_s``,
    ``ratio_to_cdist``, ``first_call_s``, ``memory``...), ``targets`` (see
    :func:`check_targets`), ``files`` and ``elapsed_s``. The torch and numba thread
    counts are restored on return.

    Raises:
        UsageError: a size below 2 (the command prints one ``error:`` line, exit status 2).
    """
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.memory_child:
        _memory_child(args.memory_child)
        return {}
    with thread_count(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.sizes or list(
        QUICK_SIZES if args.quick else FULL_SIZES if args.full else DEFAULT_SIZES
    )
    if any(n < 2 for n in sizes):
        raise UsageError(f"every size must be at least 2 (got --sizes {' '.join(map(str, sizes))})")
    if any(n < 2 for n in args.streaming_sizes or ()):
        got = " ".join(map(str, args.streaming_sizes))
        raise UsageError(f"every size must be at least 2 (got --streaming-sizes {got})")
    methods, missing = build_methods(peers=not args.no_peers)
    if _compile_wanted(args):
        methods = with_compiled(methods, args.compile_backend)
    suffix = "_quick" if args.quick else "_full" if args.full else ""
    devices = _devices(args.device)
    runs: dict[str, Any] = {}
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("CUDA is not available: skipping --device cuda", file=sys.stderr)
            continue
        started = time.perf_counter()
        cfg = _run_config(args, device, sizes)
        json_path = _json_path(args.out, device, suffix, several=len(devices) > 1)
        result = _run_and_save(methods, missing, cfg, json_path, not args.no_plot, started)
        runs[device] = result
    return runs


def _compile_wanted(args: argparse.Namespace) -> bool:
    """``--compile`` / ``--no-compile``, else on except with ``--quick``."""
    return bool(args.compile) if args.compile is not None else not args.quick


def with_compiled(methods: list[Method], backend: str = "inductor") -> list[Method]:
    """``methods`` with the compiled forms (:func:`compiled_methods`) right after the last
    tripletkit method (columns: eager, then compiled, then the peers)."""
    compiled = compiled_methods(methods, backend)
    last = max((i for i, m in enumerate(methods) if m.family == "tripletkit"), default=0)
    return [*methods[: last + 1], *compiled, *methods[last + 1 :]]


def _run_config(args: argparse.Namespace, device: str, sizes: list[int]) -> RunConfig:
    """The :class:`RunConfig` the command line asks for on ``device``."""
    if args.two_class_n is not None:
        two_class_n = args.two_class_n or None
    else:
        two_class_n = max(sizes) if args.quick else TWO_CLASS_N
    policy = (
        TimingPolicy(target_s=0.05, min_repeats=1, max_repeats=2, budget_s=args.budget, warmups=1)
        if args.quick
        else TimingPolicy(budget_s=args.budget)
    )
    limit = args.mem_limit_gb * GIB if args.mem_limit_gb else 0.5 * available_bytes(device)
    target_n = TARGET_N if TARGET_N in sizes else max(sizes)
    if args.streaming_sizes is not None:
        streaming_sizes = tuple(args.streaming_sizes)
    elif args.quick or args.sizes:
        streaming_sizes = ()
    else:
        streaming_sizes = FULL_STREAMING_SIZES if args.full else STREAMING_SIZES
    compile_sizes: tuple[int, ...] = ()
    if _compile_wanted(args):
        compile_sizes = tuple(sorted(set(sizes))) if args.full or args.sizes else (target_n,)
    return RunConfig(
        device=device,
        sizes=sorted(set(sizes)),
        quick=args.quick,
        peers=not args.no_peers,
        threads=args.threads,
        memory=args.memory,
        two_class_n=two_class_n,
        policy=policy,
        mem_limit_bytes=limit,
        large_sizes=DEFAULT_LARGE_SIZES if not (args.quick or args.full or args.sizes) else (),
        full=args.full,
        target_rounds=2 if args.quick else TARGET_ROUNDS,
        target_calls=1 if args.quick else TARGET_CALLS,
        compile_sizes=compile_sizes,
        compile_backend=args.compile_backend,
        streaming_sizes=streaming_sizes if device == "cpu" else (),
    )


def _config_json(cfg: RunConfig, methods: list[Method], missing: list[str]) -> dict[str, Any]:
    """The ``config`` of a result."""
    return {
        "device": cfg.device,
        "sizes": cfg.sizes,
        "dim": DIM,
        "k_per_class": K_PER_CLASS,
        "margin": MARGIN,
        "dtype": "float32",
        "two_class_n": cfg.two_class_n,
        "quick": cfg.quick,
        "full": cfg.full,
        "large_sizes": list(cfg.large_sizes),
        "peers": cfg.peers,
        "peers_missing": missing,
        "backends": sorted({m.backend for m in methods if m.backend}),
        "threads": cfg.threads,
        "numba_threads": numba_threads(),
        "memory": cfg.memory,
        "mem_limit_gib": cfg.mem_limit_bytes / GIB,
        "timing": dataclasses.asdict(cfg.policy),
        "target_n": cfg.target_n,
        "target_rounds": cfg.target_rounds,
        "target_calls": cfg.target_calls,
        "compile_sizes": list(cfg.compile_sizes),
        "compile_backend": cfg.compile_backend if cfg.compile_sizes else None,
        "streaming_sizes": list(cfg.streaming_sizes),
    }


def _methods_json(
    methods: list[Method], warm_info: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The ``methods`` of a result: what each runs, and its pre-warm figures."""
    return {
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
    }


def _run_and_save(
    methods: list[Method],
    missing: list[str],
    cfg: RunConfig,
    json_path: Path,
    plot: bool,
    started: float,
) -> dict[str, Any]:
    """Run one device, check the targets, write the JSON (and plot) and print the tables."""
    load_start = load_average()
    results, warm_info, extra = run_device(methods, cfg)
    streamed = [m for m in streaming_methods() if cfg.streaming_sizes and cfg.device == "cpu"]
    result = new_result(
        "speed",
        config=_config_json(cfg, methods, missing),
        methods=_methods_json([*methods, *streamed], warm_info),
        results=results,
        **extra,
    )
    # machine_info() ran at the end: its load_average is the end's
    result["machine"]["load_average_start"] = load_start
    result["machine"]["load_average_end"] = result["machine"]["load_average"]
    result["targets"] = check_targets(result)
    png_path = plot_results(result, json_path.with_suffix(".png")) if plot else None
    result["files"] = {"json": str(json_path), "png": str(png_path) if png_path else None}
    result["elapsed_s"] = time.perf_counter() - started
    save_json(json_path, result)
    print(f"\n## Speed on {cfg.device} (forward + backward; median, ratio to torch.cdist)\n")
    print(_machine_line(result["machine"]))
    print(markdown_table(result))
    print("\n" + _cdist_line(results))
    print("\n" + spread_table(results))
    print("\n" + target_rows_text(result))
    if streamed:
        print("\n" + streaming_rows_text(results))
    if result.get("compiled"):
        print("\n" + compiled_table(result["compiled"]))
    print("\nTargets:")
    _print_targets(result["targets"])
    print(f"\nWrote {json_path}" + (f" and {png_path}" if png_path else ""))
    print(f"({result['elapsed_s']:.0f} s)")
    return result


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.speed")
