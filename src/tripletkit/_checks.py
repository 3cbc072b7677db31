"""Input validation shared by every public entry point.

One place decides what counts as bad input and what the error says, so that every miner,
loss, metric and sampler refuses the same things with the same words.

Two kinds of checks:

- checks of host metadata (types, shapes, dtypes, devices, Python scalars) always run and
  cost nothing on the device;
- checks of tensor *values* (finite embeddings, index ranges, distance overflow, a caller's
  bound on the number of positives) need the device to report back to the host, a
  synchronisation that stalls a CUDA pipeline. They are gathered in a :class:`DeviceChecks`
  and read with a single host read per call, and :func:`set_input_checks` turns them off.

Every read of device values into Python in tripletkit goes through :func:`to_host`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "HOST_READ_HOOKS",
    "DeviceChecks",
    "check_bool",
    "check_choice",
    "check_embeddings",
    "check_finite_real",
    "check_index_tuple",
    "check_indices",
    "check_labels",
    "check_margin",
    "check_nonnegative_int",
    "check_nonnegative_real",
    "check_pair",
    "check_positive_int",
    "check_positive_real",
    "check_rank_window",
    "check_reduction",
    "check_same_space",
    "compute_dtype",
    "input_checks_enabled",
    "set_input_checks",
    "to_host",
]

# ---------------------------------------------------------------------------------------------
# Checks of tensor values: the switch, the one host read, the deferred conditions

_STATE = {"input_checks": True}

#: Callables run with the tensor on every :func:`to_host` (instrumentation: the sync audits of
#: the tests and of ``benchmarks.gpu`` count host reads here).
HOST_READ_HOOKS: list[Callable[[Tensor], None]] = []


class set_input_checks:  # noqa: N801 - named like torch.set_grad_enabled, which it mirrors
    """Turn the checks of tensor values on or off, as a call or as a context manager.

    With checks on (the default), every entry point refuses NaN or Inf embeddings, index
    tensors out of range, distances that overflow and a ``max_positives`` bound that a batch
    exceeds, with a clear error; these checks read device values on the host once per call.
    With checks off they cost nothing: no host read, so a CUDA pipeline never stalls on them
    and ``torch.compile(fullgraph=True)`` can capture the losses; bad values then give
    undefined results instead of an error. Checks of shapes, dtypes and devices always run.
    The switch is process-wide (unlike ``torch.set_grad_enabled``, not per thread).

    Examples:
        >>> import torch, tripletkit
        >>> with tripletkit.set_input_checks(False):
        ...     tripletkit.input_checks_enabled()
        False
        >>> tripletkit.input_checks_enabled()
        True
    """

    def __init__(self, enabled: bool) -> None:
        self.previous = _STATE["input_checks"]
        _STATE["input_checks"] = check_bool(enabled, "enabled")

    def __enter__(self) -> set_input_checks:
        return self

    def __exit__(self, *exc: object) -> None:
        _STATE["input_checks"] = self.previous


def input_checks_enabled() -> bool:
    """Whether the checks of tensor values run (see :func:`set_input_checks`)."""
    return _STATE["input_checks"]


def to_host(values: Tensor) -> list:
    """``values.tolist()``: the one place where tripletkit reads device values into Python
    (a synchronisation on CUDA)."""
    for hook in HOST_READ_HOOKS:
        hook(values)
    return values.tolist()


class DeviceChecks:
    """Conditions on tensor values, gathered and then checked with one host read.

    ``require(ok, error)`` adds a boolean tensor ``ok`` (every entry must hold) and a callable
    making the exception to raise when it does not; :meth:`run` reads every condition (and any extra integers asked for) in one
    :func:`to_host`. With checks off, conditions are dropped (nothing is computed for them:
    callers test :attr:`enabled` first when building a condition costs a pass).
    """

    def __init__(self) -> None:
        self.enabled = input_checks_enabled()
        self._conditions: list[tuple[Tensor, Callable[[], Exception]]] = []

    def require(self, ok: Tensor, error: Callable[[], Exception]) -> None:
        """Add the condition ``ok`` (a boolean tensor, all of which must hold)."""
        if self.enabled and ok.device.type != "meta":
            self._conditions.append((ok.all(), error))

    def run(self, *values: Tensor) -> list[int]:
        """Check every condition and return the 0-dim integer tensors ``values`` as ints,
        all in one host read (none when there is nothing to read). Raises the error of the
        first condition that fails."""
        if not self._conditions and not values:
            return []
        parts = [ok.to(torch.int64) for ok, _ in self._conditions]
        parts += [v.to(torch.int64).to(parts[0].device if parts else v.device) for v in values]
        devices = {p.device for p in parts}
        if len(devices) > 1:  # conditions on tensors of several devices: read each apart
            host = [to_host(p.reshape(1))[0] for p in parts]
        else:
            host = to_host(torch.stack(parts))
        for flag, (_, error) in zip(host, self._conditions, strict=False):
            if not flag:
                raise error()
        return host[len(self._conditions) :]


# ---------------------------------------------------------------------------------------------
# Checks of host metadata

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}"
        )
    return value


def check_reduction(reduction: object, allowed: Sequence[str]) -> str:
    """Validate a ``reduction=`` argument against the reductions a function supports."""
    return check_choice("reduction", reduction, allowed)


def check_finite_real(value: object, name: str) -> float:
    """Return ``value`` as a float; it must be a finite real number (a Python number or a
    one-element tensor without grad)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
            value = float(value.item())
        elif isinstance(value, Tensor) and value.dim() == 2:
            raise TypeError(
                f"{name} must be a real number, got a {tuple(value.shape)} tensor; pass a "
                "reference set by keyword: ref_embeddings=..., ref_labels=..."
            )
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {result}")
    return result


