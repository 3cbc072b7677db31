"""A preempted job resumes exactly: a training run killed (SIGKILL) after 1.5 epochs and
started again from its last checkpoint ends with parameters bit-identical to a run that was
never interrupted — P x K and hard-class samplers with a cross-batch memory, one process and
two gloo replicas (``tests/resume_job.py`` is the job; its checkpoint is the README's
recipe)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp import free_port

JOB = Path(__file__).with_name("resume_job.py")
ROOT = JOB.parents[1]
#: The job's batches per epoch and replica (60 samples, 10 classes of 6, p=2, k=3).
PER_EPOCH = {1: 10, 2: 5}


def _launch(out: Path, sampler: str, world: int, kill_at: int | None) -> list[int]:
    """Run the job's replicas to their end (or their kill); their exit codes."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(JOB),
                str(out),
                "--sampler",
                sampler,
                "--rank",
                str(r),
                "--world",
                str(world),
                "--port",
                port,
            ]
            + (["--kill-at", str(kill_at)] if kill_at else []),
            env=env,
        )
        for r in range(world)
    ]
    return [p.wait(timeout=300) for p in procs]


def _final(out: Path, world: int) -> list[dict]:
    return [torch.load(out / f"final{r}.pt") for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("sampler", ["pk", "hard", "neighbour"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path: Path, sampler: str, world: int) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    assert _launch(straight, sampler, world, None) == [0] * world
    kill_at = PER_EPOCH[world] + PER_EPOCH[world] // 2  # 1.5 epochs
    codes = _launch(broken, sampler, world, kill_at)
    assert codes == [-signal.SIGKILL] * world  # killed, not returned
    assert not (broken / "final0.pt").exists()
    assert _launch(broken, sampler, world, None) == [0] * world  # resumes from the checkpoint
    for a, b in zip(_final(straight, world), _final(broken, world), strict=True):
        assert a["steps"] == b["steps"] == 3 * PER_EPOCH[world]
        for p, q in zip(a["params"], b["params"], strict=True):
            assert torch.equal(p, q)  # bit-identical
