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

Triton is imported only when a kernel is first used (``pip install tripletkit[gpu]``). The
kernels also run on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set
before the first use), which is how the test suite proves them without a GPU. They are
proven exact there only: no GPU has timed them yet, so ``backend="auto"`` keeps the torch
kernels on CUDA.
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from . import _triton_kernels
from .torch_backend import Selection, _label_index, _positive_slots

__all__ = [
    "ALLOW_TF32",
    "BLOCK",
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

    def slots(self, width: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """Positive columns ``[N, W]`` (ascending, -1 in unused slots; int32), which are
        used, each anchor's number of negatives, and the slots' padded width ``WP``."""
        w = min(width, self.m)
        index = _label_index(self.ref_labels)
        cols, used, n_neg = _positive_slots(index, self.labels, self.own, w)
        pcol = torch.where(used, cols, -1).to(torch.int32).contiguous()
        return pcol, used, n_neg, max(1, 1 << max(0, w - 1).bit_length())


def _empty_selection(n: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.zeros((n, *shape), dtype=torch.int64, device=like.device)


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
    ``valid [N, P, Q]``."""
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    (p_lo, p_hi), (n_lo, n_hi) = positive_ranks, negative_ranks
    out_p = _empty_selection(p.n, (p_hi - p_lo,), x)
    out_n = _empty_selection(p.n, (n_hi - n_lo,), x)
    if p.n and p.m:
        k = _kernels()
        k.ranked[p.grid_rows()](
            *p.head(),
            out_p,
            out_n,
            p.n,
            p.m,
            p.d,
            p_lo,
            p_hi,
            n_lo,
            n_hi,
            max(p_hi, n_hi),
            **p.consts,
        )
    else:
        out_p.fill_(-1)
        out_n.fill_(-1)
    ok = (out_p >= 0)[:, :, None] & (out_n >= 0)[:, None, :]
    positive, negative = out_p.clamp_min(0), out_n.clamp_min(0)
    anchor = torch.arange(p.n, device=x.device)
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
    positives in ascending column order. ``width`` must bound every anchor's number of
    positives (:attr:`tripletkit._batch.Batch.width`)."""
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    anchor = torch.arange(p.n, device=x.device)[:, None]
    if p.m == 0:
        empty = _empty_selection(p.n, (0,), x)
        return Selection(anchor, empty, empty, empty.bool())
    pcol, used, n_neg, wp = p.slots(width)
    w = pcol.shape[1]
    negative = torch.full((p.n, w), -1, dtype=torch.int64, device=x.device)
    if p.n and w:
        _kernels().semi_hard[p.grid_rows()](
            *p.head(), pcol, negative, p.n, p.m, p.d, w, **p.consts, WP=wp
        )
    valid = used & (n_neg > 0)[:, None]
    positive = torch.where(used, pcol.to(torch.int64), 0)
    return Selection(anchor, positive, negative.clamp_min(0), valid)


class BatchAllState:
    """What :func:`batch_all_forward` keeps for :func:`batch_all_backward`: ``O(N W)``."""

    def __init__(self, problem: _Problem, pcol: Tensor, thr: Tensor, coef: Tensor, wp: int):
        self.problem, self.pcol, self.thr, self.coef, self.wp = problem, pcol, thr, coef, wp


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
    unit-norm): the total a float64 0-dim tensor, the counts 0-dim int64 (``n_active =
    n_valid`` when ``soft``), all on the input's device, with no host read. ``width`` must
    bound every anchor's number of positives."""
    p = _Problem(x, y, labels, ref_labels, self_index, metric)
    dev = x.device
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    izero = torch.zeros((), dtype=torch.int64, device=dev)
    if p.n == 0 or p.m == 0:
        empty = torch.zeros(p.n, 0, device=dev)
        return zero, izero, izero.clone(), BatchAllState(p, empty.int(), empty, empty, 1)
    pcol, used, n_neg, wp = p.slots(width)
    w = pcol.shape[1]
    n_valid = (used.sum(dim=1) * n_neg).sum()
    thr = torch.empty(p.n, w, dtype=p.dtype, device=dev)
    coef = torch.empty(p.n, w, dtype=p.dtype, device=dev)
    totals = torch.zeros(p.n, dtype=torch.float64, device=dev)
    active = torch.zeros(p.n, dtype=torch.int64, device=dev)
    state = BatchAllState(p, pcol, thr, coef, wp)
    if w == 0:
        return zero, n_valid, izero.clone() if not soft else n_valid, state
    m = torch.as_tensor(margin, dtype=p.dtype, device=dev).reshape(1)
    _kernels().batch_all_fwd[p.grid_rows()](
        *p.head(), pcol, m, thr, coef, totals, active, p.n, p.m, p.d, w,
        SOFT=soft, **p.consts, WP=wp,
    )  # fmt: skip
    return totals.sum(), n_valid, n_valid if soft else active.sum(), state


def batch_all_backward(
    state: BatchAllState, soft: bool, y_is_x: bool
) -> tuple[Tensor, Tensor | None]:
    """Gradients ``(d total / dx, d total / dy)`` of :func:`batch_all_forward`'s total (in
    the compute dtype), by recomputing the tiles; with ``y_is_x`` both land on ``x`` and the
    second is ``None``. For the cosine metric they are with respect to the unit rows."""
    p = state.problem
    gx = torch.zeros(p.n, p.d, dtype=p.dtype, device=p.x.device)
    gy = torch.zeros(p.m, p.d, dtype=p.dtype, device=p.x.device)
    w = state.pcol.shape[1]
    if p.n and p.m and w:
        k = _kernels()
        args = (*p.head(), state.pcol, state.thr, state.coef)
        sizes = (p.n, p.m, p.d, w)
        consts = {"SOFT": soft, **p.consts, "WP": state.wp}
        k.batch_all_dx[p.grid_rows()](*args, gx, *sizes, **consts)
        k.batch_all_dy[(math.ceil(p.m / p.consts["BM"]),)](*args, gy, *sizes, **consts)
    if y_is_x:
        return gx.add_(gy), None
    return gx, gy
