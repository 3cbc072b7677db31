"""``backend="streaming"`` (issue 18): the fused losses mined tile by tile, without the
``[N, M]`` distance matrix.

Proof: values and gradients against the brute-force references (float64, every awkward case,
tiles of one and of a few rows so that every tile boundary is crossed), selections and values
identical to the in-memory numba backend on larger P x K, irregular, singleton, two-class and
reference-set batches (float32 and float64), the automatic switch above the memory budget,
and a count of allocations showing that nothing with ``N x M`` elements is ever created.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import (
    CASES,
    FUSED,
    MARGIN,
    VALUE_TOL,
    check_loss,
    covers_every_pair,
    expected_fused,
    leaves_of,
    pairwise,
    value_and_grads,
)
from conftest import FUSED_REDUCTIONS as REDUCTIONS
from torch.utils._python_dispatch import TorchDispatchMode

import tripletkit
from tripletkit import miners
from tripletkit.kernels import numba_backend, resolve_backend, streaming
from tripletkit.losses import _streaming, batch_all_parts, batch_all_triplet_loss

METRICS = ("euclidean", "sqeuclidean", "cosine")
FLOAT32_VALUE_TOL = {"rtol": 1e-5, "atol": 1e-5}
FLOAT32_GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}
FLOAT64_TOL = {"rtol": 1e-10, "atol": 1e-12}

pytestmark = pytest.mark.usefixtures("one_thread")


def _set_tiles(monkeypatch: pytest.MonkeyPatch, rows: int | None) -> None:
    """Tiles of ``rows`` anchor rows (whatever ``M`` and the dtype; ``None``: the default
    size) and paired chunks of 2 rows: every tile and chunk boundary is crossed."""
    if rows is not None:
        monkeypatch.setattr(streaming, "tile_rows", lambda m, itemsize, r=rows: r)
        monkeypatch.setattr(_streaming, "PAIR_CHUNK_ELEMENTS", 2)


#: Tile heights for the float64 comparisons with the brute-force references: one row, a few
#: rows (every tile boundary crossed), and the default (one tile).
TILES = (1, 3, None)
#: Tile heights that :func:`~tripletkit.kernels.streaming.tile_rows` gives (multiples of 8):
#: a BLAS rounds the rows of such tiles as it rounds them in the full product, which the
#: float32 comparisons with the in-memory path (selections exact) rely on.
ALIGNED_TILES = (8, None)


def _ids(value: object) -> str | None:
    """Test ids: ``hinge``/``soft``, ``f32``/``f64``, ``tile1``, ``one_tile``."""
    if isinstance(value, bool):
        return "soft" if value else "hinge"
    if value is None:
        return "one_tile"
    if isinstance(value, int):
        return f"tile{value}"
    if isinstance(value, torch.dtype):
        return {torch.float32: "f32", torch.float64: "f64"}[value]
    return None


# The full product case x loss x margin x metric x tiling is 702 tests; every two of these axes
# interact (a degenerate case may take another path per loss, a tile boundary per case), but
# no three: the grid holds every case x loss pair, and every pair of any two axes at least once
# (pairwise coverage, 41 rows; see conftest.pairwise). Each row checks every reduction.
REFERENCE_GRID = pairwise(tuple(CASES), tuple(FUSED), (False, True), METRICS, TILES)


@pytest.mark.parametrize(("name", "kind", "soft", "metric", "tiles"), REFERENCE_GRID, ids=_ids)
def test_matches_reference(
    name: str,
    kind: str,
    soft: bool,
    metric: str,
    tiles: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set_tiles(monkeypatch, tiles)
    c = CASES[name]
    for reduction in REDUCTIONS[kind]:
        x, ref = c.leaves()
        out = FUSED[kind](
            x,
            c.labels,
            MARGIN,
            metric,
            soft,
            reduction,
            backend="streaming",
            **c.ref_kwargs(ref),
        )
        expected = expected_fused(name, kind, soft, metric, False, reduction)
        check_loss(out, leaves_of(x, ref), expected)


def test_the_grids_cover_every_pair() -> None:
    """The pairwise grids hold every case x loss and every pair of any two axes."""
    axes = (tuple(CASES), tuple(FUSED), (False, True), METRICS, TILES)
    assert covers_every_pair(REFERENCE_GRID, *axes)
    assert {(r[0], r[1]) for r in REFERENCE_GRID} == {(c, k) for c in CASES for k in FUSED}
    assert not covers_every_pair(REFERENCE_GRID[1:], *axes)  # the check can fail
    assert len(REFERENCE_GRID) < 60


# Every metric in each row; the three cases x three losses, with every tiling for each.
@pytest.mark.parametrize(
    ("name", "kind", "tiles"),
    pairwise(("duplicates", "refs_offset", "grid"), tuple(FUSED), TILES),
    ids=_ids,
)
def test_normalize_matches_reference(
    name: str, kind: str, tiles: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_tiles(monkeypatch, tiles)
    c = CASES[name]
    for metric in METRICS:
        x, ref = c.leaves()
        out = FUSED[kind](
            x,
            c.labels,
            MARGIN,
            metric,
            reduction="mean_nonzero",
            normalize=True,
            backend="streaming",
            **c.ref_kwargs(ref),
        )
        expected = expected_fused(name, kind, False, metric, True, "mean_nonzero")
        check_loss(out, leaves_of(x, ref), expected)


# ------------------------------------------------------------- against the numba backend


def _batch(layout: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """Larger batches: P x K, irregular class sizes with singletons, two classes, and a
    reference set (with and without the anchors among it)."""
    g = torch.Generator().manual_seed(seed)
    d = 16

    def randn(*shape: int) -> torch.Tensor:
        # scaled so that distances are O(1): float32 terms d_ap - d_an + m then carry
        # rounding errors well below the 1e-5 tolerance
        return (0.25 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    if layout == "pk":
        labels = torch.arange(12).repeat_interleave(8)
        return {"x": randn(96, d), "labels": labels}
    if layout == "irregular":
        sizes = [1, 5, 2, 9, 1, 3, 7, 1, 4]
        labels = torch.cat([torch.full((s,), 3 * i + 1) for i, s in enumerate(sizes)])
        perm = torch.randperm(labels.numel(), generator=g)
        return {"x": randn(labels.numel(), d), "labels": labels[perm]}
    if layout == "two_class":
        return {"x": randn(40, d), "labels": torch.randint(0, 2, (40,), generator=g)}
    if layout == "refs":
        ref_labels = torch.randint(0, 10, (150,), generator=g)
        return {
            "x": randn(30, d),
            "labels": torch.randint(0, 10, (30,), generator=g),
            "ref_embeddings": randn(150, d),
            "ref_labels": ref_labels,
        }
    if layout == "refs_offset":
        ref = randn(150, d)
        ref_labels = torch.randint(0, 10, (150,), generator=g)
        return {
            "x": ref[40:70].clone(),
            "labels": ref_labels[40:70].clone(),
            "ref_embeddings": ref,
            "ref_labels": ref_labels,
            "anchor_offset": 40,
        }
    raise AssertionError(layout)


LAYOUTS = ("pk", "irregular", "two_class", "refs", "refs_offset")


def _run(kind: str, batch: dict, backend: str, **kw: object) -> tuple[torch.Tensor, list]:
    x = batch["x"].clone().requires_grad_()
    args = {k: v for k, v in batch.items() if k != "x"}
    ref = args.get("ref_embeddings")
    if ref is not None:
        args["ref_embeddings"] = ref = ref.clone().requires_grad_()
    labels = args.pop("labels")
    out = FUSED[kind](x, labels, MARGIN, backend=backend, **kw, **args)
    return value_and_grads(out, leaves_of(x, ref))


DTYPES = (torch.float32, torch.float64)


# Every layout x loss, each dtype, metric and tiling with every layout, loss and one another
# (pairwise: 15 rows instead of the product's 180); every reduction and the soft margin in each.
@pytest.mark.parametrize(
    ("layout", "kind", "dtype", "metric", "tiles"),
    pairwise(LAYOUTS, tuple(FUSED), DTYPES, METRICS, ALIGNED_TILES),
    ids=_ids,
)
def test_matches_numba(
    layout: str,
    kind: str,
    dtype: torch.dtype,
    metric: str,
    tiles: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set_tiles(monkeypatch, tiles)
    batch = _batch(layout, dtype)
    value_tol, grad_tol = (
        (FLOAT32_VALUE_TOL, FLOAT32_GRAD_TOL) if dtype == torch.float32 else (VALUE_TOL,) * 2
    )
    runs = [(False, r) for r in REDUCTIONS[kind]] + [(True, "sum")]
    for soft, reduction in runs:
        kw = {"metric": metric, "soft_margin": soft, "reduction": reduction}
        value, grads = _run(kind, batch, "streaming", **kw)
        exp_value, exp_grads = _run(kind, batch, "numba", **kw)
        assert value.dtype == exp_value.dtype == dtype
        assert value.shape == exp_value.shape  # "none": the same triplets, listed
        torch.testing.assert_close(value, exp_value, **value_tol)
        for g, e in zip(grads, exp_grads, strict=True):
            torch.testing.assert_close(g, e, **grad_tol)


# Every layout x metric; each dtype and tiling with every layout, metric and one another
# (pairwise: 15 rows instead of 60).
@pytest.mark.parametrize(
    ("layout", "metric", "dtype", "tiles"),
    pairwise(LAYOUTS, METRICS, DTYPES, ALIGNED_TILES),
    ids=_ids,
)
def test_selection_and_counts_are_numba_s(
    layout: str,
    metric: str,
    dtype: torch.dtype,
    tiles: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiles select exactly the numba kernels' triplets on the full matrix (same order),
    and batch-all counts are equal."""
    _set_tiles(monkeypatch, tiles)
    batch = _batch(layout, dtype)
    x, labels = batch["x"], batch["labels"]
    ref = batch.get("ref_embeddings", x)
    ref_labels = batch.get("ref_labels", labels)
    offset = batch.get("anchor_offset", 0 if "ref_embeddings" not in batch else None)
    own = torch.arange(x.shape[0]) + offset if offset is not None else torch.full((x.shape[0],), -1)
    full = tripletkit.pairwise_distance(x, None if ref is x else ref, metric).numpy()
    if metric == "cosine":
        x, ref = (
            tripletkit.distances.normalize_embeddings(x),
            tripletkit.distances.normalize_embeddings(ref),
        )
    args = (labels.numpy(), ref_labels.numpy(), own.numpy())
    for hardest, windows in [(True, ((0, 1), (0, 1))), (True, ((1, 3), (0, 2))), (False, None)]:
        got = streaming.select(
            x, ref, labels, ref_labels, own, metric, hardest, windows or ((0, 1), (0, 1))
        )
        if hardest:
            exp = numba_backend.batch_hard(full, *args, *windows)  # type: ignore[misc]
        else:
            exp = numba_backend.semi_hard(full, *args)
        for g, e in zip(got, exp, strict=True):
            np.testing.assert_array_equal(g.numpy(), e)
    for soft in (False, True):
        total, n_valid, n_active = streaming.batch_all_forward(
            x, ref, labels, ref_labels, own, metric, MARGIN, soft
        )
        if soft:
            # softplus(d_ap - d_an + margin): the kernel of the smooth loss (0 for Hermans')
            exp_total, exp_valid, _ = numba_backend.batch_all_soft(full, *args, MARGIN)
            exp_active = exp_valid
        else:
            exp_total, exp_valid, exp_active, _ = numba_backend.batch_all_hinge(full, *args, MARGIN)
        assert (n_valid, n_active) == (exp_valid, exp_active)
        assert total == pytest.approx(exp_total, rel=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs_compute_in_float32(kind: str, dtype: torch.dtype) -> None:
    """Half-precision embeddings are computed in float32, as on the in-memory path: the
    same value (returned in the embeddings' dtype) and gradient (of the half leaf)."""
    batch = _batch("irregular", dtype)
    value, grads = _run(kind, batch, "streaming")
    exp_value, exp_grads = _run(kind, batch, "numba")
    assert value.dtype == exp_value.dtype == dtype
    torch.testing.assert_close(value, exp_value, **FLOAT32_VALUE_TOL)
    assert grads[0].dtype == dtype
    torch.testing.assert_close(grads[0], exp_grads[0], rtol=1e-2, atol=1e-3)


def test_parts_counts_are_tensors() -> None:
    b = _batch("pk", torch.float64)
    got = batch_all_parts(b["x"], b["labels"], backend="streaming")
    exp = batch_all_parts(b["x"], b["labels"], backend="numba")
    for g, e in zip(got, exp, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, **FLOAT64_TOL)


# ------------------------------------------------------------- the switch


@pytest.fixture
def budget() -> Iterator[None]:
    before = tripletkit.get_memory_budget()
    try:
        yield
    finally:
        tripletkit.set_memory_budget(before)


def test_memory_budget_switches_auto(budget: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert tripletkit.get_memory_budget() == 1 << 30  # the documented default
    assert resolve_backend("auto", cpu, 1 << 30) == "numba"
    assert resolve_backend("auto", cpu, (1 << 30) + 1) == "streaming"
    assert resolve_backend("auto", cpu) == "numba"  # no matrix: no switch
    assert resolve_backend("auto", torch.device("meta"), 1 << 40) == "torch"
    with pytest.raises(ValueError, match="streaming.*CPU"):
        resolve_backend("streaming", torch.device("meta"))
    b = _batch("pk", torch.float64)
    calls: list[str] = []
    real = _streaming.batch_all_sum
    monkeypatch.setattr(
        _streaming, "batch_all_sum", lambda *a: calls.append("streamed") or real(*a)
    )
    small = batch_all_triplet_loss(b["x"], b["labels"])
    assert calls == []
    tripletkit.set_memory_budget(96 * 96 * 8 - 1)  # one byte below this batch's matrix
    big = batch_all_triplet_loss(b["x"], b["labels"])
    assert calls == ["streamed"]
    torch.testing.assert_close(big, small, **FLOAT64_TOL)
    # A miner above the budget still builds its matrix, with the numba kernels.
    got = miners.semi_hard_triplets(b["x"], b["labels"], margin=MARGIN)
    exp = miners.semi_hard_triplets(b["x"], b["labels"], margin=MARGIN, backend="numba")
    for g, e in zip(got, exp, strict=True):
        assert torch.equal(g, e)
    tripletkit.set_memory_budget(None)
    assert tripletkit.get_memory_budget() == 1 << 30


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)]
)
def test_memory_budget_rejects(value: object, error: type, budget: None) -> None:
    with pytest.raises(error, match="memory budget"):
        tripletkit.set_memory_budget(value)  # type: ignore[arg-type]


