"""Part 3 of the GPU check, time and memory: the budgeted sweep over sizes, its predictions
and skip reasons, and the measurement of one configuration (see :mod:`benchmarks.gpu`)."""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..common import GIB, progress
from ..measure import PeakMemory, TimedCall, TimingPolicy
from ..registry import LossFn
from ..speed import compile_warmup, make_inputs, recompile_limit
from .config import (
    COMPILE_GROWTH,
    COMPILE_SHARE,
    MAX_CALL_S,
    MEMORY_SHARE,
    GpuConfig,
    describe_error,
    free_device_memory,
    timer_for,
)
from .methods import LARGE_DRY_REASON, TRITON_DRY_REASON, GpuMethod


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
        their first compile) and ``memory_bytes`` (``None`` when unknown): the last peak
        grown as ``N^2`` (``N`` for the Triton rows), or the method's estimate when larger
        (one ``N x N`` float32 matrix for cdist and the eager losses).
    """
    call = run = comp = None
    mem = gm.method.memory_estimate(n, labels) if gm.method.memory_estimate else None
    if hist.n:
        exponent = gm.method.time_exponent or 2.0
        call = hist.median_s * (n / hist.n) ** exponent
        warmups = 1 + (1 if call <= 1.0 and policy.warmups > 1 else 0)
        run = call * (warmups + policy.repeats(call))
        grown = hist.peak_bytes * (n / hist.n) ** gm.memory_exponent
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
    timer = timer_for(device)
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
    from ..measure import available_bytes

    return MEMORY_SHARE["cpu"] * available_bytes("cpu")


def _compile_warmup(cfg: GpuConfig) -> float | None:
    """A fresh dynamo state, then :func:`benchmarks.speed.compile_warmup`: the compile
    backend's one-off start-up is not charged to the first loss. Returns its time."""
    if not cfg.compile:
        return None
    torch._dynamo.reset()
    return float(compile_warmup(cfg.device, cfg.compile_backend)["compile_warmup_s"])


def run_timing(cfg: GpuConfig, methods: list[GpuMethod]) -> dict[str, Any]:
    """Time every ``(method, N)`` that fits the budget (see the module docstring)."""
    with recompile_limit(len(cfg.sizes)):
        return _run_timing(cfg, methods)


def _run_timing(cfg: GpuConfig, methods: list[GpuMethod]) -> dict[str, Any]:
    started = time.perf_counter()
    compile_warmup_s = _compile_warmup(cfg)
    budget = max(cfg.deadline - time.perf_counter(), 0.0)
    first = [m for m in methods if m.variant != "compiled"]
    compiled = [m for m in methods if m.variant == "compiled"]
    reserve = COMPILE_SHARE * budget if compiled else 0.0
    # the triton rows run on CUDA only (issue 18): elsewhere they take no share
    total_weight = sum(m.weight for m in first if _timed_here(m, cfg.device)) or 1.0
    allot = {m.name: (budget - reserve) * m.weight / total_weight for m in first}
    run = _TimingRun(cfg, {m.name: _History() for m in methods}, _memory_limit(cfg.device))
    planned = sum(cfg.planned(m.variant, n) for m in methods for n in cfg.timed_sizes())
    bar = progress(total=planned, desc="timing", leave=False)
    with bar:
        # Pass 1: cdist, the eager losses and the peers, each within its share.
        run.sweep(first, allot, cfg.deadline - reserve, bar)
        # Pass 2: the compiled losses, with the time left (at least the reserve).
        run.sweep(compiled, dict.fromkeys((m.name for m in compiled), math.inf), cfg.deadline, bar)
    run.made.clear()
    free_device_memory(cfg.device)
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


def _timed_here(gm: GpuMethod, device: str) -> bool:
    """Whether ``gm`` is measured on ``device`` (the triton rows need CUDA)."""
    return gm.variant != "triton" or device == "cuda"


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
        """Every size in ascending order, every method planned at that size (the large
        sizes: :data:`~.config.LARGE_VARIANTS` only): skip or measure."""
        for n in self.cfg.timed_sizes():
            here = [gm for gm in methods if self.cfg.planned(gm.variant, n)]
            if not here:
                continue
            x, y = make_inputs(n, "pk", self.cfg.device, self.cfg.seed)
            for gm in here:
                bar.set_postfix_str(f"{gm.name} N={n}")
                self.one(gm, n, x, y, allot[gm.name], deadline)
                bar.update()
            del x, y
            free_device_memory(self.cfg.device)

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
        if self.cfg.dry_run and n not in self.cfg.sizes:
            reason = LARGE_DRY_REASON  # listed, never run on the CPU
        elif reason is None and gm.variant == "triton" and self.cfg.device != "cuda":
            reason = TRITON_DRY_REASON
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
        row.update(status="error", error="could not build the method: " + describe_error(f))
        h.stopped = "the method could not be built"
        return
    try:
        row.update(time_config(f, x, y, cfg.device, cfg.policy))
    except Exception as exc:  # noqa: BLE001 - out of memory included: a result
        row.update(
            status="error",
            error=describe_error(exc),
            traceback=traceback.format_exc(limit=-3)[-1500:],
        )
        h.stopped = f"stopped after an error at N={n}"
        x.grad = None
        free_device_memory(cfg.device)
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
