"""Who is a positive or a negative of whom: the one definition, used by every kernel,
miner and loss.

Anchors ``[N]`` meet references ``[M]``. ``self_index[a]`` is the column of anchor ``a``'s
own sample among the references, or -1 when the anchor is not among them. The pair of an
anchor with its own sample is never a positive nor a negative, whatever the relation says.

A relation is given in one of three ways:

- **class labels** ``[N]`` and ``[M]`` (integers): a positive of ``a`` is a reference with
  ``a``'s label, a negative one with another label;
- **multi-hot labels** ``[N, L]`` and ``[M, L]`` (:func:`multi_hot_masks`): a positive
  shares at least one label with the anchor, a negative shares none. A sample without any
  label (an all-zero row) shares nothing: it is a negative of every other sample and a
  positive of none;
- **explicit masks** ``positive [N, M]`` and ``negative [N, M]`` (:func:`check_masks`):
  pairs in neither are ignored; a pair in both is an error.

The kernels receive a relation in the slots of the labels: ``labels [N]``/``ref_labels
[M]`` for class labels, or the positive and negative masks ``[N, M]`` (bool, own pairs
already removed) for the other two (:func:`is_mask_relation` tells them apart). Every mask
is built by broadcasting or one matrix product, without a host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "GivenMasks",
    "check_masks",
    "drop_own",
    "given_masks",
    "is_mask_relation",
    "multi_hot_masks",
    "pair_masks",
    "self_index",
]


class GivenMasks(NamedTuple):
    """A function form's ``positive_mask`` / ``negative_mask``, carried in the place of its
    ``labels`` down to :func:`~tripletkit._batch.prepare` (see :func:`given_masks`)."""

    positive: object
    negative: object


def given_masks(labels: object, positive_mask: object, negative_mask: object) -> Any:
    """``labels``, or the masks a function form was given instead (a :class:`GivenMasks`):
    the first line of every function form that takes ``positive_mask`` /
    ``negative_mask``. Raises a ValueError when both labels and masks are given."""
    if positive_mask is None and negative_mask is None:
        return labels
    if labels is not None:
        raise ValueError(
            "give labels or positive_mask/negative_mask, not both: with masks pass "
            "labels=None (and no ref_labels)"
        )
    return GivenMasks(positive_mask, negative_mask)


def self_index(n: int, device: torch.device, offset: int | None = 0) -> Tensor:
    """``[N]`` int64: anchors are rows ``offset .. offset + n`` of the references, or not
    among them at all (``offset=None``: every entry -1)."""
    if offset is None:
        return torch.full((n,), -1, dtype=torch.int64, device=device)
    return torch.arange(offset, offset + n, dtype=torch.int64, device=device)


def is_mask_relation(labels: Tensor) -> bool:
    """Whether the relation in a kernel's label slots is a pair of masks ``[N, M]``."""
    return labels.dim() == 2


def drop_own(pos: Tensor, neg: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """The masks without each anchor's own pair (``own [N]``, -1: none)."""
    columns = torch.arange(pos.shape[1], device=pos.device)
    other = columns[None, :] != own[:, None]
    return pos & other, neg & other


def pair_masks(labels: Tensor, ref_labels: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[N, M]`` of anchors ``labels [N]`` against references
    ``ref_labels [M]``, given each anchor's own column ``own [N]`` (see :func:`self_index`).
    A mask relation (``labels`` and ``ref_labels`` the masks, see the module docstring) is
    returned as it is.

    Examples:
        >>> pos, neg = pair_masks(torch.tensor([0, 0]), torch.tensor([0, 0, 1]), torch.tensor([0, 1]))
        >>> pos.tolist(), neg.tolist()
        ([[False, True, False], [True, False, False]], [[False, False, True], [False, False, True]])
    """
    if is_mask_relation(labels):
        return labels, ref_labels
    same = labels[:, None] == ref_labels[None, :]
    columns = torch.arange(ref_labels.shape[0], device=ref_labels.device)
    return same & (columns[None, :] != own[:, None]), ~same


def multi_hot_masks(labels: Tensor, ref_labels: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``[N, M]`` of multi-hot anchors ``labels [N, L]`` against
    multi-hot references ``ref_labels [M, L]`` (bool): a positive shares at least one label
    (one matrix product ``A B^T > 0``), a negative shares none; own pairs are dropped.

    Examples:
        >>> lab = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)
        >>> pos, neg = multi_hot_masks(lab, lab, torch.arange(4))
        >>> pos.int().tolist()
        [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
        >>> neg.int().tolist()
        [[0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]]
    """
    # float32 counts are exact up to 2**24 shared labels
    shared = labels.to(torch.float32) @ ref_labels.to(torch.float32).T > 0
    return drop_own(shared, ~shared, own)


def check_masks(
    positive_mask: object,
    negative_mask: object,
    n: int,
    m: int,
    device: torch.device,
    require: Callable[[Tensor, Callable[[], Exception]], None] | None,
) -> tuple[Tensor, Tensor]:
    """Validate explicit ``positive_mask`` / ``negative_mask`` ``[N, M]`` bool tensors (at
    least one given; a missing one is the complement of the other). ``require`` (a
    :meth:`~tripletkit._checks.DeviceChecks.require`, or ``None`` with the input checks
    off) receives the check that no pair is in both. Returns both masks, own pairs not yet
    dropped."""
    masks: list[Tensor | None] = []
    for name, mask in (("positive_mask", positive_mask), ("negative_mask", negative_mask)):
        if mask is None:
            masks.append(None)
            continue
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}")
        if tuple(mask.shape) != (n, m):
            raise ValueError(
                f"{name} must have shape [N, M] = [{n}, {m}] (anchors x references), got "
                f"{tuple(mask.shape)}"
            )
        if mask.device != device:
            raise ValueError(f"{name} is on {mask.device} but the embeddings are on {device}")
        masks.append(mask)
    pos, neg = masks
    if pos is None and neg is None:
        raise ValueError("give positive_mask, negative_mask or both")
    if pos is None:
        assert neg is not None
        return ~neg, neg
    if neg is None:
        return pos, ~pos
    if require is not None and pos.numel():
        both = pos & neg

        def error() -> ValueError:
            a, j = (int(v) for v in both.nonzero()[0])
            return ValueError(
                f"positive_mask and negative_mask both hold the pair ({a}, {j}): a pair is a "
                "positive, a negative or neither"
            )

        require(~both, error)
    return pos, neg
