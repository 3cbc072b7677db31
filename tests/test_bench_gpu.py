"""The GPU check (``python -m benchmarks.gpu``): its CPU dry run, its message without CUDA,
and the pieces that only a GPU run exercises for real (kernel families, budget skips).

They check the structure of what the check writes, never a timing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

# ``benchmarks`` is a top-level folder of the repository, not part of the installed package:
# make it importable however pytest was started.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from benchmarks import gpu, registry  # noqa: E402
from benchmarks.gpu import command as gpu_command  # noqa: E402
from benchmarks.gpu import methods as gpu_methods  # noqa: E402
from benchmarks.gpu import profile as gpu_profile  # noqa: E402
from benchmarks.gpu import timing as gpu_timing  # noqa: E402
from benchmarks.measure import TimingPolicy  # noqa: E402
from benchmarks.syncs import SyncCounter, count_syncs  # noqa: E402

EAGER = ("batch_all[torch]", "batch_all_soft[torch]", "batch_hard[torch]", "semi_hard[torch]")
COMPILED = tuple(name.replace("[torch]", "[compiled]") for name in EAGER)
TRITON = tuple(name.replace("[torch]", "[triton]") for name in EAGER)  # issue 18
ST = ("st_batch_all", "st_batch_hard", "st_batch_hard_soft", "st_semi_hard")


def _finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu")
    (out / "gpu.json").write_text('{"real": true}\n')  # a real run's result: left alone
    threads = torch.get_num_threads()
    # A generous budget: on a loaded CI machine a peer's first call can take seconds, and
    # a skip here would be the machine's load, not the script's planning (tested below).
    result = gpu.run(["--dry-run", "--threads", "1", "--budget-s", "1200", "--out", str(out)])
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert result is not None
    return result, out


# ---------------------------------------------------------------------------------------------
# The dry run


@pytest.mark.slow
def test_dry_run_writes_its_own_json_and_markdown(dry_run: tuple[dict[str, Any], Path]) -> None:
    result, out = dry_run
    json_path, md_path = out / "gpu_dryrun.json", out / "gpu_dryrun.md"
    assert json_path.is_file() and md_path.is_file()
    assert json.loads((out / "gpu.json").read_text()) == {"real": True}
    assert not (out / "gpu.md").exists()
    saved = json.loads(json_path.read_text())
    for key in ("benchmark", "machine", "config", "methods", "sync_audit", "profile", "timing"):
        assert key in saved, key
    assert saved["benchmark"] == "gpu"
    assert saved["files"] == {"json": str(json_path), "md": str(md_path)}
    cfg = saved["config"]
    assert cfg["dry_run"] is True and cfg["device"] == "cpu"
    assert cfg["sizes"] == list(gpu.DRY_SIZES) and cfg["audit_sizes"] == list(gpu.DRY_SIZES)
    assert cfg["compile_backend"] == "aot_eager"
    assert cfg["max_positives"] == cfg["k_per_class"] - 1
    assert set(cfg["stand_ins"]) == {"sync audit", "timer", "memory", "profiler", "compile backend"}
    assert _finite_positive(saved["elapsed_s"])
    # The markdown is rendered from what the JSON holds.
    assert md_path.read_text() == gpu.markdown_report(saved)


@pytest.mark.slow
def test_dry_run_sync_audit(dry_run: tuple[dict[str, Any], Path]) -> None:
    audit = dry_run[0]["sync_audit"]
    cases = gpu.audit_cases()
    assert len(audit["rows"]) == len(cases) * len(gpu.DRY_SIZES)
    assert audit["how"].startswith("dispatch counter")
    # issue 18: the triton rows are listed, skipped on the CPU with their reason
    triton = [r for r in audit["rows"] if r["variant"].startswith("triton: ")]
    assert len(triton) == 3 * 2 * 3 * len(gpu.DRY_SIZES)  # losses x margins x variants
    for row in triton:
        assert row["skipped"] == gpu_methods.TRITON_DRY_REASON and row["passed"] is None
    ran = [r for r in audit["rows"] if not r.get("skipped")]
    assert len(ran) == len(audit["rows"]) - len(triton)
    for row in ran:
        assert "error" not in row, row
        assert row["passed"] is True, row
        assert isinstance(row["syncs"], int) and 0 <= row["syncs"] <= row["budget"]
    assert audit["passed"] is True
    entries = {r["entry"] for r in audit["rows"]}
    assert set(gpu.FUSED) | {"triplet_stats", "TripletMarginLoss", "contrastive_loss"} <= entries
    assert {"multi_similarity_loss", "circle_loss", "supcon_loss", "BatchAllMiner"} <= entries
    assert {"DistanceWeightedMiner", "RandomTripletMiner", "PairMarginMiner"} <= entries
    for row in ran:
        if row["kind"] == "fused loss" and row["variant"].endswith("max_positives=k-1"):
            assert row["syncs"] == 0, row
        if row["kind"] == "fused loss" and row["variant"].endswith("checks on"):
            assert row["syncs"] == 1, row  # one host read per call
    soft = [
        r
        for r in audit["rows"]
        if r["entry"] == "batch_all_triplet_loss" and r["variant"] == "soft margin, checks off"
    ]
    assert [r["syncs"] for r in soft] == [1, 1]  # documented: it reads the largest count


@pytest.mark.slow
def test_dry_run_timing(dry_run: tuple[dict[str, Any], Path]) -> None:
    result = dry_run[0]
    timing = result["timing"]
    rows = timing["rows"]
    methods = result["methods"]
    assert {"cdist", *EAGER, *COMPILED} <= set(methods)
    # issue 18: the large sizes list cdist, the eager losses and the triton rows, skipped
    assert result["config"]["large_sizes"] == list(gpu.LARGE_SIZES)
    assert max(gpu.LARGE_SIZES) == 262144
    large = [r for r in rows if r["n"] in gpu.LARGE_SIZES]
    assert {(r["method"], r["n"]) for r in large} == {
        (m, n) for m in ("cdist", *EAGER, *TRITON) for n in gpu.LARGE_SIZES
    }
    for row in large:
        assert row["status"] == "skipped" and row["reason"] == gpu_methods.LARGE_DRY_REASON
        memory = row["predicted"]["memory_bytes"]
        if row["variant"] != "triton":  # at least the N x N float32 matrix
            assert memory >= 4.0 * row["n"] ** 2
        else:  # O(N): grown linearly (nothing measured on the CPU: no prediction)
            assert memory is None
    rows = [r for r in rows if r["n"] in gpu.DRY_SIZES]
    assert len(rows) == len(methods) * len(gpu.DRY_SIZES)
    missing = result["config"]["peers_missing"]
    if registry.installed("sentence_transformers"):
        assert set(ST) <= set(methods)
    else:
        assert "sentence-transformers" in missing
    if registry.installed("pytorch_metric_learning"):
        assert "pml_all" in methods
    triton = [r for r in rows if r["variant"] == "triton"]  # issue 18: CUDA only
    assert {r["method"] for r in triton} == set(TRITON)
    assert all(r["status"] == "skipped" and "CUDA" in r["reason"] for r in triton)
    for row in (r for r in rows if r["variant"] != "triton"):
        assert row["status"] == "ok", row  # tiny sizes: nothing is skipped or fails
        assert _finite_positive(row["median_s"]) and row["repeats"] == len(row["times_s"])
        assert _finite_positive(row["ratio_to_cdist"])
        assert math.isfinite(row["loss"])
        assert row["memory"]["extra_peak_bytes"] >= 0 and row["memory"]["how"]
        if row["variant"] == "compiled":
            assert row["compile_s"] >= 0
    by = {(r["method"], r["n"]): r for r in rows}
    for n in gpu.DRY_SIZES:
        assert by[("cdist", n)]["ratio_to_cdist"] == pytest.approx(1.0)
        for eager, compiled in zip(EAGER, COMPILED, strict=True):
            # The compiled loss (checks off, max_positives=k-1) gives the eager value.
            assert by[(compiled, n)]["loss"] == pytest.approx(by[(eager, n)]["loss"], rel=1e-5)
    assert timing["compile_backend"] == "aot_eager"
    assert _finite_positive(timing["compile_reserve_s"])
    assert set(timing["method_budget_s"]) == set(methods) - set(COMPILED)
    assert set(timing["compile_spent_s"]) == set(COMPILED)
    # Columns in the methods' order: compiled losses next to the eager ones, peers last.
    names = list(methods)
    assert names.index("semi_hard[compiled]") < min(
        [names.index(p) for p in (*ST, "pml_all") if p in names], default=len(names)
    )


@pytest.mark.slow
def test_dry_run_profile(dry_run: tuple[dict[str, Any], Path]) -> None:
    profile = dry_run[0]["profile"]
    assert profile["n"] == max(gpu.DRY_SIZES)
    assert [r["method"] for r in profile["rows"]] == list(EAGER)
    for row in profile["rows"]:
        assert row["status"] == "ok", row
        assert list(row["families"]) == list(gpu.FAMILIES)
        assert _finite_positive(row["total_ms"])
        assert sum(f["share"] for f in row["families"].values()) == pytest.approx(1.0)
        assert row["families"]["GEMM"]["count"] > 0  # the distance matrix
        assert row["top"] and all(t["family"] in gpu.FAMILIES for t in row["top"])


@pytest.mark.slow
def test_dry_run_markdown(dry_run: tuple[dict[str, Any], Path]) -> None:
    text = (dry_run[1] / "gpu_dryrun.md").read_text()
    for heading in (
        "# GPU check",
        "## Sync audit",
        "## Profiler breakdown at N = 128",
        "## Forward + backward time",
        "## Peak memory",
        "## Compile time",
    ):
        assert heading in text, heading
    assert "| entry point | variant | N=64 | N=128 | budget | result |" in text
    assert "| batch_all_triplet_loss | soft margin, checks off | 1 | 1 | <= 1 | PASS |" in text
    assert "| N | cdist | batch_all[torch] |" in text
    assert "| 64 | " in text and "| 128 | " in text
    assert "| 262144 | skip | skip |" in text and "At N = 131,072, 262,144: cdist" in text
    assert "| batch_hard_triplet_loss | triton: hinge, checks on | skip | skip | <= 2 | SKIP |" in (
        text
    )
    assert f"- skipped: {gpu_methods.TRITON_DRY_REASON}" in text
    assert "FAIL" not in text


def test_a_spent_budget_skips_and_says_why(tmp_path: Path) -> None:
    result = gpu.run(
        ["--dry-run", "--budget-s", "0", "--no-audit", "--no-profile", "--no-peers"]
        + ["--threads", "1", "--out", str(tmp_path)]
    )
    assert result is not None
    assert "sync_audit" not in result and "profile" not in result
    rows = result["timing"]["rows"]
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert all("deadline" in r["reason"] for r in rows if r["n"] in gpu.DRY_SIZES)
    text = (tmp_path / "gpu_dryrun.md").read_text()
    assert "## Skipped and failed configurations" in text
    assert "- cdist N=64: skipped: " in text


# ---------------------------------------------------------------------------------------------
# Without CUDA


def test_without_cuda_one_line_and_the_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == gpu.EXIT_NO_CUDA
    assert capsys.readouterr().out == gpu.NO_CUDA_MESSAGE + "\n"
    assert list(tmp_path.iterdir()) == []
    assert gpu.run(["--out", str(tmp_path)]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the real check")
def test_python_m_benchmarks_gpu_without_cuda(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--out", str(tmp_path)],
        cwd=_REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == gpu.EXIT_NO_CUDA, proc.stderr
    assert proc.stdout.strip() == gpu.NO_CUDA_MESSAGE
    assert "no CUDA device" in gpu.NO_CUDA_MESSAGE and "--dry-run" in gpu.NO_CUDA_MESSAGE
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Pieces a GPU run exercises


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("ampere_sgemm_128x64_nn", "GEMM"),
        ("nvjet_tst_128x128_64x4_1x2_h_bz_coopA_NTN", "GEMM"),
        ("sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32", "GEMM"),
        ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x128_8x4_nn_align1>(Params)", "GEMM"),
        ("void at::native::bitonicSortKVInPlace<-1, -1, 16, 16, float, long>(...)", "sort"),
        ("void cub::DeviceSegmentedRadixSortKernel<Policy, false, true, float, long>", "sort"),
        ("void at::native::searchsorted_cuda_kernel<float, long>(...)", "searchsorted"),
        ("void at::native::index_elementwise_kernel<128, 4, ...>(long, ...)", "scatter/gather"),
        ("void at::native::_scatter_gather_elementwise_kernel<128, 8, ...>", "scatter/gather"),
        (
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>",
            "elementwise",
        ),
        (
            "void at::native::unrolled_elementwise_kernel<at::native::where_kernel_impl>",
            "elementwise",
        ),
        ("triton_poi_fused_add_mul_0", "elementwise"),
        (
            "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, MaxOps>>",
            "reduction",
        ),
        ("void at::native::tensor_kernel_scan_innermost_dim<float, std::plus<float>>", "reduction"),
        ("triton_red_fused_sum_1", "reduction"),
        ("Memcpy DtoD (Device -> Device)", "copy"),
        ("Memset (Device)", "copy"),
        ("void at::native::vectorized_elementwise_kernel<4, direct_copy_kernel_cuda>", "copy"),
        ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>", "copy"),
        ("aten::mm", "GEMM"),
        ("aten::addmm", "GEMM"),
        ("aten::sort", "sort"),
        ("aten::argsort", "sort"),
        ("aten::searchsorted", "searchsorted"),
        ("aten::scatter_add_", "scatter/gather"),
        ("aten::_index_put_impl_", "scatter/gather"),
        ("aten::gather", "scatter/gather"),
        ("aten::where", "elementwise"),
        ("aten::softplus_backward", "elementwise"),
        ("aten::maximum", "elementwise"),
        ("aten::max", "reduction"),
        ("aten::sum", "reduction"),
        ("aten::cumsum", "reduction"),
        ("aten::copy_", "copy"),
        ("aten::empty_strided", "other"),
        ("autograd::engine::evaluate_function: SubBackward0", "other"),
    ],
)
def test_kernel_family(name: str, family: str) -> None:
    assert gpu.kernel_family(name) == family


def test_breakdown_sums_families() -> None:
    got = gpu.breakdown([("aten::mm", 300.0), ("aten::sort", 100.0), ("aten::mm", 100.0)])
    assert got["total_ms"] == pytest.approx(0.5)
    assert got["families"]["GEMM"] == {"ms": pytest.approx(0.4), "share": 0.8, "count": 2}
    assert got["families"]["other"]["count"] == 0
    assert got["top"][0] == {"name": "aten::mm", "family": "GEMM", "ms": pytest.approx(0.4)}


def _method(name: str, exponent: float, variant: str = "peer") -> gpu.GpuMethod:
    m = registry.Method(name, "peer", "batch_all", None, "test", lambda: None, exponent)  # type: ignore[arg-type,return-value]
    return gpu.GpuMethod(m, variant)


def test_predictions_and_skip_reasons() -> None:
    policy = TimingPolicy(target_s=0.5, min_repeats=3, max_repeats=20, budget_s=20.0)
    labels = torch.arange(4096) // 8
    cubic = _method("cubic", 3.0)
    fresh = gpu.predict(cubic, 2048, labels, gpu_timing._History(), policy)
    assert fresh == {"call_s": None, "run_s": None, "compile_s": None, "memory_bytes": None}
    hist = gpu_timing._History(n=1024, median_s=2.0, peak_bytes=float(2**30), compile_s=10.0)
    guess = gpu.predict(cubic, 2048, labels, hist, policy)
    assert guess["call_s"] == pytest.approx(16.0)
    assert guess["run_s"] == pytest.approx(16.0 * (1 + 3))  # one warm-up, three repeats
    assert guess["memory_bytes"] == pytest.approx(4 * 2**30)  # N^2
    assert guess["compile_s"] == pytest.approx(10.0 * gpu.COMPILE_GROWTH)
    far = time.perf_counter() + 1e6

    def reason(g: dict, h: gpu_timing._History = hist, **kw: float) -> str | None:
        args = {"allot_s": 1e6, "deadline": far, "mem_limit": 2.0**50}
        args.update(kw)
        return gpu_timing._skip_reason(cubic, g, h, **args)

    assert reason(guess) is None
    assert "time budget" in str(reason(guess, allot_s=30.0))
    assert "memory" in str(reason(guess, mem_limit=2.0**31))
    # 64 s of calls fit before the deadline, not with the 15 s compile on top.
    late = str(reason(guess, deadline=time.perf_counter() + 70.0))
    assert "deadline" in late and "compile 15.0 s" in late
    assert "deadline" in str(reason(guess, deadline=time.perf_counter() + 10.0))
    slow = gpu.predict(cubic, 4096, labels, hist, policy)
    assert "one call predicted" in str(reason(slow))
    stopped = gpu_timing._History(n=1024, median_s=0.1, stopped="stopped after an error at N=1024")
    assert reason(gpu.predict(cubic, 2048, labels, stopped, policy), stopped) == stopped.stopped
    # The registry's estimate counts before any measurement (PML all-triplets).
    pml = registry.Method(
        "pml_all", "peer", "batch_all", None, "", lambda: None, 3.0, registry.pml_all_memory
    )  # type: ignore[arg-type,return-value]
    first = gpu.predict(gpu.GpuMethod(pml, "peer"), 4096, labels, gpu_timing._History(), policy)
    assert first["memory_bytes"] == registry.pml_all_memory(4096, labels)


def test_methods_of_the_gpu_check() -> None:
    methods, missing = gpu.gpu_methods(compile_backend="aot_eager")
    names = [m.name for m in methods]
    assert names[: 1 + 2 * len(EAGER) + len(COMPILED)] == ["cdist", *EAGER, *TRITON, *COMPILED]
    assert set(names) - {"cdist", *EAGER, *TRITON, *COMPILED} <= set(gpu.GPU_PEERS)
    assert "online-triplet-loss" not in missing
    variants = {m.name: m.variant for m in methods}
    assert variants["cdist"] == "baseline" and variants["semi_hard[compiled]"] == "compiled"
    assert variants["semi_hard[triton]"] == "triton"
    bare, _ = gpu.gpu_methods(peers=False, compile=False, triton=False)
    assert [m.name for m in bare] == ["cdist", *EAGER]


def test_the_dispatch_counter_sees_synchronisations() -> None:
    """Guard: the benchmarks' counter counts what it should (as tests/syncs.py does)."""
    import tripletkit

    x = torch.arange(6.0)
    assert count_syncs(lambda: int(x.sum()), "cpu")["counts"] == {"_local_scalar_dense": 1}
    assert count_syncs(lambda: x[x > 2], "cpu")["syncs"] == 1
    reps = torch.tensor([1, 2, 0, 1, 1, 1])
    assert count_syncs(lambda: torch.repeat_interleave(x, reps), "cpu")["syncs"] == 1
    assert count_syncs(lambda: torch.repeat_interleave(x, reps, output_size=6), "cpu")["syncs"] == 0
    with SyncCounter() as counter:
        tripletkit._checks.to_host(x)
    assert counter.counts == {"to_host": 1}
    assert not tripletkit._checks.HOST_READ_HOOKS  # the hook is removed on exit


