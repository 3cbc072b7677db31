"""The quality benchmark's protocol held to a reviewer's standard (issue 22): no test class is
read before the final evaluation, same seed = same start, the statistics (Student's t,
paired tests, Holm), the search's budget subset and edges, the time estimates from the saved
0.2 measurements, and what happens to 0.2's result files.

The access test runs ``--tune``, the default run and ``--full`` on tiny settings with the
Omniglot images held in a tensor subclass that records every read of an evaluation-class
image, in one event log with the benchmark's training steps, calibrations, choices and the
final evaluation.
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
budget = importlib.import_module("benchmarks.budget")

RESULTS = ROOT / "benchmarks" / "results"
HAS_PML = strategies.available(strategies.PML)


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------

# Two-sided 95% Student-t critical values t_{0.975, df} (any printed table).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize(("df", "value"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df: int, value: float) -> None:
    assert report.t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert report.t_quantile(0.025, df) == pytest.approx(-value, abs=5e-4)
    assert report.t_cdf(report.t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_t_cdf_closed_forms_and_scipy() -> None:
    # df = 1 is Cauchy: 1/2 + atan(t)/pi; df = 2: 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-30.0, -2.5, -0.3, 0.0, 0.7, 4.0, 100.0):
        assert report.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert report.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 4, 7, 29, 200):
        for t in np.linspace(-8, 8, 33):
            assert report.t_cdf(float(t), df) == pytest.approx(stats.t.cdf(t, df), abs=1e-11)


def test_paired_t_test_by_hand() -> None:
    a = [0.50, 0.52, 0.49, 0.55, 0.51]
    b = [0.48, 0.50, 0.50, 0.51, 0.47]
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    t = mean / (sd / math.sqrt(5))
    got = report.paired_t_test(a, b)
    assert got["mean"] == pytest.approx(mean) and got["t"] == pytest.approx(t)
    assert got["half_width"] == pytest.approx(T_TABLE[4] * sd / math.sqrt(5), rel=3e-4)
    # t = 2.4004 with 4 df: between the 0.1 (2.132) and 0.05 (2.776) two-sided points
    assert 0.05 < got["p"] < 0.1
    assert got["p"] == pytest.approx(2 * (1 - report.t_cdf(t, 4)))
    assert report.paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    assert report.paired_t_test([0.3], [0.1])["p"] is None
    with pytest.raises(ValueError, match="equally long"):
        report.paired_t_test([1.0], [1.0, 2.0])


def test_holm_step_down() -> None:
    # sorted 0.01, 0.03, 0.04, 0.2 with m = 4: 0.04, 0.09, max(0.09, 0.08), 0.2
    got = report.holm([0.04, 0.2, 0.01, None, 0.03])
    assert [g["p_holm"] for g in got] == pytest.approx([0.09, 0.2, 0.04, None, 0.09])
    assert [g["reject"] for g in got] == [False, False, True, None, False]
    assert report.holm([]) == []


def test_t_interval_and_its_label() -> None:
    stat = report.t_interval([1.0, 2.0, 3.0])
    assert stat["half_width"] == pytest.approx(T_TABLE[2] * 1.0 / math.sqrt(3), rel=3e-4)
    assert stat["low"] < 2.0 < stat["high"]
    assert report.format_interval(stat) == f"2.000 ± {stat['half_width']:.3f}"
    assert report.t_interval([0.4])["half_width"] is None
    assert "95%" in report.INTERVAL_LABEL and "half-width" in report.INTERVAL_LABEL


# --------------------------------------------------------------------------------------
# Same seed, same start
# --------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_initialisation_and_batches(tiny_task: Any) -> None:
    plan = training.RunPlan(steps=3, p=4, k=4, checkpoints=2)

    def start(name: str, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        row = strategies.STRATEGIES[name]
        run = training.setup_run(row, row.default_setting(), seed, tiny_task, plan)
        params = [p.detach().clone() for p in run.model.parameters()]
        return params, [next(run.batches) for _ in range(4)]

    rows = ("batch_hard", "random", "multi_similarity") + (("pml_batch_hard",) if HAS_PML else ())
    ref_params, ref_batches = start(rows[0], 3)
    for name in rows[1:]:
        params, batches = start(name, 3)
        assert all(torch.equal(a, b) for a, b in zip(params, ref_params, strict=True)), name
        assert all(torch.equal(a, b) for a, b in zip(batches, ref_batches, strict=True)), name
    other_params, other_batches = start("batch_hard", 4)
    assert not torch.equal(other_params[0], ref_params[0])
    assert not all(torch.equal(a, b) for a, b in zip(other_batches, ref_batches, strict=True))


# --------------------------------------------------------------------------------------
# The search: budget subsets and edges
# --------------------------------------------------------------------------------------


def test_budget_subset_is_deterministic_covering_and_grid_keyed() -> None:
    grid = strategies.STRATEGIES["contrastive"].grid()
    assert len(grid) == 54
    subset = strategies.budget_subset(grid)
    assert len(subset) == strategies.ROW_BUDGET and subset == strategies.budget_subset(grid)
    assert all(s in grid for s in subset)
    for key in grid[0]:
        assert {s[key] for s in subset} == {s[key] for s in grid}, key
    small = strategies.STRATEGIES["supcon"].grid()
    assert strategies.budget_subset(small) == small  # nothing to cut


def test_extension_steps_outwards_within_bounds() -> None:
    grid = strategies.STRATEGIES["batch_hard"].grid()
    inner = {"lr": 3e-3, "normalize": True, "margin": 0.1}
    assert strategies.extension(grid, inner) == {}
    edge = strategies.extension(grid, {"lr": 1e-2, "normalize": False, "margin": 0.2})
    assert edge["lr"] == {"from": 1e-2, "edge": "high", "to": pytest.approx(0.0333)}
    # raw grid 0.2, 0.5, 1.0: geometric, one ratio (2.5) below 0.2
    assert edge["margin"] == {"from": 0.2, "edge": "low", "to": 0.08}
    ms = strategies.extension(
        strategies.STRATEGIES["multi_similarity"].grid(),
        {"lr": 3e-3, "normalize": True, "base": 0.7, "epsilon": 0.05},
    )
    assert ms["base"]["to"] == pytest.approx(0.9) and ms["epsilon"]["to"] == pytest.approx(0.025)
    contrastive = strategies.extension(
        strategies.STRATEGIES["contrastive"].grid(),
        {"lr": 3e-3, "normalize": True, "neg_margin": 0.9, "pos_margin": 0.0},
    )
    assert contrastive["pos_margin"]["to"] is None and "bounds" in contrastive["pos_margin"]["why"]
    neighbour = strategies.STRATEGIES["neighbour_batch_hard"]
    grid = [{"lr": 3e-3, "refresh_every": r} for r in strategies.NEIGHBOUR_REFRESH]
    high = strategies.extension(grid, {"lr": 3e-3, "refresh_every": 400})["refresh_every"]
    low = strategies.extension(grid, {"lr": 3e-3, "refresh_every": 100})["refresh_every"]
    assert neighbour.training.refresh_steps in strategies.NEIGHBOUR_REFRESH
    assert (high["to"], low["to"]) == (800, 50)  # a step count stays an integer
    assert type(high["to"]) is int and type(low["to"]) is int


# --------------------------------------------------------------------------------------
# Budgets, from the saved 0.2 measurements (never run here)
# --------------------------------------------------------------------------------------


def test_search_full_and_default_runs_fit_their_budgets() -> None:
    """The committed step and evaluation times of every row (``python -m benchmarks.budget``
    on the slowest machine measured) and the protocol's current constants: the search, the
    full run and the default run's worst case each fit their budget."""
    saved = json.loads((RESULTS / "quality_budget.json").read_text())
    assert saved["machine"]["usable_cores"] == 2
    rows = saved["rows"]
    assert set(rows) == set(strategies.STRATEGIES)  # every row timed, none stale
    step_s = {n: r["step_s"] for n, r in rows.items()}
    ev = saved["evaluation"]
    plans = budget.estimates(step_s, ev["search_s"], ev["subset_s"], ev["last_and_test_s"])
    for what, e in plans.items():
        assert e["fits"], (what, e["total_s"] / 60, e["budget_s"] / 60)
    assert plans["search"]["budget_s"] == plans["full"]["budget_s"] == 150 * 60
    assert plans["default"]["budget_s"] == quality.QUALITY_BUDGET_S
    assert len(quality.DEFAULT_CONFIG.seeds) == len(quality.FULL_CONFIG.seeds) == 5
    # the estimates see a change of the protocol: twice the steps overrun
    slower = {n: 2 * s for n, s in step_s.items()}
    doubled = budget.estimates(slower, ev["search_s"], ev["subset_s"], ev["last_and_test_s"])
    assert not doubled["search"]["fits"] and not doubled["full"]["fits"]


