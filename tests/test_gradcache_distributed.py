"""cached_backward under DistributedDataParallel, and CrossBatchMemory under DDP: two gloo
processes against single-process training on the concatenated batch, in float64.

One spawn runs every case. Each rank holds its rows of a global batch and a float64 model
with dropout, seeds torch with ``1000 * step + rank`` and calls ``cached_backward`` with
``distributed.gather`` (or ``sharded_loss``) inside ``loss_fn``; the parent replays each
rank's chunks from the same seeds in one process (``torch.cat`` of the chunked forwards of
rank 0, then rank 1: dropout draws the same masks), takes the loss of the concatenated batch
and its plain ``backward()``. A communication hook counts DDP's all-reduces: one per bucket
and step, as without chunking (the replays but the last run under ``no_sync()``).

The memory cases follow the README recipe (enqueue the *gathered* batch, detached, on every
rank; read the memory before enqueueing) for three optimiser steps, with a plain DDP step and
with ``cached_backward``: every rank must hold the same memory, equal to single-process
training's, and the same gradients. The spawn takes 15-30 s on two shared cores, hence the
``slow`` mark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from ddp import assert_close, spawn_ranks
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from tripletkit.distributed import gather, sharded_loss
from tripletkit.gradcache import cached_backward
from tripletkit.losses import (
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.miners import SemiHardMiner

IN_DIM, EMB_DIM = 5, 3
WORLD = 2
STEPS = 3  # optimiser steps of the memory cases
LR = 0.5


def _miner_loss(e: Tensor, y: Tensor) -> Tensor:
    return TripletMarginLoss(margin=0.5)(e, y, SemiHardMiner(margin=0.5)(e, y))


#: The loss of the global batch, as the single-process reference computes it.
GLOBAL: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": lambda e, y: semi_hard_triplet_loss(e, y, margin=0.5),
    "contrastive": lambda e, y: contrastive_loss(e, y, neg_margin=2.0),
    "miner+TripletMarginLoss": _miner_loss,
}
# (name, global loss, mode, per-rank sizes, chunk size)
CASES: list[tuple[str, str, str, tuple[int, int], int]] = [
    ("batch_all-7x11-c4", "batch_all", "full", (7, 11), 4),
    ("batch_hard-7x11-c4-sharded", "batch_hard", "sharded", (7, 11), 4),
    ("semi_hard-6x6-c4", "semi_hard", "full", (6, 6), 4),
    ("contrastive-0x9-c4", "contrastive", "full", (0, 9), 4),
    ("miner-8x8-c3", "miner+TripletMarginLoss", "full", (8, 8), 3),
    ("batch_all-6x6-c100", "batch_all", "full", (6, 6), 100),
]


def _local_loss(name: str, mode: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss of a replica: ``gather`` inside ``loss_fn`` (full mode), or sharded."""
    if mode == "sharded":
        return lambda e, y: sharded_loss(name, e, y)
    return lambda e, y: GLOBAL[name](*gather(e, y))


def _data(sizes: tuple[int, ...], step: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 * step + sum(sizes))
    n = sum(sizes)
    return torch.randn(n, IN_DIM, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=g
    )


def _local(sizes: tuple[int, ...], rank: int, step: int = 0) -> tuple[Tensor, Tensor]:
    x, y = _data(sizes, step)
    start = sum(sizes[:rank])
    return x[start : start + sizes[rank]], y[start : start + sizes[rank]]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Dropout(0.25), nn.Linear(16, EMB_DIM)
    ).to(torch.float64)


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _counting_hook(state, bucket):  # type: ignore[no-untyped-def]
    # (no annotations: DDP checks them, and they are strings under __future__.annotations)
    state[0] += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def _ddp(counter: list[int]) -> DistributedDataParallel:
    model = DistributedDataParallel(_net())
    model.register_comm_hook(counter, _counting_hook)
    return model


