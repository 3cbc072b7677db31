"""The GPU check: host synchronisations, time, memory and a kernel breakdown on one CUDA device.

Usage::

    python -m benchmarks.gpu              # on a CUDA machine: under 5 minutes on one H200
    python -m benchmarks.gpu --dry-run    # the whole pipeline on the CPU at N = 64, 128 (CI)
    python -m benchmarks.gpu --budget-s 600 --sizes 4096 16384 65536

Without a CUDA device (and without ``--dry-run``) it prints one line, :data:`NO_CUDA_MESSAGE`,
and exits with status :data:`EXIT_NO_CUDA` (0: nothing to measure is not an error).

Three parts, run in this order, each recorded in the JSON and the markdown table:

1. **Sync audit.** Every public entry point (the three fused losses, hinge and soft margin,
   with the input checks on, off, and off with ``max_positives=k-1``; every miner of
   :mod:`tripletkit.miners`; :func:`~tripletkit.triplet_stats`;
   :class:`~tripletkit.losses.TripletMarginLoss` over mined triplets;
   :func:`~tripletkit.losses.contrastive_loss`, :func:`~tripletkit.losses.multi_similarity_loss`,
   :func:`~tripletkit.losses.circle_loss`, :func:`~tripletkit.losses.supcon_loss`) is called
   once to warm up, then once under ``torch.cuda.set_sync_debug_mode("warn")``: each
   synchronising CUDA call emits a warning, and the warnings are counted
   (:mod:`benchmarks.syncs`), at two sizes (:data:`AUDIT_SIZES`). Losses count forward +
   backward, miners one call. Each row is compared with its budget (:func:`audit_cases`):
   fused losses at most 2 with checks on, 0 with checks off and ``max_positives`` (0 without
   it too, except the soft-margin batch-all: 1, documented), miners at most 2 (1 with checks
   off: sizing their output), ``triplet_stats`` 2 and 1 (its result is Python ints), the
   other losses at most 2 and 0. The fused losses are audited on ``backend="torch"`` and on
   ``backend="triton"`` (issue 18; the same budgets, except 1 with checks off and no
   ``max_positives``: the kernels' slot width is read; CUDA only, skipped in the dry run).
2. **Profiler breakdown** at ``N = 16384``: one forward + backward of each fused loss (eager)
   under :mod:`torch.profiler` with CUDA activity, kernel time grouped into families (GEMM,
   sort, searchsorted, scatter/gather, elementwise, reduction, copy, other) by kernel name
   (:func:`kernel_family`).
3. **Time and memory** of forward + backward, for ``N = 1024 ... 65536`` (``D = 128``,
   P x K labels with ``K = 8``, float32), and up to ``N = 262,144`` (:data:`LARGE_SIZES`)
   for cdist, the eager losses and the Triton rows only (:data:`LARGE_VARIANTS`; an
   in-memory row is skipped there once its predicted memory, at least one ``N x N`` float32
   matrix, exceeds the device's): ``torch.cdist(x, x).sum()``, each fused loss
   eager (``backend="torch"``, default checks), on ``backend="triton"`` (issue 18: no
   ``[N, M]`` matrix, ``max_positives=k-1``; the dry run records these rows as skipped) and
   compiled (``torch.compile(fullgraph=True,
   dynamic=False)``, inductor, input checks off and ``max_positives=k-1``: one graph without
   a host synchronisation), pytorch-metric-learning's ``TripletMarginMiner("all")`` +
   ``TripletMarginLoss`` and sentence-transformers' four batch triplet losses (when
   installed). Times are CUDA events, median of the repeats after warm-up; memory is
   ``torch.cuda.max_memory_allocated`` over the last repeat (peak statistics reset before
   it), minus what was allocated before; ratios are to ``cdist`` at the same ``N``. Compile
   time (the first call at a size minus the median) is recorded separately.

**Budget.** ``--budget-s`` (default :data:`DEFAULT_BUDGET_S`, leaving time for start-up
and output within 5 minutes) bounds the three parts together; the timing part gets what the
audit and the profile leave. It runs in two passes over the sizes (ascending): first cdist,
the eager losses and the peers, each within its share (:data:`WEIGHTS`) of the timing budget
less a reserve (:data:`COMPILE_SHARE`); then the compiled losses, with the reserve plus
whatever the first pass left. Each size is a fresh compile (``dynamic=False``: the kernels'
chunk loop unrolls, so a graph depends on ``N``). Before each ``(method, N)`` the cost is
predicted from the previous size (time exponent of the method: 3 for PML's all-triplets,
else 2; memory grown as ``N^2`` (``N`` for the Triton rows), or the method's estimate when
larger (one ``N x N`` float32 matrix for cdist and the eager losses); a compile as the
method's last one times :data:`COMPILE_GROWTH`, or the other methods' mean before its
first): a configuration whose predicted time would exceed the method's share or the pass's
deadline, whose single call would exceed :data:`MAX_CALL_S`, or whose memory would exceed
90 % of the device's, is skipped with the reason recorded (and so, in practice, are the
larger ones). A configuration that fails (out of memory included) is recorded as an error,
and the method stops there. Every figure the planning used is saved (``predicted``,
``method_budget_s``, ``spent_s``, ``compile_spent_s``): the first run on a GPU calibrates
the next one's ``--budget-s`` and ``--sizes``.

**Dry run** (``--dry-run``): the same pipeline on the CPU at ``N = 64, 128`` (audit at the
same sizes, profile at 128; the large sizes' rows and the Triton rows listed as skipped,
with their reasons), CUDA-only parts replaced by CPU equivalents: the dispatch
counter of :mod:`benchmarks.syncs` (aten operations that read device values plus
tripletkit's host reads) instead of ``set_sync_debug_mode``, ``time.perf_counter`` instead
of CUDA events, the peak RSS instead of ``max_memory_allocated``, CPU activity (self CPU time
of aten operations) instead of CUDA kernels, and ``torch.compile`` with the ``aot_eager``
backend instead of inductor. Its numbers say nothing about a GPU: it checks that the script
runs, and it is part of the test suite (``tests/test_bench_gpu.py``).

**Outputs**: ``gpu.json`` and ``gpu.md`` in ``--out`` (default ``benchmarks/results/``);
the dry run writes ``gpu_dryrun.json`` and ``gpu_dryrun.md``, never a real run's files.
The markdown tables are also printed.

**Layout** (one module per concern; each imports only the ones listed before it):
:mod:`~benchmarks.gpu.config` (sizes, budgets, :class:`GpuConfig`, shared helpers),
:mod:`~benchmarks.gpu.methods` (what is timed), :mod:`~benchmarks.gpu.audit` (part 1),
:mod:`~benchmarks.gpu.profile` (part 2), :mod:`~benchmarks.gpu.timing` (part 3),
:mod:`~benchmarks.gpu.report` (the markdown), :mod:`~benchmarks.gpu.command` (the command line;
``__main__`` runs it). This package re-exports their public names.
"""

