"""Part 1 of the GPU check, the sync audit: host synchronisations of every public entry point
against its budget (see :mod:`benchmarks.gpu`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import tripletkit
from tripletkit import miners
from tripletkit.losses import (
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    circle_loss,
    contrastive_loss,
    multi_similarity_loss,
    semi_hard_triplet_loss,
    supcon_loss,
)

from ..common import progress
from ..registry import MARGIN
from ..speed import K_PER_CLASS, make_inputs
from ..syncs import count_syncs
from .config import GpuConfig, describe_error, free_device_memory
from .methods import TRITON_DRY_REASON

#: The fused losses (name -> function) of the audit, the profile and the compiled timings.
FUSED: dict[str, Callable[..., Tensor]] = {
    "batch_all_triplet_loss": batch_all_triplet_loss,
    "batch_hard_triplet_loss": batch_hard_triplet_loss,
    "semi_hard_triplet_loss": semi_hard_triplet_loss,
}
#: Host synchronisation budgets of the audit (per call; losses: forward + backward).
LOSS_BUDGET_CHECKED = 2
MINER_BUDGET = 2


@dataclass(frozen=True)
class AuditCase:
    """One row of the sync audit.

    Attributes:
        entry: the public entry point (``"batch_all_triplet_loss"``, ``"BatchHardMiner"``...).
        kind: ``"fused loss"``, ``"miner"``, ``"statistics"`` or ``"loss"``.
        variant: what is passed or switched (``"hinge, checks off, max_positives=k-1"``...).
        checks: the state of :func:`tripletkit.set_input_checks` for the call.
        budget: the most host synchronisations the call may make.
        build: ``build(x, y)`` returns the audited call (losses: forward + backward on ``x``,
            which requires grad; miners see ``x`` detached). Anything it prepares (a
            miner's triplets for a loss) is not counted.
        backend: the fused losses' backend (``"triton"`` rows run on CUDA only: the dry run
            records them as skipped).
    """

    entry: str
    kind: str
    variant: str
    checks: bool
    budget: int
    build: Callable[[Tensor, Tensor], Callable[[], object]]
    backend: str = "torch"


def _fused_case(
    name: str, soft: bool, checks: bool, bounded: bool, k: int, backend: str = "torch"
) -> AuditCase:
    fn = FUSED[name]
    kw: dict[str, Any] = {"max_positives": k - 1} if bounded else {}
    if checks:
        budget = LOSS_BUDGET_CHECKED
    elif bounded:
        budget = 0
    elif backend == "triton":  # documented: without a bound the kernels' slot width is read
        budget = 1
    else:  # documented: without a bound the soft-margin batch-all reads the largest count
        budget = 1 if (name == "batch_all_triplet_loss" and soft) else 0
    variant = ("soft margin" if soft else "hinge") + (", checks on" if checks else ", checks off")
    if bounded:
        variant += ", max_positives=k-1"
    if backend != "torch":
        variant = f"{backend}: {variant}"

    def build(x: Tensor, y: Tensor) -> Callable[[], object]:
        return lambda: fn(x, y, MARGIN, soft_margin=soft, backend=backend, **kw).backward()

    return AuditCase(name, "fused loss", variant, checks, budget, build, backend)


def _miners(k: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Every miner of :mod:`tripletkit.miners` (the triplet miners on the torch backend)."""
    return {
        "BatchAllMiner": lambda: miners.BatchAllMiner(backend="torch"),
        "BatchHardMiner": lambda: miners.BatchHardMiner(backend="torch"),
        "SemiHardMiner": lambda: miners.SemiHardMiner(backend="torch"),
        "SemiHardMiner(max_positives=k-1)": lambda: miners.SemiHardMiner(
            backend="torch", max_positives=k - 1
        ),
        "TripletMarginMiner('semihard')": lambda: miners.TripletMarginMiner(
            type_of_triplets="semihard", backend="torch"
        ),
        "MultiSimilarityMiner": miners.MultiSimilarityMiner,
        "PairMarginMiner": miners.PairMarginMiner,
        "RandomTripletMiner": miners.RandomTripletMiner,
        "DistanceWeightedMiner": lambda: miners.DistanceWeightedMiner(normalize=True),
    }


def _miner_case(name: str, make: Callable[[], torch.nn.Module], checks: bool) -> AuditCase:
    def build(x: Tensor, y: Tensor) -> Callable[[], object]:
        miner = make()
        xd = x.detach()
        return lambda: miner(xd, y)

    budget = MINER_BUDGET if checks else MINER_BUDGET - 1  # sizing the output: one read
    variant = "checks on" if checks else "checks off"
    return AuditCase(name, "miner", variant, checks, budget, build)