def test_budget_times_a_large_batch_step_per_plain_step_of_images(tiny_task: Any) -> None:
    plan = training.RunPlan(steps=8, p=4, k=2, checkpoints=2)
    rows = budget.measure(["batch_hard", "large_batch_batch_hard"], tiny_task, plan, repeats=2)
    big = rows["large_batch_batch_hard"]
    factor = strategies.STRATEGIES["large_batch_batch_hard"].training.batch_factor
    assert big["images_per_step"] == factor > 1
    assert big["step_s"] == pytest.approx(big["median_s"] / factor)
    assert rows["batch_hard"]["step_s"] == rows["batch_hard"]["median_s"] > 0


def test_budget_command_refuses_unknown_rows() -> None:
    with pytest.raises(ValueError, match="unknown"):
        budget.main(["--rows", "batch_hard,no_such_row"])


# --------------------------------------------------------------------------------------
# 0.2's result files
# --------------------------------------------------------------------------------------


def test_results_of_protocol_one_are_read_or_refused_clearly() -> None:
    """0.2's files (a trimmed copy of each in ``tests/data``): the report still reads them,
    in 0.2's words; the search and ``--resume`` refuse to reuse them, saying why."""
    saved = json.loads((ROOT / "tests" / "data" / "protocol1_results.json").read_text())
    usable, why = protocol.usable_tuning(saved["quality_tuning"])
    assert usable is None and why is not None
    assert "protocol version 1" in why and "--tune" in why
    full = saved["quality_full"]
    assert quality._reusable(full, quality.FULL_CONFIG, {}) == {}  # never resumed
    table = quality.markdown_table(full).splitlines()
    assert len(table) == 2 + len(full["strategies"]) == 5
    text = report.comparison_text(full["comparison"])
    assert text.startswith("**At equal training time** (101 s, MAP@R on 100 checkpoint")
    assert "(standard error)" in text and "validation" not in text


