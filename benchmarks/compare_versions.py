"""Side-by-side timing of tripletkit source trees, in alternating fresh processes.

Built to compare changes with an earlier release on a shared, noisy machine: each
*process* imports one version (``PYTHONPATH`` = that tree's ``src``), sets the thread
count, warms up (numba compilation or cache loading), then times ``repeats`` forward +
backward calls of one fused loss and prints their times as one JSON line. A *round* runs
one process per (tree, thread count), the order of the trees reversed from round to round,
so slow drifts of the machine's load hit every side alike. The first tree is the
reference. Per tree and thread count the report gives the median over every call of every
round, the interquartile range and min-max, and the *paired* ratio tree / reference per
round (each round's median over the same round's reference median), whose median and
spread are the headline; plus the thread scaling ``time(threads=t) / time(threads=1)`` of
each tree. The load average is read before every round. The loss value and the sum of the
gradient's absolute values are compared with the reference's (identical, or their largest
relative difference).

Usage::

    git worktree add /tmp/tk-010 <commit of 0.1.0>     # outside this repository's tree
    python -m benchmarks.compare_versions /tmp/tk-010 . --labels 0.1.0 new \
        --loss semi_hard --threads 1 2 --rounds 10 --repeats 15 \
        --out benchmarks/results/compare_semi_hard.json

Inputs as :mod:`benchmarks.speed`: ``N = 1024`` (``--n``), ``D = 128``, ``K = 8`` samples per
class, shuffled, float32, margin 0.2, ``backend="numba"`` (``--backend``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOSSES = ("semi_hard", "batch_hard", "batch_all", "batch_all_soft")


# --------------------------------------------------------------------------------------
# The child: runs under one version's PYTHONPATH, imports nothing from this repository
# --------------------------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import numba
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, int(numba.config.NUMBA_NUM_THREADS)))
    import tripletkit
    from tripletkit.losses import (
        batch_all_triplet_loss,
        batch_hard_triplet_loss,
        semi_hard_triplet_loss,
    )

    n, dim, k, backend = int(spec["n"]), int(spec["dim"]), int(spec["k"]), spec["backend"]
    loss_name, margin = spec["loss"], 0.2
    fns = {
        "semi_hard": lambda x, y: semi_hard_triplet_loss(x, y, margin, backend=backend),
        "batch_hard": lambda x, y: batch_hard_triplet_loss(x, y, margin, backend=backend),
        "batch_all": lambda x, y: batch_all_triplet_loss(
            x, y, margin, reduction="mean_nonzero", backend=backend
        ),
        "batch_all_soft": lambda x, y: batch_all_triplet_loss(
            x, y, soft_margin=True, reduction="mean", backend=backend
        ),
    }
    f = fns[loss_name]
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    labels = torch.arange(n // k).repeat_interleave(k)
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    x = torch.randn(labels.numel(), dim, generator=gen).requires_grad_(True)

    def call() -> tuple[float, float]:
        x.grad = None
        t0 = time.perf_counter()
        loss = f(x, labels)
        loss.backward()
        return time.perf_counter() - t0, float(loss.detach())

    for _ in range(int(spec["warmups"])):
        call()
    times, value = [], 0.0
    for _ in range(int(spec["repeats"])):
        t, value = call()
        times.append(t)
    assert x.grad is not None
    return {
        "version": getattr(tripletkit, "__version__", "unknown"),
        "file": tripletkit.__file__,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "times_s": times,
        "loss": value,
        "grad_sum": float(x.grad.double().abs().sum()),
    }


# --------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------


def _src(tree: str) -> Path:
    """A tree's ``src`` folder (the tree itself when it holds ``tripletkit`` directly)."""
    path = Path(tree).resolve()
    if (path / "src" / "tripletkit").is_dir():
        return path / "src"
    if (path / "tripletkit").is_dir():
        return path
    raise SystemExit(f"{tree}: neither {tree}/src/tripletkit nor {tree}/tripletkit exists")


