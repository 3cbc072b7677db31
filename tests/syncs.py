"""Counting the operations that make a CUDA device report back to the host.

On a GPU each of these stalls the whole pipeline until the device has caught up. They are
counted on any device (the CPU here) by a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every aten operation, plus tripletkit's own host reads (:func:`tripletkit._checks.to_host`,
through ``HOST_READ_HOOKS``; ``Tensor.tolist`` is not an aten operation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from tripletkit import _checks

__all__ = ["SyncCounter", "count_syncs"]

#: aten operations that read device values on the host (sizes of data-dependent outputs,
#: Python scalars). ``repeat_interleave`` is one only without ``output_size`` and boolean-mask
#: ``index``/``index_put`` only with a boolean index; both are handled below.
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


def _bool_index(indices: Any) -> bool:
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts synchronising operations while active: ``with SyncCounter() as c: ...``, then
    ``c.total`` and ``c.counts`` (by operation name)."""

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
        return sum(self.counts.values())


def count_syncs(fn: Callable[[], object]) -> SyncCounter:
    """Run ``fn`` under a :class:`SyncCounter` and return the counter."""
    with SyncCounter() as counter:
        fn()
    return counter
