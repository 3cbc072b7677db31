"""Triton kernels of the fused losses (``backend="triton"``): exact mining on CUDA tensors
without the ``[N, M]`` distance matrix (issue 18).

Each program owns a block of ``BN`` anchors and streams the references past them in tiles of
``BM`` columns. A tile of distances is computed in registers from the embeddings
(``tl.dot`` of the anchors' block and the tile's rows, full IEEE float32 by default: TF32
changes which triplet is mined, so it is an opt-in, :data:`ALLOW_TF32`), used, and dropped:
no distance is ever written to global memory. Per-anchor mining state stays on chip:

- **Batch-hard** (:func:`batch_hard`): a running farthest positive and nearest negative (ties
  to the lowest column). Rank windows take one sweep per rank: sweep ``r`` finds each
  anchor's lexicographically smallest ``(key, column)`` above the one of sweep ``r - 1``.
- **Semi-hard** (:func:`semi_hard`, FaceNet / TF-Addons semantics): a first sweep reads each
  anchor's positive distances into ``W`` slots (``W``: an upper bound on the positives);
  a second keeps per slot the nearest negative farther than the positive, and the largest
  negative for the positives that have none.
- **Batch-all** (:func:`batch_all_forward`, hinge and soft margin): the same two sweeps; the
  second accumulates per anchor the terms of every ``(positive slot, negative)`` pair (in
  float64 across tiles), the active count, and per slot the positive's gradient
  coefficient. :func:`batch_all_backward` is a second streaming pass, as in flash
  attention's backward: tiles are recomputed, their gradient ``g = d(total) / d(dist)``
  rebuilt from the per-anchor state, and the embeddings' gradients accumulated as weights x
  embeddings (``dx``: one kernel over anchor blocks; ``dy``: one over reference blocks, no
  atomics, deterministic).

The selections are those of :mod:`.numba_backend` (same ties, same no-positive and
no-negative rules), in the layouts of :mod:`.torch_backend` (:class:`~.torch_backend.\
Selection` with a ``valid`` mask): shapes never depend on values, and nothing reads a device
value on the host. Values then come from the selected pairs (``O(N K D)``,
:mod:`tripletkit.losses._triton`). Extra memory is ``O(N (D + W))``.

Distances follow the in-memory matrix's formulas (:func:`tripletkit.distances.\
_euclidean_matrix`: ``|x|^2 - 2 x.y + |y|^2`` with its clean-up floor; cosine ``1 - x.y`` on
unit rows, clamped, noise below ``8 eps`` set to 0); they equal its entries up to the
rounding of the matrix product, so a selection can differ from the numba backend's only
between distances less than an ulp apart. Float32 and float64 embeddings compute in their
dtype; float16 / bfloat16 are loaded and computed in float32.

**torch.compile**: each launch is a ``torch.library.custom_op``
(``tripletkit::triton_batch_hard``, ``triton_semi_hard``, ``triton_batch_all_fwd`` and
``triton_batch_all_bwd``, the forward's autograd formula) with a fake implementation (shapes
and dtypes only); batch-all's state travels between its two ops as tensors
(:class:`BatchAllState`). ``torch.compile(fullgraph=True)`` calls each op as one node of its
graph and traces the torch code around it. A ``TorchDispatchMode`` sees each op as one call
(its body runs below the mode): :data:`IMPLS` holds the bodies, for audits that must see
inside.

Triton is imported only when a kernel is first used (``pip install tripletkit[gpu]``). The
kernels also run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set
before the first use), which is how the test suite proves them without a GPU. They are
proven exact there only: no GPU has timed them yet, so ``backend="auto"`` keeps the torch
kernels on CUDA.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _triton_kernels
from .torch_backend import Selection, _label_index, _positive_slots

__all__ = [
    "ALLOW_TF32",
    "BLOCK",
    "IMPLS",
    "BatchAllState",
    "available",
    "batch_all_backward",
    "batch_all_forward",
    "batch_hard",
    "interpreted",
    "semi_hard",
]

#: Let ``tl.dot`` use TF32 on float32 inputs (faster on Ampere and later, but distances lose
#: precision and the mined triplets change): off by default.
ALLOW_TF32 = False

#: Anchors (and references) per block; ``None``: by the embedding size (64 up to ``D = 64``,
#: 32 up to 256, else 16). The tests set small blocks so that every tile boundary is crossed.
BLOCK: int | None = None

_METRICS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


def available() -> bool:
    """Whether Triton can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU
    tensors, slowly, in numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------- host side


def _kernels() -> SimpleNamespace:
    return _triton_kernels.build(interpreted())


