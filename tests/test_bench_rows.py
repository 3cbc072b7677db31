"""The quality benchmark's newer rows (issues 20 and 22): the neighbour-sampler rows
(``neighbour_batch_hard``, ``neighbour_semi_hard``) and the smooth-margin row
(``batch_hard_smooth``): their declared search, the protocol's plan, a few training steps of
each on tiny data, and the refresh time counted as training time (with a fake clock: no
timing is asserted)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from benchmarks import data, protocol, strategies, training
from tripletkit.samplers import NeighbourPKBatchSampler

NEIGHBOUR_ROWS = ("neighbour_batch_hard", "neighbour_semi_hard")
NEW_ROWS = ("batch_hard_smooth", *NEIGHBOUR_ROWS)
BASE_CHOICE = {"lr": 1e-3, "normalize": True, "margin": 0.2}


@pytest.fixture(scope="module")
def tiny_task() -> Any:
    return data.load_omniglot(max_train_classes=20).task("final", 4, 4)


# --------------------------------------------------------------------------------------
# The declared rows and their search
# --------------------------------------------------------------------------------------


def test_new_rows_are_declared_with_their_bases() -> None:
    rows = strategies.STRATEGIES
    assert all(name in rows for name in NEW_ROWS)
    smooth = rows["batch_hard_smooth"]
    assert smooth.tuned and smooth.family == "tripletkit"
    assert smooth.grid() == rows["batch_hard"].grid()  # the same search as batch-hard
    assert len(smooth.settings()) == strategies.ROW_BUDGET
    for name, base in zip(NEIGHBOUR_ROWS, ("batch_hard", "semi_hard"), strict=True):
        row = rows[name]
        assert row.base == base and not row.tuned and row.training.kind == "neighbour"
        assert row.build is rows[base].build
        assert strategies.missing_requirement(row) is None


def test_neighbour_rows_search_the_refresh_period_with_the_learning_rate() -> None:
    row = strategies.STRATEGIES["neighbour_semi_hard"]
    settings = row.settings_from(BASE_CHOICE)
    assert len(settings) == len(strategies.LRS) * len(strategies.NEIGHBOUR_REFRESH) == 9
    assert len(strategies.NEIGHBOUR_REFRESH) == 3
    assert {s["refresh_every"] for s in settings} == set(strategies.NEIGHBOUR_REFRESH)
    assert {s["lr"] for s in settings} == set(strategies.LRS)
    assert all(
        {k: s[k] for k in ("normalize", "margin")} == {"normalize": True, "margin": 0.2}
        for s in settings
    )  # the base's choice is kept
    assert len({strategies.setting_key(s) for s in settings}) == 9
    assert row.settings_from(BASE_CHOICE, "tiny") == settings[:2]
    # Edges extend like any other hyper-parameter: one step outwards, by the grid's ratio.
    low, mid, high = strategies.NEIGHBOUR_REFRESH
    edges = strategies.extension(settings, {**BASE_CHOICE, "lr": 3e-3, "refresh_every": low})
    assert edges == {"refresh_every": {"from": low, "edge": "low", "to": low * low / mid}}
    edges = strategies.extension(settings, {**BASE_CHOICE, "lr": 3e-3, "refresh_every": high})
    assert edges["refresh_every"]["to"] == high * high / mid
    assert strategies.extension(settings, {**BASE_CHOICE, "lr": 3e-3, "refresh_every": mid}) == {}
    # The search estimate counts the nine configurations of each neighbour row.
    est = protocol.search_estimate([row], 10, {}, 0.01, 0.0, 1, extensions=0)
    assert est["configurations"] == 9


def test_the_plan_searches_the_bases_first() -> None:
    plan = [s.name for s in protocol.tuning_plan([*NEIGHBOUR_ROWS, "batch_hard_smooth"])]
    assert plan == ["batch_hard", "semi_hard", "batch_hard_smooth", *NEIGHBOUR_ROWS]


def test_run_tuning_searches_a_neighbour_row_from_its_base(tmp_path: Any) -> None:
    """The protocol's search over a neighbour row: the base first, then the learning rate x
    refresh period from the base's choice, then an extension at an edge (a fake trainer)."""
    calls: list[tuple[str, dict]] = []

    def train(strategy: Any, setting: dict, seed: int) -> dict:
        calls.append((strategy.name, dict(setting)))
        score = 0.5 + (0.1 if setting.get("refresh_every") == 400 else 0.0)
        return {
            "validation": {"mean_average_precision_at_r": score},
            "curve": {"step": [0], "train_s": [0.0], "mean_average_precision_at_r": [score]},
            "train_s": 0.0,
        }

    ds = data.load_omniglot(max_train_classes=20)
    cfg = protocol.TuneConfig(steps=1, p=4, k=4, checkpoints=2, grid="full")
    state = protocol.run_tuning(
        ["neighbour_batch_hard"], ds, cfg, tmp_path / "t.json", train, _new_result, log=str
    )
    entry = state["strategies"]["neighbour_batch_hard"]
    assert entry["configurations"] == 9
    assert entry["chosen"]["refresh_every"] == 400
    assert entry["extension"]["edges"]["refresh_every"]["to"] == 800
    row_calls = [s for n, s in calls if n == "neighbour_batch_hard"]
    assert len(row_calls) == 9 + 2  # the grid, then one step outwards for lr and for R
    assert any(s["refresh_every"] == 800 for s in row_calls)


def _new_result(benchmark: str, **fields: Any) -> dict:
    return {"benchmark": benchmark, **fields}