def check_margin(value: object, name: str = "margin") -> float | Tensor:
    """A loss's margin: a finite real number, or a one-element real tensor without grad.

    A Python number is returned as a float. A tensor is read on the host (one read, then
    checked like a number) while the input checks are on; with them off it is never read:
    it is returned as a 0-dim tensor on its device, so that a margin scheduled on the GPU
    costs no synchronisation (a non-finite one then gives undefined results).
    """
    if (
        isinstance(value, Tensor)
        and value.numel() == 1
        and not value.requires_grad
        and not value.dtype.is_complex
        and value.dtype != torch.bool
        and not input_checks_enabled()
    ):
        return value.reshape(())
    if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
        value = to_host(value.reshape(1))[0]
    return check_finite_real(value, name)


def check_nonnegative_real(value: object, name: str) -> float:
    """Return ``value`` as a float; it must be a finite real number ``>= 0``."""
    result = check_finite_real(value, name)
    if result < 0:
        raise ValueError(f"{name} must be >= 0, got {result}")
    return result


def check_positive_real(value: object, name: str) -> float:
    """Return ``value`` as a float; it must be a finite real number ``> 0``."""
    result = check_finite_real(value, name)
    if result <= 0:
        raise ValueError(f"{name} must be > 0, got {result}")
    return result


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool (a flag such as ``normalize``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_rank_window(window: object, name: str) -> tuple[int, int]:
    """Return ``window`` as ``(lo, hi)``: two ints with ``0 <= lo < hi`` (a range of ranks)."""
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in window)
    ):
        raise TypeError(f"{name} must be a pair of ints (lo, hi), got {window!r}")
    lo, hi = int(window[0]), int(window[1])
    if lo < 0 or hi <= lo:
        raise ValueError(f"{name} must satisfy 0 <= lo < hi, got ({lo}, {hi})")
    return lo, hi


