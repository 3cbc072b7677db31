"""``backend="triton"`` (issue 18): the Triton kernels of the fused losses, run on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1``, set by this module's fixture for its own
tests only: ``triton.jit`` reads it when the kernels are built, on their first use, so the
rest of the suite is untouched).

Proof without a GPU: values and gradients against the brute-force references (float64, the
awkward cases), against the numba backend on P x K, irregular, two-class and reference-set
batches (float32: values 1e-5, gradients 1e-4; float64), half inputs computed in float32,
rank windows, every reduction, the backend's resolution, a count of allocations showing
that nothing with ``N x M`` elements is created, ``torch.compile(fullgraph=True)`` of each
loss (the launches are custom ops; ``opcheck`` on each), and no host read in a module's
second call with the checks off. The interpreter is slow (numpy per block):
batches have at most 64 anchors and every test picks a few cases.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import (
    CASES,
    GRAD_TOL,
    MARGIN,
    VALUE_TOL,
    Case,
    check_compiled,
    check_loss,
    leaves_of,
    value_and_grads,
)
from reference import fused_terms, reduce
from syncs import SyncCounter
from torch.utils._python_dispatch import TorchDispatchMode

import tripletkit
from tripletkit.kernels import resolve_backend, triton_backend
from tripletkit.losses import (
    BatchAllTripletLoss,
    SemiHardTripletLoss,
    batch_all_parts,
    batch_all_triplet_loss,
    batch_hard_parts,
    batch_hard_triplet_loss,
    semi_hard_parts,
    semi_hard_triplet_loss,
)

FUSED = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
}
PARTS = {"batch_all": batch_all_parts, "batch_hard": batch_hard_parts, "semi_hard": semi_hard_parts}
METRICS = ("euclidean", "sqeuclidean", "cosine")
FLOAT32_VALUE_TOL = {"rtol": 1e-5, "atol": 1e-5}
FLOAT32_GRAD_TOL = {"rtol": 1e-4, "atol": 1e-4}

needs_triton = pytest.mark.skipif(
    not triton_backend.available(),
    reason="triton is not installed (pip install 'tripletkit[gpu]'; .ci/run installs it)",
)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Triton's interpreter (tests/conftest.py sets it before triton's first import) and one
    torch thread (tiny batches). Blocks keep their default size (64 rows at these ``D``)
    except where a test sets smaller ones to cross tile boundaries: the interpreter's cost
    grows with the number of tiles visited."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------- resolution


def test_resolve_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="triton.*CUDA.*TRITON_INTERPRET=1"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError, match="triton.*CUDA"):
        resolve_backend("triton", torch.device("meta"))
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        batch_all_triplet_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]), backend="triton")
    # "auto" never picks triton: torch on every device but the CPU, whatever the size
    assert resolve_backend("auto", torch.device("meta"), 1 << 40) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", cpu) == "numba"
    if triton_backend.available():
        assert resolve_backend("triton", cpu) == "triton"


# ------------------------------------------------------------- against brute force

#: The awkward cases, each with one metric (every metric is covered by several).
REFERENCE_CASES = {
    "duplicates": "euclidean",
    "grid": "sqeuclidean",
    "generic": "cosine",
    "one_class": "euclidean",
    "all_distinct": "sqeuclidean",
    "single": "euclidean",
    "refs": "cosine",
    "refs_offset": "euclidean",
    "refs_overlap": "sqeuclidean",
    "refs_one_class": "euclidean",
    "refs_empty": "euclidean",
    "empty": "euclidean",
}


@needs_triton
@pytest.mark.parametrize("name", tuple(REFERENCE_CASES))
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_matches_reference(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """float64, hinge (``"mean_nonzero"``) and soft margin (``"mean"``); the grid (12 rows,
    exact ties between different pairs) in blocks of 8 rows, so that its ties cross a tile
    boundary."""
    if name == "grid":
        monkeypatch.setattr(triton_backend, "BLOCK", 8)
    c: Case = CASES[name]
    metric = REFERENCE_CASES[name]
    for soft, reduction in [(False, "mean_nonzero"), (True, "mean")]:
        x, ref = c.leaves()
        out = FUSED[kind](
            x, c.labels, MARGIN, metric, soft, reduction, backend="triton", **c.ref_kwargs(ref)
        )
        x_exp, ref_exp = c.leaves()
        terms, zero = fused_terms(
            kind,
            x_exp,
            c.labels,
            ref_exp,
            c.ref_labels,
            margin=MARGIN,
            metric=metric,
            soft_margin=soft,
            anchor_offset=c.anchor_offset,
        )
        expected = value_and_grads(reduce(terms, reduction, zero), leaves_of(x_exp, ref_exp))
        check_loss(out, leaves_of(x, ref), expected)


# ------------------------------------------------------------- against the numba backend


def _batch(layout: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """P x K, irregular class sizes with singletons, two classes, a reference set (with and
    without the anchors among it); at most 64 anchors."""
    g = torch.Generator().manual_seed(seed)
    d = 16

    def randn(*shape: int) -> torch.Tensor:
        return (0.25 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    if layout == "pk":
        return {"x": randn(64, d), "labels": torch.arange(8).repeat_interleave(8)}
    if layout == "irregular":
        sizes = [1, 5, 2, 9, 1, 3, 7, 1, 4]
        labels = torch.cat([torch.full((s,), 3 * i + 1) for i, s in enumerate(sizes)])
        perm = torch.randperm(labels.numel(), generator=g)
        return {"x": randn(labels.numel(), d), "labels": labels[perm]}
    if layout == "two_class":
        return {"x": randn(40, d), "labels": torch.randint(0, 2, (40,), generator=g)}
    if layout == "refs":
        return {
            "x": randn(24, d),
            "labels": torch.randint(0, 8, (24,), generator=g),
            "ref_embeddings": randn(72, d),
            "ref_labels": torch.randint(0, 8, (72,), generator=g),
        }
    if layout == "refs_offset":
        ref = randn(72, d)
        ref_labels = torch.randint(0, 8, (72,), generator=g)
        return {
            "x": ref[30:54].clone(),
            "labels": ref_labels[30:54].clone(),
            "ref_embeddings": ref,
            "ref_labels": ref_labels,
            "anchor_offset": 30,
        }
    raise AssertionError(layout)


def _run(fn: object, batch: dict, backend: str, **kw: object) -> tuple[torch.Tensor, list]:
    """The parts' first value (the sum of terms) and its gradients, and the counts."""
    x = batch["x"].clone().requires_grad_()
    args = {k: v for k, v in batch.items() if k != "x"}
    ref = args.get("ref_embeddings")
    if ref is not None:
        args["ref_embeddings"] = ref = ref.clone().requires_grad_()
    labels = args.pop("labels")
    out = fn(x, labels, MARGIN, backend=backend, **kw, **args)  # type: ignore[operator]
    if isinstance(out, tuple):  # parts: (total, n_valid, n_active)
        value, grads = value_and_grads(out[0], leaves_of(x, ref))
        return torch.stack([value.double(), out[1].double(), out[2].double()]), grads
    return value_and_grads(out, leaves_of(x, ref))


