"""How the benchmarks measure: time and peak memory of a forward + backward, thread counts.

**Time.** A measured call is one forward + backward (``f(x, y).backward()``) with the
gradient of ``x`` cleared before it, bracketed by :func:`sync` (``torch.cuda.synchronize``
on CUDA, nothing on CPU) and timed with :func:`time.perf_counter` (wall) and
:func:`time.process_time` (CPU time of all the process's threads: steadier on a busy
machine). :func:`time_method` warms up, then repeats the call as the :class:`TimingPolicy`
says; the headline figure is the median over the repeats, reported with its spread
(:func:`spread`: quartiles and min-max). :func:`interleaved_rounds` times several calls
round by round, alternating them, so that a drift of a shared machine's load hits each
alike (the speed benchmark's targets and thread-scaling rows). :func:`prewarm` absorbs one-off
costs (numba compilation or cache loading, thread pools, lazy imports) before any timing.
On CUDA, :func:`cuda_timed_call` times the same call with CUDA events recorded on the
current stream (the device's time, launch gaps included), as :mod:`benchmarks.gpu` does.

**Memory.** :func:`peak_memory` measures the extra peak of one call: on CPU the peak RSS is
reset through ``/proc/self/clear_refs`` and the extra peak is ``VmHWM`` after the call minus
``VmRSS`` before it (the growth of ``ru_maxrss`` where ``clear_refs`` is missing), after
handing the C heap's free memory back to the OS; on CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory allocated before the call (peak
statistics reset first). :class:`PeakMemory` does the same around any stretch of calls
(``start()`` ... ``stop()``). On CPU the
peak RSS of a process only grows, so the call should run in a fresh interpreter:
:func:`run_json_child` runs ``python -m <module> ...`` and reads back the JSON line it prints.

**Threads.** :func:`thread_count` sets torch's and numba's thread counts for a block and
restores them afterwards.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .common import GIB, REPO_ROOT

__all__ = [
    "PeakMemory",
    "TimedCall",
    "TimingPolicy",
    "available_bytes",
    "interleaved_rounds",
    "cuda_timed_call",
    "numba_threads",
    "peak_memory",
    "prewarm",
    "run_json_child",
    "set_threads",
    "spread",
    "sync",
    "thread_count",
    "time_method",
    "timed_call",
]


# --------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------


def sync(device: str) -> None:
    """Wait for the device's queued work (``torch.cuda.synchronize`` on CUDA, else nothing)."""
    if device == "cuda":
        torch.cuda.synchronize()


class TimedCall(NamedTuple):
    """One forward + backward: wall time, process CPU time (all threads), detached loss."""

    wall_s: float
    cpu_s: float
    loss: Tensor