def _check_device(*tensors: Tensor) -> None:
    for t in tensors:
        if t.device.type != "cuda" and not (t.device.type == "cpu" and interpreted()):
            raise ValueError(
                "the triton kernels run on CUDA tensors (or on CPU tensors under "
                f"TRITON_INTERPRET=1), got a tensor on {t.device}"
            )


class _Problem:
    """The kernels' common arguments: contiguous embeddings in their storage dtype (half
    inputs are loaded as such and computed in float32), squared norms in the compute dtype,
    int64 labels, block sizes."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        labels: Tensor,
        ref_labels: Tensor,
        self_index: Tensor,
        metric: str,
    ) -> None:
        _check_device(x, y)
        if metric not in _METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        self.x, self.y = x.detach().contiguous(), y.detach().contiguous()
        self.f64 = x.dtype == torch.float64
        self.dtype = torch.float64 if self.f64 else torch.float32
        self.n, self.m, self.d = x.shape[0], y.shape[0], x.shape[1]
        self.xx = (self.x.to(self.dtype) ** 2).sum(dim=1)
        self.yy = (self.y.to(self.dtype) ** 2).sum(dim=1)
        self.labels = labels.to(torch.int64).contiguous()
        self.ref_labels = ref_labels.to(torch.int64).contiguous()
        self.own = self_index.to(torch.int64).contiguous()
        bd = max(16, 1 << max(0, self.d - 1).bit_length())
        block = BLOCK or (64 if bd <= 64 else 32 if bd <= 256 else 16)
        self.consts: dict[str, Any] = {
            "METRIC": _METRICS[metric],
            "EPS8": 8 * torch.finfo(self.dtype).eps,
            "PREC": "tf32" if ALLOW_TF32 and not self.f64 else "ieee",
            "F64": self.f64,
            "BN": block,
            "BM": block,
            "BD": bd,
        }

    def grid_rows(self) -> tuple[int]:
        return (math.ceil(self.n / self.consts["BN"]),)

    def head(self) -> tuple[Tensor, ...]:
        return (self.x, self.xx, self.y, self.yy, self.labels, self.ref_labels, self.own)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _padded(w: int) -> int:
    """The slots' width padded to a power of two (``WP``, a block dimension)."""
    return max(1, 1 << max(0, w - 1).bit_length())


