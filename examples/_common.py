"""What the example scripts share: the network, joining a torchrun process group, and
precision@1 on unseen classes. (Imported as a sibling module: run the examples as
``python examples/<script>.py`` or under ``torchrun``.)"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tripletkit.metrics import retrieval_metrics


class EmbeddingNet(nn.Module):
    """A small conv net: ``[B, 1, 28, 28]`` images to unit-norm ``[B, dim]`` embeddings,
    with optional dropout before the head."""

    def __init__(self, dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 64))  # 28->14->7->3
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(64 * 3 * 3, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.dropout(self.features(x).flatten(1))), dim=1)


def setup() -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs);
    returns ``(rank, world_size, device)``; one process without torchrun."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


@torch.no_grad()
def precision_at_1(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device) -> float:
    """Leave-one-out precision@1 of ``model``'s embeddings of ``images`` (``[B, 1, 28, 28]``)."""
    model.eval()
    emb = torch.cat([model(chunk.to(device)) for chunk in images.split(512)])
    model.train()
    return retrieval_metrics(emb, labels.to(device), k=1)["precision_at_1"]


def report_precision(model: nn.Module, test: Any, device: torch.device, when: str) -> None:
    """Print precision@1 on the ``test`` dataset's (unseen) classes, ``when`` saying at
    which point of the training."""
    value = precision_at_1(model, test.images, test.labels, device)
    print(f"precision@1 on {test.num_classes} unseen classes {when}: {value:.3f}")
