"""Train an Omniglot embedding with DistributedDataParallel and mining over all replicas.

Run on CPUs (gloo) or GPUs (NCCL, chosen when CUDA is available), one process per replica::

    torchrun --nproc_per_node=2 examples/ddp_train.py --steps 20
    torchrun --nproc_per_node=2 examples/ddp_train.py --mode sharded --loss batch_all

``python examples/ddp_train.py`` runs the same training in one process.

Each replica draws its own P x K batches (``PKBatchSampler`` with ``num_replicas`` and
``rank``), embeds them with the DDP-wrapped network, and the loss is that of the global
batch of ``world_size * p * k`` images:

- ``--mode full``: ``tripletkit.distributed.gather`` concatenates every replica's embeddings
  and labels (differentiably) and every replica computes the loss of the whole global batch;
- ``--mode sharded``: ``tripletkit.distributed.sharded_loss`` has each replica mine only its
  own anchors against the gathered batch (``N_r x N`` distances instead of ``N x N``).

Either way the gradients after DDP's averaging are those of one process training on the
global batch. Rank 0 logs the loss, and precision@1 on unseen Omniglot classes (the
``evaluation`` split) before and after training.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from _common import EmbeddingNet, report_precision, setup
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tripletkit.datasets import omniglot
from tripletkit.distributed import SHARDED_LOSSES, gather, sharded_loss
from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
)
from tripletkit.samplers import PKBatchSampler

LOSSES = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
    "contrastive": contrastive_loss,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--p", type=int, default=8, help="classes per replica batch")
    parser.add_argument("--k", type=int, default=4, help="images per class")
    parser.add_argument("--mode", choices=("full", "sharded"), default="full")
    parser.add_argument("--loss", choices=tuple(SHARDED_LOSSES), default="batch_hard")
    parser.add_argument("--margin", type=float, default=0.2, help="triplet margin")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64, help="embedding width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument(
        "--eval-classes", type=int, default=100, help="unseen classes for precision@1 (0: skip)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts them)

    train = omniglot("background")
    sampler = PKBatchSampler(
        train.labels, p=args.p, k=args.k, seed=args.seed, num_replicas=world, rank=rank
    )
    loader = DataLoader(train, batch_sampler=sampler)
    test = omniglot("evaluation", max_classes=args.eval_classes) if args.eval_classes else None

    net = EmbeddingNet(args.dim).to(device)
    model = DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    margins = (
        {"pos_margin": 0.0, "neg_margin": 1.0}
        if args.loss == "contrastive"
        else {"margin": args.margin}
    )

    if rank == 0:
        print(
            f"world_size={world} backend={dist.get_backend() if world > 1 else 'none'} "
            f"device={device} mode={args.mode} loss={args.loss} "
            f"global batch={world * args.p * args.k} ({world} x {args.p} x {args.k})"
        )
        if test is not None:
            report_precision(net, test, device, "before training")

    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            emb = model(images.to(device))
            labels = labels.to(device)
            if args.mode == "full":
                all_emb, all_labels = gather(emb, labels)
                loss = LOSSES[args.loss](all_emb, all_labels, **margins)
            else:
                loss = sharded_loss(args.loss, emb, labels, **margins)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0 and (step % args.log_every == 0 or step == 1 or step == args.steps):
                print(
                    f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - start:.1f} s)"
                )
            if step == args.steps:
                break
        epoch += 1

    if rank == 0 and test is not None:
        report_precision(net, test, device, f"after {step} steps")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
