"""The GPU check's command line: options, configuration, the three parts in order, and the
files written (``python -m benchmarks.gpu``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..cli import UsageError
from ..common import GIB, RESULTS_DIR, new_result, save_json
from ..measure import TimingPolicy, thread_count
from ..registry import MARGIN
from ..speed import DIM, K_PER_CLASS
from .audit import run_audit
from .config import (
    AUDIT_SIZES,
    COMPILE_SHARE,
    DEFAULT_BUDGET_S,
    DEFAULT_SIZES,
    DRY_SIZES,
    EXIT_NO_CUDA,
    LARGE_SIZES,
    LARGE_VARIANTS,
    MAX_CALL_S,
    NO_CUDA_MESSAGE,
    PROFILE_N,
    WEIGHTS,
    GpuConfig,
)
from .methods import gpu_methods
from .profile import run_profile
from .report import markdown_report
from .timing import run_timing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="Sync audit, time, memory and kernel breakdown of tripletkit on one GPU.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the whole pipeline on the CPU at tiny sizes (CI); writes gpu_dryrun.*",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    p.add_argument("--sizes", type=int, nargs="+", help="timed batch sizes")
    p.add_argument(
        "--large-sizes",
        type=int,
        nargs="*",
        help="larger sizes for cdist, the eager losses and the triton rows only (default "
        "131072 262144, none with --sizes; the option alone: none; the dry run lists them "
        "as skipped)",
    )
    p.add_argument("--audit-sizes", type=int, nargs="+", help="sizes of the sync audit")
    p.add_argument("--profile-n", type=int, help=f"N of the profiler breakdown ({PROFILE_N})")
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds for audit + profile + timings (default {DEFAULT_BUDGET_S:.0f})",
    )
    p.add_argument(
        "--compile-backend",
        help="torch.compile backend (default inductor; aot_eager in a dry run)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the compiled losses")
    p.add_argument("--no-peers", action="store_true", help="skip PML and sentence-transformers")
    p.add_argument("--no-audit", action="store_true", help="skip the sync audit")
    p.add_argument("--no-profile", action="store_true", help="skip the profiler breakdown")
    p.add_argument("--threads", type=int, help="torch threads (CPU work, dry run)")
    return p


def _config(args: argparse.Namespace) -> GpuConfig:
    dry = bool(args.dry_run)
    sizes = sorted(set(args.sizes or (DRY_SIZES if dry else DEFAULT_SIZES)))
    audit_sizes = sorted(set(args.audit_sizes or (DRY_SIZES if dry else AUDIT_SIZES)))
    if args.large_sizes is not None:
        large = sorted(set(args.large_sizes) - set(sizes))
    else:
        large = [] if args.sizes else [n for n in LARGE_SIZES if n > max(sizes)]
    if min(sizes + audit_sizes + large) < 2 * K_PER_CLASS:
        raise UsageError(f"every size must be at least {2 * K_PER_CLASS} (two classes)")
    policy = (
        TimingPolicy(target_s=0.01, min_repeats=2, max_repeats=3, budget_s=MAX_CALL_S, warmups=1)
        if dry
        else TimingPolicy(target_s=0.5, min_repeats=3, max_repeats=20, budget_s=MAX_CALL_S)
    )
    return GpuConfig(
        device="cpu" if dry else "cuda",
        dry_run=dry,
        sizes=sizes,
        audit_sizes=audit_sizes,
        profile_n=args.profile_n or (max(sizes) if dry else PROFILE_N),
        budget_s=float(args.budget_s),
        compile_backend=args.compile_backend or ("aot_eager" if dry else "inductor"),
        compile=not args.no_compile,
        peers=not args.no_peers,
        audit=not args.no_audit,
        profile=not args.no_profile,
        out=args.out,
        policy=policy,
        large_sizes=large,
    )


def _config_json(cfg: GpuConfig, missing: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": cfg.device,
        "dry_run": cfg.dry_run,
        "sizes": cfg.sizes,
        "large_sizes": cfg.large_sizes,
        "large_variants": list(LARGE_VARIANTS),
        "audit_sizes": cfg.audit_sizes,
        "profile_n": cfg.profile_n,
        "dim": DIM,
        "k_per_class": cfg.k,
        "max_positives": cfg.k - 1,
        "margin": MARGIN,
        "dtype": "float32",
        "budget_s": cfg.budget_s,
        "compile": cfg.compile,
        "compile_backend": cfg.compile_backend,
        "peers": cfg.peers,
        "peers_missing": missing,
        "timing": {
            "target_s": cfg.policy.target_s,
            "min_repeats": cfg.policy.min_repeats,
            "max_repeats": cfg.policy.max_repeats,
            "warmups": cfg.policy.warmups,
            "max_call_s": MAX_CALL_S,
            "weights": WEIGHTS,
            "compile_share": COMPILE_SHARE,
        },
    }
    if cfg.dry_run:
        out["stand_ins"] = {
            "sync audit": "dispatch counter instead of torch.cuda.set_sync_debug_mode",
            "timer": "time.perf_counter instead of CUDA events",
            "memory": "peak RSS instead of torch.cuda.max_memory_allocated",
            "profiler": "CPU activity (self CPU time of operations) instead of CUDA kernels",
            "compile backend": f"{cfg.compile_backend} instead of inductor",
        }
    else:
        props = torch.cuda.get_device_properties(0)
        out["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_memory_gib": props.total_memory / GIB,
            "cuda_version": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return out


def _paths(cfg: GpuConfig) -> tuple[Path, Path]:
    stem = "gpu_dryrun" if cfg.dry_run else "gpu"
    return cfg.out / f"{stem}.json", cfg.out / f"{stem}.md"


def run(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the check; returns the result as saved to JSON, or ``None`` (after printing
    :data:`NO_CUDA_MESSAGE`) when there is no CUDA device and no ``--dry-run``."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return None
    cfg = _config(args)
    with thread_count(args.threads):
        return _run(cfg)


def _run(cfg: GpuConfig) -> dict[str, Any]:
    methods, missing = gpu_methods(cfg.peers, cfg.compile, cfg.compile_backend, cfg.k)
    result = new_result("gpu", config=_config_json(cfg, missing))
    result["methods"] = {
        m.name: {
            "description": m.method.description,
            "variant": m.variant,
            "family": m.method.family,
            "strategy": m.method.strategy,
        }
        for m in methods
    }
    if cfg.audit:
        result["sync_audit"] = run_audit(cfg)
    if cfg.profile:
        result["profile"] = run_profile(cfg, methods)
    result["timing"] = run_timing(cfg, methods)
    json_path, md_path = _paths(cfg)
    result["files"] = {"json": str(json_path), "md": str(md_path)}
    result["elapsed_s"] = time.perf_counter() - cfg.started
    text = markdown_report(result)
    save_json(json_path, result)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    print(text)
    print(f"Wrote {json_path} and {md_path} ({result['elapsed_s']:.0f} s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: :func:`run`, then the exit status (0; :data:`EXIT_NO_CUDA` without
    CUDA)."""
    result = run(argv)
    return EXIT_NO_CUDA if result is None else 0
