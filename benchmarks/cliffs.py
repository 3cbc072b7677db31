"""Cliffs of the torch backend: does a fused loss cost the same with the input checks off and
no width (``max_positives``) as with it? And what do wide classes and a memory bank cost?

Run: ``python -m benchmarks.cliffs [--quick] [--out PATH]``. On the CPU, one thread,
``backend="torch"`` (the code every CUDA tensor runs), input checks off, ``D = 128``,
forward + backward, P x K labels (shuffled). In one process, the variants of a configuration
are timed in turn (alternating, so that a slow spell of a loaded machine hits them all) and
each reports the median of its repeats, with the spread (min, max).

Variants of each fused loss (batch-all hinge and soft margin, batch-hard, semi-hard) at
``K = 8`` and ``K = 64`` samples per class:

- ``width``: the function with ``max_positives=K - 1`` (what a sampler knows);
- ``module``: the module form without ``max_positives``, after a first call: it remembers the
  width and verifies it on the device (:class:`tripletkit._batch.WidthMemory`);
- ``function``: the function without ``max_positives``: the width-free fallback (every
  column a slot; semi-hard sorts each row), what a non-CPU tensor gets without a bound.

and ``cdist``: ``torch.cdist(x, x)`` forward + ``.sum().backward()``, the reference. The
memory bank: semi-hard, 1,024 anchors against ``M = 4,096`` references (64 per class, the
anchors' classes among them), ``max_positives=64``, per ``N x M`` element against the
in-batch ``K = 8`` time.

Targets (``targets`` in the JSON, printed): ``module`` within 1.3x of ``width`` for every
loss and ``K``; semi-hard's ratio to ``cdist`` at ``K = 64`` within 2.5x of its ratio at
``K = 8``; the memory bank within 1.5x of the in-batch cost per element.

Writes ``benchmarks/results/cliffs_cpu.json`` (``--quick``: a small size and two repeats,
for the tests; no targets checked).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import tripletkit
from tripletkit.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    SemiHardTripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

__all__ = ["main", "run"]

DIM = 128
RESULTS = Path(__file__).parent / "results" / "cliffs_cpu.json"

#: name -> (function, module class, options)
LOSSES: dict[str, tuple[Callable[..., torch.Tensor], type, dict[str, Any]]] = {
    "batch_all": (batch_all_triplet_loss, BatchAllTripletLoss, {}),
    "batch_all_soft": (batch_all_triplet_loss, BatchAllTripletLoss, {"soft_margin": True}),
    "batch_hard": (batch_hard_triplet_loss, BatchHardTripletLoss, {}),
    "semi_hard": (semi_hard_triplet_loss, SemiHardTripletLoss, {}),
}


def _pk(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.arange(n) // k)[torch.randperm(n, generator=gen)]


def _time(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and spread of each variant's time, the variants alternating within a repeat."""
    for f in variants.values():  # warm-up: lazy inits, a module's first (reading) call
        f()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, f in variants.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
        for name, t in times.items()
    }


def _step(loss: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kw: Any) -> None:
    x.grad = None
    loss(x, *args, **kw).backward()


def _in_batch(n: int, k: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed + k)
    x = torch.randn(n, DIM, generator=gen).requires_grad_()
    y = _pk(n, k, gen)
    variants: dict[str, Callable[[], None]] = {
        "cdist": lambda: _step(lambda x: torch.cdist(x, x).sum(), x)
    }
    for name, (fn, cls, opts) in LOSSES.items():
        module = cls(backend="torch", **opts)
        variants[f"{name}/width"] = lambda fn=fn, o=opts: _step(
            fn, x, y, backend="torch", max_positives=k - 1, **o
        )
        variants[f"{name}/module"] = lambda m=module: _step(m, x, y)
        if name != "batch_all_soft":  # without a bound it reads the width itself
            variants[f"{name}/function"] = lambda fn=fn, o=opts: _step(
                fn, x, y, backend="torch", **o
            )
    timed = _time(variants, repeats)
    ref = timed["cdist"]["median_s"]
    rows = []
    for key, t in timed.items():
        loss, _, variant = key.partition("/")
        rows.append(
            {"n": n, "m": n, "k": k, "loss": loss, "variant": variant or "-", **t}
            | {"ratio_to_cdist": t["median_s"] / ref}
        )
    return rows


