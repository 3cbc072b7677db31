"""Counting host synchronisations and host<->device transfers: the operations that make a
CUDA device report back to the host, or wait for the host, stalling the pipeline.

Three tools, each with what it can and cannot see:

- :class:`SyncCounter`, on any device: a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
  that sees every aten operation and counts those that read device values on the host
  (``.item()``, ``nonzero``, boolean-mask indexing, ``repeat_interleave`` without
  ``output_size``...), plus tripletkit's own host reads (:func:`tripletkit._checks.to_host`,
  through ``HOST_READ_HOOKS``; ``Tensor.tolist`` is not an aten operation). It is a proxy:
  on the CPU nothing actually waits, and it does not see copies between the host and the
  device (on the CPU there are none to see).
- :class:`TransferCounter`, on any device but the CPU, meant for ``meta`` tensors (no GPU
  needed): everything :class:`SyncCounter` counts, plus copies of CPU tensors onto the
  device (``torch.zeros(()).to(device)``), device tensors built from Python data
  (``torch.tensor(v, device=...)``, ``new_tensor``: they copy from host memory below the
  dispatcher, so these factories are wrapped while it is active), CPU index tensors mixed
  into device operations, and copies back to the host. On ``meta`` a read has no value: it
  is counted and answered with a stand-in so that the run goes on. Why ``meta``: every op
  tripletkit uses has a meta kernel, nothing is computed (sizes of 16,384 cost nothing), and
  no value can leak into a Python branch unseen. A ``FakeTensorMode`` with a fake ``"cuda"``
  device would show ``torch.tensor(v, device="cuda")`` as a dispatched copy too, but on a
  CPU-only build of torch several ops then fail on the missing CUDA runtime. What it cannot
  see: what CUDA does by itself (allocator synchronisations, ``cudaMemGetInfo``), the
  difference between pageable and pinned memory, and code paths taken only for real values
  (the label layout cannot change which ops run without a read, and any read is counted).
- :class:`CudaSyncWarnings`, on CUDA only: ``torch.cuda.set_sync_debug_mode("warn")`` makes
  every synchronising CUDA call emit a ``UserWarning`` (host-to-device copies from pageable
  memory included); the warnings of the block are recorded and counted. This is the ground
  truth on a GPU, and it sees nothing without one.

:func:`count_syncs` runs a callable under the right counters for its device.

The test suite counts with the same classes (``tests/syncs.py`` imports them; the benchmarks
never import from the tests).
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
from torch.utils._pytree import tree_leaves

from tripletkit import _checks

__all__ = [
    "SYNCING_OPS",
    "TRANSFERS",
    "CudaSyncWarnings",
    "SyncCounter",
    "TransferCounter",
    "count_syncs",
]

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


def _sync_kind(func: Any, args: tuple, kwargs: dict) -> str | None:
    """What makes this aten call read device values on the host, or ``None``."""
    name = func.overloadpacket.__name__
    if name in SYNCING_OPS:
        return name
    if (
        name == "repeat_interleave"
        and func._overloadname == "Tensor"  # repeats given as a tensor
        and kwargs.get("output_size") is None
    ):
        return "repeat_interleave without output_size"
    if name in _INDEX_OPS and _bool_index(args[1] if len(args) > 1 else None):
        return f"{name} with a boolean mask"
    return None


_INDEX_OPS = ("index", "index_put", "index_put_", "_index_put_impl_")


class SyncCounter(TorchDispatchMode):
    """Counts synchronising operations while active: ``with SyncCounter() as c: ...``, then
    ``c.total`` and ``c.counts`` (by operation name; ``"to_host"`` for tripletkit's reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        kind = _sync_kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
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


#: Names of :class:`TransferCounter`'s transfer counts (its other counts are reads).
HOST_TO_DEVICE = "copy from the host"
FROM_PYTHON = "tensor from Python data"
CPU_OPERAND = "CPU tensor operand"
DEVICE_TO_HOST = "copy to the host"
TRANSFERS = (HOST_TO_DEVICE, FROM_PYTHON, CPU_OPERAND)

_COPY_OPS = ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize")
#: Python factories that copy host data onto the device they are given (``torch.tensor(v,
#: device=cuda)`` and the like): built below the dispatcher, so a dispatch mode never sees
#: them (on ``meta`` not even the copy); :class:`TransferCounter` wraps them while active.
_FACTORIES = (
    (torch, "tensor"),
    (torch, "as_tensor"),
    (torch, "asarray"),
    (torch.Tensor, "new_tensor"),
)


def _on_host(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cpu"


class TransferCounter(SyncCounter):
    """Counts host<->device traffic while active, on any device that is not the CPU (run the
    code on ``meta`` tensors to audit it without a GPU): everything :class:`SyncCounter`
    counts (reads of device values) plus

    - ``"copy from the host"``: an aten copy (``_to_copy``, ``copy_``...) of a CPU tensor onto
      another device, e.g. ``torch.zeros(()).to(device)``;
    - ``"tensor from Python data"``: ``torch.tensor``, ``torch.as_tensor``, ``torch.asarray``
      or ``Tensor.new_tensor`` building a tensor on another device from host data (these
      copy below the dispatcher, so the factories themselves are wrapped while active:
      process-wide, the autograd engine's threads included; use one counter at a time);
    - ``"CPU tensor operand"``: an operation mixing device tensors with a CPU tensor of at
      least one dimension (indexing a device tensor with CPU indices copies them; a 0-dim
      CPU tensor in arithmetic is a kernel argument, not a copy, and is not counted);
    - ``"copy to the host"``: a copy of a device tensor to the CPU outside
      :func:`tripletkit._checks.to_host` (which is counted as ``"to_host"``).

    On ``meta`` no value exists: a read is counted, then answered with a stand-in (1 for a
    scalar, ones for a copy to the host, one row for ``nonzero`` or a boolean mask, an output
    size of 1 for ``repeat_interleave``) so that the audit runs to the end; shapes that
    depend on those values are then meaningless, counts are not. :attr:`transfers` and
    :attr:`reads` split :attr:`total`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending_host_reads = 0
        self._saved: list[tuple[Any, str, Any]] = []

    # -- the factories -----------------------------------------------------------------------
    def _wrap(self, owner: Any, name: str, original: Any) -> Any:
        counter = self

        def factory(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            data = args[1] if owner is torch.Tensor and len(args) > 1 else (args or [None])[0]
            if "data" in kwargs:
                data = kwargs["data"]
            on_device = isinstance(out, Tensor) and out.device.type != "cpu"
            if on_device and not (isinstance(data, Tensor) and data.device == out.device):
                counter.counts[FROM_PYTHON] += 1
            return out

        factory.__wrapped__ = original  # type: ignore[attr-defined]
        return factory

    def __enter__(self) -> TransferCounter:
        for owner, name in _FACTORIES:
            original = getattr(owner, name)
            own = name in vars(owner)  # else inherited (Tensor.new_tensor): deleted on exit
            self._saved.append((owner, name, original if own else None))
            setattr(owner, name, self._wrap(owner, name, original))
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for owner, name, original in reversed(self._saved):
                if original is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
            self._saved.clear()

    def _host_read(self, values: Tensor) -> None:
        super()._host_read(values)
        if values.device.type != "cpu":
            self._pending_host_reads += 1  # its copy to the host is this read, not another

    # -- the aten calls ----------------------------------------------------------------------
    def _transfer_kind(
        self, name: str, args: tuple, kwargs: dict, tensors: list[Tensor]
    ) -> str | None:
        if name in _COPY_OPS:
            if name == "_to_copy":
                src, dst = args[0].device, kwargs.get("device") or args[0].device
            else:  # copy_(dst, src) and friends
                src, dst = args[1].device, args[0].device
            if src.type == "cpu" and not _on_host(dst):
                return HOST_TO_DEVICE
            if src.type != "cpu" and _on_host(dst):
                if self._pending_host_reads:
                    self._pending_host_reads -= 1
                    return None
                return DEVICE_TO_HOST
            return None
        if any(t.device.type != "cpu" for t in tensors) and any(
            t.device.type == "cpu" and t.dim() > 0 for t in tensors
        ):
            return CPU_OPERAND
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        kind = _sync_kind(func, args, kwargs) or self._transfer_kind(name, args, kwargs, tensors)
        if kind is not None:
            self.counts[kind] += 1
        if any(t.device.type == "meta" for t in tensors):
            return _on_meta(func, name, kind, args, kwargs)
        return func(*args, **kwargs)

    @property
    def transfers(self) -> int:
        """Copies between the host and the device (and tensors built from host data)."""
        return sum(self.counts[k] for k in (*TRANSFERS, DEVICE_TO_HOST))

    @property
    def reads(self) -> int:
        """Reads of device values on the host (what :class:`SyncCounter` counts)."""
        return self.total - self.transfers


def _on_meta(func: Any, name: str, kind: str | None, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` on meta tensors, with a stand-in for what needs a device value."""
    if name == "_local_scalar_dense":
        t = args[0]
        return 1.0 if t.dtype.is_floating_point else (True if t.dtype == torch.bool else 1)
    if name == "_to_copy" and _on_host(kwargs.get("device")):
        src = args[0]
        return torch.ones(src.shape, dtype=kwargs.get("dtype") or src.dtype)
    if name == "nonzero":
        return torch.zeros(1, args[0].dim(), dtype=torch.int64, device=args[0].device)
    if name == "masked_select":
        return args[0].new_empty(1)
    if kind == "repeat_interleave without output_size":
        return func(*args, **{**kwargs, "output_size": 1})
    if kind is not None and name in _INDEX_OPS:
        indices = []
        for i in args[1]:
            if isinstance(i, Tensor) and i.dtype == torch.bool:
                indices += [torch.zeros(1, dtype=torch.int64, device=i.device)] * i.dim()
            else:
                indices.append(i)
        return func(args[0], indices, *args[2:], **kwargs)
    return func(*args, **kwargs)


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