# ------------------------------------------------------------- no N x M allocation


class _Sizes(TorchDispatchMode):
    """Records the element count of every tensor a torch op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_allocations(fn: object, *args: object, **kw: object) -> tuple[int, int]:
    """``(elements, bytes)``: the largest tensor torch creates while ``fn`` runs forward and
    backward, and the peak of numpy's (traced) allocations, which the numba wrappers make.
    One call first, unrecorded, pays the one-off allocations (the imports of the dispatch
    mode's first use, caches)."""
    with _Sizes():
        fn(*args, **kw).backward()  # type: ignore[operator]
    sizes = _Sizes()
    tracemalloc.start()
    try:
        with sizes:
            out = fn(*args, **kw)  # type: ignore[operator]
            out.backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sizes.largest, peak


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("with_ref", [False, True], ids=["self", "refs"])
def test_no_allocation_of_n_by_m(
    kind: str, metric: str, with_ref: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiles of 8 rows: the streaming path's largest array is far below ``N x M``
    elements, while the in-memory path (the same recorder) creates ``N x M`` ones."""
    monkeypatch.setattr(streaming, "TILE_BYTES", 8 * 300 * 8)  # 8 rows of M = 300 float64
    g = torch.Generator().manual_seed(1)
    n, m, d = 200, 300, 4
    kw: dict = {"metric": metric, "soft_margin": kind == "batch_all"}
    labels = torch.randint(0, 60, (n,), generator=g)
    if with_ref:
        kw["ref_embeddings"] = torch.randn(m, d, generator=g, dtype=torch.float64)
        kw["ref_labels"] = torch.randint(0, 60, (m,), generator=g)
    else:
        n = m = 300
        labels = torch.randint(0, 60, (n,), generator=g)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    arrays: list[int] = []
    real = streaming._numba

    def recorded(kernel: str, *a: object) -> object:
        out = real(kernel, *a)
        for v in (*a, *(out if isinstance(out, tuple) else (out,))):
            if isinstance(v, np.ndarray):
                arrays.append(v.size)
        return out

    monkeypatch.setattr(streaming, "_numba", recorded)
    elements, numpy_bytes = _largest_allocations(
        FUSED[kind], x, labels, MARGIN, backend="streaming", **kw
    )
    assert arrays and max(arrays) <= max(8 * m, n * m // 8), (max(arrays), n * m)
    tile = 8 * m
    # O(N (D + K) + one tile): the tile, the embeddings' gradient, the listed triplets.
    assert elements <= max(tile, n * d, m * d, n * m // 8), (elements, n * m)
    assert numpy_bytes < n * m * 8 // 4, (numpy_bytes, n * m * 8)
    # The recorders see a matrix when there is one: torch's, and numba's gradient matrix.
    in_memory, in_memory_numpy = _largest_allocations(
        FUSED[kind], x, labels, MARGIN, backend="numba", **kw
    )
    assert in_memory >= n * m
    if kind == "batch_all":
        assert in_memory_numpy >= n * m * 8
