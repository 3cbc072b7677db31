"""The one place that decides which backend runs a kernel.

``backend="auto"`` picks numba for CPU tensors and torch for every other device;
``"torch"`` and ``"numba"`` force one (numba only accepts CPU tensors). Both backends
expose the same kernels with the same results (see :mod:`.torch_backend` for their
contract); this module converts between tensors and zero-copy numpy views.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice
from . import torch_backend

__all__ = [
    "BACKENDS",
    "REGIONS",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "resolve_backend",
    "semi_hard",
    "triplet_counts",
    "triplet_region",
]

BACKENDS = ("auto", "torch", "numba")
REGIONS = torch_backend.REGIONS


def resolve_backend(backend: str, device: torch.device) -> str:
    """Resolve ``"auto"`` to ``"numba"`` on CPU and ``"torch"`` elsewhere; validate the rest."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' runs on CPU tensors only, got a tensor on {device}")
    return backend


def _numba(kernel: str, *args: Any) -> Any:
    """Run a kernel of :mod:`.numba_backend`, imported lazily (compiling is only paid when
    used). numba's OpenMP pool resets the process-wide OpenMP thread count when it starts,
    which would silently undo a user's ``torch.set_num_threads``: torch's setting is
    restored after every call."""
    from . import numba_backend

    threads = torch.get_num_threads()
    try:
        return getattr(numba_backend, kernel)(*args)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _to_torch(a: Any, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.device)


def _prepare(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dist = dist.detach()
    if dist.dtype not in (torch.float32, torch.float64):
        dist = dist.float()  # kernels compute in float32 or float64
    return (
        dist.contiguous(),
        labels.contiguous(),
        ref_labels.contiguous(),
        self_index.contiguous(),
    )


def batch_all_hinge(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    backend: str,
) -> tuple[Tensor, int, int, Tensor]:
    """See :func:`.torch_backend.batch_all_hinge`."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.batch_all_hinge(*args, margin)
    total, n_valid, n_active, grad = _numba("batch_all_hinge", *map(_np, args), float(margin))
    return (
        torch.tensor(total, dtype=dist.dtype),
        int(n_valid),
        int(n_active),
        _to_torch(grad, dist),
    )


def batch_all_soft(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, backend: str
) -> tuple[Tensor, int, Tensor]:
    """See :func:`.torch_backend.batch_all_soft`."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.batch_all_soft(*args)
    total, n_valid, grad = _numba("batch_all_soft", *map(_np, args))
    return torch.tensor(total, dtype=dist.dtype), int(n_valid), _to_torch(grad, dist)


def _indices(result: tuple, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a, p, n = (_to_torch(x, like).to(torch.int64) for x in result)
    return a, p, n


def batch_hard(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`.torch_backend.batch_hard`."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.batch_hard(*args)
    return _indices(_numba("batch_hard", *map(_np, args)), dist)


def semi_hard(
    dist: Tensor, labels: Tensor, ref_labels: Tensor, self_index: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`.torch_backend.semi_hard`."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.semi_hard(*args)
    return _indices(_numba("semi_hard", *map(_np, args)), dist)


def triplet_region(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    region: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`.torch_backend.triplet_region`."""
    check_choice("region", region, REGIONS)
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.triplet_region(*args, margin, region)
    return _indices(_numba("triplet_region", *map(_np, args), float(margin), region), dist)


def triplet_counts(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    backend: str,
) -> tuple[int, int, int, int]:
    """See :func:`.torch_backend.triplet_counts`."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if resolve_backend(backend, dist.device) == "torch":
        return torch_backend.triplet_counts(*args, margin)
    valid, easy, semi, hard = _numba("triplet_counts", *map(_np, args), float(margin))
    return int(valid), int(easy), int(semi), int(hard)
