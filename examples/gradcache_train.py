"""Train an Omniglot embedding on batches larger than memory, with exact mining (GradCache).

Each step mines the whole P x K batch (``--p`` classes x ``--k`` images, 1,024 images by
default) with a fused triplet loss, yet the network only ever holds the activations of
``--chunk-size`` images: :func:`tripletkit.gradcache.cached_backward` embeds the batch in
chunks without a graph, computes the loss and its gradient with respect to the embeddings
on the whole batch, then re-runs each chunk with a graph and back-propagates its share. The
parameters' gradients are those of ``loss.backward()`` on the whole batch (through a
chunked forward: batch-norm normalises per chunk), at the price of one extra forward pass.

    python examples/gradcache_train.py                          # 1,024 images, chunks of 128
    python examples/gradcache_train.py --p 512 --k 8 --chunk-size 256
    python examples/gradcache_train.py --memory 4096            # plus a cross-batch memory term
    torchrun --nproc_per_node=2 examples/gradcache_train.py     # DDP: mining over all replicas

Under ``torchrun`` each replica draws its own P x K batch, ``loss_fn`` gathers every
replica's embeddings (:func:`tripletkit.distributed.gather`) and the DDP model all-reduces
once per step (the replays run under ``no_sync()`` but the last): the gradients are those of
one process training on the global batch. Rank 0 logs the loss, the time per step and
precision@1 on unseen Omniglot classes before and after training.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from _common import EmbeddingNet, report_precision, setup
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tripletkit.datasets import omniglot
from tripletkit.distributed import gather
from tripletkit.gradcache import GradCache
from tripletkit.losses import batch_all_triplet_loss, batch_hard_triplet_loss
from tripletkit.memory import CrossBatchMemory
from tripletkit.samplers import PKBatchSampler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (default 10)")
    parser.add_argument("--p", type=int, default=256, help="classes per replica batch")
    parser.add_argument("--k", type=int, default=4, help="images per class")
    parser.add_argument("--chunk-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--margin", type=float, default=0.2, help="triplet margin")
    parser.add_argument(
        "--memory", type=int, default=0, help="cross-batch memory rows (0: no memory term)"
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-classes", type=int, default=100, help="unseen classes for precision@1 (0: skip)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    train = omniglot("background")
    sampler = PKBatchSampler(
        train.labels, p=args.p, k=args.k, seed=args.seed, num_replicas=world, rank=rank
    )
    loader = DataLoader(train, batch_sampler=sampler)
    test = omniglot("evaluation", max_classes=args.eval_classes) if args.eval_classes else None

    torch.manual_seed(args.seed)
    net = EmbeddingNet(dropout=0.1).to(device)  # dropout is replayed exactly by GradCache
    model = DistributedDataParallel(net) if world > 1 else net
    torch.manual_seed(args.seed + rank)  # dropout masks differ per replica
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    memory = CrossBatchMemory(args.memory, 64, device=device) if args.memory else None

    def loss_fn(emb: Tensor, labels: Tensor) -> Tensor:
        """The loss of the global batch (plus a memory term), from the full batch of
        embeddings: mining sees every image of every replica."""
        emb, labels = gather(emb, labels)  # identity in a single process
        loss = batch_hard_triplet_loss(emb, labels, margin=args.margin)
        if memory is not None:
            if len(memory):
                mem_emb, mem_labels = memory.get()  # read before enqueueing
                loss = loss + batch_all_triplet_loss(
                    emb, labels, margin=args.margin, ref_embeddings=mem_emb, ref_labels=mem_labels
                )
            memory.enqueue(emb.detach(), labels)  # the gathered batch: same memory everywhere
        return loss

    step_fn = GradCache(model, loss_fn, chunk_size=args.chunk_size)

    if rank == 0:
        print(
            f"world_size={world} device={device} global batch={world * args.p * args.k} "
            f"({world} x {args.p} x {args.k}), chunk_size={args.chunk_size}"
        )
        if test is not None:
            report_precision(net, test, device, "before training")

    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            start = time.perf_counter()
            optimizer.zero_grad()
            loss = step_fn(images.to(device), labels.to(device))  # forward, loss and backward
            optimizer.step()
            step += 1
            if rank == 0:
                print(
                    f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.2f} s"
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
