"""The common first step of every miner and loss: validate, measure, find the positives.

:func:`prepare` turns user input into a :class:`Batch`: the ``[N, M]`` distance matrix
between anchors and references, both label vectors, and where each anchor sits among the
references (``self_index``), which is what excludes the pair ``(a, a)`` from the positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_bool, check_choice, check_pair
from .distances import METRICS, _pairwise_distance_unchecked, normalize_embeddings
from .kernels import self_index_for

__all__ = ["Batch", "prepare", "prepare_rows"]


@dataclass(frozen=True)
class Batch:
    """A validated mining problem.

    Attributes:
        dist: ``[N, M]`` distances from each anchor to each reference (in the autograd graph
            when the embeddings require grad and ``prepare`` was called with grad enabled).
        labels: ``[N]`` int64 anchor labels.
        ref_labels: ``[M]`` int64 reference labels.
        self_index: ``[N]`` int64, each anchor's own column among the references or -1.
        embeddings: ``[N, D]`` anchors as used (cast to the compute dtype, normalised if asked).
        ref_embeddings: ``[M, D]`` references as used.
    """

    dist: Tensor
    labels: Tensor
    ref_labels: Tensor
    self_index: Tensor
    embeddings: Tensor
    ref_embeddings: Tensor


def check_anchor_offset(anchor_offset: object, n: int, m: int, has_ref: bool) -> int | None:
    """Validate ``anchor_offset``: where the anchors sit among the references, if they do."""
    if anchor_offset is None:
        return 0 if not has_ref else None
    if isinstance(anchor_offset, bool) or not isinstance(anchor_offset, int):
        raise TypeError(f"anchor_offset must be an int or None, got {type(anchor_offset).__name__}")
    if not has_ref:
        if anchor_offset != 0:
            raise ValueError(
                "anchor_offset needs ref_embeddings: without them the anchors are the references"
            )
        return 0
    if anchor_offset < 0 or anchor_offset + n > m:
        raise ValueError(
            f"anchor_offset={anchor_offset} places {n} anchors outside the {m} references"
        )
    return anchor_offset


def _check_no_overflow(emb: Tensor, ref: Tensor) -> None:
    """Euclidean distances are finite when the largest squared norms add up to a finite
    number (``|x - y|^2 <= 2 |x|^2 + 2 |y|^2``): an O(N D) check instead of an O(N M) one."""
    if not emb.numel() or not ref.numel():
        return
    largest = 2 * (emb * emb).sum(dim=1).max() + 2 * (ref * ref).sum(dim=1).max()
    if not bool(torch.isfinite(largest)):
        raise ValueError(
            "distances overflow to inf: the embeddings are too large for their dtype; "
            "scale or normalise them (normalize=True)"
        )


def prepare_rows(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    normalize: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate the inputs, L2-normalise them if asked, and default the references to the
    embeddings: ``(embeddings [N, D], labels [N], ref_embeddings [M, D], ref_labels [M])``.
    The first step of :func:`prepare`, and all that losses over explicit indices need."""
    check_bool(normalize, "normalize")
    emb, lab, ref, ref_lab = check_pair(embeddings, labels, ref_embeddings, ref_labels)
    if normalize:
        emb = normalize_embeddings(emb)
        ref = normalize_embeddings(ref) if ref is not None else None
    if ref is None or ref_lab is None:
        return emb, lab, emb, lab
    return emb, lab, ref, ref_lab


def prepare(
    embeddings: Tensor,
    labels: Tensor,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    metric: str = "euclidean",
    normalize: bool = False,
    anchor_offset: int | None = None,
) -> Batch:
    """Validate the inputs and compute the distance matrix (see :class:`Batch`).

    Without a reference set the anchors are their own references. With one, the anchors are
    taken to be different samples from every reference, unless ``anchor_offset`` says they
    are rows ``anchor_offset : anchor_offset + N`` of it (a gathered global batch, say).
    """
    check_choice("metric", metric, METRICS)
    emb, lab, ref, ref_lab = prepare_rows(
        embeddings, labels, ref_embeddings, ref_labels, normalize=normalize
    )
    offset = check_anchor_offset(
        anchor_offset, emb.shape[0], ref.shape[0], has_ref=ref_embeddings is not None
    )
    if metric != "cosine":
        _check_no_overflow(emb, ref)
    dist = _pairwise_distance_unchecked(emb, ref, metric)
    self_index = self_index_for(emb.shape[0], emb.device, offset)
    return Batch(dist, lab, ref_lab, self_index, emb, ref)


def no_grad_prepare(*args: object, **kwargs: object) -> Batch:
    """:func:`prepare` without building an autograd graph (for miners and statistics)."""
    with torch.no_grad():
        return prepare(*args, **kwargs)  # type: ignore[arg-type]
