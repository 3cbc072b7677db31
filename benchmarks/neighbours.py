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

Writes ``benchmarks/results/neighbours.json`` (``neighbours_quick.json`` with ``--quick``,
``neighbours_partial.json`` with ``--queries``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from .cli import run
from .common import RESULTS_DIR, new_result, save_json

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args.child)
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