# --------------------------------------------------------------------------------------
# No test class before the final evaluation
# --------------------------------------------------------------------------------------


class Recorder:
    """One log of events; :class:`Spy` tensors append their reads of test rows to it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def mark(self, kind: str, what: str = "") -> None:
        self.events.append((kind, what))


class Spy(torch.Tensor):
    """Every sample of a dataset: records each read that touches a test row (indexing with
    any index, or any operation on the whole tensor) in ``Spy.recorder``; results are plain
    tensors, so only reads of the dataset itself are seen."""

    recorder: Recorder | None = None
    test_rows: torch.Tensor | None = None
    HARMLESS = frozenset({"shape", "size", "dim", "dtype", "device", "__len__", "ndim"})

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        with torch._C.DisableTorchFunctionSubclass():
            if cls.recorder is not None and name not in cls.HARMLESS:
                if name == "__getitem__" and args and isinstance(args[0], Spy):
                    rows = torch.arange(args[0].shape[0])[args[1]].reshape(-1)
                    hit = int(torch.isin(rows, cls.test_rows).sum())
                    if hit:
                        cls.recorder.mark("test_read", f"{hit} test rows")
                else:
                    cls.recorder.mark("test_read", f"whole tensor: {name}")
            return func(*args, **kwargs)


def _spy_dataset(recorder: Recorder, train_classes: int) -> Any:
    ds = data.load_omniglot(train_classes)
    Spy.test_rows = ds.rows(ds.split.evaluation)
    Spy.recorder = None
    ds.x = ds.x.as_subclass(Spy)
    Spy.recorder = recorder
    return ds


def test_the_spy_sees_reads_of_test_rows() -> None:
    recorder = Recorder()
    ds = _spy_dataset(recorder, 30)
    try:
        train = ds.rows(ds.split.train)
        _ = ds.x[train], ds.x.shape, len(ds.x)
        assert recorder.events == []
        _ = ds.x[ds.rows(ds.split.evaluation)[:3]]
        _ = ds.x.mean()
        _ = ds.x[-1]
        assert [e[0] for e in recorder.events] == ["test_read"] * 3
        recorder.events.clear()
        ds.task("final", 5, 10)  # building a task reads no test row ...
        assert recorder.events == []
        x, _ = ds.task("final", 5, 10).test()  # ... until its test set is asked for
        assert recorder.events == [("test_read", f"{len(x)} test rows")]
    finally:
        Spy.recorder = None


def _tiny(cfg: Any, **kw: Any) -> Any:
    return replace(
        cfg,
        seeds=(0,),
        steps=2,
        p=4,
        k=4,
        checkpoints=2,
        subset_classes=5,
        final_classes=10,
        train_classes=40,
        tune=protocol.TuneConfig(steps=1, p=4, k=4, checkpoints=2, grid="tiny"),
        threads=1,
        quick=True,
        **kw,
    )


@pytest.mark.slow
def test_no_test_class_is_read_before_the_final_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(quality, "load_omniglot", lambda n: _spy_dataset(recorder, n))
    peer = ("pml_batch_hard",) if HAS_PML else ()
    rows = ("batch_hard", *peer, "hard_class_batch_hard")
    monkeypatch.setattr(
        quality, "DEFAULT_CONFIG", _tiny(quality.DEFAULT_CONFIG, headline=(1, 1), tune_rows=rows)
    )
    monkeypatch.setattr(quality, "FULL_CONFIG", _tiny(quality.FULL_CONFIG, strategies=rows))

    def marked(name: str, kind: str) -> None:
        original = getattr(quality, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            recorder.mark(kind, name)
            return original(*args, **kwargs)

        monkeypatch.setattr(quality, name, wrapper)

    for name in ("train_run", "calibrate"):
        marked(name, "train")
    for name in ("select_rows", "compare_at_equal_time", "ranking_stability", "choice_for"):
        marked(name, "choice")
    marked("final_evaluation", "final_evaluation")
    out = ["--out", str(tmp_path)]
    try:
        for argv in (["--tune"], [], ["--full"]):
            recorder.events.clear()
            result = quality.main([*argv, *out])
            kinds = [kind for kind, _ in recorder.events]
            assert "train" in kinds, argv
            if argv == ["--tune"]:
                assert "test_read" not in kinds and "final_evaluation" not in kinds
                continue
            assert result["strategies"] and kinds.count("final_evaluation") == 1, argv
            start = kinds.index("final_evaluation")
            reads = [i for i, k in enumerate(kinds) if k == "test_read"]
            assert reads, argv  # the final evaluation does read them, and the spy sees it
            assert min(reads) > start, (argv, recorder.events[: min(reads) + 1])
            assert not {"train", "choice"} & set(kinds[start:]), argv
    finally:
        Spy.recorder = None