def _memory_loss(memory: CrossBatchMemory, gathered: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """The README recipe: loss of the (gathered) batch plus a memory term read before
    enqueueing the (gathered) batch."""

    def loss_fn(e: Tensor, y: Tensor) -> Tensor:
        if gathered:
            e, y = gather(e, y)
        loss = batch_hard_triplet_loss(e, y)
        if len(memory):
            mem_e, mem_y = memory.get()
            loss = loss + batch_all_triplet_loss(e, y, ref_embeddings=mem_e, ref_labels=mem_y)
        memory.enqueue(e.detach(), y)
        return loss

    return loss_fn


MEMORY_SIZES = (5, 7)
MEMORY_CHUNK = 3


def _memory_run(rank: int | None, cached: bool) -> list[dict[str, Any]]:
    """STEPS optimiser steps with a memory term; ``rank=None`` is the single-process
    reference on the concatenated batch (replaying each rank's chunks from its seed)."""
    counter = [0]
    model: nn.Module = _net() if rank is None else _ddp(counter)
    memory = CrossBatchMemory(size=20, dim=EMB_DIM, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = _memory_loss(memory, gathered=rank is not None)
    out = []
    for step in range(STEPS):
        optimizer.zero_grad()
        if rank is None:
            x, y = _data(MEMORY_SIZES, step)
            chunk = MEMORY_CHUNK if cached else None
            emb = _replay_ranks(model, x, MEMORY_SIZES, chunk, step)
            loss = loss_fn(emb, y)
            loss.backward()
        else:
            x, y = _local(MEMORY_SIZES, rank, step)
            torch.manual_seed(_seed(rank, step))
            if cached:
                loss = cached_backward(model, x, y, loss_fn, chunk_size=MEMORY_CHUNK)
            else:
                loss = loss_fn(model(x), y)
                loss.backward()
        out.append(
            {
                "loss": loss.item(),
                "grads": _grads(model),
                "memory": memory.get(),
                "len": len(memory),
            }
        )
        optimizer.step()
    return out


def _replay_ranks(
    model: nn.Module, x: Tensor, sizes: tuple[int, ...], chunk: int | None, step: int | None
) -> Tensor:
    """Single process: each rank's rows through ``model`` from that rank's seed (``rank``,
    or ``1000 * step + rank`` in the memory runs), in chunks or at once, concatenated in
    rank order."""
    parts, start = [], 0
    for rank, n in enumerate(sizes):
        rows = x[start : start + n]
        start += n
        torch.manual_seed(_seed(rank, step))
        if chunk is None or n == 0:
            parts.append(model(rows))
        else:
            parts.extend(model(c) for c in rows.split(chunk))
    return torch.cat(parts)


def _seed(rank: int, step: int | None) -> int:
    return rank if step is None else 1000 * step + rank


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results: dict[str, Any] = {}
        # All-reduces of one plain DDP step (no chunking): the number of buckets.
        counter = [0]
        model = _ddp(counter)
        x, y = _local((6, 6), rank)
        batch_all_triplet_loss(*gather(model(x), y)).backward()
        results["plain_allreduces"] = counter[0]
        for name, loss_name, mode, sizes, chunk in CASES:
            counter = [0]
            model = _ddp(counter)
            x, y = _local(sizes, rank)
            torch.manual_seed(_seed(rank, None))
            loss = cached_backward(model, x, y, _local_loss(loss_name, mode), chunk_size=chunk)
            results[name] = {"loss": loss.item(), "grads": _grads(model), "allreduces": counter[0]}
        for cached in (False, True):
            results[f"memory/{cached}"] = _memory_run(rank, cached)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _reference(loss_name: str, sizes: tuple[int, int], chunk: int) -> tuple[float, list[Tensor]]:
    """Single-process training on the concatenated batch, each rank's chunks from its seed."""
    model = _net()
    x, y = _data(sizes)
    emb = _replay_ranks(model, x, sizes, chunk, None)
    loss = GLOBAL[loss_name](emb, y)
    loss.backward()
    return loss.item(), _grads(model)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # Compute every reference first: a cold numba cache is compiled once, here.
    for _, loss_name, _, sizes, chunk in CASES:
        _reference(loss_name, sizes, chunk)
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("gradcache_ddp"), timeout=180.0)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ddp_cached_backward_matches_single_process(
    two_ranks: list[dict[str, Any]], case: tuple[str, str, str, tuple[int, int], int]
) -> None:
    name, loss_name, _, sizes, chunk = case
    loss, grads = _reference(loss_name, sizes, chunk)
    assert any(bool(g.abs().sum() > 0) for g in grads), "a case with no gradient tests nothing"
    for results in two_ranks:
        assert_close(results[name]["loss"], loss)
        assert_close(results[name]["grads"], grads)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ddp_allreduces_once_per_step(
    two_ranks: list[dict[str, Any]], case: tuple[str, str, str, tuple[int, int], int]
) -> None:
    for results in two_ranks:
        assert results["plain_allreduces"] >= 1
        assert results[case[0]]["allreduces"] == results["plain_allreduces"]


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["plain", "cached_backward"])
def test_ddp_cross_batch_memory_is_the_same_on_every_rank(
    two_ranks: list[dict[str, Any]], cached: bool
) -> None:
    reference = _memory_run(None, cached)
    runs = [results[f"memory/{cached}"] for results in two_ranks]
    for step in range(STEPS):
        ref = reference[step]
        assert ref["len"] == min(20, sum(MEMORY_SIZES) * (step + 1))
        mem_e, mem_y = runs[0][step]["memory"]
        for run in runs[1:]:  # every rank holds exactly the same memory
            assert torch.equal(run[step]["memory"][0], mem_e)
            assert torch.equal(run[step]["memory"][1], mem_y)
        for run in runs:  # ... which is that of single-process training
            assert torch.equal(run[step]["memory"][1], ref["memory"][1])
            assert_close(run[step]["memory"][0], ref["memory"][0])
            assert_close(run[step]["loss"], ref["loss"])
            assert_close(run[step]["grads"], ref["grads"])
