"""Time and extra peak memory of the streaming fused losses (``backend="streaming"``, issue 18)
against the in-memory numba path, on CPU.

Inputs: ``D = 128`` float32 normal embeddings, ``P x K`` labels with ``K = 8``
(``arange(N // 8).repeat_interleave(8)``, shuffled), margin 0.2; with a reference set, ``M``
reference rows labelled the same way and a batch of ``N`` anchors drawn from the same classes
(not among the references, as with a cross-batch memory). A measured call is one forward +
backward (:func:`benchmarks.measure.timed_call`).

- **Time** (one fresh interpreter per loss): at ``N = 8,192`` the two backends alternate,
  after a warm-up call each, for ``--repeats`` calls; the figure is each backend's median
  wall time, and the target is streaming within 2x of in-memory (same run, same inputs).
- **Memory** (one fresh interpreter per configuration): a warm-up call on a small batch loads
  the numba kernels, then one call at full size is measured with
  :class:`benchmarks.measure.PeakMemory` (extra peak RSS: ``VmHWM`` after the call minus
  ``VmRSS`` before it; the inputs exist before, ``x.grad`` is counted). The target is an
  extra peak of at most 256 MiB at ``N = 65,536`` (``--full``), where one float32 ``N x N``
  matrix is 16 GiB, and for semi-hard and batch-all with a 65,536-row reference set and a
  1,024 batch.

Plans: default (a few minutes on 2 cores): the time rows at 8,192 and memory at 8,192 (both
backends) and 16,384 (streaming), plus the reference-set rows; ``--full`` adds
``N = 65,536`` (several minutes per loss); ``--quick`` is a smoke test of every row kind on
small sizes, all in one interpreter (the targets then read N/A).

Usage::

    python -m benchmarks.streaming             # default plan
    python -m benchmarks.streaming --full      # + N = 65,536
    python -m benchmarks.streaming --quick     # smoke test
    python -m benchmarks.streaming --large-only  # only the N = 65,536 rows of --full
    python -m benchmarks.streaming --large-only --kinds batch_all   # one of them

``--large-only`` merges its rows into ``benchmarks/results/streaming_cpu.json`` (the default
run's file: a row with the same loss, N, M and backend is replaced, every other row is kept,
and the targets are recomputed from all of them; each merged row records its commit, machine
load and a ``source``); ``--merge FILE`` merges the rows of a saved JSON (``memory`` or
``rows``) the same way. The README's "memory at N = 65,536" column and the docs' streaming
table are generated from that file (``docs/gen_figures.py``).

Writes ``benchmarks/results/streaming_cpu.json`` (``_full`` / ``_quick``) with
:func:`~benchmarks.common.machine_info` (load averages included: wall times on a shared
machine are inflated by the other processes; CPU times are recorded beside them), saved
after every row (``"complete": false`` until the last one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .cli import run
from .common import MIB, RESULTS_DIR, machine_info, save_json
from .common import STREAMING_LOSSES as KINDS
from .common import STREAMING_TARGET_BYTES as MEMORY_TARGET_BYTES
from .common import STREAMING_TARGET_N as MEMORY_TARGET_N

D = 128
K = 8
MARGIN = 0.2
#: The issue's targets: streaming time <= 2x in-memory at this N; extra peak <= 256 MiB
#: (``MEMORY_TARGET_BYTES`` at ``MEMORY_TARGET_N``, imported above: one home in
#: :mod:`benchmarks.common`, shared with the speed benchmark).
TIME_TARGET = {"n": 8192, "max_ratio": 2.0}
REF_TARGET = {"m": 65536, "n": 1024, "kinds": ("semi_hard", "batch_all")}


def _plan(quick: bool, full: bool, large_only: bool = False) -> dict[str, Any]:
    """Which rows run: ``time_n`` (``None``: no time rows), ``memory`` [(kind, n, m or None,
    backend)]."""
    if large_only:
        return {"time_n": None, "memory": [(k, MEMORY_TARGET_N, None, "streaming") for k in KINDS]}
    if quick:
        memory = [(k, 512, None, b) for k in KINDS for b in ("numba", "streaming")]
        memory += [(k, 128, 1024, "streaming") for k in REF_TARGET["kinds"]]
        return {"time_n": 256, "memory": memory}
    memory = [(k, 8192, None, b) for k in KINDS for b in ("numba", "streaming")]
    memory += [(k, 16384, None, "streaming") for k in KINDS]
    memory += [(k, REF_TARGET["n"], REF_TARGET["m"], "streaming") for k in REF_TARGET["kinds"]]
    if full:
        memory += [(k, MEMORY_TARGET_N, None, "streaming") for k in KINDS]
    return {"time_n": TIME_TARGET["n"], "memory": memory}


def _tile_bytes() -> int:
    from tripletkit.kernels import streaming

    return int(streaming.TILE_BYTES)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke test on small sizes")
    size.add_argument("--full", action="store_true", help="add N = 65,536")
    size.add_argument(
        "--large-only", action="store_true", help="only the N = 65,536 rows of --full"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed calls per backend (3)")
    p.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=None, help="only these losses (all)"
    )
    p.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="merge the memory rows of this JSON into streaming_cpu.json, then stop",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------- the child process


def _inputs(n: int, m: int | None, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    classes = max(1, (m or n) // K)
    if m is None:
        labels = torch.arange(classes).repeat_interleave(K)[torch.randperm(n, generator=g)]
        x = torch.randn(n, D, generator=g).requires_grad_()
        return x, labels, {}
    ref_labels = torch.arange(classes).repeat_interleave(K)[torch.randperm(m, generator=g)]
    refs = {"ref_embeddings": torch.randn(m, D, generator=g), "ref_labels": ref_labels}
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, D, generator=g).requires_grad_()
    return x, labels, refs


def _loss(kind: str, backend: str, refs: dict[str, Any]) -> Any:
    from tripletkit import losses

    fn = getattr(losses, f"{kind}_triplet_loss")

    def f(x: Any, labels: Any) -> Any:
        return fn(x, labels, MARGIN, backend=backend, **refs)

    return f


def _time_child(kind: str, n: int, repeats: int) -> dict[str, Any]:
    """Both backends on the same inputs, alternating after a warm-up call each."""
    from .measure import timed_call

    x, labels, _ = _inputs(n, None)
    fns = {b: _loss(kind, b, {}) for b in ("numba", "streaming")}
    for f in fns.values():
        timed_call(f, x, labels, "cpu")
    calls: dict[str, list] = {b: [] for b in fns}
    losses: dict[str, float] = {}
    for _ in range(repeats):
        for b, f in fns.items():
            c = timed_call(f, x, labels, "cpu")
            calls[b].append(c)
            losses[b] = float(c.loss)
    out: dict[str, Any] = {"kind": kind, "n": n, "repeats": repeats}
    for b, cs in calls.items():
        out[b] = {
            "times_s": [c.wall_s for c in cs],
            "median_s": statistics.median(c.wall_s for c in cs),
            "cpu_median_s": statistics.median(c.cpu_s for c in cs),
            "loss": losses[b],
        }
    out["ratio"] = out["streaming"]["median_s"] / out["numba"]["median_s"]
    out["cpu_ratio"] = out["streaming"]["cpu_median_s"] / out["numba"]["cpu_median_s"]
    out["load_average_1m"] = os.getloadavg()[0]
    return out


def _memory_child(kind: str, n: int, m: int | None, backend: str) -> dict[str, Any]:
    """One call at full size after a small warm-up, its extra peak RSS and its time."""
    from .measure import PeakMemory, timed_call

    small_x, small_labels, small_refs = _inputs(min(n, 256), None if m is None else 512)
    timed_call(_loss(kind, backend, small_refs), small_x, small_labels, "cpu")
    x, labels, refs = _inputs(n, m)
    f = _loss(kind, backend, refs)
    del small_x, small_labels, small_refs
    probe = PeakMemory("cpu")
    probe.start()
    call = timed_call(f, x, labels, "cpu")
    memory = probe.stop()
    matrix = n * (m or n) * 4
    return {
        "kind": kind,
        "n": n,
        "m": m,
        "backend": backend,
        "extra_peak_bytes": memory["extra_peak_bytes"],
        "extra_peak_mib": memory["extra_peak_bytes"] / MIB,
        "matrix_mib": matrix / MIB,
        "memory_how": memory["how"],
        "wall_s": call.wall_s,
        "cpu_s": call.cpu_s,
        "loss": float(call.loss),
        "load_average_1m": os.getloadavg()[0],
    }


def _one(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        if spec["what"] == "time":
            return _time_child(spec["kind"], spec["n"], spec["repeats"])
        return _memory_child(spec["kind"], spec["n"], spec["m"], spec["backend"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        return {**spec, "error": f"{type(exc).__name__}: {exc}"[:500]}


def _child(specs_json: str) -> int:
    """Run a list of specs in this process; print ``{"results": [...]}``."""
    print(json.dumps({"results": [_one(spec) for spec in json.loads(specs_json)]}), flush=True)
    return 0


def _run_child(specs: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
    """The specs in one fresh interpreter (every spec its own, except with ``--quick``: the
    peak RSS is reset before each measured call, but a fresh process is the cleaner base)."""
    from .measure import run_json_child

    args = ["--child", json.dumps(specs)]
    result = run_json_child("benchmarks.streaming", args, timeout_s)
    if "error" in result:
        return [{**spec, "error": result["error"]} for spec in specs]
    return list(result["results"])


# ------------------------------------------------------------------------------- parent


def _targets(times: list[dict], memory: list[dict]) -> dict[str, Any]:
    """PASS / FAIL / N/A of the issue's targets, from the rows that ran."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        t = [r for r in times if r.get("kind") == kind and r.get("n") == TIME_TARGET["n"]]
        out[f"time_{kind}_8192"] = (
            {"ratio": t[0]["ratio"], "passed": t[0]["ratio"] <= TIME_TARGET["max_ratio"]}
            if t and "error" not in t[0]
            else "N/A"
        )
        big = [
            r
            for r in memory
            if r.get("kind") == kind
            and r.get("n") == MEMORY_TARGET_N
            and r.get("m") is None
            and r.get("backend") == "streaming"
        ]
        out[f"memory_{kind}_65536"] = _memory_target(big)
    for kind in REF_TARGET["kinds"]:
        rows = [
            r
            for r in memory
            if r.get("kind") == kind
            and r.get("m") == REF_TARGET["m"]
            and r.get("n") == REF_TARGET["n"]
            and r.get("backend") == "streaming"
        ]
        out[f"memory_{kind}_ref65536_batch1024"] = _memory_target(rows)
    return out


