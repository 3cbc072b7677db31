"""Smoke test of the quality benchmark (``python -m benchmarks.quality --quick``).

Checks the structure of what it writes, never its timings or how good the numbers are.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` lives at the repository root, not in src/
    sys.path.insert(0, str(ROOT))

quality = importlib.import_module("benchmarks.quality")

pytestmark = pytest.mark.slow

METRIC_KEYS = ("mean_average_precision_at_r", "r_precision", "precision_at_1")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("quality")
    return quality.main(["--quick", "--out", str(out)]), out


def _in_unit_interval(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_quick_run_writes_json_and_plots(quick_run: tuple[dict[str, Any], Path]) -> None:
    results, out = quick_run
    json_path = out / "quality_quick.json"
    assert json_path.is_file()
    assert not (out / "quality.json").exists()  # --quick never overwrites the full run
    for suffix in ("map_at_r", "final", "difficulty"):
        png = out / f"quality_quick_{suffix}.png"
        assert png.is_file() and png.stat().st_size > 1000, png
    assert results["outputs"]["json"] == str(json_path)
    assert len(results["outputs"]["png"]) == 3

    saved = json.loads(json_path.read_text())
    assert saved["benchmark"] == "quality"
    for key in ("machine", "config", "hyperparameters", "plan", "strategies", "wall_s"):
        assert key in saved, key
    assert saved["config"]["quick"] is True
    assert list(saved["strategies"]) == list(quality.STRATEGIES)  # all 8, in table order
    assert len(saved["strategies"]) == 8


def test_quick_run_metrics_are_finite_and_in_range(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, out = quick_run
    saved = json.loads((out / "quality_quick.json").read_text())
    steps = saved["config"]["steps"]
    checkpoints = quality.QUICK_CONFIG.checkpoint_steps()
    for name, entry in saved["strategies"].items():
        assert entry["miner"] and entry["loss"], name
        runs = entry["runs"]
        assert [r["seed"] for r in runs] == saved["config"]["seeds"]
        for run in runs:
            curve = run["curve"]
            assert curve["step"] == checkpoints
            for key in (*METRIC_KEYS, "easy", "semi_hard", "hard"):
                assert len(curve[key]) == len(checkpoints), (name, key)
                assert all(_in_unit_interval(v) for v in curve[key]), (name, key, curve[key])
            for e, s, h in zip(curve["easy"], curve["semi_hard"], curve["hard"], strict=True):
                assert math.isclose(e + s + h, 1.0, abs_tol=1e-9), name
            assert all(v > 0 for v in curve["valid"])
            assert len(run["loss"]) == steps
            assert all(math.isfinite(v) for v in run["loss"])
            for key in METRIC_KEYS:
                assert _in_unit_interval(run["final"][key]), (name, key)
            assert all(_in_unit_interval(v) for v in run["final"]["recall_at_k"].values())
            assert run["wall_s"] > 0
        agg = entry["aggregate"]
        for key in METRIC_KEYS:
            assert _in_unit_interval(agg["final"][key]["mean"]), (name, key)
            assert math.isfinite(agg["final"][key]["std"]) and agg["final"][key]["std"] >= 0
        assert agg["curves"]["step"] == checkpoints
    assert "beta_final" in saved["strategies"]["distance_weighted"]["runs"][0]


def test_markdown_table_has_one_row_per_strategy(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    results, _ = quick_run
    table = quality.markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| strategy | MAP@R | R-prec | P@1 | wall s |"
    assert len(lines) == 2 + len(quality.STRATEGIES)
    for name, line in zip(quality.STRATEGIES, lines[2:], strict=True):
        assert line.startswith(f"| {name} |")


def test_training_is_deterministic_for_a_seed() -> None:
    # p=8 is enough for the contrastive pairs to take torch's parallel (order-varying)
    # accumulation path when deterministic algorithms are off.
    cfg = replace(
        quality.QUICK_CONFIG,
        steps=3,
        p=8,
        k=4,
        checkpoints=2,
        subset_classes=4,
        final_classes=4,
        train_classes=20,
    )
    data = quality.load_data(cfg)
    for name in ("contrastive", "distance_weighted", "random", "batch_all_nonzero"):
        strategy = quality.STRATEGIES[name]
        first = quality.train_strategy(strategy, 3, cfg, data)
        second = quality.train_strategy(strategy, 3, cfg, data)
        assert first["loss"] == second["loss"], name
        assert first["curve"] == second["curve"], name
        assert first["final"] == second["final"], name


def test_cli_rejects_unknown_strategies_and_bad_seeds() -> None:
    with pytest.raises(SystemExit):
        quality.main(["--quick", "--strategies", "batch_hard,nope"])
    with pytest.raises(SystemExit):
        quality.main(["--quick", "--seeds", "0"])


def test_seeds_and_strategies_parsing() -> None:
    assert quality._parse_seeds("3") == (0, 1, 2)
    assert quality._parse_seeds("4,1") == (4, 1)
    assert quality._parse_strategies("semi_hard, batch_hard") == ("semi_hard", "batch_hard")
    assert quality.DEFAULT_CONFIG.checkpoint_steps()[0] == 0
    assert quality.DEFAULT_CONFIG.checkpoint_steps()[-1] == quality.DEFAULT_CONFIG.steps
