"""The common first step of every miner, loss, statistic and distributed path.

:func:`prepare` turns user input into a :class:`Batch`: validated anchors and references
(normalised if asked), both label vectors, where each anchor sits among the references
(``self_index``, which excludes the pair ``(a, a)``), the resolved kernel backend and, when a
how to compute the ``[N, M]`` distance matrix (:meth:`Batch.distances`). Every check that
can fail runs before the matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import _masks
from ._checks import (
    DeviceChecks,
    check_bool,
    check_choice,
    check_nonnegative_int,
    check_pair,
    to_host,
)
from .distances import METRICS, _pairwise_distance_unchecked, normalize_embeddings
from .kernels import BACKENDS, resolve_backend

__all__ = ["Batch", "WidthMemory", "check_anchor_offset", "check_options", "prepare"]


@dataclass(frozen=True)
class Batch:
    """A validated mining problem.

    Attributes:
        embeddings: ``[N, D]`` anchors as used (cast to the compute dtype, normalised if asked).
        labels: ``[N]`` int64 anchor labels; for multi-hot labels or explicit masks, the
            positive mask ``[N, M]`` (bool, own pairs removed: see :mod:`tripletkit._masks`).
        ref_embeddings: ``[M, D]`` references as used (the anchors themselves by default:
            the same tensor object).
        ref_labels: ``[M]`` int64 reference labels; or the negative mask ``[N, M]``.
        self_index: ``[N]`` int64, each anchor's own column among the references or -1.
        backend: the kernel backend that runs on these tensors, ``"torch"``, ``"numba"`` or
            ``"streaming"`` (the fused losses stream tiles; other kernels run as numba).
        metric: the metric of :meth:`distances`.
        width: an upper bound on any anchor's number of positives, when known on the host
            (given as ``max_positives``, or read with the checks); else ``None``.
    """

    embeddings: Tensor
    labels: Tensor
    ref_embeddings: Tensor
    ref_labels: Tensor
    self_index: Tensor
    backend: str
    metric: str = "euclidean"
    width: int | None = None

    def distances(self, grad: bool = False) -> Tensor:
        """The ``[N, M]`` distance matrix, in the autograd graph when ``grad`` (and grad mode
        is on), else detached."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return _pairwise_distance_unchecked(self.embeddings, self.ref_embeddings, self.metric)

    @property
    def masked(self) -> bool:
        """Whether the relation is a pair of masks (multi-hot labels or explicit masks)."""
        return _masks.is_mask_relation(self.labels)

    def masks(self) -> tuple[Tensor, Tensor]:
        """Positive and negative masks ``[N, M]`` (see :func:`tripletkit._masks.pair_masks`)."""
        return _masks.pair_masks(self.labels, self.ref_labels, self.self_index)

    def positive_counts(self) -> Tensor:
        """``[N]`` int64: each anchor's number of positives, from the label histogram of the
        references (O(M log M), no ``N x M`` pass; a mask relation counts its rows)."""
        if self.masked:
            return self.labels.sum(dim=1)
        ref_sorted = self.ref_labels.sort().values
        labels = self.labels.contiguous()  # searchsorted copies (and warns about) strided input
        same = torch.searchsorted(ref_sorted, labels, right=True) - torch.searchsorted(
            ref_sorted, labels
        )
        own = self.self_index.clamp_min(0)
        if self.ref_labels.numel() == 0:
            return same
        own_is_same = (self.self_index >= 0) & (self.ref_labels[own] == self.labels)
        return same - own_is_same.to(torch.int64)


