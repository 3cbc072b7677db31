"""Run tripletkit's benchmarks: ``python -m benchmarks [--quick | --full] [--only quality|speed]``.

First the quality benchmark (:mod:`benchmarks.quality`: the best tripletkit strategies and
peer recipes of the saved hyper-parameter search trained on Omniglot, retrieval on unseen
characters, time to quality), then the speed benchmark (:mod:`benchmarks.speed`: forward +
backward time and memory of the fused losses). Ends by printing both tables, the comparison
of the best tripletkit row with the best peer recipe at equal training time, and where the
JSON files and plots went.

The default plans of both fit 15 minutes on 2 CPU cores. ``--full`` runs every quality row
for thousands of steps and every speed size (hours; files with a ``_full`` suffix);
``--quick`` runs both as CI smoke runs (``_quick`` files). Neither overwrites the default
run's files. ``--out`` sets the output folder of both (default ``benchmarks/results/``).
The hyper-parameter search itself is ``python -m benchmarks.quality --tune``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import run
from .common import RESULTS_DIR
from .report import comparison_text, comparisons_text

BENCHMARKS = ("quality", "speed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the quality benchmark, then the speed benchmark, and summarise both.",
    )
    plan = p.add_mutually_exclusive_group()
    plan.add_argument("--quick", action="store_true", help="CI smoke runs of both benchmarks")
    plan.add_argument("--full", action="store_true", help="every row and size (hours)")
    p.add_argument("--only", choices=BENCHMARKS, help="run only this benchmark")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder of both")
    return p


def _speed_module() -> Any:
    """:mod:`benchmarks.speed`, or None when it cannot be imported."""
    try:
        return importlib.import_module(f"{__package__ or 'benchmarks'}.speed")
    except ImportError as exc:
        print(f"benchmarks.speed is not available ({exc}); skipping it", file=sys.stderr)
        return None


def _speed_files(result: dict[str, Any]) -> list[str]:
    files = result.get("files") or {}
    return [str(f) for f in files.values() if f] if isinstance(files, dict) else []


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks; returns ``{"quality": ..., "speed": ...}`` (each what
    that benchmark's ``main`` returned, for those that ran)."""
    args = _parser().parse_args(None if argv is None else list(argv))
    common = ["--out", str(args.out)]
    common += ["--quick"] if args.quick else ["--full"] if args.full else []
    started = time.perf_counter()
    done: dict[str, Any] = {}

    if args.only in (None, "quality"):
        from . import quality

        done["quality"] = quality.main(common)

    speed = None
    if args.only in (None, "speed"):
        speed = _speed_module()
        if speed is not None:
            done["speed"] = speed.main(common)

    print("\n" + "=" * 80)
    print(f"Summary ({time.perf_counter() - started:.0f} s)")
    files: list[str] = []
    if "quality" in done:
        from . import quality

        q = done["quality"]
        print("\n## Quality (validation and unseen test characters; ± = 95% t-interval)\n")
        print(quality.markdown_table(q))
        print("\n" + comparison_text(q.get("comparison")))
        print("\n" + comparisons_text(q.get("comparisons")))
        files += [q["outputs"]["json"], *q["outputs"]["png"]]
    if "speed" in done and speed is not None:
        table = getattr(speed, "markdown_table", None)
        for device, result in done["speed"].items():
            print(f"\n## Speed on {device} (forward + backward)\n")
            if table is not None:
                print(table(result))
            files += _speed_files(result)
    if files:
        print("\nResults written to:")
        for f in files:
            print(f"  {f}")
    return done


if __name__ == "__main__":
    run(main, "python -m benchmarks")
