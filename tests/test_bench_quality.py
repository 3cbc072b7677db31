"""Smoke and unit tests of the quality benchmark (:mod:`benchmarks.quality` and the modules it
runs on: :mod:`benchmarks.protocol`, :mod:`benchmarks.data`, :mod:`benchmarks.training`,
:mod:`benchmarks.strategies`).

They check the structure of what the benchmark writes and the protocol's rules (splits,
search, choices), never its timings or how good the numbers are. The ``--quick`` run covers
the search on a tiny grid (into a temporary folder), a peer row when pytorch-metric-learning
is installed, both cross-batch-memory rows, the large-batch row (``tripletkit.gradcache``)
and the hard-class sampler row.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` lives at the repository root, not in src/
    sys.path.insert(0, str(ROOT))

quality = importlib.import_module("benchmarks.quality")
protocol = importlib.import_module("benchmarks.protocol")
data = importlib.import_module("benchmarks.data")
training = importlib.import_module("benchmarks.training")
strategies = importlib.import_module("benchmarks.strategies")
report = importlib.import_module("benchmarks.report")

METRIC_KEYS = ("mean_average_precision_at_r", "r_precision", "precision_at_1")
HAS_PML = strategies.available(strategies.PML)


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("quality")
    tuning = quality.main(["--quick", "--tune", "--out", str(out)])
    results = quality.main(["--quick", "--out", str(out)])
    return tuning, results, out


def _in_unit_interval(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


# --------------------------------------------------------------------------------------
# The --quick run
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_search_is_saved_and_complete(quick_run: tuple) -> None:
    tuning, _, out = quick_run
    path = out / "quality_tuning_quick.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(tuning))
    split = tuning["protocol"]["split"]
    assert split["validation_classes"] and split["validation_alphabets"]
    assert tuning["protocol"]["search"]["grid"] == "tiny"
    assert tuning["protocol"]["version"] == protocol.PROTOCOL_VERSION
    expected = {"batch_hard", "large_batch_batch_hard"} | ({"pml_batch_hard"} if HAS_PML else set())
    assert set(tuning["strategies"]) == expected
    for entry in tuning["strategies"].values():
        plain = [r for r in entry["results"] if "extension" not in r]
        assert len(plain) == entry["configurations"] == 2
        assert entry["budget_steps"] == 2 * tuning["protocol"]["search"]["steps"]
        scores = [r["val_map_at_r"] for r in entry["results"]]
        assert all(_in_unit_interval(s) for s in scores)
        assert entry["chosen_val_map_at_r"] == max(scores)
        assert entry["chosen"] in [r["setting"] for r in entry["results"]]
        # two values of one hyper-parameter: the choice is at an edge, one step recorded
        edges = entry["extension"]["edges"]
        assert edges and all(e["edge"] in ("low", "high") for e in edges.values())
        extended = [r for r in entry["results"] if "extension" in r]
        assert len(extended) == sum(e["to"] is not None for e in edges.values())
    addon = tuning["strategies"]["large_batch_batch_hard"]
    base_choice = tuning["strategies"]["batch_hard"]["chosen"]
    assert addon["from_base"] == {**base_choice, "lr": None}
    assert {r["setting"]["margin"] for r in addon["results"]} == {base_choice["margin"]}


@pytest.mark.slow
def test_quick_run_writes_json_and_plots(quick_run: tuple) -> None:
    _, results, out = quick_run
    json_path = out / "quality_quick.json"
    assert json_path.is_file()
    assert not (out / "quality.json").exists()  # --quick never overwrites the default run
    for suffix in ("map_at_r", "time", "final", "difficulty", "sensitivity"):
        png = out / f"quality_quick_{suffix}.png"
        assert png.is_file() and png.stat().st_size > 1000, png
    assert results["outputs"]["json"] == str(json_path)
    saved = json.loads(json_path.read_text())
    for key in (
        "machine",
        "config",
        "protocol",
        "hyperparameters",
        "plan",
        "skipped",
        "strategies",
        "sensitivity",
        "comparison",
        "comparisons",
        "test_evaluation",
        "ranking",
        "wall_s",
    ):
        assert key in saved, key
    assert saved["protocol"]["version"] == protocol.PROTOCOL_VERSION
    assert (out / "quality_quick_models.pt").is_file()
    assert saved["config"]["quick"] is True
    assert saved["machine"]["load_average"] is None or len(saved["machine"]["load_average"]) == 3
    ran = set(saved["strategies"]) | set(saved["skipped"])
    assert ran == set(quality.QUICK_ROWS)
    assert "large_batch_batch_hard" in saved["strategies"]
    assert "xbm_semi_hard" in saved["strategies"]
    if HAS_PML:
        assert {"pml_batch_hard", "pml_xbm_multi_similarity"} <= set(saved["strategies"])
        assert saved["comparison"]["tripletkit"]["name"] in saved["strategies"]
        assert saved["comparison"]["peer"]["name"] in saved["strategies"]
        assert saved["strategies"][saved["comparison"]["peer"]["name"]]["family"] == "peer"
    else:
        assert "pytorch-metric-learning" in saved["skipped"]["pml_batch_hard"]


@pytest.mark.slow
def test_quick_run_holds_what_the_issue_asks_for(quick_run: tuple) -> None:
    _, _, out = quick_run
    saved = json.loads((out / "quality_quick.json").read_text())
    split = saved["protocol"]["split"]
    background = set(split["train_part_classes"]) | set(split["validation_classes"])
    assert set(split["validation_classes"]) <= background
    assert not set(split["validation_classes"]) & set(split["train_part_classes"])
    assert not background & set(split["evaluation_classes"])
    for name, entry in saved["strategies"].items():
        assert entry["setting"] and entry["setting_source"], name
        search = entry["search"]
        if entry["setting_source"] != "default (no saved search)":
            assert search["chosen"] == entry["setting"], name
            assert all(_in_unit_interval(s["val_map_at_r"]) for s in search["settings"])
        assert [r["seed"] for r in entry["runs"]] == saved["config"]["seeds"]
        for run in entry["runs"]:
            for key in METRIC_KEYS:
                assert _in_unit_interval(run["final"][key]), (name, key)
            times = run["curve"]["train_s"]
            assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:], strict=False))
            assert run["train_s"] >= times[-1] > 0
        agg = entry["aggregate"]
        assert len(agg["curves"]["train_s"]["mean"]) == len(agg["curves"]["step"])
    assert saved["strategies"]["batch_hard"]["setting_source"] == "searched"
    large = saved["strategies"]["large_batch_batch_hard"]
    assert large["setting_source"] == "searched"  # an add-on row has a search of its own
    assert "batch_hard" in saved["sensitivity"]
    for name, entry in saved["strategies"].items():
        cal = entry["calibration"]
        assert len(cal["step_s"]) == cal["repeats"] > 0, name
        assert cal["min_s"] <= cal["q1_s"] <= cal["median_s"] <= cal["q3_s"] <= cal["max_s"]
        for stat in entry["aggregate"]["final"].values():
            assert stat["level"] == 0.95 and stat["low"] <= stat["mean"] <= stat["high"]
        assert "validation" in entry["aggregate"]
    for item in saved["comparisons"]["items"]:
        assert item["p_holm"] is None or item["p_holm"] >= item["p"]
    assert saved["ranking"]["criterion"] == "strict"
    assert {"strict", "lenient", "stable"} <= set(saved["ranking"])


@pytest.mark.slow
def test_quick_run_curves_are_finite_and_in_range(quick_run: tuple) -> None:
    _, results, _ = quick_run
    for name, entry in results["strategies"].items():
        for run in entry["runs"]:
            curve = run["curve"]
            n = len(curve["step"])
            for key in (*METRIC_KEYS, "easy", "semi_hard", "hard"):
                assert len(curve[key]) == n, (name, key)
                assert all(_in_unit_interval(v) for v in curve[key]), (name, key)
            for e, s, h in zip(curve["easy"], curve["semi_hard"], curve["hard"], strict=True):
                assert math.isclose(e + s + h, 1.0, abs_tol=1e-9), name
            assert all(math.isfinite(v) for v in run["loss"])
    large = results["strategies"]["large_batch_batch_hard"]["runs"][0]
    plain = results["strategies"]["batch_hard"]["runs"][0]
    assert large["curve"]["images"][-1] == plain["curve"]["images"][-1]  # same images
    assert large["batch_size"] == strategies.LARGE_BATCH_FACTOR * plain["batch_size"]


@pytest.mark.slow
def test_markdown_tables(quick_run: tuple) -> None:
    _, results, _ = quick_run
    lines = quality.markdown_table(results).splitlines()
    assert lines[0] == (
        "| strategy | family | setting | val MAP@R | MAP@R | R-prec | P@1 | step ms | train s |"
    )
    assert len(lines) == 2 + len(results["strategies"])
    sens = report.sensitivity_table(results["sensitivity"]).splitlines()
    assert sens[0].startswith("| strategy | variants (in order) | lr 0.001 |")
    assert "±" in lines[2]  # two seeds: an interval
    assert any("**" in line for line in sens[2:])  # the chosen setting is marked


# --------------------------------------------------------------------------------------
# --data
# --------------------------------------------------------------------------------------


def _blobs(classes: int, per_class: int, shape: tuple[int, ...], seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, *shape)).astype(np.float32)
    y = np.repeat(np.arange(classes) * 3 + 7, per_class)  # non-contiguous ids
    x = centres[(y - 7) // 3] + 0.3 * rng.normal(size=(len(y), *shape)).astype(np.float32)
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "net"), [((12,), "MLP"), ((10, 10), "conv3x3"), ((2, 8, 8), "conv3x3")]
)
def test_data_runs_the_protocol_on_a_user_file(
    tmp_path: Path, shape: tuple[int, ...], net: str
) -> None:
    x, y = _blobs(26, 4, shape)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, y=y)
    argv = ["--data", str(path), "--quick", "--seeds", "1", "--out", str(tmp_path)]
    results = quality.main(argv)
    assert (tmp_path / "quality_data_blobs_quick.json").is_file()
    assert (tmp_path / "quality_tuning_data_blobs_quick.json").is_file()
    assert net in results["hyperparameters"]["network"]
    counts = results["protocol"]["split"]["counts"]
    assert counts == {"train_part": 16, "validation": 5, "evaluation": 5}
    assert "batch_hard" in results["strategies"]
    ids = set(results["protocol"]["split"]["validation_classes"])
    assert ids <= set(y.tolist())
    run = results["strategies"]["batch_hard"]["runs"][0]
    assert _in_unit_interval(run["final"]["mean_average_precision_at_r"])


def _save(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 3))}, "no array named 'x' or 'y'"),
        ({"x": np.zeros((4, 3))}, "no array named 'y'"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(5, dtype=int)}, "x has 4 samples but y has 5"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "labels y must be integers"),
        ({"x": np.zeros(4), "y": np.zeros(4, dtype=int)}, "expected vectors [N, D]"),
        ({"x": np.zeros((4, 3)), "y": np.zeros((4, 1), dtype=int)}, "one label per sample"),
        ({"x": np.array([["a"]] * 4), "y": np.zeros(4, dtype=int)}, "x must hold numbers"),
        (
            {"x": np.full((50, 3), np.nan), "y": np.repeat(np.arange(25), 2)},
            "NaN or infinite",
        ),
        (
            {"x": np.zeros((40, 3)), "y": np.repeat(np.arange(20), 2)},
            "20 classes; the protocol splits the classes 60/20/20",
        ),
        (
            {"x": np.zeros((51, 3)), "y": np.append(np.repeat(np.arange(25), 2), 99)},
            "1 classes have fewer than 2 samples (class ids 99)",
        ),
    ],
)
def test_data_refuses_bad_files(tmp_path: Path, arrays: dict, message: str) -> None:
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="--data .*bad.npz") as info:
        data.load_npz(path)
    assert message in str(info.value)


def test_data_refuses_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        data.load_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        data.load_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a single array, not an .npz archive"):
        data.load_npz(tmp_path / "single.npy")


def test_data_images_layouts_and_scaling(tmp_path: Path) -> None:
    y = np.repeat(np.arange(25), 2)
    hwc = np.full((50, 6, 6, 3), 255, dtype=np.uint8)
    ds = data.load_npz(_save(tmp_path / "hwc.npz", x=hwc, y=y))
    assert ds.input_shape == (3, 6, 6) and float(ds.x.max()) == 1.0
    vec = np.arange(100, dtype=np.float64).reshape(50, 2)
    ds = data.load_npz(_save(tmp_path / "vec.npz", x=vec, y=y))
    train = ds.rows(ds.split.train)
    assert torch.allclose(ds.x[train].mean(0), torch.zeros(2), atol=1e-5)


# --------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------


def test_omniglot_split_is_disjoint_deterministic_and_recorded() -> None:
    alphabets = [a for a in "ABCDEFGHIJ" for _ in range(10)]
    characters = [f"c{i}" for i in range(100)]
    evaluation = np.arange(100, 130)
    split = protocol.omniglot_split(alphabets, characters, evaluation)
    again = protocol.omniglot_split(alphabets, characters, evaluation)
    assert np.array_equal(split.validation, again.validation)
    assert len(split.validation) >= 20  # at least 20% of the training classes
    assert set(split.validation) | set(split.train) == set(range(100))
    assert not set(split.validation) & set(split.train)
    val_alphabets = {alphabets[c] for c in split.validation}
    assert not val_alphabets & {alphabets[c] for c in split.train}  # whole alphabets
    saved = split.as_json()
    assert sorted(saved["validation_alphabets"]) == sorted(val_alphabets)
    assert saved["validation_classes"] == [int(c) for c in split.validation]
    other = protocol.omniglot_split(alphabets, characters, evaluation, seed=5)
    assert not np.array_equal(split.validation, other.validation)


def test_omniglot_dataset_split_uses_background_ids() -> None:
    ds = data.load_omniglot(max_train_classes=60)
    split = ds.split
    assert set(split.validation) <= set(range(60))
    assert min(split.evaluation) == data.OMNIGLOT_EVAL_OFFSET
    tune = ds.task("tune")
    assert set(tune.eval_y.tolist()) == set(split.validation.tolist())
    assert set(tune.train_y.tolist()) == set(split.train.tolist())
    final = ds.task("final", subset_classes=7, final_classes=30)
    assert set(final.train_y.tolist()) == set(split.train.tolist())  # training part only
    assert set(final.eval_y.tolist()) == set(split.validation.tolist())
    assert final.eval_classes(final=False) == 7
    test_x, test_y = final.test()
    assert final.test_classes == 30 and len(set(test_y.tolist())) == 30
    assert set(test_y.tolist()) <= set(split.evaluation.tolist())
    with pytest.raises(RuntimeError, match="never reads the evaluation classes"):
        tune.test()


def test_user_split_fractions_and_overlap_check() -> None:
    classes = np.arange(10, 60)
    split = protocol.user_split(classes)
    assert (len(split.train), len(split.validation), len(split.evaluation)) == (30, 10, 10)
    assert np.array_equal(protocol.user_split(classes[::-1]).validation, split.validation)
    with pytest.raises(ValueError, match="overlap"):
        protocol.ClassSplit(np.arange(3), np.arange(2, 4), np.arange(5, 6), "x", {})


def test_search_spaces_are_declared_and_equal() -> None:
    tuned = [s for s in strategies.STRATEGIES.values() if s.tuned]
    for s in tuned:
        settings, grid = s.settings(), s.grid()
        assert len(settings) == min(strategies.ROW_BUDGET, len(grid)), s.name
        assert {x["lr"] for x in settings} == set(strategies.LRS) == {1e-3, 3e-3, 1e-2}
        assert len({strategies.setting_key(x) for x in settings}) == len(settings)
        for key in {k for x in grid for k in x}:  # every value of every hyper-parameter
            assert {x[key] for x in settings} == {x[key] for x in grid}, (s.name, key)
            values = {x[key] for x in grid}
            if not isinstance(next(iter(values)), bool):
                assert len(values) >= 3, (s.name, key)
    margin_rows = ("batch_all_nonzero", "batch_hard", "semi_hard", "random", "pml_semihard")
    for name in margin_rows:
        normalize = {x["normalize"] for x in strategies.STRATEGIES[name].settings()}
        assert normalize == {True, False}, name
    contrastive = strategies.STRATEGIES["contrastive"].grid()
    assert {x["pos_margin"] for x in contrastive} >= {0.0, 0.1, 0.2}
    dw = strategies.STRATEGIES["distance_weighted"].settings()
    assert {x["normalize"] for x in dw} == {True}
    for name in ("pml_semihard", "pml_batch_hard"):  # the same grid as tripletkit's rows
        assert (
            strategies.STRATEGIES[name].settings() == strategies.STRATEGIES["semi_hard"].settings()
        )
    ms, pml_ms = (strategies.STRATEGIES[n] for n in ("multi_similarity", "pml_multi_similarity"))
    assert ms.settings() == pml_ms.settings()  # the same budget subset
    plan = protocol.tuning_plan(["xbm_semi_hard", "semi_hard", "hard_class_batch_hard"])
    assert [s.name for s in plan] == [
        "semi_hard",
        "batch_hard",
        "xbm_semi_hard",
        "hard_class_batch_hard",
    ]
    addon = strategies.STRATEGIES["xbm_semi_hard"]
    chosen = {"lr": 1e-3, "normalize": True, "margin": 0.1}
    assert addon.settings_from(chosen) == [{**chosen, "lr": lr} for lr in strategies.LRS]


def test_choice_for_inherits_and_falls_back() -> None:
    rows = strategies.STRATEGIES
    tuning = {
        "strategies": {
            "semi_hard": {
                "chosen": {"lr": 0.001, "normalize": False, "margin": 1.0},
                "results": [{}] * 8,
                "configurations": 8,
            }
        }
    }
    setting, source = protocol.choice_for(rows["xbm_semi_hard"], tuning)
    assert setting["margin"] == 1.0 and source == "from semi_hard's search"
    assert protocol.choice_for(rows["semi_hard"], tuning)[1] == "searched"
    setting, source = protocol.choice_for(rows["batch_hard"], tuning)
    assert source == "default (no saved search)"
    assert setting == rows["batch_hard"].default_setting()


def test_run_tuning_resumes_chooses_the_best_and_extends_an_edge(tmp_path: Path) -> None:
    ds = data.load_omniglot(max_train_classes=40)
    cfg = protocol.TuneConfig(steps=1, p=4, k=2, checkpoints=2, grid="tiny")
    calls: list[str] = []
    scores = {0.05: 0.25, 0.1: 0.5, 0.15: 0.4}

    def train(strategy: Any, setting: dict, seed: int) -> dict[str, Any]:
        calls.append(strategies.setting_key(setting))
        score = scores[setting["margin"]]
        curve = {"step": [0, 1], "train_s": [0.0, 1.0], "mean_average_precision_at_r": [0, score]}
        return {
            "validation": {"mean_average_precision_at_r": score},
            "curve": curve,
            "train_s": 1.0,
        }

    path = tmp_path / "t.json"
    from benchmarks.common import new_result

    state = protocol.run_tuning(["batch_hard"], ds, cfg, path, train, new_result, log=str)
    entry = state["strategies"]["batch_hard"]
    # tiny grid: margins 0.05 and 0.1; 0.1 wins at the high edge -> one step to 0.15
    assert len(calls) == 3 and entry["chosen"]["margin"] == 0.1
    assert entry["extension"]["edges"]["margin"] == {"from": 0.1, "edge": "high", "to": 0.15}
    assert entry["extension"]["still_at_edge"] == []
    assert entry["results"][-1]["extension"] == "extension of margin"
    found: list[int] = []
    protocol.run_tuning(
        ["batch_hard"], ds, cfg, path, train, new_result, log=str, resumed=found.append
    )
    assert len(calls) == 3 and found == [3]  # nothing left to do: resumed from the file
    state = protocol.run_tuning(
        ["batch_hard"],
        ds,
        replace(cfg, steps=2),
        path,
        train,
        new_result,
        log=str,
        resumed=found.append,
    )
    assert len(calls) == 6 and found == [3, 0]  # another budget: searched afresh
    assert state["protocol"]["search"]["steps"] == 2
    scores[0.15] = 0.9  # the extended value wins: recorded as still at an edge
    state = protocol.run_tuning(
        ["batch_hard"], ds, replace(cfg, steps=3), path, train, new_result, log=str
    )
    entry = state["strategies"]["batch_hard"]
    assert entry["chosen"]["margin"] == 0.15 and entry["extension"]["still_at_edge"] == ["margin"]


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def test_training_is_deterministic_for_a_seed(tiny_task: Any) -> None:
    plan = training.RunPlan(steps=3, p=8, k=4, checkpoints=2)
    for name in ("contrastive", "distance_weighted", "random", "batch_all_nonzero"):
        strategy = strategies.STRATEGIES[name]
        setting = strategy.default_setting()
        first = training.train_run(strategy, setting, 3, tiny_task, plan)
        second = training.train_run(strategy, setting, 3, tiny_task, plan)
        assert first["loss"] == second["loss"], name
        for key in ("mean_average_precision_at_r", "easy", "valid"):
            assert first["curve"][key] == second["curve"][key], name
        assert first["validation"] == second["validation"], name
        assert first["final"] is None  # a run never reads the test classes
    dw_row = strategies.STRATEGIES["distance_weighted"]
    dw = training.train_run(dw_row, dw_row.default_setting(), 0, tiny_task, plan)
    assert "beta_final" in dw


def test_time_cap_stops_the_run_and_evaluates_there(tiny_task: Any) -> None:
    row = strategies.STRATEGIES["batch_hard"]
    capped = replace(row, training=strategies.Training(time_cap_factor=1e-9))
    plan = training.RunPlan(steps=6, p=4, k=4, checkpoints=3, step_s=1.0)
    run = training.train_run(capped, row.default_setting(), 0, tiny_task, plan)
    assert run["capped"] and run["steps"] == 1 and run["planned_steps"] == 6
    assert run["curve"]["step"] == [0, 1] and run["validation"] is not None


def test_memory_criteria_use_the_memory_after_the_warm_up() -> None:
    base = strategies.STRATEGIES["semi_hard"].build({"margin": 0.2}, 0)
    criterion = strategies.MemoryCriterion(base, size=64, dim=4)
    criterion.warmup_steps = 2
    labels = torch.arange(4).repeat_interleave(2)
    emb = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator()), dim=1)
    losses = [float(criterion(emb, labels)) for _ in range(3)]
    assert len(criterion.memory) == 24
    assert losses[0] == losses[1] == pytest.approx(float(base(emb, labels)))
    assert losses[2] != losses[1]  # the memory term joins


@pytest.mark.skipif(not HAS_PML, reason="pytorch-metric-learning is not installed")
def test_peer_memory_criterion_warms_up_on_the_plain_recipe() -> None:
    plain = strategies.STRATEGIES["pml_semihard"].build({"margin": 0.2, "normalize": True}, 0)
    criterion = strategies.PeerMemoryCriterion(plain.miner, plain.loss, size=32, dim=4)
    criterion.warmup_steps = 1
    labels = torch.arange(4).repeat_interleave(2)
    emb = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    assert float(criterion(emb, labels)) == pytest.approx(float(plain(emb, labels)))
    assert criterion.xbm.queue_idx == 8
    criterion(emb, labels)
    assert criterion.xbm.queue_idx == 16


# --------------------------------------------------------------------------------------
# Reporting helpers and the CLI
# --------------------------------------------------------------------------------------


def _fake_run(seed: int, times: list[float], maps: list[float], final: float) -> dict:
    curve = {
        "step": list(range(len(times))),
        "images": [128 * i for i in range(len(times))],
        "train_s": times,
        "mean_average_precision_at_r": maps,
        "r_precision": maps,
        "precision_at_1": maps,
        "easy": maps,
        "semi_hard": maps,
        "hard": maps,
    }
    metrics = {k: final for k in METRIC_KEYS}
    metrics["recall_at_k"] = {"1": final}
    return {
        "seed": seed,
        "setting": {"lr": 1e-3},
        "curve": curve,
        "validation": {**metrics, "mean_average_precision_at_r": maps[-1]},
        "final": metrics,
        "train_s": times[-1],
        "wall_s": times[-1] + 1,
        "steps": len(times) - 1,
        "planned_steps": len(times) - 1,
        "capped": False,
    }


def _entry(family: str, runs: list[dict], step_s: float = 1.0) -> dict[str, Any]:
    return {
        "family": family,
        "runs": runs,
        "calibration": {"median_s": step_s, "q1_s": step_s, "q3_s": step_s},
        "aggregate": report.aggregate_runs(runs),
    }


def _fake_results() -> dict[str, Any]:
    entries = {}
    for name, family, slope, scale in (
        ("tk", "tripletkit", 0.3, 1.0),
        ("peer", "peer", 0.2, 2.0),
    ):
        runs = [
            _fake_run(
                s,
                [0.0, 10 * scale, 20 * scale],
                [0.1, 0.1 + slope + 0.01 * s, 0.1 + 2 * slope + 0.01 * s],
                0.5 + slope + 0.01 * s,
            )
            for s in range(3)
        ]
        entries[name] = _entry(family, runs, step_s=scale)
    return {"strategies": entries, "config": {"subset_classes": 100}}


def test_compare_at_equal_time_uses_calibrated_time_and_validation_choices() -> None:
    results = _fake_results()
    # A peer row best on the test classes but worst on validation: never the one compared.
    runs = [_fake_run(s, [0.0, 1.0, 2.0], [0.0, 0.0, 0.05], 0.99) for s in range(3)]
    results["strategies"]["peer_test_best"] = _entry("peer", runs)
    comparison = quality.compare_at_equal_time(results)
    assert comparison["peer"]["name"] == "peer"
    # planned: tk 2 steps x 1 s, peer 2 steps x 2 s -> they meet at 2 s (peer's step 1)
    assert comparison["time_s"] == pytest.approx(2.0)
    assert comparison["tripletkit"]["at_time"]["mean"] == pytest.approx(0.71)
    assert comparison["peer"]["at_time"]["mean"] == pytest.approx(0.31)
    diff = comparison["difference"]
    assert diff["mean"] == pytest.approx(0.4) and diff["std"] == pytest.approx(0.0, abs=1e-12)
    assert comparison["separated"] is True and diff["p"] == 0.0
    assert "best tripletkit row by validation tk" in report.comparison_text(comparison)
    alone = _fake_results()
    del alone["strategies"]["peer"]
    assert quality.compare_at_equal_time(alone) is None


def _ranked(last_gaps: list[float], before_gaps: list[float]) -> dict[str, Any]:
    """Rows a and b over three seeds; a minus b at the last two checkpoints per seed."""
    entries = {}
    for name, sign in (("a", 1), ("b", -1)):
        runs = []
        for seed, (g1, g2) in enumerate(zip(before_gaps, last_gaps, strict=True)):
            maps = [0.1, 0.5 + sign * g1 / 2, 0.5 + sign * g2 / 2]
            runs.append(_fake_run(seed, [0.0, 1.0, 2.0], maps, 0.5))
        entries[name] = _entry("tripletkit", runs)
    return {"strategies": entries, "config": {"subset_classes": 100}}


def test_ranking_stability_strict_and_lenient_readings() -> None:
    steady = quality.ranking_stability(_ranked([0.1, 0.12, 0.11], [0.1, 0.12, 0.11]))
    assert steady["flips"] == [] and steady["strict"] and steady["lenient"] and steady["stable"]
    # a was ahead beyond noise, then b is ahead beyond noise: reversed -> both readings fail
    flipped = quality.ranking_stability(_ranked([-0.1, -0.12, -0.11], [0.1, 0.12, 0.11]))
    (flip,) = flipped["flips"]
    assert (flip["up"], flip["down"]) == ("b", "a") and flip["separated"] and flip["reversed"]
    assert flipped["strict"] is False and flipped["lenient"] is False
    # ahead within noise before (the per-seed gaps disagree in sign), separated now:
    # the strict reading fails, the lenient one does not
    noisy = quality.ranking_stability(_ranked([-0.1, -0.12, -0.11], [0.3, -0.2, 0.05]))
    (flip,) = noisy["flips"]
    assert flip["separated"] and not flip["reversed"]
    assert noisy["strict"] is False and noisy["lenient"] is True
    assert noisy["stable"] is noisy[quality.RANKING_CRITERION] is False
    # in words: both readings; every flip for the console, only marked ones for the docs
    text = report.stability_text(noisy)
    assert "strict: False, lenient: True" in text and "b > a (separated)" in text
    quiet = {**flipped, "flips": [{**flip, "separated": False, "reversed": False}]}
    assert "b > a" in report.stability_text(quiet)
    assert "b > a" not in report.stability_text(quiet, every_flip=False)
    assert "REVERSED" in report.stability_text(flipped, every_flip=False)
    assert report.stability_text({"rankings": [], "flips": []}) is None  # no checkpoints
    assert report.stability_text({"rankings": [1], "flips": [], "stable": True}) is None  # 0.2
    runs = [
        _fake_run(0, [0.0, 1.0, 2.0], [0.1, 0.2, 0.3], 0.3),
        _fake_run(1, [0.0, 1.5], [0.1, 0.4], 0.4),
    ]
    assert report.aligned(runs, "mean_average_precision_at_r") == [[0.1, 0.3], [0.1, 0.4]]
    agg = report.aggregate_runs(runs)
    assert agg["curves"]["step"] == [0, 1.5]  # the capped run's last point is its final one


def test_cli_rejects_unknown_strategies_and_bad_seeds() -> None:
    with pytest.raises(SystemExit):
        quality.main(["--quick", "--strategies", "batch_hard,nope"])
    with pytest.raises(SystemExit):
        quality.main(["--quick", "--seeds", "0"])
    with pytest.raises(SystemExit):
        quality.main(["--quick", "--full"])


def test_row_selection_from_the_search() -> None:
    tuning = {
        "strategies": {
            "semi_hard": {"family": "tripletkit", "chosen_val_map_at_r": 0.4, "results": [1]},
            "batch_hard": {"family": "tripletkit", "chosen_val_map_at_r": 0.5, "results": [1]},
            "random": {"family": "tripletkit", "chosen_val_map_at_r": 0.1, "results": [1]},
            "pml_semihard": {"family": "peer", "chosen_val_map_at_r": 0.3, "results": [1]},
        }
    }
    names, skipped = quality.select_rows(quality.DEFAULT_CONFIG, tuning)
    assert quality.DEFAULT_HEADLINE == (1, 1)  # the best of each family
    expected = ["batch_hard"] + (["pml_semihard"] if HAS_PML else [])
    assert names == expected and not skipped
    names, _ = quality.select_rows(quality.DEFAULT_CONFIG, None)
    assert names[:2] == list(quality.FALLBACK_HEADLINE[:2])
    every, left_out = quality.select_rows(quality.FULL_CONFIG, tuning)
    assert set(every) | set(left_out) == set(strategies.STRATEGIES)
    # the opt-in rows: left out of --full with their reason, run when asked for
    assert strategies.OPT_IN_ROWS and set(strategies.OPT_IN_ROWS) <= set(left_out)
    for name, reason in strategies.OPT_IN_ROWS.items():
        assert left_out[name] == reason and "--strategies" in reason
    asked = replace(quality.FULL_CONFIG, strategies=tuple(strategies.OPT_IN_ROWS))
    chosen, _ = quality.select_rows(asked, tuning)
    assert chosen == ([*strategies.OPT_IN_ROWS] if HAS_PML else [])
    tuned = quality._tuning_names(quality.FULL_CONFIG, False)
    assert not set(strategies.OPT_IN_ROWS) & set(tuned)


def test_seeds_and_strategies_parsing() -> None:
    assert quality._parse_seeds("3") == (0, 1, 2)
    assert quality._parse_seeds("4,1") == (4, 1)
    assert quality._parse_strategies("semi_hard, batch_hard") == ("semi_hard", "batch_hard")
    assert quality.DEFAULT_CONFIG.checkpoint_steps()[0] == 0
    assert quality.DEFAULT_CONFIG.checkpoint_steps()[-1] == quality.DEFAULT_CONFIG.steps


@pytest.mark.slow
def test_resume_keeps_saved_rows_and_redo_trains_them_again(tmp_path: Path) -> None:
    args = ["--quick", "--strategies", "batch_hard,random", "--seeds", "1", "--out", str(tmp_path)]
    first = quality.main(args)
    kept = quality.main([*args, "--resume"])
    for name in ("batch_hard", "random"):
        assert kept["strategies"][name]["runs"] == json.loads(
            json.dumps(first["strategies"][name]["runs"])
        )
        assert kept["strategies"][name]["from_earlier_run"] == first["machine"]["timestamp"]
    again = quality.main([*args, "--redo", "random"])
    assert "from_earlier_run" in again["strategies"]["batch_hard"]
    assert "from_earlier_run" not in again["strategies"]["random"]
    other = quality.main([*args, "--resume", "--steps", "4"])  # another budget: all trained
    assert not any("from_earlier_run" in e for e in other["strategies"].values())
