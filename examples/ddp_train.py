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
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
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
from tripletkit.metrics import retrieval_metrics
from tripletkit.samplers import PKBatchSampler

LOSSES = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
    "contrastive": contrastive_loss,
}


class EmbeddingNet(nn.Module):
    """A small conv net: ``[B, 1, 28, 28]`` images to unit-norm ``[B, dim]`` embeddings."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 64))  # 28->14->7->3
        self.head = nn.Linear(64 * 3 * 3, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x).flatten(1)), dim=1)


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


def setup() -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; returns (rank, world_size, device)."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:  # plain `python examples/ddp_train.py`: one process
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


@torch.no_grad()
def precision_at_1(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    model.eval()
    emb = torch.cat([model(chunk.to(device)) for chunk in images.split(512)])
    model.train()
    return retrieval_metrics(emb, labels.to(device), k=1)["precision_at_1"]


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
            print(
                f"precision@1 on {test.num_classes} unseen classes before training: "
                f"{precision_at_1(net, test.images, test.labels, device):.3f}"
            )

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
        print(
            f"precision@1 on {test.num_classes} unseen classes after {step} steps: "
            f"{precision_at_1(net, test.images, test.labels, device):.3f}"
        )
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