def _bank(n: int, m: int, k: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed + 7)
    classes = m // k
    x = torch.randn(n, DIM, generator=gen).requires_grad_()
    y = torch.arange(n) % classes
    ref = torch.randn(m, DIM, generator=gen)
    ref_y = _pk(m, k, gen)
    variants: dict[str, Callable[[], None]] = {
        "semi_hard/width": lambda: _step(
            semi_hard_triplet_loss,
            x,
            y,
            ref_embeddings=ref,
            ref_labels=ref_y,
            backend="torch",
            max_positives=k,
        ),
        "semi_hard/function": lambda: _step(
            semi_hard_triplet_loss, x, y, ref_embeddings=ref, ref_labels=ref_y, backend="torch"
        ),
    }
    timed = _time(variants, repeats)
    return [
        {"n": n, "m": m, "k": k, "loss": key.partition("/")[0], "variant": "bank/" + key[10:]} | t
        for key, t in timed.items()
    ]


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r[key] == v for key, v in match.items()))


def _targets(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out = []
    for loss in LOSSES:
        for k in (8, 64):
            width = _find(rows, loss=loss, k=k, variant="width", m=n)["median_s"]
            module = _find(rows, loss=loss, k=k, variant="module", m=n)["median_s"]
            ratio = module / width
            out.append(
                {"name": f"{loss} K={k}: no width (module) <= 1.3x width", "value": ratio}
                | {"ok": ratio <= 1.3}
            )
    r8 = _find(rows, loss="semi_hard", k=8, variant="width", m=n)["ratio_to_cdist"]
    r64 = _find(rows, loss="semi_hard", k=64, variant="width", m=n)["ratio_to_cdist"]
    out.append(
        {"name": "semi_hard: K=64 ratio to cdist <= 2.5x the K=8 one", "value": r64 / r8}
        | {"ok": r64 / r8 <= 2.5}
    )
    bank = next(r for r in rows if r["variant"] == "bank/width")
    per_bank = bank["median_s"] / (bank["n"] * bank["m"])
    per_batch = _find(rows, loss="semi_hard", k=8, variant="width", m=n)["median_s"] / (n * n)
    out.append(
        {"name": "semi_hard memory bank (M=4096, 64 a class) per element <= 1.5x in-batch"}
        | {"value": per_bank / per_batch, "ok": per_bank / per_batch <= 1.5}
    )
    return out


def run(quick: bool = False, repeats: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Time every configuration; returns the JSON document (``rows``, ``targets``)."""
    n, bank_m = (96, 256) if quick else (1024, 4096)
    ks = (4, 8) if quick else (8, 64)
    reps = repeats if repeats is not None else (2 if quick else 9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tripletkit.set_input_checks(False):
            rows = [row for k in ks for row in _in_batch(n, k, reps, seed)]
            rows += _bank(n, bank_m, bank_m // 64 if quick else 64, reps, seed)
    finally:
        torch.set_num_threads(threads)
    return {
        "config": {
            "n": n,
            "dim": DIM,
            "backend": "torch",
            "device": "cpu",
            "threads": 1,
            "input_checks": False,
            "repeats": reps,
            "quick": quick,
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "rows": rows,
        "targets": [] if quick else _targets(rows, n),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small size, two repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.quick, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in result["rows"]:
        ratio = f"{r['ratio_to_cdist']:6.2f}x cdist" if "ratio_to_cdist" in r else ""
        print(
            f"K={r['k']:<3} M={r['m']:<5} {r['loss']:<15} {r['variant']:<14}"
            f" {r['median_s'] * 1e3:8.1f} ms ({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}) {ratio}"
        )
    for t in result["targets"]:
        print(f"[{'PASS' if t['ok'] else 'FAIL'}] {t['name']}: {t['value']:.2f}")
    return result


if __name__ == "__main__":
    main()