def _memory_target(rows: list[dict]) -> Any:
    if not rows or "error" in rows[0]:
        return "N/A" if not rows else {"error": rows[0]["error"], "passed": False}
    extra = rows[0]["extra_peak_bytes"]
    return {"extra_peak_mib": extra / MIB, "passed": extra <= MEMORY_TARGET_BYTES}


def _print_summary(out: dict[str, Any], path: Path) -> None:
    print("\n| loss | N | in-memory median | streaming median | ratio | CPU-time ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in out["time"]:
        if "error" in r:
            print(f"| {r['kind']} | {r['n']:,} | error: {r['error']} | | | |")
            continue
        print(
            f"| {r['kind']} | {r['n']:,} | {r['numba']['median_s']:.3f} s | "
            f"{r['streaming']['median_s']:.3f} s | x{r['ratio']:.2f} | x{r['cpu_ratio']:.2f} |"
        )
    print("\n| loss | N | M | backend | extra peak | N x M float32 | time |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in out["memory"]:
        m = "" if r.get("m") is None else f"{r['m']:,}"
        if "error" in r:
            print(f"| {r['kind']} | {r['n']:,} | {m} | {r['backend']} | error: {r['error']} |||")
            continue
        print(
            f"| {r['kind']} | {r['n']:,} | {m} | {r['backend']} | {r['extra_peak_mib']:.0f} MiB"
            f" | {r['matrix_mib']:.0f} MiB | {r['wall_s']:.2f} s |"
        )
    for name, t in out["targets"].items():
        verdict = "N/A" if t == "N/A" else ("PASS" if t["passed"] else "FAIL")
        print(f"target {name}: {verdict} {'' if t == 'N/A' else json.dumps(t)}")
    print(f"wrote {path} in {out['wall_s']:.0f} s")


def _row_key(row: dict[str, Any]) -> tuple:
    return (row.get("kind"), row.get("n"), row.get("m"), row.get("backend"))


def merge_rows(
    path: Path, rows: list[dict[str, Any]], source: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Merge memory ``rows`` into the results file ``path``: a row with the same loss, N, M
    and backend is replaced (the old row moves to ``superseded``), every other row is kept;
    each merged row gets ``source`` and
    ``extra`` (commit, load...); the targets are recomputed from every row. Rows with an
    error are not merged. Returns the saved dict."""
    data = json.loads(path.read_text())
    memory = list(data.get("memory", []))
    merged = []
    for row in rows:
        if "error" in row:
            continue
        row = {**row, "source": source, **(extra or {})}
        if "load_average_1m" in row:  # the machine's load when the call ended (times only)
            row.setdefault("load_average", row["load_average_1m"])
        replaced = [r for r in memory if _row_key(r) == _row_key(row)]
        data.setdefault("superseded", []).extend(replaced)  # kept, not shown
        memory = [r for r in memory if _row_key(r) != _row_key(row)]
        memory.append(row)
        merged.append(_row_key(row))
    order = {k: i for i, k in enumerate(KINDS)}
    memory.sort(key=lambda r: (r.get("m") is not None, r.get("n"), order.get(r.get("kind"), 9)))
    data["memory"] = memory
    data["targets"] = _targets(data.get("time", []), memory)
    data.setdefault("merges", []).append(
        {"source": source, "rows": [list(k) for k in merged], **(extra or {})}
    )
    save_json(path, data)
    return data


def _provenance(machine: dict[str, Any]) -> dict[str, Any]:
    return {"git_commit": machine.get("git_commit"), "merged_at": machine.get("timestamp")}


def main(argv: list[str] | None = None) -> dict[str, Any] | int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args.child)
    main_file = args.out / "streaming_cpu.json"
    if args.merge is not None:
        saved = json.loads(args.merge.read_text())
        rows = saved.get("memory") or saved.get("rows") or []
        extra = {k: saved[k] for k in ("note", "git_commit") if saved.get(k)}
        if "git_commit" not in extra and saved.get("machine", {}).get("git_commit"):
            extra["git_commit"] = saved["machine"]["git_commit"]  # a benchmark's own file
        data = merge_rows(main_file, rows, f"{args.merge.name}", extra)
        print(f"merged {len(rows)} row(s) of {args.merge} into {main_file}")
        return data
    plan = _plan(args.quick, args.full, args.large_only)
    if args.kinds:
        plan["memory"] = [spec for spec in plan["memory"] if spec[0] in args.kinds]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    start = time.perf_counter()
    specs: list[dict[str, Any]] = [
        {"what": "time", "kind": kind, "n": plan["time_n"], "repeats": args.repeats}
        for kind in ((args.kinds or KINDS) if plan["time_n"] else ())
    ]
    specs += [
        {"what": "memory", "kind": kind, "n": n, "m": m, "backend": backend}
        for kind, n, m, backend in plan["memory"]
    ]
    suffix = "_quick" if args.quick else "_full" if args.full else ""
    suffix = "_large" if args.large_only else suffix
    path = args.out / f"streaming_cpu{suffix}.json"
    config = {
        "d": D,
        "k": K,
        "margin": MARGIN,
        "dtype": "float32",
        "quick": args.quick,
        "full": args.full,
        "large_only": args.large_only,
        "kinds": args.kinds,
        "tile_bytes": _tile_bytes(),
    }
    results: list[dict[str, Any]] = []
    groups = [specs] if args.quick else [[spec] for spec in specs]
    for done, group in enumerate(groups, 1):
        print(f"{len(group)} run(s): {json.dumps(group[0])} ...", flush=True)
        results += _run_child(group, 3600.0)
        print(f"  {json.dumps(results[-1])}", flush=True)
        times = [r for r in results if "backend" not in r]
        memory = [r for r in results if "backend" in r]
        out = {
            "benchmark": "streaming",
            "machine": machine_info(),
            "config": config,
            "complete": done == len(groups),  # saved after every row: a long run's partial
            "time": times,
            "memory": memory,
            "targets": _targets(times, memory),
            "wall_s": time.perf_counter() - start,
        }
        save_json(path, out)
    _print_summary(out, path)
    if args.large_only and main_file.is_file():
        machine = out["machine"]
        merge_rows(
            main_file,
            out["memory"],
            "python -m benchmarks.streaming --large-only",
            {**_provenance(machine), "load_average": machine.get("load_average")},
        )
        print(f"merged the rows into {main_file}")
    return out


if __name__ == "__main__":
    run(main, "python -m benchmarks.streaming")