def timed_call(
    f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, device: str
) -> TimedCall:
    """Run ``f(x, y).backward()`` once (``x.grad`` cleared first) and time it."""
    x.grad = None
    sync(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss = f(x, y)
    loss.backward()
    sync(device)
    t1 = time.perf_counter()
    return TimedCall(t1 - t0, time.process_time() - c0, loss.detach())


def cuda_timed_call(f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> TimedCall:
    """:func:`timed_call` on CUDA, timed by CUDA events.

    Queued work is waited for, then two events recorded on the current stream bracket
    ``f(x, y).backward()``: ``wall_s`` is the time between them on the device (launch gaps
    and host stalls included, host time before the first launch excluded); ``cpu_s`` is the
    process CPU time of the call, up to the end event.
    """
    x.grad = None
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    c0 = time.process_time()
    start.record()
    loss = f(x, y)
    loss.backward()
    end.record()
    end.synchronize()
    return TimedCall(start.elapsed_time(end) / 1e3, time.process_time() - c0, loss.detach())


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

    def repeats(self, estimate_s: float) -> int:
        """Repeats for a call estimated at ``estimate_s``: enough to fill ``target_s``, no
        more than fit ``budget_s``, clipped to ``[min_repeats, max_repeats]``."""
        estimate_s = max(estimate_s, 1e-6)
        repeats = math.ceil(self.target_s / estimate_s)
        repeats = min(repeats, max(1, int(self.budget_s / estimate_s)))
        return max(self.min_repeats, min(self.max_repeats, repeats))


def spread(values: Sequence[float]) -> dict[str, float]:
    """``median``, quartiles ``q1`` / ``q3`` (inclusive method) and ``min`` / ``max`` of
    ``values`` (at least one)."""
    values = list(values)
    if not values:
        raise ValueError("spread of no values")
    if len(values) == 1:
        q1 = med = q3 = values[0]
    else:
        q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def interleaved_rounds(
    calls: dict[str, Callable[[], float]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Per round, run each of ``calls`` ``per_round`` times in a row (the order reversed
    every other round) and keep the median of its returned times.

    Returns:
        ``{name: [median of round 0, median of round 1, ...]}``.
    """
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(statistics.median(calls[name]() for _ in range(per_round)))
    return out


def time_method(
    f: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    device: str,
    policy: TimingPolicy,
) -> dict[str, Any]:
    """Warm up, then time ``f`` forward + backward.

    Returns:
        The timing fields of a result: ``first_call_s`` (the first warm-up), ``times_s``
        (wall), ``cpu_times_s`` (process CPU time, all threads), ``repeats``,
        ``over_budget`` (the first call exceeded ``policy.budget_s`` and was not repeated),
        ``median_s`` (the headline figure), its spread over the repeats ``q1_s``, ``q3_s``,
        ``min_s``, ``max_s`` (see :func:`spread`), ``cpu_median_s`` and the last ``loss``.
    """
    first = timed_call(f, x, y, device)
    loss = first.loss
    out: dict[str, Any] = {"first_call_s": first.wall_s}
    if first.wall_s > policy.budget_s:
        out.update(times_s=[first.wall_s], cpu_times_s=[first.cpu_s], repeats=1, over_budget=True)
    else:
        estimate = first.wall_s
        for _ in range(policy.warmups - 1):
            if estimate > 1.0:
                break
            estimate, _cpu, loss = timed_call(f, x, y, device)
        repeats = policy.repeats(estimate)
        calls = [timed_call(f, x, y, device) for _ in range(repeats)]
        loss = calls[-1].loss
        out.update(
            times_s=[c.wall_s for c in calls],
            cpu_times_s=[c.cpu_s for c in calls],
            repeats=repeats,
            over_budget=False,
        )
    wall = spread(out["times_s"])
    out.update(
        median_s=wall["median"],
        q1_s=wall["q1"],
        q3_s=wall["q3"],
        min_s=wall["min"],
        max_s=wall["max"],
    )
    if out.get("cpu_times_s"):
        out["cpu_median_s"] = statistics.median(out["cpu_times_s"])
    out["loss"] = float(loss.item())
    return out


def prewarm(
    f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, device: str
) -> dict[str, Any]:
    """Two calls on small inputs before a method's first measurement.

    The first call pays the one-off costs (numba compilation or cache loading, thread pools,
    lazy imports), kept out of every timing.

    Returns:
        ``n`` (rows of ``x``), ``first_call_s``, ``second_call_s`` and ``one_off_s`` (first
        minus second call: for numba methods, the compile or cache-load time).
    """
    first = timed_call(f, x, y, device).wall_s
    second = timed_call(f, x, y, device).wall_s
    return {
        "n": int(x.shape[0]),
        "first_call_s": first,
        "second_call_s": second,
        "one_off_s": max(first - second, 0.0),
    }


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


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


class PeakMemory:
    """Extra peak memory of the calls made between :meth:`start` and :meth:`stop`.

    On CUDA the peak statistics are reset at :meth:`start` and the extra peak is
    ``torch.cuda.max_memory_allocated`` minus the memory allocated at :meth:`start`; on CPU
    it is the peak RSS (reset through ``/proc/self/clear_refs``, else the growth of
    ``ru_maxrss``) minus the RSS at :meth:`start`. The calls must wait for their own device
    work (:func:`timed_call` and :func:`cuda_timed_call` do).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        release_cache: on CUDA, hand the caching allocator's unused blocks back at
            :meth:`start` (``torch.cuda.empty_cache``). The figure does not depend on it
            (allocated, not reserved, memory is counted); leave it off between timed calls,
            so that the next one does not pay for fresh device allocations.
    """

    def __init__(self, device: str, release_cache: bool = True) -> None:
        self.device = device
        self.release_cache = release_cache
        self._base = 0
        self._how = ""

    def start(self) -> None:
        """Collect garbage, reset the peak and take the baseline."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            if self.release_cache:
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self._how = "torch.cuda.max_memory_allocated"
            return
        _malloc_trim()
        if _reset_peak_rss():
            self._base = _proc_status()["VmRSS"]
            self._how = "VmHWM after /proc/self/clear_refs"
        else:
            self._base = _maxrss_bytes()
            self._how = "ru_maxrss growth"

    def stop(self) -> dict[str, Any]:
        """``extra_peak_bytes`` (peak minus baseline, at least 0), ``baseline_bytes``,
        ``peak_bytes`` and ``how`` (which counter was read)."""
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated()
        elif self._how.startswith("VmHWM"):
            peak = _proc_status()["VmHWM"]
        else:
            peak = _maxrss_bytes()
        return {
            "extra_peak_bytes": max(peak - self._base, 0),
            "baseline_bytes": self._base,
            "peak_bytes": peak,
            "how": self._how,
        }


def peak_memory(call: Callable[[], object], device: str) -> dict[str, Any]:
    """Extra peak memory of ``call()`` on ``device`` (see the module docstring).

    ``call`` must wait for its own device work (:func:`timed_call` does). On CPU, run this in
    a fresh process (:func:`run_json_child`): the peak RSS of the whole process is measured.

    Returns:
        ``extra_peak_bytes`` (peak minus baseline, at least 0), ``baseline_bytes``,
        ``peak_bytes`` and ``how`` (which counter was read).
    """
    probe = PeakMemory(device)
    probe.start()
    call()
    return probe.stop()


def available_bytes(device: str) -> float:
    """Free memory on ``device``: ``MemAvailable`` on CPU (8 GiB when unknown),
    ``mem_get_info`` on CUDA."""
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


def run_json_child(
    module: str, args: Sequence[str], timeout_s: float = 300.0, what: str = "subprocess"
) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` in a fresh interpreter at the repository root and
    return the last JSON line it printed.

    Errors are returned, not raised: ``{"error": ...}`` naming ``what`` when the child timed
    out, failed or printed no JSON line.
    """
    cmd = [sys.executable, "-m", module, *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{what} timed out after {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"{what} exit {proc.returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def set_threads(threads: int | None) -> None:
    """Set torch's and numba's thread counts (numba's capped at its maximum); ``None`` or
    ``0`` leaves them as they are."""
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


def numba_threads() -> int | None:
    """numba's current thread count, or ``None`` without numba."""
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


@contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """:func:`set_threads` for the duration of the block, then restore both counts."""
    saved = (torch.get_num_threads(), numba_threads())
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        if saved[1] is not None:
            _set_numba_threads(saved[1])
