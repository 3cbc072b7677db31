"""Peak memory and time of one training step with and without gradient caching.

The network is the quality benchmark's (:class:`benchmarks.nets.EmbeddingNet`: four
conv-BN-ReLU-pool blocks and a linear layer, 28 x 28 Omniglot images to 64-d unit
embeddings), the batch a P x K batch of the Omniglot *background* split (``k = max(2,
batch // 512)`` images of each of ``batch // k`` classes), the loss the fused batch-hard triplet loss (margin 0.2), the
optimiser Adam. One step is ``zero_grad``, forward + loss + backward (plain), or
:func:`tripletkit.gradcache.cached_backward` with ``chunk_size`` rows per forward (cached),
then ``optimizer.step()``.

Each configuration runs in a fresh interpreter: data and model are built, one warm-up step
absorbs the one-off costs (oneDNN primitives, numba's cached kernels, Adam's state), the C
heap is trimmed, the peak RSS is reset (``/proc/self/clear_refs``) and one step is measured:
``extra_peak_bytes`` is ``VmHWM`` after the step minus ``VmRSS`` before it (the memory the
step itself needs: activations, gradients, the loss's ``N x N`` matrices), ``peak_bytes``
the process's whole high-water mark (interpreter, torch, dataset and model included). Then
``--steps`` steps are timed and their median (and minimum) wall time reported, with their
median CPU time (``time.process_time``: every thread of the process) and the 1-minute load
average at the end. On a shared machine (a load above the number of cores) the wall times
are inflated by the other processes and the CPU times are the figure to compare; the memory
figures are not affected. Without ``clear_refs`` (not Linux),
the growth of ``ru_maxrss`` over the step is reported instead.

Usage::

    python -m benchmarks.gradcache_memory             # about 1.5 minutes on 2 cores
    python -m benchmarks.gradcache_memory --quick     # smoke run (small batches)

Writes ``benchmarks/results/gradcache.json`` (``gradcache_quick.json`` with ``--quick``) with
:func:`~benchmarks.common.machine_info`, every configuration's numbers and the ratios of the
cached steps to the plain step of the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli import run
from .common import RESULTS_DIR, machine_info, save_json

#: (batch, chunk_size or None for the plain step) of a full run and of ``--quick``.
DEFAULT_CONFIGS: tuple[tuple[int, int | None], ...] = (
    (2048, None),
    (2048, 128),
    (4096, None),
    (4096, 128),
    (4096, 512),
)
QUICK_CONFIGS: tuple[tuple[int, int | None], ...] = ((512, None), (512, 128))
CLASSES_PER_BATCH = 512
MARGIN = 0.2
LR = 3e-3
#: The acceptance bound of the issue: cached extra peak <= 35% of the plain step's at 2,048.
TARGET = {"batch": 2048, "chunk_size": 128, "max_ratio": 0.35}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gradcache_memory", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run on small batches")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------- the child process


def _network() -> tuple[Any, str]:
    """The quality benchmark's network and its name."""
    from .nets import EmbeddingNet

    return EmbeddingNet(), "benchmarks.nets.EmbeddingNet"


def _usage() -> dict[str, float]:
    """Minor page faults and system CPU time of this process so far (zeros off Unix)."""
    try:
        import resource
    except ImportError:
        return {"minor_faults": 0.0, "system_s": 0.0}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"minor_faults": float(ru.ru_minflt), "system_s": ru.ru_stime}


