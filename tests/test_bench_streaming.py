"""``python -m benchmarks.streaming --quick``: the smoke run of the streaming benchmark writes its
JSON, both backends give the same loss on the same inputs, and the targets read N/A at these
sizes (timings are reported, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import streaming


def test_quick_run(tmp_path: Path) -> None:
    out = streaming.main(["--quick", "--out", str(tmp_path)])
    assert isinstance(out, dict)
    saved = json.loads((tmp_path / "streaming_cpu_quick.json").read_text())
    assert saved["config"]["quick"] is True and saved["complete"] is True
    assert "load_average" in json.dumps(saved["machine"])
    assert [r["kind"] for r in saved["time"]] == list(streaming.KINDS)
    for row in saved["time"]:
        assert "error" not in row, row
        assert row["streaming"]["loss"] == pytest.approx(row["numba"]["loss"], rel=1e-5)
        assert row["ratio"] > 0
    assert len(saved["memory"]) == 2 * len(streaming.KINDS) + 2
    for row in saved["memory"]:
        assert "error" not in row, row
        assert row["extra_peak_bytes"] >= 0
    losses = {(r["kind"], r["backend"]): r["loss"] for r in saved["memory"] if r["m"] is None}
    for kind in streaming.KINDS:
        assert losses[kind, "streaming"] == pytest.approx(losses[kind, "numba"], rel=1e-5)
    assert set(saved["targets"].values()) == {"N/A"}


def test_plans() -> None:
    default = streaming._plan(quick=False, full=False)
    full = streaming._plan(quick=False, full=True)
    assert default["time_n"] == full["time_n"] == 8192
    assert {(k, 16384, None, "streaming") for k in streaming.KINDS} <= set(default["memory"])
    big = {(k, 65536, None, "streaming") for k in streaming.KINDS}
    assert not big & set(default["memory"]) and big <= set(full["memory"])
    refs = {(k, 1024, 65536, "streaming") for k in ("semi_hard", "batch_all")}
    assert refs <= set(default["memory"])
    large = streaming._plan(quick=False, full=False, large_only=True)
    assert large["time_n"] is None and set(large["memory"]) == big
