"""A user's mistake on a benchmark command ends in one ``error:`` line and exit status 2,
without a traceback (:mod:`benchmarks.cli`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _one_error_line(done: subprocess.CompletedProcess[str], prog: str, says: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith(f"{prog}: error: ") and says in lines[0], lines[0]
    assert done.stdout == ""


def test_missing_data_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    done = _command("benchmarks.quality", "--data", str(missing))
    _one_error_line(done, "python -m benchmarks.quality", "no such file")


@pytest.mark.parametrize("arrays", [{"a": np.zeros(3)}, {"x": np.zeros((3, 2))}])
def test_data_file_without_x_and_y(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    done = _command("benchmarks.quality", "--data", str(path))
    _one_error_line(done, "python -m benchmarks.quality", "no array named")


def test_gpu_check_size_error() -> None:
    done = _command("benchmarks.gpu", "--dry-run", "--sizes", "4")
    _one_error_line(done, "python -m benchmarks.gpu", "every size must be at least")


@pytest.mark.parametrize("sizes", [["1"], ["128", "0"]])
def test_speed_size_error(sizes: list[str]) -> None:
    done = _command("benchmarks.speed", "--quick", "--no-plot", "--sizes", *sizes)
    _one_error_line(done, "python -m benchmarks.speed", "every size must be at least 2")


def test_usage_error_is_a_value_error() -> None:
    # library callers that caught ValueError from load_npz keep working
    assert issubclass(UsageError, ValueError)