def check_nonnegative_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    """Return ``value`` if it is an int ``>= 0`` (a seed, an epoch), or ``None`` when
    ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        expected = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computations run in: half precision is computed in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_embeddings(
    embeddings: object, name: str = "embeddings", checks: DeviceChecks | None = None
) -> Tensor:
    """Check a ``[N, D]`` floating embedding matrix with finite values.

    Returns the tensor cast to its compute dtype (float16/bfloat16 -> float32), so callers
    never do arithmetic in half precision. The cast is differentiable. The finiteness check
    is added to ``checks`` (read later, with the caller's other checks) or run now.
    """
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(embeddings.shape)}")
    if embeddings.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {embeddings.dtype}"
        )
    if embeddings.shape[1] == 0:
        raise ValueError(
            f"{name} must have at least one feature dimension, got shape {tuple(embeddings.shape)}"
        )
    now = checks is None
    checks = DeviceChecks() if checks is None else checks
    # (meta tensors carry no values to check; the device checks that follow refuse them)
    if checks.enabled and embeddings.numel():
        checks.require(
            torch.isfinite(embeddings), lambda: ValueError(f"{name} contains NaN or Inf values")
        )
    if now:
        checks.run()
    return embeddings.to(compute_dtype(embeddings.dtype))


def check_labels(
    labels: object,
    n: int,
    device: torch.device,
    name: str = "labels",
    checks: DeviceChecks | None = None,
    multi_hot: bool = False,
) -> Tensor:
    """Check a 1-D label vector of length ``n``; returns it as int64 on ``device``.

    The label conventions of every entry point:

    - integer dtypes are taken as they are;
    - floating labels are accepted when every value is an integer (``torch.tensor([0., 1.])``
      from a data pipeline that made them float): the values are checked with the other
      device checks (``checks``, or now), in the same single host read, and a non-integral,
      NaN or infinite value is refused with a ValueError. With the input checks off
      (:func:`set_input_checks`) nothing is read: floating labels are converted as they
      are (``.to(torch.int64)`` truncates toward zero) and their integrality is the
      caller's promise;
    - bool and complex labels are refused (TypeError): a bool vector is more likely a mask
      than two classes;
    - labels on another device than the embeddings are copied there (one copy, what PML
      does); on CUDA a copy from host memory waits for the device, so keep labels where the
      embeddings are in a pipeline that must not synchronise. Labels or embeddings on the
      ``meta`` device are refused (there are no values to copy);
    - with ``multi_hot`` (the miners, losses, statistics and the memory), a 2-D ``[N, L]``
      tensor is **multi-hot** labels (bool, or integer/floating 0/1 values,
      checked with the device checks): returned as bool ``[N, L]`` (see
      :mod:`tripletkit._masks` for who is then a positive of whom).
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 2 and multi_hot:
        return _check_multi_hot(labels, n, device, name, checks)
    if labels.dim() != 1:
        also = " (class labels) or 2-D [N, L] (multi-hot)" if multi_hot else ""
        raise ValueError(f"{name} must be 1-D [N]{also}, got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.dtype.is_complex:
        raise TypeError(
            f"{name} must be an integer tensor (or floating with integral values), got "
            f"{labels.dtype}; class labels are not a {labels.dtype} tensor (a mask?)"
        )
    if labels.dtype not in _INT_DTYPES and not labels.dtype.is_floating_point:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the embeddings have {n} rows")
    if labels.device != device:
        if "meta" in (labels.device.type, device.type):
            raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
        labels = labels.to(device)  # the one documented copy
    if labels.dtype.is_floating_point:
        now = checks is None
        checks = DeviceChecks() if checks is None else checks
        if checks.enabled and labels.numel():
            values = labels

            def error() -> ValueError:
                bad = ~((values == values.trunc()) & (values.abs() < 2.0**63))
                worst = int(bad.to(torch.int64).argmax())
                return ValueError(
                    f"{name} must hold integer values: a {values.dtype} label vector is "
                    f"accepted only when every value is integral, but entry {worst} is "
                    f"{float(values[worst])}"
                )

            checks.require((labels == labels.trunc()) & (labels.abs() < 2.0**63), error)
        if now:
            checks.run()
    return labels.to(torch.int64)


def _check_multi_hot(
    labels: Tensor, n: int, device: torch.device, name: str, checks: DeviceChecks | None
) -> Tensor:
    """Multi-hot labels ``[N, L]``: bool, or integer/floating 0/1 values; returned as bool."""
    if labels.dtype.is_complex:
        raise TypeError(f"multi-hot {name} must be bool, integer or floating 0/1, got complex")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} rows but the embeddings have {n} rows")
    if labels.device != device:
        if "meta" in (labels.device.type, device.type):
            raise ValueError(f"{name} is on {labels.device} but the embeddings are on {device}")
        labels = labels.to(device)  # the one documented copy
    if labels.dtype != torch.bool:
        now = checks is None
        checks = DeviceChecks() if checks is None else checks
        if checks.enabled and labels.numel():
            values = labels

            def error() -> ValueError:
                bad = ~((values == 0) | (values == 1))
                a, j = (int(v) for v in bad.nonzero()[0])
                return ValueError(
                    f"multi-hot {name} [N, L] must hold 0 or 1, but entry ({a}, {j}) is "
                    f"{values[a, j].item()}"
                )

            checks.require((labels == 0) | (labels == 1), error)
        if now:
            checks.run()
    return labels != 0


def check_pair(
    embeddings: object,
    labels: object,
    ref_embeddings: object = None,
    ref_labels: object = None,
    checks: DeviceChecks | None = None,
    multi_hot: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Validate ``(embeddings, labels)`` and the optional reference set.

    Returns ``(embeddings, labels, ref_embeddings, ref_labels)`` with embeddings in their
    compute dtype and labels as int64 on their embeddings' device (see :func:`check_labels`
    for the label conventions). ``ref_embeddings`` and ``ref_labels`` are given
    together or not at all; the reference set must match the embeddings' width, dtype
    family and device. Value checks go to ``checks`` (or run now).
    """
    now = checks is None
    checks = DeviceChecks() if checks is None else checks
    emb = check_embeddings(embeddings, checks=checks)
    lab = check_labels(labels, emb.shape[0], emb.device, checks=checks, multi_hot=multi_hot)
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if ref_embeddings is None:
        if now:
            checks.run()
        return emb, lab, None, None
    ref = check_embeddings(ref_embeddings, "ref_embeddings", checks=checks)
    emb, ref = check_same_space(emb, ref, "embeddings", "ref_embeddings")
    ref_lab = check_labels(ref_labels, ref.shape[0], ref.device, "ref_labels", checks, multi_hot)
    if lab.dim() != ref_lab.dim() or lab.shape[1:] != ref_lab.shape[1:]:
        raise ValueError(
            f"labels {tuple(lab.shape)} and ref_labels {tuple(ref_lab.shape)} must be both "
            "class labels [N] and [M], or both multi-hot [N, L] and [M, L] with the same L"
        )
    if now:
        checks.run()
    return emb, lab, ref, ref_lab


def check_same_space(x: Tensor, y: Tensor, x_name: str, y_name: str) -> tuple[Tensor, Tensor]:
    """Two checked embedding matrices that must meet: same device and width. Returns both
    in their common dtype."""
    if y.device != x.device:
        raise ValueError(f"{y_name} is on {y.device} but {x_name} is on {x.device}")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"{y_name} has {y.shape[1]} features but {x_name} has {x.shape[1]}")
    if y.dtype != x.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    return x, y


def check_indices(
    index: object, name: str, bound: int, device: torch.device, checks: DeviceChecks | None = None
) -> Tensor:
    """Check a 1-D integer index tensor with values in ``[0, bound)``; returns it as int64.
    The range check goes to ``checks`` (or runs now)."""
    if not isinstance(index, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of indices, got {type(index).__name__}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {index.dtype}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device} but the embeddings are on {device}")
    now = checks is None
    checks = DeviceChecks() if checks is None else checks
    if checks.enabled and index.numel():
        checks.require(
            (index >= 0) & (index < bound),
            lambda: ValueError(f"{name} has indices outside [0, {bound})"),
        )
    if now:
        checks.run()
    return index.to(torch.int64)


#: Field names of the index tuples the losses accept, by length.
_INDEX_FIELDS = {
    3: ("anchor", "positive", "negative"),
    4: ("anchor_pos", "positive", "anchor_neg", "negative"),
}


def check_index_tuple(
    indices: object,
    name: str,
    lengths: Sequence[int],
    n_anchors: int,
    n_refs: int,
    device: torch.device,
    checks: DeviceChecks | None = None,
) -> tuple[Tensor, ...]:
    """Check a tuple of index tensors: ``Triplets`` or a 3-tuple ``(anchor, positive,
    negative)``, ``Pairs`` or a 4-tuple ``(anchor_pos, positive, anchor_neg, negative)``, as
    ``lengths`` allows. Anchors index the ``n_anchors`` embeddings, the others the ``n_refs``
    references; tensors that go together must have equal lengths. Returns int64 tensors."""
    if not isinstance(indices, (tuple, list)) or len(indices) not in lengths:
        kinds = " or ".join(
            f"{'Triplets' if n == 3 else 'Pairs'} (a tuple of {n} index tensors)" for n in lengths
        )
        got = type(indices).__name__
        if isinstance(indices, (tuple, list)):
            got += f" of length {len(indices)}"
        raise TypeError(f"{name} must be {kinds}, got {got}")
    fields = _INDEX_FIELDS[len(indices)]
    now = checks is None
    checks = DeviceChecks() if checks is None else checks
    out = tuple(
        check_indices(
            index,
            f"{name}.{field}",
            n_anchors if field.startswith("anchor") else n_refs,
            device,
            checks,
        )
        for index, field in zip(indices, fields, strict=True)
    )
    if len(out) == 3 and not out[0].shape == out[1].shape == out[2].shape:
        raise ValueError(
            f"{name}: triplet index tensors differ in length: "
            f"{out[0].shape[0]}, {out[1].shape[0]}, {out[2].shape[0]}"
        )
    if len(out) == 4 and (out[0].shape != out[1].shape or out[2].shape != out[3].shape):
        raise ValueError(
            f"{name}: anchor_pos/positive and anchor_neg/negative must match in length"
        )
    if now:
        checks.run()
    return out