def test_the_smooth_row_is_the_smooth_hinge_of_batch_hard() -> None:
    """Against explicit loops: mean over anchors of softplus(max d_ap - min d_an + m)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    margin = 0.2
    criterion = strategies.STRATEGIES["batch_hard_smooth"].build({"margin": margin}, 0)
    terms = []
    for a in range(12):
        dists = [float(torch.linalg.vector_norm(emb[a] - emb[j])) for j in range(12)]
        pos = [dists[j] for j in range(12) if j != a and labels[j] == labels[a]]
        neg = [dists[j] for j in range(12) if labels[j] != labels[a]]
        terms.append(math.log1p(math.exp(max(pos) - min(neg) + margin)))
    assert float(criterion(emb, labels)) == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    hinge = strategies.STRATEGIES["batch_hard"].build({"margin": margin}, 0)
    assert float(hinge(emb, labels)) != pytest.approx(float(criterion(emb, labels)))


# --------------------------------------------------------------------------------------
# A few training steps of each new row
# --------------------------------------------------------------------------------------


def test_each_new_row_trains_a_few_steps(tiny_task: Any) -> None:
    """Two optimiser steps of each new row (the whole run, with its evaluations, is in
    :func:`test_refresh_time_is_counted_in_the_training_time`)."""
    plan = training.RunPlan(steps=2, p=4, k=4, checkpoints=2)
    for name in NEW_ROWS:
        row = strategies.STRATEGIES[name]
        setting = {**BASE_CHOICE, "refresh_every": 1} if row.base else row.default_setting()
        run = training.setup_run(row, setting, 0, tiny_task, plan)
        before = [p.detach().clone() for p in run.model.parameters()]
        with training.deterministic():
            for _ in range(2):
                idx = next(run.batches)
                loss = run.step(tiny_task.train_x[idx], tiny_task.train_y[idx])
                assert torch.isfinite(loss), name
        after = list(run.model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), name


def test_the_neighbour_sampler_is_refreshed_every_period(tiny_task: Any) -> None:
    row = strategies.STRATEGIES["neighbour_batch_hard"]
    plan = training.RunPlan(steps=4, p=4, k=4, checkpoints=2)
    run = training.setup_run(row, {**BASE_CHOICE, "refresh_every": 2}, 0, tiny_task, plan)
    assert isinstance(run.sampler, NeighbourPKBatchSampler) and run.refresh_every == 2
    assert run.sampler.num_refreshes == 0
    for step in range(1, 5):
        idx = next(run.batches)
        run.step(tiny_task.train_x[idx], tiny_task.train_y[idx])
        assert run.sampler.num_refreshes == step // 2
    negatives = run.sampler.negatives
    assert negatives is not None and negatives.shape[0] == len(tiny_task.train_y)
    labels = tiny_task.train_y
    assert bool((labels[negatives[:, 0]] != labels).all())  # other-class neighbours
    assert run.model.training  # the refresh leaves the network in training mode
    # No saved search: the row's default period.
    default = training.setup_run(row, BASE_CHOICE, 0, tiny_task, plan)
    assert default.refresh_every == row.training.refresh_steps == 200


class _FakeClock:
    """``perf_counter`` that advances by a microsecond per call, and by ``jump`` seconds
    whenever the sampler refreshes."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-6
        return self.now


JUMP = 1000.0


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> _FakeClock:
    clock = _FakeClock()
    monkeypatch.setattr(training, "time", clock)
    refresh = NeighbourPKBatchSampler.refresh

    def slow_refresh(self: NeighbourPKBatchSampler, *args: Any, **kwargs: Any) -> None:
        refresh(self, *args, **kwargs)
        clock.now += JUMP

    monkeypatch.setattr(NeighbourPKBatchSampler, "refresh", slow_refresh)
    return clock


def test_refresh_time_is_counted_in_the_training_time(tiny_task: Any, fake_clock: Any) -> None:
    row = strategies.STRATEGIES["neighbour_semi_hard"]
    plan = training.RunPlan(steps=2, p=4, k=4, checkpoints=2)
    run = training.train_run(row, {**BASE_CHOICE, "refresh_every": 1}, 0, tiny_task, plan)
    # Refreshes after steps 1 and 2: two jumps in train_s, none in the evaluations.
    assert 2 * JUMP <= run["train_s"] < 2 * JUMP + 1.0
    assert run["eval_s"] < 1.0
    assert run["curve"]["train_s"][-1] == run["train_s"]
    plain = strategies.STRATEGIES["semi_hard"]
    other = training.train_run(plain, BASE_CHOICE, 0, tiny_task, plan)
    assert other["train_s"] < 1.0  # the fake clock adds nothing without refreshes


def test_calibration_amortises_the_refresh(tiny_task: Any, fake_clock: Any) -> None:
    row = strategies.STRATEGIES["neighbour_batch_hard"]
    plan = training.RunPlan(steps=10, p=4, k=4, checkpoints=2)
    setting = {**BASE_CHOICE, "refresh_every": 4}
    cal = training.calibrate(row, setting, tiny_task, plan, repeats=3)  # 4 steps, 1 refresh
    assert cal["refresh_every"] == 4
    assert JUMP <= cal["refresh_s"] < JUMP + 1.0  # timed once, outside the timed steps
    assert all(t < 1.0 for t in cal["step_s_without_refresh"])
    assert cal["median_s"] == pytest.approx(JUMP / 4, abs=0.5)
    assert len(cal["step_s"]) == 3
