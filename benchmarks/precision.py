"""Precision of close points in float32: the Gram form against the difference form.

A distance matrix from one matrix product, ``||a||^2 + ||b||^2 - 2 a.b`` (the Gram form:
:func:`tripletkit.distances.pairwise_distance`, and ``torch.cdist`` above 25 rows), loses
the small squared distance of two close points in the rounding of the large squared norms;
the difference form ``sum((a - b)^2)`` (:func:`tripletkit.distances.paired_distance`, and
``torch.cdist(..., compute_mode="donot_use_mm_for_euclid_dist")``, the default below 25 rows)
keeps it to float32 rounding.

Protocol: ``pairs`` pairs of float32 points ``a`` and ``b = a + d u`` with ``a`` drawn on the
unit sphere of dimension ``dim`` (norm 1, as with L2-normalised embeddings), ``u`` a random
unit direction and ``d`` one of ``DISTANCES``. The truth is the float64 distance between
the *float32* points (so the rounding of the inputs is not counted). For each ``d`` and
each method: the median and largest absolute error over the pairs, the largest relative error, and how
many distances came out as exactly 0 (the Gram form sets values below its noise floor,
``8 eps (||a||^2 + ||b||^2)`` on the squared distance, to 0: about ``1.4e-3`` for unit
vectors in float32).

Usage::

    python -m benchmarks.precision          # a few seconds

Writes ``benchmarks/results/precision.json`` (with :func:`~benchmarks.common.machine_info`).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, new_result, save_json
from tripletkit.distances import paired_distance, pairwise_distance

__all__ = ["DISTANCES", "main", "measure"]

#: The true distances measured (unit-norm points).
DISTANCES = (1e-3, 2e-3, 4e-3, 1e-2, 3e-2, 1e-1)


def _methods(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every method's float32 distance ``d(a_i, b_i)``, ``[pairs]`` each."""
    n = a.shape[0]
    diag = torch.arange(n)
    return {
        "tripletkit pairwise_distance (Gram form)": pairwise_distance(a, b)[diag, diag],
        "torch.cdist, use_mm (Gram form)": torch.cdist(a, b, compute_mode="use_mm_for_euclid_dist")[
            diag, diag
        ],
        "torch.cdist, donot_use_mm (difference form)": torch.cdist(
            a, b, compute_mode="donot_use_mm_for_euclid_dist"
        )[diag, diag],
        "tripletkit paired_distance (difference form)": paired_distance(a, b),
    }


def measure(pairs: int = 256, dim: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """One row per distance and method: ``median_abs_error``, ``max_abs_error``,
    ``max_rel_error``, ``zeros``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in DISTANCES:
        a = torch.nn.functional.normalize(torch.randn(pairs, dim, generator=g, dtype=torch.float64))
        u = torch.nn.functional.normalize(torch.randn(pairs, dim, generator=g, dtype=torch.float64))
        a32, b32 = a.float(), (a + d * u).float()
        truth = (a32.double() - b32.double()).norm(dim=1)
        for method, got in _methods(a32, b32).items():
            err = (got.double() - truth).abs()
            rows.append(
                {
                    "distance": d,
                    "method": method,
                    "median_abs_error": float(err.median()),
                    "max_abs_error": float(err.max()),
                    "max_rel_error": float((err / truth).max()),
                    "zeros": int((got == 0).sum()),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args(argv)
    result = new_result(
        "precision",
        dtype="float32",
        pairs=args.pairs,
        dim=args.dim,
        norm=1.0,
        rows=measure(args.pairs, args.dim),
    )
    path = save_json(RESULTS_DIR / "precision.json", result)
    width = max(len(r["method"]) for r in result["rows"])
    print(
        f"{'d':>7}  {'method':<{width}}  {'median abs':>10}  {'max abs err':>11}  "
        f"{'max rel err':>11}  zeros"
    )
    for r in result["rows"]:
        print(
            f"{r['distance']:>7.0e}  {r['method']:<{width}}  {r['median_abs_error']:>10.2e}  "
            f"{r['max_abs_error']:>11.2e}  "
            f"{r['max_rel_error']:>11.2e}  {r['zeros']:>5}"
        )
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    main()