def _run_child(src: Path, spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    # run outside any repository so that an editable install cannot shadow PYTHONPATH
    proc = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child for {src} failed ({proc.returncode}): {proc.stderr[-800:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    if not Path(out["file"]).resolve().is_relative_to(src):
        raise RuntimeError(f"child imported {out['file']}, not the tree under {src}")
    return out


def _spread(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        q1 = med = q3 = values[0]
    else:
        q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def summarize(runs: list[dict[str, Any]], sides: list[str], threads: list[int]) -> dict[str, Any]:
    """Per thread count: each side's spread over all calls and over process medians, its
    paired ratio to the reference (``sides[0]``) per round and the ratio of the medians;
    per side its scaling against the first thread count."""
    ref = sides[0]
    out: dict[str, Any] = {}
    for t in threads:
        mine = [r for r in runs if r["threads"] == t]
        per: dict[str, Any] = {}
        for side in sides:
            calls = [s for r in mine if r["side"] == side for s in r["times_s"]]
            meds = [statistics.median(r["times_s"]) for r in mine if r["side"] == side]
            per[side] = {"calls": _spread(calls), "process_medians": _spread(meds)}
        for side in sides[1:]:
            paired = []
            for k in sorted({r["round"] for r in mine}):
                med = {r["side"]: statistics.median(r["times_s"]) for r in mine if r["round"] == k}
                if side in med and ref in med:
                    paired.append(med[side] / med[ref])
            per[side][f"paired_ratio_to_{ref}"] = _spread(paired) if paired else None
            per[side][f"ratio_of_medians_to_{ref}"] = (
                per[side]["calls"]["median"] / per[ref]["calls"]["median"]
            )
        out[str(t)] = per
    for side in sides:
        base = out[str(threads[0])][side]["calls"]["median"]
        for t in threads[1:]:
            out[str(t)][side][f"scaling_vs_{threads[0]}_thread"] = (
                out[str(t)][side]["calls"]["median"] / base
            )
    return out


def _print(summary: dict[str, Any], sides: list[str], loss: str) -> None:
    ref = sides[0]
    print(f"\n{loss}: forward + backward, ms (median [IQR] min-max over every call)")
    for t, per in summary.items():
        for side in sides:
            c = per[side]["calls"]
            scale = next((v for k, v in per[side].items() if k.startswith("scaling")), None)
            extra = f"  scaling vs 1 thread {scale:.2f}" if scale is not None else ""
            print(
                f"  threads={t} {side}: {1e3 * c['median']:.2f} [{1e3 * c['q1']:.2f}, "
                f"{1e3 * c['q3']:.2f}] {1e3 * c['min']:.2f}-{1e3 * c['max']:.2f}{extra}"
            )
        for side in sides[1:]:
            p = per[side][f"paired_ratio_to_{ref}"]
            if p:
                print(
                    f"  threads={t} {side}/{ref} per round: median {p['median']:.3f} "
                    f"[{p['q1']:.3f}, {p['q3']:.3f}] {p['min']:.3f}-{p['max']:.3f}; ratio of "
                    f"medians {per[side][f'ratio_of_medians_to_{ref}']:.3f}"
                )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_versions", description=__doc__)
    p.add_argument(
        "trees", nargs="*", help="source trees (repository root or src/), reference first"
    )
    p.add_argument("--labels", nargs="+", help="a name per tree (default old, new, new2, ...)")
    p.add_argument("--loss", choices=LOSSES, default="semi_hard")
    p.add_argument("--backend", default="numba")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per process")
    p.add_argument("--warmups", type=int, default=3)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0, help="per process (s)")
    p.add_argument("--out", type=Path, help="JSON file to write")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns (and with ``--out`` writes) the JSON result."""
    p = _parser()
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return {}
    if len(args.trees) < 2:
        p.error("give at least two source trees, the reference first")
    sides = args.labels or ["old", "new", *(f"new{i}" for i in range(2, len(args.trees)))]
    if len(sides) != len(args.trees) or len(set(sides)) != len(sides):
        p.error("--labels needs one distinct name per tree")
    trees = {side: _src(tree) for side, tree in zip(sides, args.trees, strict=True)}
    spec = {k: getattr(args, k) for k in ("loss", "backend", "n", "dim", "k", "seed")}
    spec.update(repeats=args.repeats, warmups=args.warmups)
    runs: list[dict[str, Any]] = []
    loads = []
    for k in range(args.rounds):
        loads.append(_load())
        order = sides if k % 2 == 0 else sides[::-1]
        for t in args.threads:
            for side in order:
                r = _run_child(trees[side], {**spec, "threads": t}, args.timeout)
                runs.append({"round": k, "side": side, "threads": t, **r})
        print(f"round {k + 1}/{args.rounds} done, load average {loads[-1]}", flush=True)
    values = {(r["side"], r["threads"]): (r["loss"], r["grad_sum"]) for r in runs}
    keys = [(s, t) for s in sides[1:] for t in args.threads]
    same = all(values[k] == values[(sides[0], k[1])] for k in keys)
    rel = max(
        abs(values[k][i] - values[(sides[0], k[1])][i])
        / max(abs(values[(sides[0], k[1])][i]), 1e-30)
        for k in keys
        for i in (0, 1)
    )
    summary = summarize(runs, sides, args.threads)
    result: dict[str, Any] = {
        "benchmark": "compare_versions",
        "config": {**spec, "threads": args.threads, "rounds": args.rounds},
        "trees": {k: str(v) for k, v in trees.items()},
        "reference": sides[0],
        "versions": {r["side"]: r["version"] for r in runs},
        "machine": _machine(),
        "load_average_per_round": loads,
        "load_average_end": _load(),
        "same_values": same,
        "max_relative_difference": rel,
        "values": {f"{s}/{t}": v for (s, t), v in values.items()},
        "summary": summary,
        "runs": runs,
    }
    _print(summary, sides, args.loss)
    print(f"  loss and |gradient| sum identical: {same} (largest relative difference {rel:.1e})")
    print(f"  load averages per round {loads}, at the end {_load()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"Wrote {args.out}")
    return result


def _machine() -> dict[str, Any]:
    try:
        from .common import machine_info
    except ImportError:  # run as a script
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.common import machine_info
    return machine_info()


if __name__ == "__main__":
    main()