def _placeholder(x: object, name: str) -> Tensor:
    """Labels for the checks of ``x`` when explicit masks give the relation."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [N, D]")
    return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)


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


def _overflow_free(emb: Tensor, ref: Tensor) -> Tensor:
    """Euclidean distances are finite when the largest squared norms add up to a finite
    number (``|x - y|^2 <= 2 |x|^2 + 2 |y|^2``): an O(N D) check instead of an O(N M) one."""
    largest = 2 * (emb * emb).sum(dim=1).max() + 2 * (ref * ref).sum(dim=1).max()
    return torch.isfinite(largest)


def _overflow_error() -> ValueError:
    return ValueError(
        "distances overflow to inf: the embeddings are too large for their dtype; "
        "scale or normalise them (normalize=True)"
    )


def _unit_norm_tolerance(*dtypes: torch.dtype) -> float:
    return max(max(1e-3, 4 * torch.finfo(dt).eps) for dt in dtypes)


def _require_unit_norm(
    checks: DeviceChecks, x: Tensor, name: str, tol: float, needed_by: str
) -> None:
    if not x.numel():
        return
    err = (x.detach().norm(dim=1) - 1).abs()

    def error() -> ValueError:
        worst = int(err.argmax())
        return ValueError(
            f"{needed_by} needs unit-norm {name}, but row {worst} has norm "
            f"{float(x[worst].detach().norm()):.6g} (tolerance {tol:g}); L2-normalise them or "
            "pass normalize=True"
        )

    checks.require(err <= tol, error)


class WidthMemory:
    """A loss module's memory of its batches' largest number of positives per anchor, so that
    with the input checks off it needs no bound (``max_positives``) and no host read per call.

    - Checks on: each batch's largest count is read anyway (in the call's one host read);
      the memory keeps the largest seen, rounded up to a power of two.
    - Checks off, nothing remembered yet: the first batch's count is read (one host read, once
      per module), unless under ``torch.compile``, where the width-free paths run instead.
    - Checks off, a width remembered: it is used as the bound, and verified on the device by
      ``torch._assert_async`` (no host read). A batch with an anchor of more positives fails
      with a ``RuntimeError`` naming ``max_positives`` (on CUDA a device-side assertion,
      which ends the process's CUDA context): give the loss a true bound for such data.

    Only batches mined against themselves are remembered: with a reference set (a memory
    bank that fills up) the count changes from call to call, so it follows ``max_positives``
    (or, without it, the width-free paths).
    """

    def __init__(self) -> None:
        self.width: int | None = None

    def remember(self, count: int) -> int:
        """Keep ``count`` (rounded up to a power of two, at least the width already kept)."""
        rounded = 1 << max(count - 1, 0).bit_length()
        self.width = max(rounded, self.width or 0)
        return self.width


def _width(
    b: Batch, checks: DeviceChecks, max_positives: int | None, need_width: bool
) -> Tensor | int | None:
    """The width of the positive slots: the caller's bound (checked against the batch when
    checks are on), the batch's largest positive count read with the checks, or ``None``."""
    if max_positives is not None:
        if checks.enabled and b.labels.numel():
            counts = b.positive_counts()

            def error() -> ValueError:
                worst = int(counts.argmax())
                return ValueError(
                    f"max_positives={max_positives}, but anchor {worst} has "
                    f"{int(counts[worst])} positives"
                )

            checks.require(counts <= max_positives, error)
        return max_positives
    if b.labels.numel() == 0:
        return 0
    if need_width and checks.enabled:
        return b.positive_counts().max()
    return None


def _remembered_width(b: Batch, memory: WidthMemory) -> int | None:
    """The width of a module's batch with the checks off (see :class:`WidthMemory`)."""
    if b.labels.numel() == 0:
        return 0
    largest = b.positive_counts().max()
    if memory.width is None:
        if torch.compiler.is_compiling():
            return None
        return memory.remember(int(to_host(largest.reshape(1))[0]))
    torch._assert_async(
        largest <= memory.width,
        f"an anchor has more positives than {memory.width}, the bound this loss module "
        "remembered from its earlier batches; pass max_positives= (a bound for every batch, "
        "e.g. PKBatchSampler.max_positives) or turn the input checks on",
    )
    return memory.width


