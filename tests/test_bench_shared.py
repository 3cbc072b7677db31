"""Unit tests of the helpers the benchmarks share (:mod:`benchmarks.common`,
:mod:`benchmarks.registry`, :mod:`benchmarks.measure`, :mod:`benchmarks.report`).

Fast and timing-free: they check structure and arithmetic, never how long anything takes.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # `benchmarks` lives at the repository root, not in src/
    sys.path.insert(0, _REPO_ROOT)

from benchmarks import common, measure, registry, report, strategies  # noqa: E402


def test_mean_std_is_sample_std_and_zero_for_one_value() -> None:
    stat = report.mean_std([1.0, 2.0, 4.0])
    assert stat["n"] == 3
    assert stat["mean"] == pytest.approx(7 / 3)
    assert stat["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert report.mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    with pytest.raises(statistics.StatisticsError):
        report.mean_std([])


def test_mean_std_series_is_pointwise() -> None:
    got = report.mean_std_series([[1.0, 10.0, 0.0], [3.0, 10.0, 2.0]])
    assert got["mean"] == pytest.approx([2.0, 10.0, 1.0])
    assert got["std"] == pytest.approx([math.sqrt(2), 0.0, math.sqrt(2)])
    with pytest.raises(ValueError):
        report.mean_std_series([[1.0, 2.0], [1.0]])


def test_format_mean_std_and_bytes() -> None:
    assert report.format_mean_std(report.mean_std([0.1, 0.3])) == "0.200 ± 0.141"
    assert report.format_mean_std(report.mean_std([12.34]), 1) == "12.3"
    assert report.format_bytes(3 * common.GIB) == "3.00 GiB"
    assert report.format_bytes(5 * 1024**2) == "5.0 MiB"


def test_md_table_header_alignment_and_rows() -> None:
    table = report.md_table(["N", "name", "time"], [[128, "a", "1 ms"], [256, "", "2 ms"]], "rlr")
    assert table.splitlines() == [
        "| N | name | time |",
        "|---:|---|---:|",
        "| 128 | a | 1 ms |",
        "| 256 |  | 2 ms |",
    ]
    assert report.md_table(["a", "b"], [], "").splitlines()[1] == "|---|---|"


def test_aggregate_runs_over_seeds() -> None:
    def run(seed: int, value: float) -> dict[str, Any]:
        curve = {key: [value, value + 0.1] for key in report.CURVE_KEYS}
        curve["step"] = [0, 5]
        final: dict[str, Any] = {key: value for key in report.FINAL_KEYS}
        final["recall_at_k"] = {"1": value, "5": value}
        return {"seed": seed, "curve": curve, "final": final, "wall_s": 2.0, "train_s": 1.5}

    agg = report.aggregate_runs([run(0, 0.2), run(1, 0.4)])
    assert agg["final"]["r_precision"]["mean"] == pytest.approx(0.3)
    assert agg["final"]["recall_at_5"]["n"] == 2
    assert agg["wall_s"] == {"mean": 2.0, "std": 0.0, "n": 2}
    assert agg["curves"]["step"] == [0, 5]
    assert agg["curves"]["hard"]["mean"] == pytest.approx([0.3, 0.4])
    assert agg["curves"]["train_s"]["mean"] == pytest.approx([0.3, 0.4])
    setting = {"lr": 0.001, "normalize": True, "margin": 0.2}
    results = {"strategies": {"x": {"aggregate": agg, "family": "peer", "setting": setting}}}
    lines = report.quality_table(results).splitlines()
    assert lines[0] == (
        "| strategy | family | setting | val MAP@R | MAP@R | R-prec | P@1 | step ms | train s |"
    )
    # 0.3 ± t_{0.975, 1} * std / sqrt(2) = 12.706 * 0.1414 / 1.414 = 1.271 (two seeds)
    assert lines[2] == (
        "| x | peer | lr 1e-3, L2, margin 0.2 |  | 0.300 ± 1.271 | 0.300 ± 1.271 | "
        "0.300 ± 1.271 |  | 1.5 ± 0.0 |"
    )


def test_figure_helpers_write_a_png(tmp_path: Path) -> None:
    plt = report.pyplot()
    if plt is None:
        pytest.skip("matplotlib is not installed")
    fig, ax = plt.subplots()
    stat = report.mean_std_series([[0.1, 0.5, 0.7], [0.3, 0.5, 0.9]])
    report.plot_mean_band(ax, [0.0, 1.5, 3.0], stat, color="tab:blue", label="x")
    path = report.save_figure(fig, tmp_path / "sub" / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_new_result_and_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    result = common.new_result("demo", config={"a": 1}, results=[])
    assert list(result) == ["benchmark", "machine", "config", "results"]
    assert result["benchmark"] == "demo" and "torch" in result["machine"]
    with common.progress(range(3), disable=True) as bar:
        assert list(bar) == [0, 1, 2]
    bar = common.progress(total=2, disable=True)
    bar.update()
    bar.set_postfix_str("step")
    bar.write("a line above the bar")
    bar.close()
    assert "a line above the bar" in capsys.readouterr().out


def test_timing_policy_and_time_method() -> None:
    policy = measure.TimingPolicy(target_s=1.0, min_repeats=2, max_repeats=5, budget_s=10.0)
    assert policy.repeats(0.001) == 5  # capped by max_repeats
    assert policy.repeats(0.9) == 2  # raised to min_repeats
    assert measure.TimingPolicy(budget_s=0.5, min_repeats=1).repeats(0.2) == 2  # budget
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.arange(8) // 2

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * a).sum()

    out = measure.time_method(f, x, y, "cpu", policy)
    assert out["repeats"] == len(out["times_s"]) == len(out["cpu_times_s"])
    assert out["over_budget"] is False
    assert out["min_s"] <= out["median_s"]
    assert out["loss"] == pytest.approx(float((x.detach() ** 2).sum()))
    over = measure.time_method(f, x, y, "cpu", measure.TimingPolicy(budget_s=-1.0))
    assert over["over_budget"] is True and over["repeats"] == 1
    warm = measure.prewarm(f, x, y, "cpu")
    assert warm["n"] == 8 and warm["one_off_s"] >= 0


def test_peak_memory_and_thread_count() -> None:
    mem = measure.peak_memory(lambda: torch.ones(2**20).sum(), "cpu")
    assert set(mem) == {"extra_peak_bytes", "baseline_bytes", "peak_bytes", "how"}
    assert mem["extra_peak_bytes"] >= 0
    before = torch.get_num_threads()
    with measure.thread_count(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_registries() -> None:
    methods, missing = registry.build_methods(peers=False, backends=("torch",))
    assert missing == []
    assert [m.name for m in methods] == ["cdist"] + [
        f"{s}[torch]" for s in registry.SPEED_STRATEGIES
    ]
    assert {m.family for m in methods} == {"baseline", "tripletkit"}
    assert list(strategies.STRATEGIES)[:2] == ["batch_all_nonzero", "batch_all_mean"]
    assert {s.family for s in strategies.STRATEGIES.values()} == {"tripletkit", "peer"}
    assert all(s.requires is not None for s in strategies.STRATEGIES.values() if s.family == "peer")
    dw = strategies.STRATEGIES["distance_weighted"]
    criterion = dw.build(dw.default_setting(), 0)
    assert len(list(criterion.parameters())) == 1  # the margin loss's beta
    assert registry.installed("torch") and not registry.installed("no_such_module_xyz")
