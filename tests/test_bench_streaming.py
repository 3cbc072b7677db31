"""``python -m benchmarks.streaming --quick``: the smoke run of the streaming benchmark writes its
JSON, both backends give the same loss on the same inputs, and the targets read N/A at these
sizes (timings are reported, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _row(kind: str, n: int, mib: float, backend: str = "streaming") -> dict:
    return {"kind": kind, "n": n, "m": None, "backend": backend, "extra_peak_bytes": mib * 2**20}


def test_merge_keeps_every_other_row_and_recomputes_the_targets(tmp_path: Path) -> None:
    path = tmp_path / "streaming_cpu.json"
    kept = [_row("batch_hard", 8192, 50.0), _row("batch_hard", 8192, 300.0, "numba")]
    old = _row("batch_all", 65536, 999.0)
    path.write_text(json.dumps({"time": [], "memory": [*kept, old], "targets": {}}))
    new = [_row("batch_all", 65536, 200.0), {**_row("semi_hard", 65536, 1.0), "error": "x"}]
    data = streaming.merge_rows(path, new, "a run", {"git_commit": "abc"})
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(data))
    rows = {(r["kind"], r["n"], r["backend"]): r for r in saved["memory"]}
    assert len(rows) == 3  # the old batch-all row replaced, the failed row not merged
    assert rows["batch_all", 65536, "streaming"]["extra_peak_bytes"] == 200.0 * 2**20
    assert rows["batch_all", 65536, "streaming"]["source"] == "a run"
    assert rows["batch_all", 65536, "streaming"]["git_commit"] == "abc"
    assert saved["superseded"] == [old]
    assert all(rows[k[0], k[1], k[3]] == r for r in kept for k in [streaming._row_key(r)])
    assert saved["targets"]["memory_batch_all_65536"] == {"extra_peak_mib": 200.0, "passed": True}
    assert saved["targets"]["memory_semi_hard_65536"] == "N/A"
    assert saved["merges"][0]["rows"] == [["batch_all", 65536, None, "streaming"]]


def _gen_figures() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "docs" / "gen_figures.py"
    spec = importlib.util.spec_from_file_location("gen_figures_streaming", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_memory_column_reads_the_json() -> None:
    """The README's "memory at N = 65,536" cells: measured streaming rows as measured, the
    in-memory path computed from its measured bytes per matrix, the peer from its estimate,
    each marked as such; a missing row says so."""
    import torch

    from benchmarks import registry

    gen = _gen_figures()
    fake = {
        "memory": [
            _row("batch_all", 65536, 200.0),
            _row("batch_all", 8192, 512.0, "numba"),  # 2 matrices of 256 MiB
            _row("semi_hard", 8192, 256.0, "numba"),
        ]
    }
    names = ["batch_all[numba]", "semi_hard[numba]", "pml_all", "cdist"]
    cells, notes = gen.streaming_memory_cells(names, fake)
    assert cells[0] == "200.0 MiB streaming (measured); in memory ~32.00 GiB (computed¹)"
    assert cells[1] == "streaming: not measured yet; in memory ~16.00 GiB (computed¹)"
    labels = torch.arange(65536 // 8).repeat_interleave(8)
    tib = registry.pml_all_memory(65536, labels) / 2**40
    assert cells[2] == f"~{tib:,.0f} TiB (computed²)" and tib > 1
    assert cells[3] == "—"
    assert len(notes) == 2 and "8,192" in notes[0] and "Computed, not run" in notes[1]
