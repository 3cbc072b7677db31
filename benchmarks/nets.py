"""The embedding networks of the quality benchmark: a small conv net for images, an MLP for
vectors, chosen by the shape of one input (:func:`make_net`).

Both end in a linear layer to :data:`EMBEDDING_DIM` dimensions, L2-normalised when the run's
setting says so (``normalize=True``): the normalisation is part of the network, so training
and evaluation see the same embeddings (retrieval ranks by euclidean distance on the
network's output, i.e. by cosine similarity when it is normalised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EMBEDDING_DIM", "EmbeddingNet", "MLPNet", "describe_net", "make_net"]

#: Embedding dimension of every network.
EMBEDDING_DIM = 64
#: Conv channels of the image network (at most four blocks). 0.2 and 0.3 used 32-64-64-64;
#: 16-32-64-64 takes 46 ms instead of 87 ms per 128-image training step on the 2-core
#: reference machine (median of 20), with the same validation MAP@R within 0.03 after 600
#: steps for batch-hard, semi-hard and multi-similarity (tripletkit's and the peer's; one
#: seed each, 0.43-0.46 with either), and is what lets the protocol fit its time budgets
#: there (:mod:`benchmarks.budget`).
CHANNELS = (16, 32, 64, 64)
#: Hidden width of the MLP.
HIDDEN = 256


def conv_blocks(height: int, width: int, most: int = len(CHANNELS)) -> int:
    """Number of conv blocks (each halves the image) for an ``height x width`` image: as
    many as halve the smaller side down to one pixel, at most ``most``, at least one."""
    return max(1, min(most, int(math.floor(math.log2(max(1, min(height, width)))))))


class EmbeddingNet(nn.Module):
    """Conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) with channels
    ``in_channels -> 16 -> 32 -> 64 -> 64`` (:data:`CHANNELS`, :func:`conv_blocks` of them), a global average
    pool, then a linear layer to ``dim``; rows L2-normalised when ``normalize``.

    On Omniglot (1 x 28 x 28) the four blocks take 28 -> 14 -> 7 -> 3 -> 1 pixels, so the
    global pool is the identity.

    Shape:
        - input: ``[B, C, H, W]``; output: ``[B, dim]``.
    """

    def __init__(
        self,
        dim: int = EMBEDDING_DIM,
        *,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        normalize: bool = True,
        channels: Sequence[int] = CHANNELS,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels[: conv_blocks(*image_size, most=len(channels))]:
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, dim)
        self.normalize = normalize
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        # channels_last: oneDNN's convolutions ran about twice as fast in this layout on an
        # AVX-512 host; on the AVX2 reference machine it is as fast as the default layout.
        x = x.contiguous(memory_format=torch.channels_last)
        out = self.head(self.features(x))
        return F.normalize(out, dim=1) if self.normalize else out


class MLPNet(nn.Module):
    """``Linear(in, 256) - BatchNorm - ReLU - Linear(256, 256) - BatchNorm - ReLU -
    Linear(256, dim)``; rows L2-normalised when ``normalize``.

    Shape:
        - input: ``[B, in_features]``; output: ``[B, dim]``.
    """

    def __init__(
        self, in_features: int, dim: int = EMBEDDING_DIM, *, normalize: bool = True
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, dim),
        )
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return F.normalize(out, dim=1) if self.normalize else out


def make_net(input_shape: Sequence[int], *, normalize: bool) -> nn.Module:
    """The network for inputs of shape ``input_shape`` (one sample, without the batch dim):
    :class:`MLPNet` for vectors ``[D]``, :class:`EmbeddingNet` for images ``[C, H, W]``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        return MLPNet(shape[0], normalize=normalize)
    if len(shape) == 3:
        return EmbeddingNet(in_channels=shape[0], image_size=shape[1:], normalize=normalize)
    raise ValueError(f"inputs must be vectors [D] or images [C, H, W], got shape {shape}")


def describe_net(input_shape: Sequence[int]) -> str:
    """The network of :func:`make_net` in words (saved in the JSON)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        return (
            f"MLP {shape[0]} -> {HIDDEN} -> {HIDDEN} -> {EMBEDDING_DIM} (BatchNorm, ReLU), "
            "L2-normalised output when the setting says normalize"
        )
    n = conv_blocks(*shape[1:])
    chans = "-".join(str(c) for c in (shape[0], *CHANNELS[:n]))
    return (
        f"{n} x [conv3x3 (no bias), BatchNorm, ReLU, maxpool2], channels {chans}, global "
        f"average pool, linear {CHANNELS[n - 1]} -> {EMBEDDING_DIM}; L2-normalised output "
        "when the setting says normalize"
    )
