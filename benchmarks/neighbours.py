"""The cost of one refresh of dataset-level hard negatives: embed a dataset, then find every
sample's nearest other-class neighbours (:mod:`tripletkit.neighbours`), torch vs faiss.

Each configuration (``N`` vectors, a backend) runs in a fresh interpreter: ``N`` random
128-d inputs with ``N / 10`` classes are embedded by a ``Linear(128, 128)`` model
(:func:`~tripletkit.neighbours.embed_dataset`, batches of 4096), then
:func:`~tripletkit.neighbours.nearest_neighbours` finds ``8`` negatives per sample
(``backend="torch"``: the exact streaming search with the default 256 MiB budget;
``backend="faiss"``: exact ``IndexFlatL2``). Reported: the wall and CPU time of the embedding
and of the search, and the search's extra peak memory (peak RSS during the search minus the
RSS before it, :class:`benchmarks.measure.PeakMemory`: the ``[N, 128]`` embeddings are
already resident; the ``[N, 8]`` results and the working memory are counted). On a shared
machine (load above the number of cores) the wall times are inflated by other processes: the
CPU times are the figure to compare. The search is O(N^2 D): a 1M run takes ~100x a 100k one.

Usage::

    python -m benchmarks.neighbours                    # 100k vectors, torch and faiss
    python -m benchmarks.neighbours --sizes 100000 1000000
    python -m benchmarks.neighbours --quick            # smoke run (5k vectors)
    python -m benchmarks.neighbours --sizes 1000000 --backends torch --queries 2048

``--queries Q`` searches the neighbours of the first ``Q`` samples only (among all ``N``):
the extra peak memory is then the full search's working memory (blocks of the same size)
plus ``[Q, 8]`` results instead of ``[N, 8]`` (96 MiB more at ``N = 1M``: int64 indices and
float32 distances), and the search time is extrapolated by ``N / Q``.

``--steady-state`` bounds the extra peak memory of the full torch search of ``N = 1M``
queries against ``1M`` references (issue 20's target: at most 1 GiB; the full search takes
~24,000 CPU-s on one core) by measuring its steady state: the search with all ``N``
references and ``c`` then ``2c`` full query chunks (``--chunks c``, default 4; a chunk is
the query rows of one block, :func:`tripletkit.neighbours._chunk_sizes`). Reading
``_stream``: everything allocated for a query chunk (its rows, the distance block, the masks
and the merge's candidates) is released before the next chunk starts, and what persists
across chunks is the ``[Q, k]`` outputs only. So the extra peak of a search of ``Q`` queries
is a constant working memory plus ``Q`` times the outputs' bytes per query, and the two
measured points check it (their difference must be the outputs' difference, within the
resolution of the peak RSS). The bound reported for ``Q = N`` is the larger measured peak
plus the exact bytes of the outputs at ``Q = N``, counted twice (``nearest_neighbours``
clones its results before returning: both copies are alive for a moment) plus the ``[N]``
int64 query indices: a bound, labelled as such, not a measurement of the full search.

Writes ``benchmarks/results/neighbours.json`` (``neighbours_quick.json`` with ``--quick``,
``neighbours_partial.json`` with ``--queries``); ``--steady-state`` writes only the
``steady_state`` entry of ``neighbours.json`` and keeps its other keys.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from .cli import run
from .common import RESULTS_DIR, machine_info, new_result, save_json

DIM = 128
NUM_NEGATIVES = 8
CLASS_SIZE = 10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neighbours", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--backends", nargs="+", default=["torch", "faiss"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per child")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="search only the first Q samples' neighbours (among all N): the working memory "
        "of a full search, and its time extrapolated by N / Q",
    )
    parser.add_argument(
        "--steady-state",
        action="store_true",
        help="bound the extra peak of the full N x N torch search (N = first --sizes, "
        "default 1M) from two measured points of c and 2c full query chunks",
    )
    parser.add_argument("--chunks", type=int, default=4, help="c of --steady-state (4)")
    parser.add_argument("--quick", action="store_true", help="5k vectors (smoke run)")
    parser.add_argument("--out", default=None, help="results file name (in benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def _measure(n: int, backend: str, threads: int | None, queries: int | None) -> dict[str, Any]:
    import torch
    from torch.utils.data import TensorDataset

    from tripletkit.neighbours import embed_dataset, nearest_neighbours

    from .measure import PeakMemory

    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, DIM, generator=g)
    labels = torch.arange(n) // CLASS_SIZE
    model = torch.nn.Linear(DIM, DIM)
    start, cpu = time.perf_counter(), time.process_time()
    emb, _ = embed_dataset(model, TensorDataset(inputs, labels), batch_size=4096)
    embed_s, embed_cpu = time.perf_counter() - start, time.process_time() - cpu
    del inputs
    probe = PeakMemory("cpu")
    probe.start()
    start, cpu = time.perf_counter(), time.process_time()
    q = n if queries is None else min(queries, n)
    subset = None if queries is None else torch.arange(q)
    found = nearest_neighbours(emb, labels, NUM_NEGATIVES, backend=backend, queries=subset)
    search_s, search_cpu = time.perf_counter() - start, time.process_time() - cpu
    memory = probe.stop()
    assert found.negatives.shape == (q, NUM_NEGATIVES)
    return {
        "n": n,
        "dim": DIM,
        "backend": backend,
        "num_negatives": NUM_NEGATIVES,
        "queries": q,
        "embed_s": embed_s,
        "embed_cpu_s": embed_cpu,
        "search_s": search_s,
        "search_cpu_s": search_cpu,
        "refresh_s": embed_s + search_s * n / q,
        "search_s_extrapolated": None if q == n else search_s * n / q,
        "search_cpu_s_extrapolated": None if q == n else search_cpu * n / q,
        "search_extra_peak_bytes": memory["extra_peak_bytes"],
        "memory_how": memory["how"],
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = _measure(spec["n"], spec["backend"], spec["threads"], spec.get("queries"))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        result = {**spec, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result), flush=True)
    return 0


def output_bytes_per_query(num_negatives: int, num_positives: int = 0, itemsize: int = 4) -> int:
    """Bytes per query of what a torch search keeps across query chunks: the ``[Q, k]``
    indices (int64) and distances (``itemsize``) of the negatives and of the positives."""
    return (num_negatives + num_positives) * (8 + itemsize)


def steady_state_bound(
    points: list[dict[str, Any]], n: int, earlier: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The bound on the extra peak of the search of all ``n`` queries, from measured rows
    of the same search on fewer (full chunks of) queries: the largest measured extra peak,
    plus the outputs' bytes at ``Q = n`` counted twice (results and their clones), plus the
    ``[n]`` int64 query indices. Also the check of the model: the growth between this
    invocation's two points against the growth of their outputs.

    ``earlier``: the points of earlier invocations of the same search (kept in the JSON).
    The same configuration's extra peak differs between processes (the allocator's state
    after the embedding, by up to ~200 MiB here), so the bound takes the largest peak of
    every point ever measured, not of this invocation's only."""
    per_query = output_bytes_per_query(NUM_NEGATIVES)
    ok = [p for p in points if "error" not in p]
    if len(ok) < 2:
        return {"error": "fewer than two measured points", "points": points}
    a, b = sorted(ok, key=lambda p: p["queries"])[:2]
    kept = [p for p in earlier if "error" not in p and p.get("n", n) == n]
    measured = max(p["search_extra_peak_bytes"] for p in (*ok, *kept))
    peaks = [p["search_extra_peak_bytes"] for p in (*ok, *kept)]
    outputs = n * per_query
    bound = measured + 2 * outputs + 8 * n
    return {
        "what": "bound, not a measurement: largest measured steady-state peak + exact output bytes",
        "n": n,
        "queries_total": n,
        "points": ok,
        "earlier_points": kept,
        "measured_peaks_bytes": {"min": min(peaks), "max": max(peaks), "count": len(peaks)},
        "growth_measured_bytes": b["search_extra_peak_bytes"] - a["search_extra_peak_bytes"],
        "growth_outputs_bytes": (b["queries"] - a["queries"]) * (per_query + 8),
        "measured_steady_peak_bytes": measured,
        "output_bytes_per_query": per_query,
        "outputs_bytes_all_queries": outputs,
        "query_index_bytes": 8 * n,
        "bound_extra_peak_bytes": bound,
        "target_bytes": 1 << 30,
        "passed": bound <= 1 << 30,
        "full_matrix_bytes": n * n * 4,
    }