def _slots(
    labels: Tensor, ref_labels: Tensor, self_index: Tensor, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Positive columns ``[N, W]`` with ``W = min(width, M)`` (ascending, -1 in unused
    slots; int32), which are used ``[N, W]``, and each anchor's number of negatives
    ``[N]``: torch ops on the labels (``O(N W + M log M)``), traced by ``torch.compile``."""
    n, m = labels.shape[0], ref_labels.shape[0]
    w = min(width, m)
    if m == 0:  # no reference: no slot, no negative
        n_neg = torch.zeros(n, dtype=torch.int64, device=labels.device)
        return n_neg.new_empty(n, 0).int(), n_neg.new_empty(n, 0).bool(), n_neg
    cols, used, n_neg = _positive_slots(_label_index(ref_labels), labels, self_index, w)
    return torch.where(used, cols, -1).to(torch.int32), used, n_neg


# --------------------------------------------------------------------------- custom ops
#
# Each launch is a ``torch.library.custom_op`` (namespace ``tripletkit``): opaque to
# ``torch.compile``, which calls it as one node of its graph and sizes its outputs with the
# op's fake implementation (shapes and dtypes only). Everything around the launches (label
# slots, layouts, counts) is torch code that ``torch.compile`` traces. Batch-all's forward
# op carries its autograd formula (the backward op); its per-anchor state travels between
# the two as tensors.


def _batch_hard_impl(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    p_lo: int,
    p_hi: int,
    n_lo: int,
    n_hi: int,
) -> tuple[Tensor, Tensor]:
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    out_p = torch.full((p.n, p_hi - p_lo), -1, dtype=torch.int64, device=x.device)
    out_n = torch.full((p.n, n_hi - n_lo), -1, dtype=torch.int64, device=x.device)
    if p.n and p.m:
        _kernels().ranked[p.grid_rows()](
            *p.head(), out_p, out_n, p.n, p.m, p.d, p_lo, p_hi, n_lo, n_hi, max(p_hi, n_hi),
            **p.consts,
        )  # fmt: skip
    return out_p, out_n


def _semi_hard_impl(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    metric: str,
) -> Tensor:
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    w = pcol.shape[1]
    negative = torch.full((p.n, w), -1, dtype=torch.int64, device=x.device)
    if p.n and p.m and w:
        _kernels().semi_hard[p.grid_rows()](
            *p.head(), pcol.contiguous(), negative, p.n, p.m, p.d, w, **p.consts, WP=_padded(w)
        )
    return negative


def _batch_all_fwd_impl(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    margin: Tensor,
    metric: str,
    soft: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    w, dev = pcol.shape[1], x.device
    thr = torch.zeros(p.n, w, dtype=p.dtype, device=dev)
    coef = torch.zeros(p.n, w, dtype=p.dtype, device=dev)
    totals = torch.zeros(p.n, dtype=torch.float64, device=dev)
    active = torch.zeros(p.n, dtype=torch.int64, device=dev)
    if p.n and p.m and w:
        m = margin.to(dtype=p.dtype).reshape(1).contiguous()
        _kernels().batch_all_fwd[p.grid_rows()](
            *p.head(), pcol.contiguous(), m, thr, coef, totals, active, p.n, p.m, p.d, w,
            SOFT=soft, **p.consts, WP=_padded(w),
        )  # fmt: skip
    return totals.sum(), active.sum(), thr, coef


def _batch_all_bwd_impl(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    thr: Tensor,
    coef: Tensor,
    metric: str,
    soft: bool,
) -> tuple[Tensor, Tensor]:
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    gx = torch.zeros(p.n, p.d, dtype=p.dtype, device=x.device)
    gy = torch.zeros(p.m, p.d, dtype=p.dtype, device=x.device)
    w = pcol.shape[1]
    if p.n and p.m and w:
        k = _kernels()
        args = (*p.head(), pcol.contiguous(), thr.contiguous(), coef.contiguous())
        sizes = (p.n, p.m, p.d, w)
        consts = {"SOFT": soft, **p.consts, "WP": _padded(w)}
        k.batch_all_dx[p.grid_rows()](*args, gx, *sizes, **consts)
        k.batch_all_dy[(math.ceil(p.m / p.consts["BM"]),)](*args, gy, *sizes, **consts)
    return gx, gy


#: The Python bodies of the custom ops, by qualified name (``tripletkit::...``): audits
#: that record the torch ops a call runs (tests/test_triton.py) run these under themselves,
#: since a dispatch mode does not see inside a custom op.
IMPLS: dict[str, Callable[..., Any]] = {}


def _op(name: str, impl: Callable[..., Any]) -> Any:
    qualified = f"tripletkit::{name}"
    IMPLS[qualified] = impl
    return torch.library.custom_op(qualified, impl, mutates_args=())


_batch_hard_op = _op("triton_batch_hard", _batch_hard_impl)
_semi_hard_op = _op("triton_semi_hard", _semi_hard_impl)
_batch_all_fwd_op = _op("triton_batch_all_fwd", _batch_all_fwd_impl)
_batch_all_bwd_op = _op("triton_batch_all_bwd", _batch_all_bwd_impl)


@_batch_hard_op.register_fake
def _batch_hard_fake(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    p_lo: int,
    p_hi: int,
    n_lo: int,
    n_hi: int,
) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    out_p = x.new_empty((n, p_hi - p_lo), dtype=torch.int64)
    return out_p, x.new_empty((n, n_hi - n_lo), dtype=torch.int64)


@_semi_hard_op.register_fake
def _semi_hard_fake(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    metric: str,
) -> Tensor:
    return x.new_empty(pcol.shape, dtype=torch.int64)


@_batch_all_fwd_op.register_fake
def _batch_all_fwd_fake(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    margin: Tensor,
    metric: str,
    soft: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dtype = _compute_dtype(x)
    return (
        x.new_empty((), dtype=torch.float64),
        x.new_empty((), dtype=torch.int64),
        x.new_empty(pcol.shape, dtype=dtype),
        x.new_empty(pcol.shape, dtype=dtype),
    )


@_batch_all_bwd_op.register_fake
def _batch_all_bwd_fake(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    pcol: Tensor,
    thr: Tensor,
    coef: Tensor,
    metric: str,
    soft: bool,
) -> tuple[Tensor, Tensor]:
    dtype = _compute_dtype(x)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(y.shape, dtype=dtype)


def _batch_all_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, y, labels, ref_labels, self_index, pcol, _margin, metric, soft = inputs
    ctx.save_for_backward(x, y, labels, ref_labels, self_index, pcol, output[2], output[3])
    ctx.metric, ctx.soft = metric, soft


def _batch_all_grad(ctx: Any, grad_total: Tensor, *_rest: Tensor) -> tuple:
    x, y, labels, ref_labels, self_index, pcol, thr, coef = ctx.saved_tensors
    gx, gy = _batch_all_bwd_op(
        x, y, labels, ref_labels, self_index, pcol, thr, coef, ctx.metric, ctx.soft
    )
    scale = grad_total.to(gx.dtype)
    return ((gx * scale).to(x.dtype), (gy * scale).to(y.dtype)) + (None,) * 7


_batch_all_fwd_op.register_autograd(_batch_all_grad, setup_context=_batch_all_setup)


# --------------------------------------------------------------------------- entry points


def batch_hard(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    positive_ranks: tuple[int, int] = (0, 1),
    negative_ranks: tuple[int, int] = (0, 1),
) -> Selection:
    """Batch-hard triplets from the embeddings (``x [N, D]`` anchors, ``y [M, D]``
    references; cosine: already unit-norm), in :func:`.torch_backend.batch_hard`'s layout:
    ``[N]`` with the default windows, else ``[N, 1, 1]``, ``[N, P, 1]``, ``[N, 1, Q]`` and
    ``valid [N, P, Q]`` (op ``tripletkit::triton_batch_hard``)."""
    (p_lo, p_hi), (n_lo, n_hi) = positive_ranks, negative_ranks
    out_p, out_n = _batch_hard_op(
        x, y, labels, ref_labels, self_index, metric, p_lo, p_hi, n_lo, n_hi
    )
    ok = (out_p >= 0)[:, :, None] & (out_n >= 0)[:, None, :]
    positive, negative = out_p.clamp_min(0), out_n.clamp_min(0)
    anchor = torch.arange(x.shape[0], device=x.device)
    if positive_ranks == (0, 1) and negative_ranks == (0, 1):
        return Selection(anchor, positive[:, 0], negative[:, 0], ok[:, 0, 0])
    return Selection(anchor[:, None, None], positive[:, :, None], negative[:, None, :], ok)


def semi_hard(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    width: int,
) -> Selection:
    """Semi-hard triplets (TF-Addons' rule, :func:`.numba_backend.semi_hard`) from the
    embeddings, in :func:`.torch_backend.semi_hard`'s layout: ``anchor [N, 1]``,
    ``positive``, ``negative``, ``valid`` ``[N, W]`` with ``W = min(width, M)`` slots of
    positives in ascending column order (op ``tripletkit::triton_semi_hard``). ``width``
    must bound every anchor's number of positives (:attr:`tripletkit._batch.Batch.width`)."""
    pcol, used, n_neg = _slots(labels, ref_labels, self_index, width)
    negative = _semi_hard_op(x, y, labels, ref_labels, self_index, pcol, metric)
    valid = used & (n_neg > 0)[:, None]
    positive = torch.where(used, pcol.to(torch.int64), 0)
    anchor = torch.arange(x.shape[0], device=x.device)[:, None]
    return Selection(anchor, positive, negative.clamp_min(0), valid)


class BatchAllState(NamedTuple):
    """What batch-all's forward keeps for its backward, as tensors (``O(N W)``): the
    positives' columns ``[N, W]`` (int32), and per slot the threshold and the gradient
    coefficient ``[N, W]`` (compute dtype)."""

    pcol: Tensor
    thr: Tensor
    coef: Tensor


def batch_all_forward(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    margin: float | Tensor,
    soft: bool,
    width: int,
) -> tuple[Tensor, Tensor, Tensor, BatchAllState]:
    """``(total, n_valid, n_active, state)`` of the batch-all loss (hinge with ``margin``, or
    with ``soft`` the terms ``softplus(d_ap - d_an + margin)``) from the embeddings (cosine:
    unit-norm; ``y`` may be ``x`` itself): the total a float64 0-dim tensor, in the autograd
    graph of ``x`` and ``y`` (op ``tripletkit::triton_batch_all_fwd``, whose backward is
    ``tripletkit::triton_batch_all_bwd``, a second streaming pass), the counts 0-dim int64
    (``n_active = n_valid`` when ``soft``), all on the input's device, with no host read.
    ``width`` must bound every anchor's number of positives."""
    pcol, used, n_neg = _slots(labels, ref_labels, self_index, width)
    n_valid = (used.sum(dim=1) * n_neg).sum()
    m = torch.as_tensor(margin, dtype=_compute_dtype(x), device=x.device).reshape(())
    total, active, thr, coef = _batch_all_fwd_op(
        x, y, labels, ref_labels, self_index, pcol, m, metric, soft
    )
    return total, n_valid, n_valid.clone() if soft else active, BatchAllState(pcol, thr, coef)


def batch_all_backward(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    state: BatchAllState,
    soft: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients ``(d total / dx, d total / dy)`` of :func:`batch_all_forward`'s total (in
    the compute dtype), by recomputing the tiles (op ``tripletkit::triton_batch_all_bwd``;
    autograd calls it by itself). For the cosine metric they are with respect to the unit
    rows."""
    return _batch_all_bwd_op(x, y, labels, ref_labels, self_index, *state, metric, soft)  # type: ignore[no-any-return]