def _other_cases(checks: bool) -> list[AuditCase]:
    variant = "checks on" if checks else "checks off"
    loss_budget = LOSS_BUDGET_CHECKED if checks else 0

    def stats(x: Tensor, y: Tensor) -> Callable[[], object]:
        xd = x.detach()
        return lambda: tripletkit.triplet_stats(xd, y, MARGIN, backend="torch")

    def triplet_margin(x: Tensor, y: Tensor) -> Callable[[], object]:
        triplets = miners.BatchHardMiner(backend="torch")(x.detach(), y)
        loss = TripletMarginLoss(MARGIN)
        return lambda: loss(x, y, triplets).backward()

    def fused(fn: Callable[..., Tensor]) -> Callable[[Tensor, Tensor], Callable[[], object]]:
        return lambda x, y: lambda: fn(x, y).backward()

    return [
        # Its result is a tuple of Python ints: one read even with checks off.
        AuditCase("triplet_stats", "statistics", variant, checks, 2 if checks else 1, stats),
        AuditCase(
            "TripletMarginLoss",
            "loss",
            variant + ", BatchHardMiner triplets",
            checks,
            loss_budget,
            triplet_margin,
        ),
        AuditCase(
            "contrastive_loss", "loss", variant, checks, loss_budget, fused(contrastive_loss)
        ),
        AuditCase(
            "multi_similarity_loss",
            "loss",
            variant,
            checks,
            loss_budget,
            fused(multi_similarity_loss),
        ),
        AuditCase("circle_loss", "loss", variant, checks, loss_budget, fused(circle_loss)),
        AuditCase("supcon_loss", "loss", variant, checks, loss_budget, fused(supcon_loss)),
    ]


def audit_cases(k: int = K_PER_CLASS) -> list[AuditCase]:
    """Every row of the sync audit, with its budget (see the module docstring)."""
    cases = [
        _fused_case(name, soft, checks, bounded, k, backend)
        for backend in ("torch", "triton")  # issue 18: the Triton kernels too
        for name in FUSED
        for soft in (False, True)
        for checks, bounded in ((True, False), (False, False), (False, True))
    ]
    for checks in (True, False):
        cases += [_miner_case(name, make, checks) for name, make in _miners(k).items()]
    for checks in (True, False):
        cases += _other_cases(checks)
    return cases


def run_audit(cfg: GpuConfig) -> dict[str, Any]:
    """The sync audit: one row per case and size (see :func:`audit_cases`)."""
    rows: list[dict[str, Any]] = []
    cases = audit_cases(cfg.k)
    started = time.perf_counter()
    bar = progress(total=len(cases) * len(cfg.audit_sizes), desc="sync audit", leave=False)
    with bar:
        for n in cfg.audit_sizes:
            x, y = make_inputs(n, "pk", cfg.device, cfg.seed)
            for case in cases:
                bar.set_postfix_str(f"{case.entry} N={n}")
                rows.append(_audit_row(case, x, y, n, cfg.device))
                bar.update()
            del x, y
            free_device_memory(cfg.device)
    return {
        "how": 'torch.cuda.set_sync_debug_mode("warn"): one warning per synchronising call'
        if cfg.device == "cuda"
        else "dispatch counter (CPU proxy for the dry run)",
        "sizes": cfg.audit_sizes,
        "rows": rows,
        "passed": all(r["passed"] for r in rows if not r.get("skipped")),
        "elapsed_s": time.perf_counter() - started,
    }


def _skipped(case: AuditCase, device: str) -> str | None:
    """Why ``case`` does not run on ``device`` (the Triton rows need CUDA and triton)."""
    if case.backend != "triton":
        return None
    if device != "cuda":
        return TRITON_DRY_REASON
    from tripletkit.kernels.triton_backend import available

    return None if available() else "triton is not installed (pip install 'tripletkit[gpu]')"


def _audit_row(case: AuditCase, x: Tensor, y: Tensor, n: int, device: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "entry": case.entry,
        "kind": case.kind,
        "variant": case.variant,
        "n": n,
        "budget": case.budget,
    }
    why = _skipped(case, device)
    if why is not None:
        row.update(syncs=None, skipped=why, passed=None)
        return row
    try:
        with tripletkit.set_input_checks(case.checks):
            call = case.build(x, y)
            call()  # warm-up: one-off costs (lazy initialisation, chunk sizes) are not counted
            x.grad = None
            row.update(count_syncs(call, device))
    except Exception as exc:  # noqa: BLE001 - a failing entry point is a result
        row.update(syncs=None, error=describe_error(exc), passed=False)
        return row
    finally:
        x.grad = None
    row["passed"] = row["syncs"] <= case.budget
    return row
