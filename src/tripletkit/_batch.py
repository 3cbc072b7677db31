"""The common first step of every miner, loss, statistic and distributed path.

:func:`prepare` turns user input into a :class:`Batch`: validated anchors and references
(normalised if asked), both label vectors, where each anchor sits among the references
(``self_index``, which excludes the pair ``(a, a)``), the resolved kernel backend and, when a
metric is given, the ``[N, M]`` distance matrix. Every check that can fail runs before the
matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import _masks
from ._checks import check_bool, check_choice, check_pair
from .distances import METRICS, _pairwise_distance_unchecked, normalize_embeddings
from .kernels import BACKENDS, resolve_backend

__all__ = ["Batch", "check_anchor_offset", "check_options", "prepare"]


@dataclass(frozen=True)
class Batch:
    """A validated mining problem.

    Attributes:
        embeddings: ``[N, D]`` anchors as used (cast to the compute dtype, normalised if asked).
        labels: ``[N]`` int64 anchor labels.
        ref_embeddings: ``[M, D]`` references as used (the anchors themselves by default).
        ref_labels: ``[M]`` int64 reference labels.
        self_index: ``[N]`` int64, each anchor's own column among the references or -1.
        backend: the kernel backend that runs on these tensors, ``"torch"`` or ``"numba"``.
        dist: ``[N, M]`` distances from each anchor to each reference (in the autograd graph
            when the embeddings require grad and ``grad=True``), or ``None`` when
            :func:`prepare` was asked for no metric.
    """

    embeddings: Tensor
    labels: Tensor
    ref_embeddings: Tensor
    ref_labels: Tensor
    self_index: Tensor
    backend: str
    dist: Tensor | None = None

    @property
    def distances(self) -> Tensor:
        """:attr:`dist`, which must have been computed."""
        if self.dist is None:  # a programming error inside tripletkit, not user input
            raise RuntimeError("prepare() was called with metric=None: no distance matrix")
        return self.dist

    def masks(self) -> tuple[Tensor, Tensor]:
        """Positive and negative masks ``[N, M]`` (see :func:`tripletkit._masks.pair_masks`)."""
        return _masks.pair_masks(self.labels, self.ref_labels, self.self_index)


def check_anchor_offset(anchor_offset: object, n: int, m: int, has_ref: bool) -> int | None:
    """Validate ``anchor_offset``: where the anchors sit among the references, if they do.
    Returns the offset, or ``None`` when the anchors are not among the references."""
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


def check_options(**options: object) -> dict[str, object]:
    """Validate the options that :func:`prepare` takes (any of ``metric``, ``normalize``,
    ``backend``) and return them: modules check them once, when they are built."""
    checks = {
        "metric": lambda v: check_choice("metric", v, METRICS),
        "normalize": lambda v: check_bool(v, "normalize"),
        "backend": lambda v: check_choice("backend", v, BACKENDS),
    }
    return {name: checks[name](value) for name, value in options.items()}


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


def prepare(
    embeddings: Tensor,
    labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    metric: str | None = "euclidean",
    normalize: bool = False,
    backend: str = "auto",
    grad: bool = True,
) -> Batch:
    """Validate the inputs and, unless ``metric`` is ``None``, compute the distance matrix.

    Without a reference set the anchors are their own references. With one, the anchors are
    taken to be different samples from every reference, unless ``anchor_offset`` says they
    are rows ``anchor_offset : anchor_offset + N`` of it (a gathered global batch, say).
    ``grad=False`` computes the distances without an autograd graph (miners, statistics).
    """
    check_options(normalize=normalize, **({} if metric is None else {"metric": metric}))
    emb, lab, ref, ref_lab = check_pair(embeddings, labels, ref_embeddings, ref_labels)
    resolved = resolve_backend(backend, emb.device)
    has_ref = ref is not None and ref_lab is not None
    m = ref.shape[0] if ref is not None else emb.shape[0]
    offset = check_anchor_offset(anchor_offset, emb.shape[0], m, has_ref)
    if normalize:
        emb = normalize_embeddings(emb)
        ref = normalize_embeddings(ref) if ref is not None else None
    if ref is None or ref_lab is None:
        ref, ref_lab = emb, lab
    own = _masks.self_index(emb.shape[0], emb.device, offset)
    dist = None
    if metric is not None:
        if metric != "cosine":
            _check_no_overflow(emb, ref)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            dist = _pairwise_distance_unchecked(emb, ref, metric)
    return Batch(emb, lab, ref, ref_lab, own, resolved, dist)