def prepare(
    embeddings: Tensor,
    labels: Tensor | _masks.GivenMasks | None,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    metric: str = "euclidean",
    matrix: bool = True,
    normalize: bool = False,
    backend: str = "auto",
    max_positives: int | WidthMemory | None = None,
    need_width: bool = False,
    unit_norm: str | None = None,
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Batch:
    """Validate the inputs: the first step of every miner, loss, statistic and distributed
    path. The distance matrix is then :meth:`Batch.distances`; ``matrix=False`` says none will
    be computed (explicit index lists, label-only samplers), which skips its overflow check.

    Without a reference set the anchors are their own references. With one, the anchors are
    taken to be different samples from every reference, unless ``anchor_offset`` says they
    are rows ``anchor_offset : anchor_offset + N`` of it (a gathered global batch, say).

    Every check of tensor values (finite embeddings, no overflow of the distances, unit norms
    when ``unit_norm`` names what needs them, the caller's ``max_positives`` bound) is read in **one** host read,
    none at all with :func:`~tripletkit.set_input_checks` off. ``need_width`` asks for the
    batch's largest number of positives (:attr:`Batch.width`), read in that same host read
    when checks are on (``None`` when they are off and no ``max_positives`` is given). A
    loss module passes its :class:`WidthMemory` as ``max_positives`` instead of a bound.

    Multi-hot labels ``[N, L]`` / ``[M, L]``, or explicit ``positive_mask`` /
    ``negative_mask`` ``[N, M]`` (then ``labels`` and ``ref_labels`` are ``None``), give a
    mask relation (:mod:`tripletkit._masks`): the batch carries the two masks in its label
    slots. The streaming backend does not take one (the masks are ``[N, M]`` already):
    ``"auto"`` then runs numba.
    """
    check_options(normalize=normalize, metric=metric)
    memory = max_positives if isinstance(max_positives, WidthMemory) else None
    if memory is not None and (ref_embeddings is not None or not need_width):
        memory = max_positives = None  # only batches mined against themselves are remembered
    elif max_positives is not None and memory is None:
        max_positives = check_nonnegative_int(max_positives, "max_positives")
    checks = DeviceChecks()
    if isinstance(labels, _masks.GivenMasks):
        positive_mask, negative_mask = labels  # type: ignore[assignment]
        labels = None
    given_masks = positive_mask is not None or negative_mask is not None
    if given_masks:
        if labels is not None or ref_labels is not None:
            raise ValueError(
                "give labels or positive_mask/negative_mask, not both (pass labels=None and "
                "no ref_labels with the masks)"
            )
        labels = _placeholder(embeddings, "embeddings")
        if ref_embeddings is not None:
            ref_labels = _placeholder(ref_embeddings, "ref_embeddings")
    elif labels is None:
        raise TypeError(
            "labels must be a torch.Tensor (None only with positive_mask/negative_mask)"
        )
    emb, lab, ref, ref_lab = check_pair(
        embeddings, labels, ref_embeddings, ref_labels, checks, multi_hot=True
    )
    has_ref = ref is not None and ref_lab is not None
    m = ref.shape[0] if ref is not None else emb.shape[0]
    matrix_bytes = emb.shape[0] * m * emb.element_size() if matrix else None  # issue 18
    resolved = resolve_backend(backend, emb.device, matrix_bytes)
    offset = check_anchor_offset(anchor_offset, emb.shape[0], m, has_ref)
    if unit_norm and checks.enabled and not normalize:
        dtypes = [emb.dtype, embeddings.dtype] + ([ref_embeddings.dtype] if has_ref else [])  # type: ignore[union-attr]
        tol = _unit_norm_tolerance(*dtypes)
        _require_unit_norm(checks, emb, "embeddings", tol, unit_norm)
        if ref is not None:
            _require_unit_norm(checks, ref, "ref_embeddings", tol, unit_norm)
    if normalize:
        emb = normalize_embeddings(emb)
        ref = normalize_embeddings(ref) if ref is not None else None
    if ref is None or ref_lab is None:
        ref, ref_lab = emb, lab
    if matrix and metric != "cosine" and checks.enabled and emb.numel() and ref.numel():
        checks.require(_overflow_free(emb, ref), _overflow_error)
    own = _masks.self_index(emb.shape[0], emb.device, offset)
    if given_masks:
        require = checks.require if checks.enabled else None
        masks = _masks.check_masks(
            positive_mask, negative_mask, emb.shape[0], m, emb.device, require
        )
        lab, ref_lab = _masks.drop_own(*masks, own)
    elif lab.dim() == 2:
        lab, ref_lab = _masks.multi_hot_masks(lab, ref_lab, own)
    if lab.dim() == 2 and resolved == "triton":
        raise ValueError(
            "backend='triton' does not take multi-hot labels or positive_mask/negative_mask "
            "(its kernels compare class labels inside each tile): use backend='torch'"
        )
    if lab.dim() == 2 and resolved == "streaming":
        if backend == "streaming":
            raise ValueError(
                "backend='streaming' does not take multi-hot labels or positive_mask/"
                "negative_mask (their [N, M] masks are what streaming avoids): use "
                "backend='numba' or 'torch'"
            )
        resolved = "numba"
    b = Batch(emb, lab, ref, ref_lab, own, resolved, metric)
    width: Tensor | int | None
    if memory is not None and not checks.enabled:
        width = _remembered_width(b, memory)
    else:
        bound = None if isinstance(max_positives, WidthMemory) else max_positives
        width = _width(b, checks, bound, need_width)
    read = checks.run(*([width] if isinstance(width, Tensor) else []))
    if isinstance(width, Tensor):
        width = read[0]
        if memory is not None:
            memory.remember(int(width))
    return replace(b, width=width)
