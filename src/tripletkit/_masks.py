"""Who is a positive or a negative of whom: the one definition, used by every kernel,
miner and loss.

Anchors ``[N]`` meet references ``[M]``. ``self_index[a]`` is the column of anchor ``a``'s
own sample among the references, or -1 when the anchor is not among them. A positive of
``a`` is a reference ``j != self_index[a]`` with ``a``'s label; a negative is a reference
with another label. Both masks are built by broadcasting, without a host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pair_masks", "self_index"]


def self_index(n: int, device: torch.device, offset: int | None = 0) -> Tensor:
    """``[N]`` int64: anchors are rows ``offset .. offset + n`` of the references, or not
    among them at all (``offset=None``: every entry -1)."""
    if offset is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    return torch.arange(offset, offset + n, dtype=torch.int64, device=device)


def pair_masks(labels: Tensor, ref_labels: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[N, M]`` of anchors ``labels [N]`` against references
    ``ref_labels [M]``, given each anchor's own column ``own [N]`` (see :func:`self_index`).

    Example:
        >>> pos, neg = pair_masks(torch.tensor([0, 0]), torch.tensor([0, 0, 1]), torch.tensor([0, 1]))
        >>> pos.tolist(), neg.tolist()
        ([[False, True, False], [True, False, False]], [[False, False, True], [False, False, True]])
    """
    same = labels[:, None] == ref_labels[None, :]
    columns = torch.arange(ref_labels.shape[0], device=ref_labels.device)
    return same & (columns[None, :] != own[:, None]), ~same