def _steady_state(args: argparse.Namespace) -> int:
    from tripletkit.neighbours import DEFAULT_MEMORY_BUDGET, _chunk_sizes

    from .measure import run_json_child

    n = args.sizes[0] if args.sizes != [100_000] else 1_000_000
    rows_per_chunk, cols = _chunk_sizes(n, 4, DEFAULT_MEMORY_BUDGET)
    points = []
    for chunks in (args.chunks, 2 * args.chunks):
        q = chunks * rows_per_chunk
        spec = {"n": n, "backend": "torch", "threads": args.threads, "queries": q}
        row = run_json_child(
            "benchmarks.neighbours", ["--child", json.dumps(spec)], args.timeout, "refresh"
        )
        row = {**spec, **row, "query_chunks": chunks, "chunk_rows": rows_per_chunk}
        row["chunk_cols"] = cols
        row["measured_at"] = machine_info()["timestamp"]
        points.append(row)
        print(json.dumps(row), flush=True)
    path = RESULTS_DIR / (args.out or "neighbours.json")
    data = json.loads(path.read_text()) if path.is_file() else new_result("neighbours")
    before = data.get("steady_state") or {}
    earlier = [*before.get("earlier_points", []), *before.get("points", [])]
    entry = {**steady_state_bound(points, n, earlier), "machine": machine_info()}
    data["steady_state"] = entry
    save_json(path, data)
    if "error" not in entry:
        print(
            f"n={n:,}: measured extra peak {entry['measured_steady_peak_bytes'] / 2**20:.0f} MiB"
            f" ({args.chunks} and {2 * args.chunks} chunks of {rows_per_chunk} queries; growth "
            f"{entry['growth_measured_bytes'] / 2**20:+.1f} MiB measured, "
            f"{entry['growth_outputs_bytes'] / 2**20:+.2f} MiB of outputs; largest of "
            f"{entry['measured_peaks_bytes']['count']} measured points "
            f"{entry['measured_peaks_bytes']['max'] / 2**20:.0f} MiB); bound for all "
            f"{n:,} queries {entry['bound_extra_peak_bytes'] / 2**20:.0f} MiB "
            f"({'PASS' if entry['passed'] else 'FAIL'}: target 1 GiB)"
        )
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args.child)
    if args.steady_state:
        return _steady_state(args)
    from .measure import run_json_child

    sizes = [5_000] if args.quick else args.sizes
    rows = []
    for n in sizes:
        for backend in args.backends:
            spec = {"n": n, "backend": backend, "threads": args.threads, "queries": args.queries}
            row = run_json_child(
                "benchmarks.neighbours", ["--child", json.dumps(spec)], args.timeout, "refresh"
            )
            row = {**spec, **row}
            rows.append(row)
            if "error" in row:
                print(f"n={n:>9,} {backend:>5}: {row['error']}")
            else:
                part = "" if row["queries"] == n else f" ({row['queries']:,} queries)"
                print(
                    f"n={n:>9,}{part} {backend:>5}: embed {row['embed_s']:7.1f} s, search "
                    f"{row['search_s']:8.1f} s (cpu {row['search_cpu_s']:8.1f} s), extra peak "
                    f"{row['search_extra_peak_bytes'] / 2**20:7.0f} MiB"
                )
    name = "neighbours_quick.json" if args.quick else "neighbours.json"
    if args.queries and not args.quick:
        name = "neighbours_partial.json"
    name = args.out or name
    path = save_json(RESULTS_DIR / name, new_result("neighbours", results=rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run(main, "python -m benchmarks.neighbours")
