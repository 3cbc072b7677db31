"""A small training job that checkpoints after every step, for tests/test_resume.py.

``python tests/resume_job.py DIR [--kill-at STEP] [--rank R --world W --port P]``: for each
sampler in turn (P x K, hard-class, neighbour), trains 3 epochs of a tiny network with
batch-hard mining against the batch and a cross-batch memory; after every step it writes
``DIR/{sampler}_ckpt{rank}.pt`` (the checkpoint recipe of the README: model, optimizer,
sampler, memory, RNG, loaded back with ``weights_only=True``); with ``--kill-at`` it kills
itself with SIGKILL right after that step's checkpoint (no ``finally``, no flush: a
preempted job) of the first sampler that it starts afresh. Started again, it skips the
samplers that are done (``DIR/{sampler}_final{rank}.pt`` written), resumes the one that was
killed from its checkpoint, and goes on: four launches with ``--kill-at`` kill each sampler
once, mid-run, and finish them all. With ``--world 2`` the replicas train one DDP model on
disjoint batches; the memory and the hard-class sampler are fed the gathered batch, so they
stay identical on every replica; the neighbour sampler is refreshed from the network every 4
steps (each replica embeds its shard, one all-gather). One process trains the three samplers:
a launch costs the interpreter's start and torch's import, far more than the training.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from tripletkit.distributed import gather
from tripletkit.losses import batch_hard_triplet_loss
from tripletkit.memory import CrossBatchMemory
from tripletkit.samplers import HardClassPKBatchSampler, NeighbourPKBatchSampler, PKBatchSampler

EPOCHS = 3


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(6)
    x = torch.randn(60, 6, generator=g) + labels[:, None].float().sin()
    return x, labels


def _save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill never leaves half a checkpoint


SAMPLERS = ("pk", "hard", "neighbour")


def train(sampler_name: str, args: argparse.Namespace, fresh_kill: bool) -> None:
    """Train one sampler's run to its end (or to the kill), resuming from its checkpoint."""
    torch.manual_seed(0)
    x, labels = _data()
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 4)
    )
    model = torch.nn.parallel.DistributedDataParallel(net) if args.world > 1 else net
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    kinds = {"pk": PKBatchSampler, "hard": HardClassPKBatchSampler}
    kind = kinds.get(sampler_name, NeighbourPKBatchSampler)
    sampler = kind(labels, p=2, k=3, seed=0, num_replicas=args.world, rank=args.rank)
    memory = CrossBatchMemory(size=24, dim=4)
    # A DataLoader draws a seed from the global RNG each time it is iterated: with its own
    # generator, a resumed run's dropout stream is not shifted by that extra draw.
    loader = DataLoader(
        TensorDataset(x, labels), batch_sampler=sampler, generator=torch.Generator()
    )
    ckpt = args.dir / f"{sampler_name}_ckpt{args.rank}.pt"
    step = 0
    kill_at = args.kill_at
    if ckpt.exists():  # resume (never killed twice)
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        memory.load_state_dict(state["memory"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        kill_at = None
    elif not fresh_kill:
        kill_at = None
    for epoch in range(sampler.epoch, EPOCHS):
        sampler.set_epoch(epoch)
        for batch, y in loader:
            if isinstance(sampler, NeighbourPKBatchSampler) and step % 4 == 0:
                sampler.refresh(net, TensorDataset(x, labels))  # shards + one gather
            emb = torch.nn.functional.normalize(model(batch))
            loss = batch_hard_triplet_loss(emb, y, backend="torch")
            if len(memory):
                mem_x, mem_y = memory.get()
                loss = loss + batch_hard_triplet_loss(
                    emb, y, ref_embeddings=mem_x, ref_labels=mem_y, backend="torch"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            every_emb, every_y = gather(emb.detach(), y)
            if isinstance(sampler, HardClassPKBatchSampler):
                sampler.update(every_emb, every_y)
            memory.enqueue(every_emb, every_y)
            step += 1
            _save(
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "sampler": sampler.state_dict(),
                    "memory": memory.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step,
                },
                ckpt,
            )
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(0)  # the untrained network, to show that training moved it
    untrained = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 4)
    )
    _save(
        {
            "params": [t.detach().clone() for t in net.parameters()],
            "untrained": [t.detach().clone() for t in untrained.parameters()],
            "steps": step,
        },
        args.dir / f"{sampler_name}_final{args.rank}.pt",
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir", type=Path)
    p.add_argument("--kill-at", type=int)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{args.port}",
            rank=args.rank,
            world_size=args.world,
        )
    fresh_kill = True  # the first sampler started afresh in this launch is killed
    for name in SAMPLERS:
        if (args.dir / f"{name}_final{args.rank}.pt").exists():
            continue
        started_fresh = not (args.dir / f"{name}_ckpt{args.rank}.pt").exists()
        train(name, args, fresh_kill)
        fresh_kill = fresh_kill and not started_fresh
    if args.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
