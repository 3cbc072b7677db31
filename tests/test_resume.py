"""A preempted job resumes exactly: a training run killed (SIGKILL) after 1.5 epochs and
started again from its last checkpoint ends with parameters bit-identical to a run that was
never interrupted — P x K, hard-class and neighbour samplers with a cross-batch memory, one
process and two gloo replicas (``tests/resume_job.py`` is the job; its checkpoint is the
README's recipe). One launch of the job trains the three samplers in turn (the interpreter's
start and torch's import cost far more than the tiny training): the uninterrupted runs in one
launch, then four launches that kill each sampler once at 1.5 epochs and resume it."""

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
SAMPLERS = ("pk", "hard", "neighbour")
#: The job's batches per epoch and replica (60 samples, 10 classes of 6, p=2, k=3).
PER_EPOCH = {1: 10, 2: 5}


def _launch(out: Path, world: int, kill_at: int | None) -> list[int]:
    """Run the job's replicas to their end (or their kill); their exit codes."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(JOB), str(out), "--rank", str(r), "--world", str(world)]
            + ["--port", port]
            + (["--kill-at", str(kill_at)] if kill_at else []),
            env=env,
        )
        for r in range(world)
    ]
    return [p.wait(timeout=300) for p in procs]


def _final(out: Path, sampler: str, world: int) -> list[dict]:
    return [torch.load(out / f"{sampler}_final{r}.pt") for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_killed_and_resumed_equals_uninterrupted(tmp_path: Path, world: int) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    assert _launch(straight, world, None) == [0] * world
    kill_at = PER_EPOCH[world] + PER_EPOCH[world] // 2  # 1.5 epochs
    for killed in SAMPLERS:
        codes = _launch(broken, world, kill_at)
        assert codes == [-signal.SIGKILL] * world, killed  # killed, not returned
        assert not (broken / f"{killed}_final0.pt").exists()
        ckpt = torch.load(broken / f"{killed}_ckpt0.pt", weights_only=True)
        assert ckpt["step"] == kill_at  # the checkpoint of the killed step
    assert _launch(broken, world, kill_at) == [0] * world  # resumes the last one, ends
    for sampler in SAMPLERS:
        runs = zip(_final(straight, sampler, world), _final(broken, sampler, world), strict=True)
        for a, b in runs:
            assert a["steps"] == b["steps"] == 3 * PER_EPOCH[world], sampler
            for p, q in zip(a["params"], b["params"], strict=True):
                assert torch.equal(p, q), sampler  # bit-identical
            # the training did move the parameters (the comparison is not of two idle runs)
            assert not all(
                torch.equal(p, u) for p, u in zip(a["params"], a["untrained"], strict=True)
            ), sampler