def _training_step(batch: int, chunk_size: int | None) -> tuple[Callable[[], float], dict]:
    """One optimiser step of the quality benchmark's network on a P x K batch of ``batch``
    Omniglot images (plain or cached), and what it trains on."""
    import torch

    from tripletkit.datasets import omniglot
    from tripletkit.gradcache import cached_backward
    from tripletkit.losses import batch_hard_triplet_loss
    from tripletkit.samplers import PKBatchSampler

    torch.manual_seed(0)
    data = omniglot("background")
    k = max(batch // CLASSES_PER_BATCH, 2)
    p = batch // k
    index = torch.tensor(next(iter(PKBatchSampler(data.labels, p=p, k=k, seed=0))))
    images, labels = data.images[index].contiguous(), data.labels[index].contiguous()
    model, network_source = _network()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def loss_fn(emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batch_hard_triplet_loss(emb, y, margin=MARGIN)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if chunk_size is None:
            loss = loss_fn(model(images), labels)
            loss.backward()
        else:
            loss = cached_backward(model, images, labels, loss_fn, chunk_size=chunk_size)
        optimizer.step()
        return float(loss.item())

    return step, {"p": p, "k": k, "network_source": network_source}


def _timed_steps(step: Callable[[], float], steps: int) -> dict[str, Any]:
    """Wall and CPU time of ``steps`` steps, and their page faults and kernel time per step."""
    times, cpu_times = [], []
    usage = _usage()
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    usage = {key: (value - usage[key]) / steps for key, value in _usage().items()}
    return {
        "step_times_s": times,
        "step_median_s": statistics.median(times),
        "step_min_s": min(times),
        "step_cpu_times_s": cpu_times,
        "step_cpu_median_s": statistics.median(cpu_times),
        # Page faults and kernel time per step: memory that is freed and allocated afresh
        # every step (glibc hands large blocks back to the OS) is faulted in again each time.
        "minor_faults_per_step": usage["minor_faults"],
        "system_time_per_step_s": usage["system_s"],
    }


def _measure(batch: int, chunk_size: int | None, steps: int, threads: int | None) -> dict[str, Any]:
    """One configuration, in this (fresh) process: the extra peak RSS of one step after a
    warm-up step, then ``steps`` timed steps."""
    import torch

    from .measure import PeakMemory

    if threads:
        torch.set_num_threads(threads)
    step, setup = _training_step(batch, chunk_size)
    step()  # warm-up
    probe = PeakMemory("cpu")
    probe.start()
    loss = step()
    memory = probe.stop()
    return {
        "batch": batch,
        **setup,
        "chunk_size": chunk_size,
        "mode": "plain" if chunk_size is None else "cached",
        "extra_peak_bytes": memory["extra_peak_bytes"],
        "baseline_bytes": memory["baseline_bytes"],
        "peak_bytes": memory["peak_bytes"],
        "memory_how": memory["how"],
        **_timed_steps(step, steps),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "loss_of_measured_step": loss,
        "torch_threads": torch.get_num_threads(),
    }


def _child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = _measure(spec["batch"], spec["chunk_size"], spec["steps"], spec["threads"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {
            "batch": spec["batch"],
            "chunk_size": spec["chunk_size"],
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }
    print(json.dumps(result), flush=True)
    return 0


def _run_child(
    batch: int, chunk_size: int | None, steps: int, threads: int | None, timeout_s: float = 300.0
) -> dict[str, Any]:
    """:func:`_measure` in a fresh interpreter (the peak RSS is the whole process's)."""
    from .measure import run_json_child

    spec = {"batch": batch, "chunk_size": chunk_size, "steps": steps, "threads": threads}
    result = run_json_child(
        "benchmarks.gradcache_memory", ["--child", json.dumps(spec)], timeout_s, "the step"
    )
    if "error" in result:
        return {"batch": batch, "chunk_size": chunk_size, "error": result["error"]}
    return result


# ------------------------------------------------------------------------------- parent


def _ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cached configuration against the plain step of the same batch."""
    plain = {r["batch"]: r for r in results if r.get("mode") == "plain" and "error" not in r}
    out = []
    for r in results:
        if r.get("mode") != "cached" or "error" in r or r["batch"] not in plain:
            continue
        ref = plain[r["batch"]]
        out.append(
            {
                "batch": r["batch"],
                "chunk_size": r["chunk_size"],
                "extra_peak_ratio": r["extra_peak_bytes"] / max(ref["extra_peak_bytes"], 1),
                "peak_ratio": r["peak_bytes"] / max(ref["peak_bytes"], 1),
                "time_ratio": r["step_median_s"] / ref["step_median_s"],
                "cpu_time_ratio": r["step_cpu_median_s"] / ref["step_cpu_median_s"],
            }
        )
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def markdown_table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| batch | step | extra peak RSS | peak RSS (process) | wall / step (median, min) "
        "| CPU / step | of which system | page faults / step |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        step = "plain" if r.get("chunk_size") is None else f"cached, chunk {r['chunk_size']}"
        if "error" in r:
            rows.append(f"| {r['batch']:,} | {step} | error: {r['error']} | | | | | |")
            continue
        rows.append(
            f"| {r['batch']:,} | {step} | {_mib(r['extra_peak_bytes'])} | "
            f"{_mib(r['peak_bytes'])} | {r['step_median_s']:.2f} s, {r['step_min_s']:.2f} s | "
            f"{r['step_cpu_median_s']:.2f} s | {r['system_time_per_step_s']:.2f} s | "
            f"{r['minor_faults_per_step']:,.0f} |"
        )
    return "\n".join(rows)


def _target_check(ratios: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's target (extra peak of the cached step against the plain one), if run."""
    for r in ratios:
        if r["batch"] == TARGET["batch"] and r["chunk_size"] == TARGET["chunk_size"]:
            return {
                **TARGET,
                "extra_peak_ratio": r["extra_peak_ratio"],
                "peak_ratio": r["peak_ratio"],
                "passed": r["extra_peak_ratio"] <= TARGET["max_ratio"],
            }
    return None


def _print_summary(results: list[dict[str, Any]], out: dict[str, Any], path: Path) -> None:
    print()
    print(markdown_table(results))
    for r in out["ratios"]:
        print(
            f"batch {r['batch']}, chunk {r['chunk_size']}: extra peak {r['extra_peak_ratio']:.1%}"
            f" of plain, whole-process peak {r['peak_ratio']:.1%}, wall time "
            f"x{r['time_ratio']:.2f}, CPU time x{r['cpu_time_ratio']:.2f}"
        )
    check = out["target"]
    if check is not None:
        print(
            f"target: extra peak at batch {TARGET['batch']}, chunk {TARGET['chunk_size']} "
            f"<= {TARGET['max_ratio']:.0%} of plain: "
            f"{'PASS' if check['passed'] else 'FAIL'} ({check['extra_peak_ratio']:.1%})"
        )
    print(f"wrote {path} in {out['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args.child)
    configs = QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS
    start = time.perf_counter()
    results = []
    for batch, chunk_size in configs:
        label = "plain" if chunk_size is None else f"chunk_size={chunk_size}"
        print(f"batch {batch}, {label} ...", flush=True)
        result = _run_child(batch, chunk_size, args.steps, args.threads)
        print(f"  {json.dumps(result)}", flush=True)
        results.append(result)
    ratios = _ratios(results)
    out = {
        "benchmark": "gradcache_memory",
        "machine": machine_info(),
        "config": {
            "network": "benchmarks.nets.EmbeddingNet (4 conv blocks + linear, 64-d)",
            "data": "Omniglot background, 28x28, P x K batch with k = max(2, batch // 512)",
            "loss": f"batch_hard_triplet_loss(margin={MARGIN})",
            "optimizer": f"Adam(lr={LR})",
            "timed_steps": args.steps,
            "threads": args.threads,
            "quick": args.quick,
        },
        "results": results,
        "ratios": ratios,
        "target": _target_check(ratios),
        "wall_s": time.perf_counter() - start,
    }
    name = "gradcache_quick.json" if args.quick else "gradcache.json"
    path = save_json(args.out / name, out)
    _print_summary(results, out, path)
    return 0


if __name__ == "__main__":
    run(main, "python -m benchmarks.gradcache_memory")
