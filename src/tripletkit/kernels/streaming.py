"""Streaming forms of the fused losses' kernels, for CPU tensors: exact mining without the
``[N, M]`` distance matrix.

The anchors are processed in row blocks (*tiles*) of at most :data:`TILE_BYTES` of
distances: each tile ``[B, M]`` is computed from the embeddings with the same matrix product
and the same rounding rules as the in-memory matrix (:func:`tripletkit.distances.\
_euclidean_matrix` and the cosine formula of :func:`~tripletkit.distances.pairwise_distance`),
handed to the unchanged per-anchor kernels of :mod:`.numba_backend` (every anchor's mining
state fits in its own row), and dropped. Extra memory is one tile and its kernel output, plus
the ``O(N K)`` selections; no ``N x M`` array exists at any time.

- Batch-hard and semi-hard: :func:`select` returns the listed selection of
  :func:`.numba_backend.batch_hard` / :func:`.numba_backend.semi_hard`, row block by row
  block (the same order: by anchor). Their backward needs only the selected pairs.
- Batch-all: :func:`batch_all_forward` sums each tile's total and counts;
  :func:`batch_all_backward` is a second streaming pass, as in flash attention's backward:
  each tile is recomputed, its kernel gives ``g = d(total) / d(dist)`` for the tile, and the
  embeddings' gradient accumulates as weights x embeddings (two ``[B, M] x [M, D]``
  products per tile).

Same rules as the in-memory kernels: ties to the lowest column, the same no-positive and
no-negative rules, TF-Addons' semi-hard fallback. The distances equal the in-memory matrix's
to the last bit only as far as the BLAS rounds a row of a ``[B, M]`` product as it rounds the
same row of the ``[N, M]`` one: MKL (AVX2) does for tiles of a multiple of 8 rows (hence
:data:`ROW_ALIGN`) but not for a one-row product, and may not for a short last tile. Where
the bits differ, two distances less than an ulp apart may rank differently than in memory;
the tests compare selections exactly on tiles of 8 rows and values to rounding on tiles of
one row.

Every function takes ``x [N, D]`` and ``y [M, D]`` (for the cosine metric: already
L2-normalised with :func:`~tripletkit.distances.normalize_embeddings`, as the in-memory path
normalises them before its product), ``labels [N]``, ``ref_labels [M]`` and ``self_index
[N]`` int64 as in :mod:`.torch_backend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..distances import _euclidean_matrix, _euclidean_weights_
from . import _numba

__all__ = [
    "ROW_ALIGN",
    "TILE_BYTES",
    "batch_all_backward",
    "batch_all_forward",
    "distance_tile",
    "select",
    "tile_rows",
]

#: Bytes of distances in one tile (a block of anchor rows against every reference); a tile
#: and the kernel's gradient of it are the largest temporaries of the streaming path.
TILE_BYTES = 16 << 20

#: Tiles hold a multiple of this many rows (see :func:`tile_rows`).
ROW_ALIGN = 8


def tile_rows(m: int, itemsize: int) -> int:
    """Anchor rows per tile: as many as fit :data:`TILE_BYTES` of ``[rows, m]`` distances of
    ``itemsize`` bytes, rounded down to a multiple of :data:`ROW_ALIGN` when there are that
    many (BLAS kernels work on panels of rows: tiles that start on a panel boundary round
    their rows as the full product does), at least one."""
    rows = max(1, TILE_BYTES // max(1, m * itemsize))
    return rows - rows % ROW_ALIGN if rows >= ROW_ALIGN else rows


def _blocks(n: int, m: int, itemsize: int) -> Iterator[slice]:
    rows = tile_rows(m, itemsize)
    for r0 in range(0, n, rows):
        yield slice(r0, min(n, r0 + rows))


def distance_tile(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """Distances ``[B, M]`` between the rows ``x [B, D]`` and ``y [M, D]``, outside autograd,
    computed exactly as the in-memory matrix computes those rows (cosine: ``x`` and ``y``
    already unit-norm, ``1 - x y^T`` clamped to ``[0, 2]``, noise below ``8 eps`` set to 0)."""
    with torch.no_grad():
        if metric == "cosine":
            d = (1.0 - x @ y.t()).clamp(0.0, 2.0)
            return torch.where(d > 8 * torch.finfo(d.dtype).eps, d, torch.zeros_like(d))
        return _euclidean_matrix(x, y, metric == "sqeuclidean")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _check_cpu(*tensors: Tensor) -> None:
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"the streaming kernels run on CPU tensors only, got {t.device}")


def select(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    hardest: bool,
    windows: tuple[tuple[int, int], tuple[int, int]] = ((0, 1), (0, 1)),
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-hard (``hardest``, with its rank ``windows``) or semi-hard triplets, listed.

    Returns:
        ``(anchor, positive, negative)`` int64 ``[T]``, ordered as the numba backend orders
        them (by anchor first): those of :func:`.numba_backend.batch_hard` or
        :func:`.numba_backend.semi_hard` on the full matrix.
    """
    _check_cpu(x, y)
    n, m = x.shape[0], y.shape[0]
    empty = torch.empty(0, dtype=torch.int64)
    if n == 0 or m == 0:
        return empty, empty.clone(), empty.clone()
    lab, ref_lab, own = _np(labels), _np(ref_labels), _np(self_index)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for rows in _blocks(n, m, x.element_size()):
        d = _np(distance_tile(x[rows], y, metric))
        args: tuple[Any, ...] = (d, lab[rows], ref_lab, own[rows])
        if hardest:
            a, p, q = _numba("batch_hard", *args, *windows)
        else:
            a, p, q = _numba("semi_hard", *args)
        parts.append((a + rows.start, p, q))
        del d
    a, p, q = (torch.from_numpy(np.concatenate([part[i] for part in parts])) for i in range(3))
    return a, p, q


