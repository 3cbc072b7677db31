"""Counting host synchronisations: the operations that make a CUDA device report back to the
host, stalling the pipeline until it has caught up.

Two counters, used by the sync audit of :mod:`benchmarks.gpu`:

- :class:`SyncCounter`, on any device: a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
  that sees every aten operation and counts those that read device values on the host
  (``.item()``, ``nonzero``, boolean-mask indexing, ``repeat_interleave`` without
  ``output_size``...), plus tripletkit's own host reads (:func:`tripletkit._checks.to_host`,
  through ``HOST_READ_HOOKS``; ``Tensor.tolist`` is not an aten operation). It is a proxy: on
  the CPU nothing actually waits, and a copy from the host to the device (which also
  synchronises, from pageable memory) is not seen.
- :class:`CudaSyncWarnings`, on CUDA only: ``torch.cuda.set_sync_debug_mode("warn")`` makes
  every synchronising CUDA call emit a ``UserWarning``; the warnings of the block are
  recorded and counted. This is the ground truth on a GPU.

:func:`count_syncs` runs a callable under the right counters for its device.

The test suite counts with the same :class:`SyncCounter` (``tests/syncs.py`` imports it;
the benchmarks never import from the tests).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from tripletkit import _checks

__all__ = ["SYNCING_OPS", "CudaSyncWarnings", "SyncCounter", "count_syncs"]

#: aten operations that read device values on the host (sizes of data-dependent outputs,
#: Python scalars). ``repeat_interleave`` is one only without ``output_size`` and
#: ``index``/``index_put`` only with a boolean index; both are handled by :class:`SyncCounter`.
SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",  # int(), float(), bool(), .item()
        "nonzero",
        "masked_select",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "unique_dim_consecutive",
    }
)

#: What a synchronising CUDA call's warning says under ``set_sync_debug_mode("warn")``.
_SYNC_WARNING = "synchroniz"


def _bool_index(indices: Any) -> bool:
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts synchronising operations while active: ``with SyncCounter() as c: ...``, then
    ``c.total`` and ``c.counts`` (by operation name; ``"to_host"`` for tripletkit's reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.counts[name] += 1
        elif (
            name == "repeat_interleave"
            and func._overloadname == "Tensor"  # repeats given as a tensor
            and kwargs.get("output_size") is None
        ):
            self.counts["repeat_interleave without output_size"] += 1
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and _bool_index(
            args[1] if len(args) > 1 else None
        ):
            self.counts[f"{name} with a boolean mask"] += 1
        return func(*args, **kwargs)

    def _host_read(self, _values: Tensor) -> None:
        self.counts["to_host"] += 1

    def __enter__(self) -> SyncCounter:
        _checks.HOST_READ_HOOKS.append(self._host_read)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        _checks.HOST_READ_HOOKS.remove(self._host_read)
        super().__exit__(*exc)

    @property
    def total(self) -> int:
        """Synchronising operations seen so far."""
        return sum(self.counts.values())


class CudaSyncWarnings:
    """Records the synchronising CUDA calls of a block: ``with CudaSyncWarnings() as w: ...``,
    then ``w.total`` and ``w.messages`` (distinct warning texts, first lines).

    Sets ``torch.cuda.set_sync_debug_mode("warn")`` for the block (restoring the previous
    mode afterwards) and records every warning, without de-duplication (each synchronising
    call warns once). Warnings raised in the autograd engine's device threads during
    ``backward()`` are replayed on the calling thread, so they are counted too.
    """

    def __init__(self) -> None:
        self.total = 0
        self.messages: Counter[str] = Counter()
        self._catch: warnings.catch_warnings[list[warnings.WarningMessage]] | None = None
        self._records: list[warnings.WarningMessage] | None = None
        self._previous: int = 0

    def __enter__(self) -> CudaSyncWarnings:
        torch.cuda.synchronize()  # work queued before the block is not the block's
        self._previous = torch.cuda.get_sync_debug_mode()
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        torch.cuda.set_sync_debug_mode(self._previous)
        assert self._catch is not None and self._records is not None
        self._catch.__exit__(exc_type, exc, tb)
        for w in self._records:
            text = str(w.message)
            if _SYNC_WARNING in text.lower():
                self.total += 1
                self.messages[text.strip().splitlines()[0][:200]] += 1


def count_syncs(fn: Callable[[], object], device: str) -> dict[str, Any]:
    """Run ``fn`` once and count its host synchronisations.

    On CUDA both counters run: ``syncs`` is what ``set_sync_debug_mode`` reported (the ground
    truth) and ``dispatch_syncs`` the dispatch counter's figure (a cross-check: a difference
    points to a synchronisation the proxy cannot see, such as a host-to-device copy). On the
    CPU only the dispatch counter runs and ``syncs`` is its figure.

    Returns:
        ``{"syncs", "how", "counts"}`` (``counts``: by operation, from the dispatch
        counter), plus ``dispatch_syncs`` and ``warnings`` (distinct texts) on CUDA.
    """
    if device == "cuda":
        with CudaSyncWarnings() as cuda, SyncCounter() as counter:
            fn()  # no synchronize() in the block: it would be counted as one
        return {
            "syncs": cuda.total,
            "how": 'torch.cuda.set_sync_debug_mode("warn")',
            "counts": dict(counter.counts),
            "dispatch_syncs": counter.total,
            "warnings": dict(cuda.messages),
        }
    with SyncCounter() as counter:
        fn()
    return {
        "syncs": counter.total,
        "how": "dispatch counter (CPU proxy)",
        "counts": dict(counter.counts),
    }
