"""The one place that decides which backend runs a kernel.

``backend="auto"`` picks numba for CPU tensors and torch for every other device (and torch
while ``torch.compile`` traces, since a numba call cannot be captured in a graph);
``"torch"`` and ``"numba"`` force one (numba only accepts CPU tensors). ``"streaming"`` (CPU
only) makes the fused losses mine tile by tile without the ``[N, M]`` matrix
(:mod:`.streaming`; every other kernel runs it as numba); ``"auto"`` picks it on CPU when the
matrix would exceed the memory budget (:func:`set_memory_budget`). ``"triton"`` (CUDA, or CPU
under ``TRITON_INTERPRET=1``) makes the fused losses run the Triton kernels of
:mod:`.triton_backend`, also without the matrix (every other kernel runs it as torch);
``"auto"`` never picks it (no GPU has timed it yet). Both backends expose
the same kernels with the same results (see :mod:`.torch_backend` for their contract); this
module converts between tensors and zero-copy numpy views, so callers always get tensors on
the input's device: counts as 0-dim int64 tensors, selections as a
:class:`~.torch_backend.Selection`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice
from . import torch_backend
from .torch_backend import REGIONS, Selection

__all__ = [
    "BACKENDS",
    "REGIONS",
    "Selection",
    "batch_all_hinge",
    "batch_all_soft",
    "batch_hard",
    "get_memory_budget",
    "resolve_backend",
    "semi_hard",
    "set_memory_budget",
    "triplet_counts",
    "triplet_region",
]

BACKENDS = ("auto", "torch", "numba", "streaming", "triton")

# --- streaming switch (issue 18) -------------------------------------------------------------

#: Default of :func:`set_memory_budget`: 1 GiB, a float32 matrix of N = M = 16,384.
DEFAULT_MEMORY_BUDGET = 1 << 30
_memory_budget = [DEFAULT_MEMORY_BUDGET]


def set_memory_budget(nbytes: int | None = None) -> None:
    """Set the largest ``[N, M]`` distance matrix, in bytes, that ``backend="auto"`` builds on
    CPU: above it the fused losses (batch-all, batch-hard, semi-hard) switch to the
    ``"streaming"`` backend, which never holds the matrix. ``None`` restores the default,
    :data:`DEFAULT_MEMORY_BUDGET` (1 GiB). CUDA tensors are not affected.

    Raises:
        TypeError, ValueError: unless ``nbytes`` is a non-negative int or ``None``.
    """
    if nbytes is None:
        nbytes = DEFAULT_MEMORY_BUDGET
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"the memory budget must be an int (bytes), got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"the memory budget must be >= 0 bytes, got {nbytes}")
    _memory_budget[0] = nbytes


def get_memory_budget() -> int:
    """The current memory budget of :func:`set_memory_budget`, in bytes."""
    return _memory_budget[0]


# ---------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: torch.device, matrix_bytes: int | None = None) -> str:
    """Resolve ``"auto"`` to ``"numba"`` on CPU and ``"torch"`` elsewhere (and while
    ``torch.compile`` traces), or to ``"streaming"`` on CPU when ``matrix_bytes`` (the size
    of the ``[N, M]`` matrix a caller would build) exceeds :func:`get_memory_budget`;
    validate the rest."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        cpu = device.type == "cpu" and not torch.compiler.is_compiling()
        if cpu and matrix_bytes is not None and matrix_bytes > _memory_budget[0]:
            return "streaming"
        return "numba" if cpu else "torch"
    if backend in ("numba", "streaming") and device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on CPU tensors only, got a tensor on {device}")
    if backend == "triton":  # issue 18: CUDA, or CPU under Triton's interpreter
        _check_triton(device)
    return backend


def _check_triton(device: torch.device) -> None:
    from .triton_backend import available, interpreted

    if not (device.type == "cuda" or (device.type == "cpu" and interpreted())):
        raise ValueError(
            f"backend='triton' runs on CUDA tensors (or on CPU tensors with the environment "
            f"variable TRITON_INTERPRET=1: Triton's interpreter), got a tensor on {device}"
        )
    if not available():
        raise ValueError("backend='triton' needs triton: pip install 'tripletkit[gpu]'")


def _torch_path(backend: str, device: torch.device) -> bool:
    """Whether a matrix kernel runs in torch: the torch backend, and the triton backend's
    kernels other than the fused losses' (which never reach this module's matrix kernels)."""
    return resolve_backend(backend, device) in ("torch", "triton")


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


def _count(value: int, like: Tensor) -> Tensor:
    return torch.tensor(value, dtype=torch.int64, device=like.device)


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
    margin: float | Tensor,
    backend: str,
    width: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """See :func:`.torch_backend.batch_all_hinge` (``width`` only matters to torch)."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if _torch_path(backend, dist.device):
        return torch_backend.batch_all_hinge(*args, margin, width)
    total, n_valid, n_active, grad = _numba("batch_all_hinge", *map(_np, args), float(margin))
    return (
        torch.tensor(total, dtype=args[0].dtype),
        _count(n_valid, dist),
        _count(n_active, dist),
        _to_torch(grad, dist),
    )


def batch_all_soft(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    backend: str,
    width: int | None = None,
    margin: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """See :func:`.torch_backend.batch_all_soft` (``softplus(d_ap - d_an + margin)``); the
    torch backend needs ``width`` (an upper bound on any anchor's number of positives), the
    numba backend ignores it."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if _torch_path(backend, dist.device):
        if width is None:
            raise ValueError("the torch soft-margin batch-all kernel needs a width")
        return torch_backend.batch_all_soft(*args, width, margin)
    total, n_valid, grad = _numba("batch_all_soft", *map(_np, args), float(margin))
    return torch.tensor(total, dtype=args[0].dtype), _count(n_valid, dist), _to_torch(grad, dist)


def _listed(result: tuple, like: Tensor) -> Selection:
    a, p, n = (_to_torch(x, like).to(torch.int64) for x in result)
    return Selection(a, p, n, None)


def batch_hard(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    backend: str,
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
) -> Selection:
    """See :func:`.torch_backend.batch_hard` (numba: the valid rows, listed)."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if _torch_path(backend, dist.device):
        return torch_backend.batch_hard(*args, positive_ranks, negative_ranks)
    arrays = map(_np, args)
    return _listed(_numba("batch_hard", *arrays, positive_ranks, negative_ranks), dist)


def semi_hard(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    backend: str,
    width: int | None = None,
) -> Selection:
    """See :func:`.torch_backend.semi_hard` (numba: the valid rows, listed)."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if _torch_path(backend, dist.device):
        return torch_backend.semi_hard(*args, width)
    return _listed(_numba("semi_hard", *map(_np, args)), dist)


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
    if _torch_path(backend, dist.device):
        return torch_backend.triplet_region(*args, margin, region)
    a, p, n, _ = _listed(_numba("triplet_region", *map(_np, args), float(margin), region), dist)
    return a, p, n


def triplet_counts(
    dist: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    margin: float,
    backend: str,
) -> Tensor:
    """See :func:`.torch_backend.triplet_counts`: ``[valid, easy, semi_hard, hard]``."""
    args = _prepare(dist, labels, ref_labels, self_index)
    if _torch_path(backend, dist.device):
        return torch_backend.triplet_counts(*args, margin)
    counts = _numba("triplet_counts", *map(_np, args), float(margin))
    return torch.tensor(counts, dtype=torch.int64, device=dist.device)
