"""Smoke tests of the speed benchmark (``python -m benchmarks.speed --quick``).

They check the structure of what the benchmark writes, never a timing: timings live in the
benchmark itself.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

# ``benchmarks`` is a top-level folder of the repository, not part of the installed package:
# make it importable however pytest was started.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from benchmarks import registry, speed  # noqa: E402
from benchmarks.common import RESULTS_DIR, machine_info, save_json  # noqa: E402
from benchmarks.measure import interleaved_rounds, spread  # noqa: E402

STATUSES = {"ok", "skipped", "error"}


def _finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("speed")
    threads = torch.get_num_threads()
    runs = speed.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads  # main restores the thread count
    return runs, out


@pytest.mark.slow
def test_quick_run_writes_json_and_png(quick_run: tuple[dict[str, Any], Path]) -> None:
    runs, out = quick_run
    assert set(runs) == {"cpu"}
    json_path = out / "speed_cpu_quick.json"
    png_path = out / "speed_cpu_quick.png"
    assert json_path.is_file()
    assert png_path.is_file() and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(json_path.read_text())
    for key in ("benchmark", "machine", "config", "methods", "results", "targets", "files"):
        assert key in saved, key
    assert saved["benchmark"] == "speed"
    assert saved["config"]["quick"] is True
    assert saved["config"]["sizes"] == list(speed.QUICK_SIZES)
    assert saved["files"]["png"] == str(png_path)
    for key in (
        "python",
        "torch",
        "numpy",
        "numba",
        "cpu",
        "usable_cores",
        "timestamp",
        "load_average",
        "load_average_start",
        "load_average_end",
    ):
        assert key in saved["machine"], key
    # The JSON holds exactly what main returned.
    assert len(saved["results"]) == len(runs["cpu"]["results"])


@pytest.mark.slow
def test_quick_run_every_tripletkit_method_is_timed(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    result = quick_run[0]["cpu"]
    methods = result["methods"]
    tk = [name for name, m in methods.items() if m["family"] == "tripletkit"]
    expected = {
        f"{s}[{b}]"
        for s in ("batch_all", "batch_all_soft", "batch_hard", "semi_hard")
        for b in ("torch", "numba")
    }
    assert set(tk) == expected
    for entry in result["results"]:
        assert entry["status"] in STATUSES
        if entry["status"] == "skipped":
            assert entry["reason"]
        if entry["status"] == "error":
            assert entry["error"]
        if entry["family"] in ("tripletkit", "baseline"):
            assert entry["status"] == "ok", entry
            assert _finite_positive(entry["median_s"])
            assert all(_finite_positive(t) for t in entry["times_s"])
            assert entry["repeats"] == len(entry["times_s"]) >= 1
            times = sorted(entry["times_s"])
            assert entry["min_s"] == times[0] and entry["max_s"] == times[-1]
            assert times[0] <= entry["q1_s"] <= entry["median_s"] <= entry["q3_s"] <= times[-1]
            assert math.isfinite(entry["loss"])
            assert _finite_positive(entry["ratio_to_cdist"])
    for name in tk + ["cdist"]:
        for n in speed.QUICK_SIZES:
            assert any(e["method"] == name and e["n"] == n for e in result["results"])
    for name, m in methods.items():
        if m["backend"] == "numba":
            assert m["compile_s"] is not None and m["compile_s"] >= 0, name
    two = [e for e in result["results"] if e["labels"] == "two_classes"]
    assert {e["method"] for e in two} >= {"cdist", "batch_all[torch]", "batch_all[numba]"}


@pytest.mark.slow
def test_quick_run_targets_rows_and_thread_scaling(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    result = quick_run[0]["cpu"]
    n = max(speed.QUICK_SIZES)  # --quick has no N = 1024: the rows run at its largest N
    rows = {r["method"]: r for r in result["target_rows"]}
    tk = {name for name, m in result["methods"].items() if m["family"] == "tripletkit"}
    assert set(rows) == tk
    for r in rows.values():
        assert r["n"] == n and r["rounds"] == len(r["times_s"]) == len(r["cdist_times_s"]) == 2
        ratios = [t / c for t, c in zip(r["times_s"], r["cdist_times_s"], strict=True)]
        assert r["ratios"] == pytest.approx(ratios)
        assert r["ratio"]["min"] <= r["ratio"]["median"] <= r["ratio"]["max"]
    scaling = result["thread_scaling"]
    if (machine_info()["usable_cores"] or 1) < 2:
        assert "skipped" in scaling
        return
    assert scaling["threads"] == [1, 2] and scaling["n"] == n
    numba_losses = {name for name in tk if name.endswith("[numba]")}
    assert {r["method"] for r in scaling["rows"]} == numba_losses | {"cdist"}
    for r in scaling["rows"]:
        one, two = (r["times_s"][t] for t in ("1", "2"))
        assert len(one) == len(two) == 2
        ratios = [b / a for a, b in zip(one, two, strict=True)]
        assert r["scaling"]["median"] == pytest.approx(statistics.median(ratios))
        assert 0 < r["cpu_share_1"]
    names = {t["name"] for t in result["targets"]}
    assert {f"N={n} {m} t(2 threads) / t(1) <= 0.85" for m in numba_losses} <= names
    printed = speed.target_rows_text(result)
    assert "Targets rows" in printed and "Thread scaling" in printed and "cdist" in printed


@pytest.mark.slow
def test_quick_run_memory_targets_and_table(quick_run: tuple[dict[str, Any], Path]) -> None:
    result = quick_run[0]["cpu"]
    measured = [e for e in result["results"] if e.get("memory")]
    assert len(measured) == 1  # --quick runs a single memory subprocess
    memory = measured[0]["memory"]
    assert "extra_peak_bytes" in memory, memory
    assert memory["extra_peak_bytes"] >= 0
    for target in result["targets"]:
        assert target["passed"] in (True, False, None)
        assert target["name"] and target["detail"]
    table = speed.markdown_table(result)
    assert table.startswith("| N | cdist |")
    for n in speed.QUICK_SIZES:
        assert f"| {n} |" in table
    spread = speed.spread_table(result["results"])
    for n in speed.QUICK_SIZES:
        assert f"| {n} |" in spread


def test_failing_configuration_is_recorded_not_raised() -> None:
    def broken() -> speed.LossFn:
        def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("kernel not written yet")

        return f

    methods, _ = speed.build_methods(peers=False, backends=("torch",))
    methods = [m for m in methods if m.name in ("cdist", "batch_hard[torch]")]
    methods.append(
        speed.Method("broken", "tripletkit", "batch_all", "numba", "always fails", broken)
    )
    cfg = speed.RunConfig(
        device="cpu",
        sizes=[16, 32],
        quick=True,
        peers=False,
        threads=None,
        memory="none",
        two_class_n=None,
        policy=speed.TimingPolicy(target_s=0.0, min_repeats=1, max_repeats=1, warmups=1),
        mem_limit_bytes=float(2**40),
    )
    results, warm, extra = speed.run_device(methods, cfg)
    assert len(results) == 6
    # the targets rows at the largest N: the working method alternating with cdist only
    assert [r["method"] for r in extra["target_rows"]] == ["batch_hard[torch]"]
    by = {(e["method"], e["n"]): e for e in results}
    for n in (16, 32):
        assert by[("broken", n)]["status"] == "error"
        assert "kernel not written yet" in by[("broken", n)]["error"]
        assert by[("cdist", n)]["status"] == "ok"
        assert by[("batch_hard[torch]", n)]["status"] == "ok"
        assert by[("cdist", n)]["ratio_to_cdist"] == pytest.approx(1.0)
    assert "error" in warm["broken"]


def test_memory_guard_skips_cubic_peers() -> None:
    labels = speed.make_inputs(1024, "pk")[1]
    assert registry.otl_all_memory(1024, labels) > 16 * 2**30
    assert registry.valid_triplets(labels) == 1024 * 7 * (1024 - 8)
    two = speed.make_inputs(64, "two_classes")[1]
    assert registry.valid_triplets(two) == 64 * 31 * 32


def test_targets_and_table_from_synthetic_results() -> None:
    def ok(method: str, n: int, ms: float, **extra: Any) -> dict[str, Any]:
        family = "baseline" if method == "cdist" else "tripletkit"
        if method.startswith("pml"):
            family = "peer"
        return {
            "method": method,
            "family": family,
            "strategy": method.split("[")[0],
            "backend": method[method.index("[") + 1 : -1] if "[" in method else None,
            "device": "cpu",
            "n": n,
            "labels": "pk",
            "status": "ok",
            "median_s": ms / 1e3,
            "times_s": [ms / 1e3],
            **extra,
        }

    rows = [
        ok("cdist", 1024, 10.0),
        ok("batch_all[numba]", 1024, 20.0),
        ok("batch_all[torch]", 1024, 40.0),
        ok("semi_hard[numba]", 1024, 50.0),
        ok("semi_hard[torch]", 1024, 25.0),
        ok("batch_hard[numba]", 1024, 12.0),
        ok("pml_all", 1024, 1000.0),
        ok("batch_all[numba]", 8192, 900.0, memory={"extra_peak_bytes": 3 * 2**30, "how": "x"}),
        ok("cdist", 8192, 500.0, memory={"extra_peak_bytes": 2**30, "how": "x"}),
        ok("batch_all[torch]", 8192, 950.0, memory={"extra_peak_bytes": 1.6 * 2**30, "how": "x"}),
        {
            "method": "batch_hard[torch]",
            "family": "tripletkit",
            "strategy": "batch_hard",
            "backend": "torch",
            "device": "cpu",
            "n": 1024,
            "labels": "pk",
            "status": "error",
            "error": "boom",
        },
    ]
    speed._attach_ratios(rows)
    result = {"config": {"device": "cpu", "backends": ["numba", "torch"]}, "results": rows}
    got = {t["name"]: t["passed"] for t in speed.check_targets(result)}
    assert got["N=1024 batch_all[numba] <= 3x cdist"] is True
    assert got["N=1024 batch_all[torch] <= 3x cdist"] is False
    assert got["N=1024 semi_hard[numba] <= 3x cdist"] is False
    assert got["N=1024 batch_hard[numba] <= 1.5x cdist"] is True
    assert got["N=1024 batch_hard[torch] <= 1.5x cdist"] is None
    assert got["N=1024 batch_all[numba] >= 30x faster than PML all-triplets"] is True
    assert got["N=1024 batch_all[torch] >= 30x faster than PML all-triplets"] is False
    assert got["N=8192 batch_all[numba] extra peak memory < 2 GiB"] is False
    assert got["N=8192 batch_all[torch] extra peak memory < 2 GiB"] is True
    assert got["N=8192 batch_all[torch] extra peak memory <= 1.5x cdist"] is False  # 1.6x
    assert "N=8192 batch_all[numba] extra peak memory <= 1.5x cdist" not in got
    assert got["N=1024 batch_all: numba at least as fast as torch"] is True
    assert got["N=1024 semi_hard: numba at least as fast as torch"] is False
    table = speed.markdown_table(rows)
    assert "| 1024 | 10 ms (1x) | 20 ms (2x) |" in table
    assert "error" in table and "3.00 GiB" in table
    detail = {t["name"]: t["detail"] for t in speed.check_targets(result)}
    assert detail["N=1024 batch_all[numba] <= 3x cdist"] == "2.00x (20 ms; cdist 10 ms)"


def _target_row(method: str, ratios: list[float], cdist_ms: float = 10.0) -> dict[str, Any]:
    times = [r * cdist_ms / 1e3 for r in ratios]
    return {
        "method": method,
        "n": 1024,
        "rounds": len(ratios),
        "calls_per_round": 3,
        "times_s": times,
        "cdist_times_s": [cdist_ms / 1e3] * len(ratios),
        "median_s": statistics.median(times),
        "cdist_median_s": cdist_ms / 1e3,
        "ratios": ratios,
        "ratio": spread(ratios),
    }


def _scaling_row(method: str, one_ms: float, two_ms: float, share: float) -> dict[str, Any]:
    return {
        "method": method,
        "times_s": {"1": [one_ms / 1e3], "2": [two_ms / 1e3]},
        "median_s": {"1": one_ms / 1e3, "2": two_ms / 1e3},
        "scaling": spread([two_ms / one_ms]),
        "cpu_share_1": share,
    }


def test_targets_read_the_targets_rows_and_the_thread_scaling() -> None:
    # The sweep says 2.5x (over the limit), the targets rows' median of rounds 2.9x: the
    # rows decide, and their detail names the spread and the cdist time.
    sweep = [
        {"method": "cdist", "family": "baseline", "n": 1024, "labels": "pk", "status": "ok",
         "median_s": 0.010, "device": "cpu"},
        {"method": "semi_hard[numba]", "family": "tripletkit", "n": 1024, "labels": "pk",
         "status": "ok", "median_s": 0.035, "device": "cpu"},
    ]  # fmt: skip
    speed._attach_ratios(sweep)
    result = {
        "config": {"device": "cpu", "backends": ["numba"]},
        "results": sweep,
        "target_rows": [_target_row("semi_hard[numba]", [3.1, 2.9, 2.7])],
        "thread_scaling": {
            "n": 1024,
            "threads": [1, 2],
            "rows": [
                _scaling_row("cdist", 10.0, 5.5, 0.99),
                _scaling_row("semi_hard[numba]", 40.0, 38.0, 0.98),  # scaling lost
                _scaling_row("batch_hard[numba]", 10.0, 6.0, 0.97),
                _scaling_row("batch_all[numba]", 20.0, 30.0, 0.5),  # machine busy
            ],
        },
    }
    targets = {t["name"]: t for t in speed.check_targets(result)}
    semi = targets["N=1024 semi_hard[numba] <= 3x cdist"]
    assert semi["passed"] is True
    assert semi["detail"] == "2.90x [2.70-3.10] over 3 rounds (29 ms; cdist 10 ms)"
    scaling = {name: t["passed"] for name, t in targets.items() if "threads" in name}
    assert scaling == {
        "N=1024 semi_hard[numba] t(2 threads) / t(1) <= 0.85": False,
        "N=1024 batch_hard[numba] t(2 threads) / t(1) <= 0.85": True,
        "N=1024 batch_all[numba] t(2 threads) / t(1) <= 0.85": None,
    }
    busy = targets["N=1024 batch_all[numba] t(2 threads) / t(1) <= 0.85"]["detail"]
    assert "machine busy" in busy and "50%" in busy
    printed = speed.target_rows_text(result)
    assert "semi_hard[numba]: 2.90x [2.70-3.10] (29 ms; cdist 10 ms)" in printed
    assert "semi_hard[numba]: 0.95 [0.95-0.95] (40 ms -> 38 ms" in printed


def test_spread_and_interleaved_rounds() -> None:
    assert spread([3.0, 1.0, 2.0, 4.0, 5.0]) == {
        "median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0
    }  # fmt: skip
    assert spread([2.0]) == {"median": 2.0, "q1": 2.0, "q3": 2.0, "min": 2.0, "max": 2.0}
    with pytest.raises(ValueError, match="no values"):
        spread([])
    order: list[str] = []

    def call(name: str, value: float) -> Any:
        def f() -> float:
            order.append(name)
            return value

        return f

    out = interleaved_rounds({"a": call("a", 1.0), "b": call("b", 2.0)}, rounds=3, per_round=2)
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}
    # each round runs one call's repeats in a row, the order reversed every other round
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_common_helpers(tmp_path: Path) -> None:
    info = machine_info()
    assert info["torch"] == torch.__version__
    assert isinstance(info["cpu_count"], int)
    path = save_json(tmp_path / "a" / "b.json", {"x": float("nan"), "t": torch.tensor(2.5)})
    assert json.loads(path.read_text()) == {"x": None, "t": 2.5}
    assert RESULTS_DIR.name == "results" and RESULTS_DIR.is_absolute()


def test_default_plan_keeps_the_targets_rows_and_full_plan_everything() -> None:
    methods, _ = speed.build_methods(peers=False)
    parser_args = speed._parser().parse_args([])
    default = speed._run_config(parser_args, "cpu", list(speed.DEFAULT_SIZES))
    plan = speed._plan(methods, default)
    sizes = {n for _, n, kind in plan if kind == "pk"}
    assert sizes == {*speed.DEFAULT_SIZES, 8192}
    at_8192 = {m.name for m, n, kind in plan if n == 8192}
    assert at_8192 == {"cdist", "batch_all[numba]", "batch_all[torch]"}  # memory targets' rows
    at_target = {m.name for m, n, kind in plan if n == speed.TARGET_N}
    assert at_target == {m.name for m in methods}  # every ratio target's row
    memory = {(m.name, n) for m, n, kind in plan if speed._memory_wanted(m, n, kind, default)}
    assert {("batch_all[numba]", 8192), ("batch_all[torch]", 8192), ("cdist", 8192)} <= memory
    assert ("semi_hard[torch]", 1024) not in memory  # non-default backend: --full only
    full_args = speed._parser().parse_args(["--full"])
    full = speed._run_config(full_args, "cpu", list(speed.FULL_SIZES))
    full_plan = speed._plan(methods, full)
    assert {n for _, n, kind in full_plan if kind == "pk"} == set(speed.FULL_SIZES)
    assert all(
        speed._memory_wanted(m, n, kind, full)
        for m, n, kind in full_plan
        if n in speed.KEY_MEMORY_SIZES and kind == "pk"
    )
    assert speed._json_path(Path("out"), "cpu", "_full", False).name == "speed_cpu_full.json"


# ---------------------------------------------------------------------------------------------
# The compiled rows (torch.compile beside eager)

EAGER_TORCH = ("batch_all[torch]", "batch_all_soft[torch]", "batch_hard[torch]", "semi_hard[torch]")
COMPILED = tuple(name.replace("[torch]", "[compiled]") for name in EAGER_TORCH)


def _plan_of(*argv: str) -> tuple[speed.RunConfig, list[tuple[speed.Method, int, str]]]:
    args = speed._parser().parse_args(list(argv))
    sizes = args.sizes or list(
        speed.QUICK_SIZES if args.quick else speed.FULL_SIZES if args.full else speed.DEFAULT_SIZES
    )
    methods, _ = speed.build_methods(peers=True)
    if speed._compile_wanted(args):
        methods = speed.with_compiled(methods, args.compile_backend)
    cfg = speed._run_config(args, "cpu", sizes)
    return cfg, speed._plan(methods, cfg)


def test_compiled_rows_in_the_plan() -> None:
    # Default plan: the four compiled losses at the target N only, never at the memory
    # targets' size, in the two-class configuration or in a memory subprocess.
    cfg, plan = _plan_of()
    compiled = [(m.name, n, kind) for m, n, kind in plan if speed.is_compiled(m)]
    assert sorted(compiled) == sorted((name, speed.TARGET_N, "pk") for name in COMPILED)
    assert cfg.compile_sizes == (speed.TARGET_N,) and cfg.compile_backend == "inductor"
    assert not any(speed._memory_wanted(m, n, k, cfg) for m, n, k in plan if speed.is_compiled(m))
    # Every compiled row has its eager row at the same N, and comes after it, before peers.
    at_target = [m.name for m, n, kind in plan if n == speed.TARGET_N and kind == "pk"]
    for eager, comp in zip(EAGER_TORCH, COMPILED, strict=True):
        assert at_target.index(eager) < at_target.index(comp)
    peers = [i for i, name in enumerate(at_target) if name.startswith(("pml", "otl", "st_"))]
    assert all(i > at_target.index(c) for c in COMPILED for i in peers)
    methods = {m.name: m for m, _, _ in plan}
    for comp in COMPILED:
        m = methods[comp]
        assert (m.family, m.backend) == ("tripletkit", "torch")
        assert "backend='inductor'" in m.description and "max_positives=7" in m.description
    # --full and --sizes: every size; --quick: none unless asked; --no-compile: none.
    cfg, plan = _plan_of("--full")
    assert {n for m, n, _ in plan if m.name == "semi_hard[compiled]"} == set(speed.FULL_SIZES)
    cfg, plan = _plan_of("--sizes", "64", "96")
    assert {n for m, n, _ in plan if m.name == "batch_hard[compiled]"} == {64, 96}
    cfg, plan = _plan_of("--quick")
    assert cfg.compile_sizes == () and not any(speed.is_compiled(m) for m, _, _ in plan)
    cfg, plan = _plan_of("--quick", "--compile", "--compile-backend", "aot_eager")
    assert cfg.compile_sizes == (max(speed.QUICK_SIZES),) and cfg.compile_backend == "aot_eager"
    assert {m.name for m, _, _ in plan if speed.is_compiled(m)} == set(COMPILED)
    cfg, plan = _plan_of("--no-compile")
    assert cfg.compile_sizes == () and not any(speed.is_compiled(m) for m, _, _ in plan)


def test_compiled_rows_and_table_from_synthetic_results() -> None:
    def entry(method: str, n: int, ms: float, loss: float, **extra: Any) -> dict[str, Any]:
        return {
            "method": method,
            "strategy": method.split("[")[0],
            "n": n,
            "labels": "pk",
            "status": "ok",
            "median_s": ms / 1e3,
            "loss": loss,
            **extra,
        }

    results = [
        entry("semi_hard[torch]", 1024, 30.0, 0.25),
        entry("semi_hard[compiled]", 1024, 20.0, 0.25 + 3e-7, compile_s=12.5),
        entry("batch_hard[torch]", 1024, 10.0, 0.5),
        {
            "method": "batch_hard[compiled]",
            "strategy": "batch_hard",
            "n": 1024,
            "labels": "pk",
            "status": "error",
            "error": "InductorError: no C++ compiler",
        },
    ]
    rows = speed.compiled_rows(results)
    assert [r["loss"] for r in rows] == ["semi_hard", "batch_hard"]
    semi = rows[0]
    assert semi["eager"] == "semi_hard[torch]" and semi["compiled"] == "semi_hard[compiled]"
    assert semi["speedup"] == pytest.approx(1.5)
    assert semi["compile_s"] == 12.5  # apart from both medians
    assert semi["compiled_median_s"] == pytest.approx(0.02)
    assert semi["loss_abs_diff"] == pytest.approx(3e-7)
    assert rows[1]["status"] == "error" and "no C++ compiler" in rows[1]["reason"]
    assert "speedup" not in rows[1]
    text = speed.compiled_table({"backend": "inductor", "rows": rows})
    assert "backend 'inductor'" in text
    assert "| loss | N | eager | compiled | eager / compiled | compile | loss difference |" in text
    assert "| semi_hard | 1024 | 30 ms | 20 ms | 1.50x | 12.5 s | 3.0e-07 |" in text
    assert "| batch_hard | 1024 | | error: InductorError: no C++ compiler | | | |" in text


def test_compiled_rows_timed_apart_from_their_compile() -> None:
    """A tiny run with the compiled rows (backend aot_eager: dynamo traces and recompiles
    per N as inductor does, without a C++ compiler): each size pays its compile in a first
    call outside the steady-state repeats, and the compiled loss gives the eager value."""
    methods, _ = speed.build_methods(peers=False, backends=("torch",))
    methods = [m for m in methods if m.name in ("cdist", "batch_hard[torch]", "semi_hard[torch]")]
    methods = speed.with_compiled(methods, "aot_eager")
    assert [m.name for m in methods] == [
        "cdist",
        "batch_hard[torch]",
        "semi_hard[torch]",
        "batch_hard[compiled]",
        "semi_hard[compiled]",
    ]
    cfg = speed.RunConfig(
        device="cpu",
        sizes=[16, 32],
        quick=True,
        peers=False,
        threads=None,
        memory="none",
        two_class_n=None,
        policy=speed.TimingPolicy(target_s=0.0, min_repeats=2, max_repeats=2, warmups=1),
        mem_limit_bytes=float(2**40),
        compile_sizes=(16, 32),
        compile_backend="aot_eager",
    )
    results, _, extra = speed.run_device(methods, cfg)
    by = {(e["method"], e["n"]): e for e in results}
    for name in ("batch_hard[compiled]", "semi_hard[compiled]"):
        for n in (16, 32):
            e = by[(name, n)]
            assert e["status"] == "ok", e
            assert e["repeats"] == len(e["times_s"]) == 2
            assert e["compile_s"] == pytest.approx(max(e["compile_call_s"] - e["median_s"], 0.0))
            # the trace is in the first call only: slower than every steady-state repeat
            assert e["compile_call_s"] > max(e["times_s"])
            eager = by[(name.replace("[compiled]", "[torch]"), n)]
            assert e["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    block = extra["compiled"]
    assert block["backend"] == "aot_eager" and block["sizes"] == [16, 32]
    assert [(r["loss"], r["n"]) for r in block["rows"]] == [
        ("batch_hard", 16),
        ("semi_hard", 16),
        ("batch_hard", 32),
        ("semi_hard", 32),
    ]
    assert all(_finite_positive(r["speedup"]) for r in block["rows"])
    # The targets rows at the largest N include the compiled losses, alternating with cdist.
    assert {"batch_hard[compiled]", "semi_hard[compiled]"} <= {
        r["method"] for r in extra["target_rows"]
    }


# ---------------------------------------------------------------------------------------------
# The streaming rows (issue 18: backend="streaming", CPU only)

STREAMING = ("batch_all[streaming]", "batch_hard[streaming]", "semi_hard[streaming]")


def test_streaming_rows_in_the_plan() -> None:
    methods = speed.streaming_methods()
    assert sorted(m.name for m in methods) == sorted(STREAMING)
    for m in methods:
        assert (m.family, m.backend, m.cuda) == ("tripletkit", "streaming", False)
    assert {m.strategy for m in methods} == set(speed.STREAMING_LOSSES)

    def streaming_plan(*argv: str, device: str = "cpu") -> set[tuple[str, int]]:
        cfg, sweep = _plan_of(*argv)
        if device != "cpu":  # (a memory limit given: no CUDA query)
            args = speed._parser().parse_args([*argv, "--mem-limit-gb", "1"])
            cfg = speed._run_config(args, device, list(speed.DEFAULT_SIZES))
            assert cfg.streaming_sizes == ()
        # never in the sweep: no ratio target, no thread scaling, no in-process timing
        assert not any(m.backend == "streaming" for m, _, _ in sweep)
        return {(m.name, n) for m, n in speed._streaming_plan(cfg)}

    # default: N = 16,384; --full: also the target's N = 65,536
    assert streaming_plan() == {(name, 16384) for name in STREAMING}
    full = streaming_plan("--full")
    assert full == {(name, n) for name in STREAMING for n in (16384, 65536)}
    assert speed.STREAMING_TARGET_N == 65536 and speed.STREAMING_TARGET_BYTES == 256 * 2**20
    # none in the CI smoke test, with --sizes, when asked for none, or on CUDA
    assert streaming_plan("--quick") == set()
    assert streaming_plan("--sizes", "64", "96") == set()
    assert streaming_plan("--streaming-sizes") == set()
    assert streaming_plan("--streaming-sizes", "512") == {(name, 512) for name in STREAMING}
    assert streaming_plan(device="cuda") == set()
    # the benchmark streaming.py checks the same target (one home for it)
    from benchmarks import streaming

    assert streaming.MEMORY_TARGET_N == speed.STREAMING_TARGET_N
    assert streaming.MEMORY_TARGET_BYTES == speed.STREAMING_TARGET_BYTES
    assert set(streaming.KINDS) == set(speed.STREAMING_LOSSES)


def _streaming_entry(name: str, n: int, extra_mib: float) -> dict[str, Any]:
    return {
        "method": name,
        "family": "tripletkit",
        "strategy": name.split("[")[0],
        "backend": "streaming",
        "device": "cpu",
        "n": n,
        "labels": "pk",
        "status": "ok",
        "median_s": 40.0,
        "times_s": [40.0],
        "cpu_median_s": 70.0,
        "repeats": 1,
        "memory": {"extra_peak_bytes": int(extra_mib * 2**20), "how": "VmHWM"},
        "matrix_bytes": 4 * n * n,
    }


def test_streaming_target_from_synthetic_results() -> None:
    def targets(rows: list[dict[str, Any]], device: str = "cpu") -> dict[str, dict[str, Any]]:
        result = {"config": {"device": device, "backends": ["numba", "torch"]}, "results": rows}
        found = {t["name"]: t for t in speed.check_targets(result)}
        return {k: v for k, v in found.items() if "[streaming]" in k}

    name = "N=65536 {}[streaming] extra peak memory <= 256 MiB"
    # The default run measures N = 16,384 only: the target reads "not measured".
    default = [_streaming_entry(m, 16384, 100.0) for m in STREAMING]
    got = targets(default)
    assert set(got) == {name.format(s) for s in ("batch_all", "batch_hard", "semi_hard")}
    for t in got.values():
        assert t["passed"] is None and t["detail"].startswith("not measured")
        assert t["backend"] == "streaming"
        assert t["default_backend"] is True  # "auto" streams there: 16 GiB > the 1 GiB budget
    # --full: judged per loss (the limit itself passes, one MiB over fails).
    full = default + [
        _streaming_entry("batch_all[streaming]", 65536, 150.0),
        _streaming_entry("batch_hard[streaming]", 65536, 256.0),
        _streaming_entry("semi_hard[streaming]", 65536, 257.0),
    ]
    got = targets(full)
    assert got[name.format("batch_all")]["passed"] is True
    assert got[name.format("batch_hard")]["passed"] is True
    assert got[name.format("semi_hard")]["passed"] is False
    assert got[name.format("batch_all")]["detail"].startswith("150 MiB (VmHWM; ")
    assert "16 GiB" in got[name.format("batch_all")]["detail"]
    failed = {**full[-1], "status": "error", "error": "memory subprocess timed out"}
    got = targets([*full[:-1], failed])
    assert got[name.format("semi_hard")]["passed"] is None
    assert "timed out" in got[name.format("semi_hard")]["detail"]
    assert targets(full, device="cuda") == {}  # streaming is a CPU backend
    # Printed: time, CPU time and extra peak beside the matrix never held.
    text = speed.streaming_rows_text(full)
    assert text.startswith("Streaming rows (backend='streaming', CPU; one forward + backward")
    assert "  semi_hard[streaming] N=65536: 40.00 s (CPU 70.00 s), extra peak 257 MiB" in text
    assert "(N x N float32: 16,384 MiB)" in text
    assert speed.streaming_rows_text(default[:0]) == ""
    table = speed.markdown_table(full)
    assert "| 16384 | 40,000 ms |" in table
    assert "| 65536 | batch_all[streaming] | 150.0 MiB |" in table


def test_a_failed_streaming_row_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, float]] = []

    def fake(method: Any, n: int, *args: Any, timeout_s: float = 0.0, **kw: Any) -> dict:
        calls.append((method.name, n, timeout_s))
        return {"error": "memory subprocess exit 1: boom"}

    monkeypatch.setattr(speed, "measure_memory_subprocess", fake)
    cfg = speed._run_config(speed._parser().parse_args([]), "cpu", list(speed.DEFAULT_SIZES))
    rows = speed.measure_streaming_rows(cfg)
    assert [(c[0], c[1]) for c in calls] == [(m.name, 16384) for m in speed.streaming_methods()]
    assert all(c[2] == speed.STREAMING_TIMEOUT_S for c in calls)
    assert all(r["status"] == "error" and "boom" in r["error"] for r in rows)
    assert "error" in speed.streaming_rows_text(rows)


@pytest.mark.slow
def test_a_streaming_row_at_a_small_n() -> None:
    """One streaming row for real (a fresh interpreter, N = 64): time and memory of the same
    call, and the loss of the streaming path on the benchmark's inputs (the in-memory numba
    path gives the same value in this process)."""
    from tripletkit.losses import batch_hard_triplet_loss

    method = next(m for m in speed.streaming_methods() if m.strategy == "batch_hard")
    cfg = speed.RunConfig(
        device="cpu",
        sizes=[64],
        quick=True,
        peers=False,
        threads=1,
        memory="none",
        two_class_n=None,
        streaming_sizes=(64,),
    )
    (row,) = speed.measure_streaming_rows(cfg, [(method, 64)])
    assert row["status"] == "ok", row
    assert row["method"] == "batch_hard[streaming]" and row["backend"] == "streaming"
    assert row["repeats"] == 1 and row["times_s"] == [row["median_s"]]
    assert _finite_positive(row["median_s"]) and _finite_positive(row["cpu_median_s"])
    assert row["memory"]["extra_peak_bytes"] >= 0 and row["memory"]["how"]
    assert "wall_s" not in row["memory"]  # the call's time moved to the row
    assert row["matrix_bytes"] == 4 * 64 * 64
    x, y = speed.make_inputs(64)
    expected = batch_hard_triplet_loss(x, y, registry.MARGIN, backend="numba")
    assert row["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
