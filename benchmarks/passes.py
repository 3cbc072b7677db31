"""Counting passes over ``N x M`` data: the memory traffic that sets a fused loss's time on a
GPU (where the ``N x M`` elementwise work is memory-bound and the GEMM is not the cost).

:class:`PassCounter` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`. For every
aten operation it sees (forward and backward alike), it adds up the bytes of the tensors the
operation reads or writes that are *N x M-sized*, and reports them in units of one float32
``N x M`` array (``4 N M`` bytes). Exactly:

- A tensor counts when its ``numel() >= N * M``. A chunk of ``R < N`` rows is smaller and
  would not be seen, so :func:`count_passes` runs the torch kernels in one chunk (it raises
  :func:`tripletkit.kernels.torch_backend.chunk_elements` for the call). Other row blocks
  (the distance matrix's clean-up in :mod:`tripletkit.distances`, blocks of ``2^20``
  entries) are one block up to ``N = M = 1024``: count there.
- The torch kernels' path is that of CUDA tensors: on the CPU they count small ranks by
  comparisons (faster there, more passes); :func:`count_passes` turns that off for the call
  (:data:`tripletkit.kernels.torch_backend.COUNT_RANKS_ON_CPU`).
- Its bytes are ``min(numel * element_size, storage bytes)``: an expanded (stride-0) tensor
  costs its storage, a slice of a larger tensor its own elements.
- An indexed write in place (``scatter_``, ``scatter_add_``, ``scatter_reduce_``,
  ``index_put_``, ``index_add_``...) touches the elements it writes: its destination counts
  ``min(its bytes, numel of the index * element size)``. The index and source count whole.
  Likewise an indexed read (``gather``, ``index``, ``index_select``, ``take``) touches the
  elements it reads: its source counts as many elements as the output has.
- Within one operation each storage counts once (an in-place op's ``self``, read and
  written, counts once; an input passed twice counts once), inputs and outputs together.
- Operations that move no data are not counted: view operations (``func.is_view``: slicing,
  ``view``, ``expand``, ``t``, ``detach``...), ``_unsafe_view``, ``lift_fresh``, and the
  allocations that write nothing (``empty``, ``empty_like``, ``empty_strided``, ``new_empty``).
  Allocations that fill (``zeros``, ``full``...) do count, as the write they are.
- Nothing is timed and no cache is modelled: two ops that read the same matrix count twice.

:func:`count_passes` runs a callable (typically a loss's forward and backward) under the
counter and returns that figure; :func:`cdist_passes` is the reference the targets are
multiples of (``torch.cdist(x, x)`` forward + ``.sum().backward()``, counted the same way).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tripletkit.kernels import torch_backend

__all__ = ["PassCounter", "cdist_passes", "count_passes"]

#: aten operations that allocate without writing, or alias without moving data, beyond
#: those whose schema marks them as views.
_NO_DATA = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view"}
    | {"lift_fresh", "set_", "resize_", "sym_size", "sym_stride", "sym_numel"}
)


#: In-place indexed writes: their destination (argument 0) is touched where indexed only.
_INDEXED_WRITES = frozenset(
    {"scatter_", "scatter_add_", "scatter_reduce_", "index_put_", "_index_put_impl_"}
    | {"index_add_", "index_copy_", "index_fill_", "masked_scatter_"}
)


#: Indexed reads: their source (argument 0) is touched where indexed only.
_INDEXED_READS = frozenset({"gather", "index", "index_select", "take"})


def _index_numel(name: str, args: tuple) -> int:
    if name in ("index_put_", "_index_put_impl_"):
        return max((i.numel() for i in args[1] if isinstance(i, Tensor)), default=0)
    if name == "index_fill_":
        return args[2].numel() * (args[0].numel() // max(args[0].shape[args[1]], 1))
    if name == "masked_scatter_":
        return args[2].numel()
    return args[2].numel()  # scatter*, index_add_, index_copy_: (self, dim, index, ...)


class PassCounter(TorchDispatchMode):
    """Adds up the ``N x M``-sized traffic of every operation while active:
    ``with PassCounter(n, m) as c: ...``, then ``c.passes`` (in float32 ``N x M`` arrays)
    and ``c.by_op`` (the same, by aten operation name). See the module docstring for what
    is counted."""

    def __init__(self, n: int, m: int) -> None:
        super().__init__()
        self.threshold = max(n * m, 1)
        self.unit = 4.0 * self.threshold
        self.bytes = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_DATA:
            return out
        seen: set[int] = set()
        moved = 0
        if name in _INDEXED_WRITES or name in _INDEXED_READS:
            dest = args[0]
            seen.add(dest.untyped_storage().data_ptr())
            if dest.numel() >= self.threshold:
                touched = out.numel() if name in _INDEXED_READS else _index_numel(name, args)
                written = min(dest.numel(), touched)
                moved += min(written * dest.element_size(), dest.untyped_storage().nbytes())
        for t in tree_leaves((args, kwargs, out)):
            if not isinstance(t, Tensor) or t.numel() < self.threshold:
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            moved += min(t.numel() * t.element_size(), storage.nbytes())
        if moved:
            self.bytes += moved
            self.by_op[name] += moved / self.unit
        return out

    @property
    def passes(self) -> float:
        """The traffic so far, in float32 ``N x M`` arrays."""
        return self.bytes / self.unit


def count_passes(fn: Callable[[], Any], n: int, m: int, one_chunk: bool = True) -> float:
    """Run ``fn()`` once under a :class:`PassCounter` for an ``n x m`` problem and return its
    passes over ``N x M`` data (float32 ``N x M`` arrays read or written). With
    ``one_chunk`` the torch kernels process every anchor in one chunk during the call (so
    that their ``N x M`` temporaries are seen whole; the arithmetic is the same).

    Example:
        >>> x = torch.randn(64, 8, requires_grad=True)
        >>> round(count_passes(lambda: torch.cdist(x, x).sum().backward(), 64, 64), 1) > 0
        True
    """
    with _one_chunk(one_chunk), PassCounter(n, m) as counter:
        fn()
    return counter.passes


@contextlib.contextmanager
def _one_chunk(enabled: bool) -> Iterator[None]:
    previous = torch_backend.chunk_elements, torch_backend.COUNT_RANKS_ON_CPU
    if enabled:
        torch_backend.chunk_elements = lambda device: 1 << 62  # type: ignore[assignment]
    torch_backend.COUNT_RANKS_ON_CPU = False  # the path of CUDA tensors (binary searches)
    try:
        yield
    finally:
        torch_backend.chunk_elements, torch_backend.COUNT_RANKS_ON_CPU = previous  # type: ignore[assignment]


def cdist_passes(n: int = 1024, dim: int = 128, seed: int = 0) -> float:
    """The reference: passes of ``torch.cdist(x, x)`` forward + ``.sum().backward()``,
    ``x [n, dim]`` float32."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return count_passes(lambda: torch.cdist(x, x).sum().backward(), n, n)