from __future__ import annotations

from .audit import FUSED, AuditCase, audit_cases, run_audit
from .command import main, run
from .config import (
    AUDIT_SIZES,
    COMPILE_GROWTH,
    COMPILE_SHARE,
    DEFAULT_BUDGET_S,
    DEFAULT_SIZES,
    DRY_SIZES,
    EXIT_NO_CUDA,
    LARGE_SIZES,
    LARGE_VARIANTS,
    MAX_CALL_S,
    MEMORY_SHARE,
    NO_CUDA_MESSAGE,
    PROFILE_N,
    WEIGHTS,
    GpuConfig,
)
from .methods import GPU_PEERS, GpuMethod, gpu_methods, matrix_floor
from .profile import FAMILIES, breakdown, kernel_family, run_profile
from .report import markdown_report
from .timing import predict, run_timing, time_config

__all__ = [
    "AUDIT_SIZES",
    "COMPILE_GROWTH",
    "COMPILE_SHARE",
    "DEFAULT_BUDGET_S",
    "DEFAULT_SIZES",
    "DRY_SIZES",
    "EXIT_NO_CUDA",
    "FAMILIES",
    "LARGE_SIZES",
    "LARGE_VARIANTS",
    "FUSED",
    "GPU_PEERS",
    "MAX_CALL_S",
    "MEMORY_SHARE",
    "NO_CUDA_MESSAGE",
    "PROFILE_N",
    "WEIGHTS",
    "AuditCase",
    "GpuConfig",
    "GpuMethod",
    "audit_cases",
    "breakdown",
    "gpu_methods",
    "kernel_family",
    "main",
    "markdown_report",
    "matrix_floor",
    "predict",
    "run",
    "run_audit",
    "run_profile",
    "run_timing",
    "time_config",
]