def test_cuda_sync_warnings_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA counter, with ``torch.cuda``'s debug-mode calls faked: every warning that
    says "synchronizing" counts once (no de-duplication), other warnings do not, and the
    previous mode is restored."""
    import warnings

    from benchmarks import syncs

    modes: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def three_syncs() -> None:
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)

    got = syncs.count_syncs(three_syncs, "cuda")
    assert got["syncs"] == 3 and got["dispatch_syncs"] == 0
    assert got["warnings"] == {"called a synchronizing CUDA operation": 3}
    assert got["how"] == 'torch.cuda.set_sync_debug_mode("warn")'
    assert modes == ["warn", 0]


def test_cuda_kernel_times_read_device_events() -> None:
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name: str, device: DeviceType, us: float) -> SimpleNamespace:
        return SimpleNamespace(
            name=name, device_type=device, time_range=SimpleNamespace(elapsed_us=lambda: us)
        )

    prof = SimpleNamespace(
        events=lambda: [
            event("aten::mm", DeviceType.CPU, 50.0),  # the host side: not a kernel
            event("nvjet_tst_128x128", DeviceType.CUDA, 30.0),
            event("Memset (Device)", DeviceType.CUDA, 2.0),
        ]
    )
    times = gpu_profile._kernel_times(prof, "cuda")
    assert times == [("nvjet_tst_128x128", 30.0), ("Memset (Device)", 2.0)]
    fams = gpu.breakdown(times)["families"]
    assert fams["GEMM"]["ms"] == pytest.approx(0.03) and fams["copy"]["count"] == 1


# ---------------------------------------------------------------------------------------------
# Issue 18: the large sizes and the triton rows of a real run


def test_a_real_run_plans_the_large_sizes_for_cdist_torch_and_triton() -> None:
    def config(*argv: str) -> gpu.GpuConfig:
        return gpu_command._config(gpu_command._parser().parse_args(list(argv)))

    cfg = config()  # no CUDA needed to plan
    assert cfg.sizes == list(gpu.DEFAULT_SIZES) and max(gpu.DEFAULT_SIZES) == 65536
    assert cfg.large_sizes == [131072, 262144]
    assert cfg.timed_sizes() == [*gpu.DEFAULT_SIZES, 131072, 262144]
    methods, _ = gpu.gpu_methods(compile_backend="aot_eager")
    at = {n: {m.name for m in methods if cfg.planned(m.variant, n)} for n in cfg.timed_sizes()}
    assert at[262144] == at[131072] == {"cdist", *EAGER, *TRITON}
    assert at[65536] == {m.name for m in methods}  # compiled and peers up to 65,536
    assert config("--sizes", "1024", "4096").large_sizes == []
    assert config("--large-sizes").large_sizes == []
    assert config("--sizes", "1024", "--large-sizes", "8192").timed_sizes() == [1024, 8192]
    assert config("--dry-run").large_sizes == [131072, 262144]  # listed, never run on the CPU
    # In-memory rows carry the N x N floor; the triton rows predict nothing before a size.
    by = {m.name: m for m in methods}
    for name in ("cdist", *EAGER):
        assert by[name].method.memory_estimate is gpu.matrix_floor
    assert gpu.matrix_floor(262144, torch.empty(0)) == 256 * 2**30
    assert all(by[name].method.memory_estimate is None for name in TRITON)


def test_in_memory_rows_skipped_where_the_device_cannot_hold_them() -> None:
    """On an 80 GiB device (90 %: 72 GiB): after N = 65,536 measured (in-memory batch-all
    ~37 GiB, triton ~100 MiB), N = 131,072 is skipped for the torch row with its reason and
    planned for the triton row; with nothing measured the floor alone skips N = 262,144."""
    policy = TimingPolicy(target_s=0.5, min_repeats=3, max_repeats=20, budget_s=20.0)
    methods, _ = gpu.gpu_methods(peers=False, compile=False)
    by = {m.name: m for m in methods}
    torch_row, triton_row = by["batch_all[torch]"], by["batch_all[triton]"]
    limit = 0.9 * 80 * 2**30
    labels = torch.empty(0)
    far = time.perf_counter() + 1e6

    def reason(gm: gpu.GpuMethod, n: int, hist: gpu_timing._History) -> str | None:
        guess = gpu.predict(gm, n, labels, hist, policy)
        return gpu_timing._skip_reason(gm, guess, hist, 1e6, far, limit)

    measured = gpu_timing._History(n=65536, median_s=0.5, peak_bytes=37.0 * 2**30)
    why = str(reason(torch_row, 131072, measured))
    assert why.startswith("predicted peak memory 148.0 GiB > limit 72.0 GiB"), why
    small = gpu_timing._History(n=65536, median_s=0.1, peak_bytes=100.0 * 2**20)
    guess = gpu.predict(triton_row, 262144, labels, small, policy)
    assert guess["memory_bytes"] == pytest.approx(400.0 * 2**20)  # grown as N, not N^2
    assert reason(triton_row, 262144, small) is None
    fresh = str(reason(torch_row, 262144, gpu_timing._History()))
    assert fresh.startswith("predicted peak memory 256.0 GiB > limit"), fresh
    assert reason(torch_row, 16384, gpu_timing._History()) is None  # 1 GiB fits


def test_the_sync_audit_covers_the_triton_rows() -> None:
    cases = gpu.audit_cases()
    triton = [c for c in cases if c.backend == "triton"]
    torch_fused = [c for c in cases if c.kind == "fused loss" and c.backend == "torch"]
    assert len(triton) == len(torch_fused) == len(gpu.FUSED) * 2 * 3
    budgets = {(c.entry, c.variant): c.budget for c in triton}
    for name in gpu.FUSED:
        for margin in ("hinge", "soft margin"):
            assert budgets[(name, f"triton: {margin}, checks on")] == 2
            assert budgets[(name, f"triton: {margin}, checks off")] == 1  # reads the width
            assert budgets[(name, f"triton: {margin}, checks off, max_positives=k-1")] == 0
    assert cases.index(triton[0]) > cases.index(torch_fused[-1])  # the torch rows first