#: (layout, metric): every layout and every metric, in few runs.
NUMBA_RUNS = [
    ("pk", "euclidean"),
    ("irregular", "sqeuclidean"),
    ("two_class", "cosine"),
    ("refs", "euclidean"),
    ("refs_offset", "cosine"),
]


@needs_triton
@pytest.mark.parametrize(
    ("layout", "metric", "dtype"),
    [(*run, torch.float32) for run in NUMBA_RUNS]
    + [("irregular", "euclidean", torch.float64), ("refs_offset", "sqeuclidean", torch.float64)],
    ids=[f"{layout}-f32" for layout, _ in NUMBA_RUNS] + ["irregular-f64", "refs_offset-f64"],
)
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_matches_numba(
    layout: str, metric: str, kind: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sum of terms, both counts (so every reduction) and the gradients, hinge and soft
    margin (batch-all) or hinge (the mined losses: the same selection either way). The
    P x K batch runs in blocks of 32 rows (2 x 2 tiles)."""
    if layout == "pk":
        monkeypatch.setattr(triton_backend, "BLOCK", 32)
    batch = _batch(layout, dtype)
    value_tol, grad_tol = (
        (FLOAT32_VALUE_TOL, FLOAT32_GRAD_TOL) if dtype == torch.float32 else (VALUE_TOL,) * 2
    )
    for soft in (False, True) if kind == "batch_all" else (False,):
        kw = {"metric": metric, "soft_margin": soft}
        value, grads = _run(PARTS[kind], batch, "triton", **kw)
        exp_value, exp_grads = _run(PARTS[kind], batch, "numba", **kw)
        assert value[1:].tolist() == exp_value[1:].tolist()  # counts: exactly
        torch.testing.assert_close(value, exp_value, **value_tol)
        for g, e in zip(grads, exp_grads, strict=True):
            assert g.dtype == e.dtype == dtype
            torch.testing.assert_close(g, e, **grad_tol)


@needs_triton
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_every_reduction(kind: str) -> None:
    """Each reduction of each loss (``"none"``: the same triplets listed in the same order)."""
    batch = _batch("irregular", torch.float32)
    reductions = ("mean", "sum", "mean_nonzero") + (("none",) if kind != "batch_all" else ())
    for reduction in reductions:
        value, grads = _run(FUSED[kind], batch, "triton", reduction=reduction)
        exp_value, exp_grads = _run(FUSED[kind], batch, "numba", reduction=reduction)
        assert value.shape == exp_value.shape
        torch.testing.assert_close(value, exp_value, **FLOAT32_VALUE_TOL)
        torch.testing.assert_close(grads[0], exp_grads[0], **FLOAT32_GRAD_TOL)


@needs_triton
def test_rank_windows_and_smooth() -> None:
    """Batch-hard's rank windows (one sweep per rank) and the smooth hinge."""
    batch = _batch("pk", torch.float32)
    for kw in (
        {"positive_ranks": (1, 3), "negative_ranks": (0, 2), "reduction": "none"},
        {"smooth": True, "metric": "cosine"},
    ):
        value, grads = _run(batch_hard_triplet_loss, batch, "triton", **kw)
        exp_value, exp_grads = _run(batch_hard_triplet_loss, batch, "numba", **kw)
        assert value.shape == exp_value.shape
        torch.testing.assert_close(value, exp_value, **FLOAT32_VALUE_TOL)
        torch.testing.assert_close(grads[0], exp_grads[0], **FLOAT32_GRAD_TOL)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    """Half embeddings are computed in float32, as on the in-memory path: the same value
    (in the embeddings' dtype) and gradient (of the half leaf)."""
    batch = _batch("irregular", dtype)
    for kind, fn in FUSED.items():
        kw = {"max_positives": 8} if kind != "batch_hard" else {}
        value, grads = _run(fn, batch, "triton", **kw)
        exp_value, exp_grads = _run(fn, batch, "numba", **kw)
        assert value.dtype == exp_value.dtype == dtype
        torch.testing.assert_close(value, exp_value, **FLOAT32_VALUE_TOL)
        assert grads[0].dtype == dtype
        torch.testing.assert_close(grads[0], exp_grads[0], rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------- no N x M allocation


class _SeesInsideOps(TorchDispatchMode):
    """A dispatch mode sees a custom op as one call and not the torch ops its body runs
    (they run below the mode): this one runs tripletkit's ops' Python bodies
    (:data:`triton_backend.IMPLS`) under itself instead, so that it sees them too, and
    counts the ops it entered (``self.entered``)."""

    entered = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        impl = triton_backend.IMPLS.get(func._schema.name)
        if impl is None:
            return self.record(func, types, args, kwargs or {})
        self.entered += 1
        with self:
            return impl(*args, **(kwargs or {}))

    def record(self, func, types, args, kwargs):  # type: ignore[no-untyped-def]
        return func(*args, **kwargs)


class _Sizes(_SeesInsideOps):
    """Records the size in bytes of every tensor a torch op returns (bytes: the interpreter
    copies each argument's storage to and from the host as ``uint8``)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def record(self, func, types, args, kwargs):  # type: ignore[no-untyped-def]
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _largest(
    fn: object, backend: str, x: torch.Tensor, labels: torch.Tensor, **kw: object
) -> tuple[int, int]:
    """The largest tensor of a forward and backward, in bytes, and the custom ops entered."""
    sizes = _Sizes()
    with sizes:
        fn(x, labels, MARGIN, backend=backend, **kw).backward()  # type: ignore[operator]
    return sizes.largest, sizes.entered


@needs_triton
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_no_allocation_of_n_by_m(kind: str) -> None:
    """The triton path's largest torch tensor is far below ``N x M`` elements (its kernels
    write only ``O(N W)`` state; the tiles live in the kernel), while the in-memory path,
    under the same recorder, creates ``N x M`` ones. Sizes in bytes of float64 (the
    interpreter's own numpy blocks are one tile, ``BN x BM``, and not torch tensors). The
    recorder runs the bodies of the custom ops under itself, so it sees inside them."""
    g = torch.Generator().manual_seed(1)
    n, m, d = 40, 128, 2
    labels = torch.randint(0, 32, (n,), generator=g)
    kw: dict = {
        "metric": "euclidean",
        "soft_margin": kind == "batch_all",
        "ref_embeddings": torch.randn(m, d, generator=g, dtype=torch.float64),
        "ref_labels": torch.randint(0, 32, (m,), generator=g),
    }
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    width = int(
        max((kw["ref_labels"] == label).sum() for label in labels.tolist())  # type: ignore[union-attr]
    )
    streamed, entered = _largest(FUSED[kind], "triton", x, labels, **kw)
    # the recorder ran the custom ops' bodies under itself: batch-all's forward and
    # backward, the mined losses' selection
    assert entered == (2 if kind == "batch_all" else 1)
    # O(N (D + W) + M D): the embeddings and their gradients, the positives' slots, the
    # semi-hard pairs' rows [N, W, D].
    assert streamed <= 8 * max(n * width * d, m * d, n * width), (streamed, n * m * 8)
    assert streamed < n * m * 8 // 4
    assert _largest(FUSED[kind], "numba", x, labels, **kw)[0] >= n * m * 8


@needs_triton
@pytest.mark.parametrize("relation", ["multi_hot", "masks"])
def test_triton_refuses_multi_label(relation: str) -> None:
    """The Triton kernels compare class labels inside each tile: multi-hot labels and
    explicit masks are refused by name, never mined as if they were class labels."""
    x = torch.randn(8, 4)
    hot = torch.eye(4, dtype=torch.bool)[torch.arange(8) % 4]
    if relation == "multi_hot":
        call = lambda: batch_all_triplet_loss(x, hot, backend="triton")  # noqa: E731
    else:
        pos = hot.float() @ hot.float().T > 0
        call = lambda: batch_all_triplet_loss(  # noqa: E731
            x, None, backend="triton", positive_mask=pos, negative_mask=~pos
        )
    with pytest.raises(ValueError, match="backend='triton' does not take multi-hot"):
        call()


# ------------------------------------------------------------- torch.compile, custom ops

#: (loss, soft margin, metric, with a reference set): each loss, both batch-all terms, every
#: metric, the references given and not.
COMPILED = [
    ("batch_all", False, "euclidean", False),
    ("batch_all", True, "cosine", True),
    ("batch_hard", False, "sqeuclidean", True),
    ("semi_hard", False, "euclidean", False),
]


@needs_triton
@pytest.mark.parametrize(
    ("kind", "soft", "metric", "refs"),
    COMPILED,
    ids=[f"{k}-{'soft' if s else 'hinge'}-{m}{'-refs' if r else ''}" for k, s, m, r in COMPILED],
)
def test_compile_fullgraph_matches_eager(kind: str, soft: bool, metric: str, refs: bool) -> None:
    """``torch.compile(fullgraph=True)`` (any graph break fails) captures each triton loss
    whole, forward and backward, with the input checks off and ``max_positives`` given: the
    launches are custom ops (``tripletkit::...``), and the compiled loss gives eager's
    values and gradients. 24 anchors, float64 (``aot_eager``: the graphs inductor would
    compile, without generating code)."""
    n, k = 24, 4
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=g)
    labels = torch.arange(n) // k
    ref0 = torch.randn(12, 5, dtype=torch.float64, generator=g)
    ref_labels = torch.arange(12) % 6
    kw = {"soft_margin": soft, "metric": metric, "backend": "triton"}

    def loss(*leaves: torch.Tensor) -> torch.Tensor:
        *xs, y = leaves
        if refs:  # the references' labels: 2 per class, anchors' classes 0-5: 2 positives
            extra = {"ref_embeddings": xs[1], "ref_labels": ref_labels, "max_positives": 2}
            return FUSED[kind](xs[0], y, MARGIN, **kw, **extra)  # type: ignore[operator]
        return FUSED[kind](xs[0], y, MARGIN, **kw, max_positives=k - 1)  # type: ignore[operator]

    check_compiled(loss, [x0, ref0] if refs else [x0], labels, "aot_eager", VALUE_TOL, GRAD_TOL)


@needs_triton
def test_opcheck_each_op() -> None:
    """``torch.library.opcheck`` on each custom op at a tiny size: its schema, its fake
    implementation against the real one (static and dynamic shapes), and batch-all's
    autograd formula registered for ``torch.compile``'s tracing."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g)
    y = torch.randn(8, 3, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    ref_labels = torch.tensor([0, 1, 1, 2, 0, 3, 3, 2])
    own = torch.full((6,), -1)
    pcol, _, _ = triton_backend._slots(labels, ref_labels, own, 2)
    head = (x, y, labels, ref_labels, own)
    margin = torch.tensor(MARGIN, dtype=torch.float64)
    ops = torch.ops.tripletkit
    torch.library.opcheck(ops.triton_batch_hard, (*head, "euclidean", 0, 2, 0, 1))
    torch.library.opcheck(ops.triton_semi_hard, (*head, pcol, "sqeuclidean"))
    leaves = (x.clone().requires_grad_(), y.clone().requires_grad_())
    fwd = (*leaves, labels, ref_labels, own, pcol, margin, "euclidean", False)
    torch.library.opcheck(ops.triton_batch_all_fwd, fwd)
    _, _, thr, coef = ops.triton_batch_all_fwd(*fwd)
    bwd = (*head, pcol, thr.detach(), coef.detach(), "euclidean", False)
    torch.library.opcheck(ops.triton_batch_all_bwd, bwd)


# ------------------------------------------------------------- host reads of the modules


class _Syncs(_SeesInsideOps, SyncCounter):
    """:class:`SyncCounter` that also sees inside the custom ops."""

    def record(self, func, types, args, kwargs):  # type: ignore[no-untyped-def]
        return SyncCounter.__torch_dispatch__(self, func, types, args, kwargs)


@needs_triton
@pytest.mark.parametrize("module", [BatchAllTripletLoss, SemiHardTripletLoss])
def test_modules_read_nothing_after_their_first_call(module: type) -> None:
    """With the input checks off and no ``max_positives``, a module form remembers its
    batches' width (:class:`~tripletkit._batch.WidthMemory`): the first call reads it on the
    host (one read, which shows the counter sees the read), later calls read nothing,
    forward and backward (the counter runs the custom ops' bodies under itself). The
    kernels receive the remembered width: the values and gradients are those of the
    explicit bound."""
    batch = _batch("irregular", torch.float64)
    loss = module(margin=MARGIN, backend="triton")
    reads = []
    with tripletkit.set_input_checks(False):
        for _ in range(2):
            x = batch["x"].clone().requires_grad_()
            with _Syncs() as counter:
                value = loss(x, batch["labels"])
                value.backward()
            assert counter.entered >= 1
            reads.append(dict(counter.counts))
        bound = module(margin=MARGIN, backend="triton", max_positives=loss._widths.width)
        x_exp = batch["x"].clone().requires_grad_()
        exp = bound(x_exp, batch["labels"])
        exp.backward()
    assert reads == [{"to_host": 1}, {}]
    assert loss._widths.width == 8  # the largest class has 9 rows: 8 positives
    torch.testing.assert_close(value, exp, **VALUE_TOL)
    torch.testing.assert_close(x.grad, x_exp.grad, **GRAD_TOL)


@needs_triton
def test_compiled_module_uses_its_remembered_width() -> None:
    """A module form compiled after its first (eager) call needs no ``max_positives``: the
    width it remembered is a constant of the graph (each batch checked against it on the
    device), and the compiled module gives eager's values and gradients."""
    n, k = 24, 4
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(n) // k
    module = SemiHardTripletLoss(margin=MARGIN, backend="triton")
    with tripletkit.set_input_checks(False):
        module(x0, labels)  # reads the width once
    assert module._widths.width == k
    check_compiled(lambda x, y: module(x, y), [x0], labels, "aot_eager", VALUE_TOL, GRAD_TOL)


@needs_triton
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_functions_with_max_positives_read_nothing(kind: str) -> None:
    """With the input checks off, a function form given ``max_positives`` reads nothing on
    the host, forward and backward; without it, the width-bound losses read the batch's
    largest count once per call (seen by the same counter), batch-hard nothing."""
    batch = _batch("irregular", torch.float64)
    with tripletkit.set_input_checks(False):
        reads = []
        for kw in ({"max_positives": 8}, {}):
            x = batch["x"].clone().requires_grad_()
            with _Syncs() as counter:
                FUSED[kind](x, batch["labels"], MARGIN, backend="triton", **kw).backward()
            assert counter.entered >= 1
            reads.append(dict(counter.counts))
    assert reads == [{}, {} if kind == "batch_hard" else {"to_host": 1}]