def _tile_kernel(
    d: np.ndarray,
    lab: np.ndarray,
    ref_lab: np.ndarray,
    own: np.ndarray,
    margin: float,
    soft: bool,
) -> tuple[float, int, int, np.ndarray]:
    """``(total, n_valid, n_active, grad)`` of one tile (``n_active = n_valid`` when soft)."""
    if soft:
        total, n_valid, grad = _numba("batch_all_soft", d, lab, ref_lab, own, margin)
        return total, n_valid, n_valid, grad
    return _numba("batch_all_hinge", d, lab, ref_lab, own, margin)  # type: ignore[no-any-return]


def batch_all_forward(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    margin: float,
    soft: bool,
) -> tuple[float, int, int]:
    """``(total, n_valid, n_active)`` of the batch-all loss (hinge with ``margin``, or with
    ``soft`` the terms ``softplus(d_ap - d_an + margin)``: Hermans' soft margin at 0), the total accumulated in float64, as :func:`.numba_backend.batch_all_hinge` /
    :func:`.numba_backend.batch_all_soft` return them for the full matrix."""
    _check_cpu(x, y)
    n, m = x.shape[0], y.shape[0]
    total, n_valid, n_active = 0.0, 0, 0
    if n == 0 or m == 0:
        return total, n_valid, n_active
    lab, ref_lab, own = _np(labels), _np(ref_labels), _np(self_index)
    for rows in _blocks(n, m, x.element_size()):
        d = _np(distance_tile(x[rows], y, metric))
        t, v, a, _ = _tile_kernel(d, lab[rows], ref_lab, own[rows], margin, soft)
        total, n_valid, n_active = total + t, n_valid + v, n_active + a
    return total, n_valid, n_active


def batch_all_backward(
    x: Tensor,
    y: Tensor,
    labels: Tensor,
    ref_labels: Tensor,
    self_index: Tensor,
    metric: str,
    margin: float,
    soft: bool,
    y_is_x: bool,
) -> tuple[Tensor, Tensor | None]:
    """Gradients ``(d total / dx, d total / dy)`` of :func:`batch_all_forward`'s total, by a
    second pass over the tiles; with ``y_is_x`` (``y`` is ``x``) both land on ``x`` and the
    second is ``None``. For the cosine metric they are the gradients with respect to the
    normalised rows (the caller's autograd goes through the normalisation).

    Per tile, with ``g = d(total) / d(dist)`` from the kernel: Euclidean metrics turn ``g``
    into the weights ``w`` of :func:`~tripletkit.distances._euclidean_weights_` and add
    ``x w.sum(1) - w y`` to the tile's rows of ``dx`` and ``y w.sum(0) - w^T x`` to ``dy``;
    the cosine distance ``1 - x y^T`` gives ``-w y`` and ``-w^T x`` with ``w = g`` where the
    distance is differentiable (not clamped, not set to 0).
    """
    _check_cpu(x, y)
    n, m = x.shape[0], y.shape[0]
    gx = torch.zeros_like(x)
    gy = gx if y_is_x else torch.zeros_like(y)
    if n == 0 or m == 0:
        return gx, None if y_is_x else gy
    lab, ref_lab, own = _np(labels), _np(ref_labels), _np(self_index)
    x, y = x.detach(), y.detach()
    cosine = metric == "cosine"
    col_sums = torch.zeros(m, dtype=x.dtype)  # Euclidean: sum over the tiles of w.sum(0)
    for rows in _blocks(n, m, x.element_size()):
        xb = x[rows]
        d = distance_tile(xb, y, metric)
        *_, g_np = _tile_kernel(_np(d), lab[rows], ref_lab, own[rows], margin, soft)
        g = torch.from_numpy(g_np).to(d.dtype)
        if cosine:
            # d = where(c > 8 eps, c, 0) with c = clamp(1 - x y^T, 0, 2): differentiable
            # where the first branch is taken (d > 0) and the clamp lets it through
            # (1 - x y^T <= 2, which only an exact d = 2 can fail).
            keep = d > 0
            if bool((d == 2.0).any()):
                keep &= (1.0 - xb @ y.t()) <= 2.0
            w = g.masked_fill_(~keep, 0.0).neg_()
            gx[rows] += w @ y
            gy.addmm_(w.t(), xb)
        else:
            w = _euclidean_weights_(g, d, metric == "sqeuclidean")
            del d
            gx[rows] += xb * w.sum(dim=1, keepdim=True) - w @ y
            col_sums += w.sum(dim=0)
            gy.addmm_(w.t(), xb, alpha=-1.0)
        del g, w
    if not cosine:
        gy += y * col_sums.unsqueeze(1)
    return gx, None if y_is_x else gy
