"""``tripletkit.kernels``: the numba backend returns what the torch backend returns, kernel
by kernel, for every width the torch kernels are given.

Both backends are called through the dispatcher (:mod:`tripletkit.kernels`), so the
tensor <-> numpy conversion is covered as well. Mined indices (a torch
:class:`~tripletkit.kernels.Selection`'s valid slots, read row-major) and counts must be
identical; totals and gradients equal to 1e-9 / 1e-7 in float64 and to a looser tolerance in
float32. The torch kernels run without a width (every column a slot), with the batch's exact
largest number of positives, and with looser bounds (the dense, counted and bucketed paths).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher
from torch import Tensor

from tripletkit import _masks, kernels
from tripletkit.distances import pairwise_distance
from tripletkit.kernels import REGIONS, resolve_backend

Case = tuple[Tensor, Tensor, Tensor, Tensor]  # dist, labels, ref_labels, self_index

MARGINS = (0.2, 0.0, -0.3, 1.0)
#: Tolerances of the numba results against the torch ones: a total (0-dim) and a gradient
#: (matrix), in float64; float32 gets :data:`FLOAT32_TOL` for both.
TOTAL_TOL_FLOAT64 = 1e-9
GRAD_TOL_FLOAT64 = 1e-7
FLOAT32_TOL = 1e-5
#: Random label layouts drawn by the property test.
LAYOUT_EXAMPLES = 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run torch and numba on one thread: on these tiny inputs waking a second thread costs
    far more than the work, and a lot more still on a busy machine.
    :func:`test_numba_results_do_not_depend_on_threads` checks with every thread."""
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    # numba first: starting its OpenMP thread pool resets the count torch sees
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    numba.set_num_threads(numba_threads)
    torch.set_num_threads(torch_threads)


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def _pk(p: int, k: int) -> Tensor:
    return torch.arange(p).repeat_interleave(k)


def _self_case(x: Tensor, labels: Tensor, metric: str = "euclidean") -> Case:
    """Anchors are the references themselves."""
    dist = pairwise_distance(x, metric=metric)
    return dist, labels, labels, _masks.self_index(x.shape[0], x.device)


def _random(n: int, dim: int, dtype: torch.dtype, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen, dtype=torch.float64).to(dtype)


def _duplicates() -> Case:
    x = _random(12, 3, torch.float64, 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    x[1] = x[0]  # duplicate positive
    x[4] = x[0]  # duplicate negative
    x[7] = x[0]
    x[10] = x[9]
    x[11] = x[3]
    return _self_case(x, labels)


def _grid(dtype: torch.dtype) -> Case:
    """Small integer coordinates and squared distances: integer distances, many exact ties,
    including ``d_an == d_ap + margin`` for integer margins."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (16, 3), generator=gen).to(dtype)
    return _self_case(x, _pk(4, 4), metric="sqeuclidean")


def _big_classes(dtype: torch.dtype) -> Case:
    """Two classes of 20 on an integer grid: anchors with more positives than the count
    that ranks by a linear scan, so the binary searches run too, on many exact ties."""
    gen = torch.Generator().manual_seed(15)
    x = torch.randint(0, 4, (40, 3), generator=gen).to(dtype)
    return _self_case(x, torch.arange(40) % 2, metric="sqeuclidean")


def _reference_set() -> Case:
    x, ref = _random(7, 4, torch.float64, 3), _random(13, 4, torch.float64, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 5])
    ref_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 1, 2])
    return pairwise_distance(x, ref), labels, ref_labels, _masks.self_index(7, x.device, None)


def _offset() -> Case:
    ref = _random(12, 4, torch.float64, 5)
    ref_labels = _pk(4, 3)
    dist = pairwise_distance(ref[3:9], ref)
    return dist, ref_labels[3:9], ref_labels, _masks.self_index(6, ref.device, 3)


def _float32_thresholds() -> Case:
    """Negatives placed exactly at, just below and just above the float32 threshold
    ``d_ap + 0.2`` (which differs from the float64 one), on a random float32 matrix."""
    gen = torch.Generator().manual_seed(6)
    n = 12
    labels = _pk(4, 3)
    dist = torch.rand(n, n, generator=gen, dtype=torch.float32) * 2
    dist.fill_diagonal_(0)
    m32 = torch.tensor(0.2, dtype=torch.float32)
    for a in range(n):
        positives = [j for j in range(n) if labels[j] == labels[a] and j != a]
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        t = dist[a, positives[0]] + m32
        dist[a, negatives[0]] = t
        dist[a, negatives[1]] = torch.nextafter(t, torch.tensor(0.0))
        dist[a, negatives[2]] = torch.nextafter(t, torch.tensor(9.0))
        dist[a, negatives[3]] = t  # a tie between two negatives as well
    return dist, labels, labels, _masks.self_index(n, dist.device)


CASES: dict[str, Callable[[], Case]] = {
    "pk_float64": lambda: _self_case(_random(24, 5, torch.float64, 0), _pk(6, 4)),
    "pk_float32": lambda: _self_case(_random(24, 5, torch.float32, 0), _pk(6, 4)),
    "singleton_class": lambda: _self_case(
        _random(9, 3, torch.float64, 7), torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 3])
    ),
    "duplicates": _duplicates,
    "grid_float64": lambda: _grid(torch.float64),
    "grid_float32": lambda: _grid(torch.float32),
    "float32_thresholds": _float32_thresholds,
    "big_classes_float64": lambda: _big_classes(torch.float64),
    "big_classes_float32": lambda: _big_classes(torch.float32),
    "one_class": lambda: _self_case(
        _random(6, 3, torch.float64, 8), torch.zeros(6, dtype=torch.int64)
    ),
    "all_distinct": lambda: _self_case(_random(6, 3, torch.float64, 9), torch.arange(6)),
    "empty": lambda: _self_case(torch.empty(0, 3, dtype=torch.float64), _pk(0, 1)),
    "no_anchors": lambda: (
        torch.empty(0, 5, dtype=torch.float64),
        _pk(0, 1),
        _pk(1, 5),
        _masks.self_index(0, torch.device("cpu"), None),
    ),
    "no_references": lambda: (
        torch.empty(3, 0, dtype=torch.float64),
        torch.tensor([0, 1, 1]),
        _pk(0, 1),
        _masks.self_index(3, torch.device("cpu"), None),
    ),
    "single": lambda: _self_case(_random(1, 3, torch.float64, 10), torch.tensor([4])),
    "reference_set": _reference_set,
    "offset_anchors": _offset,
}


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def _assert_same(expected: tuple, got: tuple, dtype: torch.dtype, what: str) -> None:
    """Indices and counts identical; floating results within the dtype's tolerance."""
    tol = TOTAL_TOL_FLOAT64 if dtype == torch.float64 else FLOAT32_TOL
    grad_tol = GRAD_TOL_FLOAT64 if dtype == torch.float64 else FLOAT32_TOL
    assert len(expected) == len(got), what
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        where = f"{what}, output {i}"
        if isinstance(e, Tensor):
            assert isinstance(g, Tensor) and g.dtype == e.dtype and g.shape == e.shape, where
            if e.is_floating_point():
                atol = tol if e.dim() == 0 else grad_tol
                torch.testing.assert_close(g, e, rtol=atol, atol=atol, msg=where)
            else:
                assert torch.equal(g, e), f"{where}: {g.tolist()} != {e.tolist()}"
        else:
            assert type(g) is type(e) and g == e, f"{where}: {g!r} != {e!r}"


def _listed(sel: kernels.Selection) -> tuple[Tensor, Tensor, Tensor]:
    """The triplets of a selection: its valid slots, row-major (every slot when listed)."""
    a, p, n = torch.broadcast_tensors(sel.anchor, sel.positive, sel.negative)
    if sel.valid is None:
        return a, p, n
    assert sel.valid.shape == a.shape
    rows = sel.valid.nonzero(as_tuple=True)
    return a[rows], p[rows], n[rows]


def _largest_positive_count(case: Case) -> int:
    dist, labels, ref_labels, self_index = case
    pos, _ = _masks.pair_masks(labels, ref_labels, self_index)
    return int(pos.sum(dim=1).max()) if pos.numel() else 0


def _widths(case: Case) -> list[int | None]:
    """Widths the torch kernels are run with: none, the exact bound, looser ones (past the
    counted-rank and bucketed-semi-hard limits too) and every column."""
    exact = _largest_positive_count(case)
    return [None, exact, exact + 3, exact + 40, case[0].shape[1]]


def _run(
    case: Case,
    kernel: str,
    margin: float,
    region: str | None,
    backend: str,
    width: int | None = None,
) -> tuple:
    if kernel == "batch_all_hinge":
        return kernels.batch_all_hinge(*case, margin, backend=backend, width=width)
    if kernel == "batch_all_soft":
        if width is None:  # the torch soft margin needs a bound: the exact one
            width = _largest_positive_count(case)
        return kernels.batch_all_soft(*case, backend=backend, width=width)
    if kernel == "batch_hard":
        return _listed(kernels.batch_hard(*case, backend=backend))
    if kernel == "semi_hard":
        return _listed(kernels.semi_hard(*case, backend=backend, width=width))
    if kernel == "triplet_region":
        return kernels.triplet_region(*case, margin, region, backend=backend)
    return (kernels.triplet_counts(*case, margin, backend=backend),)


def _compare(case: Case, kernel: str, margin: float, region: str | None = None) -> None:
    got = _run(case, kernel, margin, region, "numba")
    for width in _widths(case):
        expected = _run(case, kernel, margin, region, "torch", width)
        what = f"{kernel} region={region} margin={margin} width={width}"
        _assert_same(expected, got, case[0].dtype, what)
        if kernel == "batch_all_hinge":  # the hinge gradient holds integer counts: exact
            assert torch.equal(got[3], expected[3]), what


KERNELS = [
    ("batch_all_hinge", None),
    ("batch_all_soft", None),
    ("batch_hard", None),
    ("semi_hard", None),
    ("triplet_counts", None),
    *(("triplet_region", region) for region in REGIONS),
]


@pytest.mark.parametrize(("kernel", "region"), KERNELS, ids=[r or k for k, r in KERNELS])
@pytest.mark.parametrize("case_name", list(CASES))
def test_numba_matches_torch(case_name: str, kernel: str, region: str | None) -> None:
    case = CASES[case_name]()
    margins = MARGINS if kernel in ("batch_all_hinge", "triplet_counts", "triplet_region") else [0]
    for margin in margins:
        _compare(case, kernel, margin, region)


def test_numba_results_do_not_depend_on_threads() -> None:
    """Every anchor owns its outputs: the same results with one thread and with all."""
    case = _self_case(_random(96, 8, torch.float32, 14), _pk(12, 8))
    for kernel, region in KERNELS:
        one = _run(case, kernel, 0.2, region, "numba")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        try:
            every = _run(case, kernel, 0.2, region, "numba")
        finally:
            numba.set_num_threads(1)
        for a, b in zip(one, every, strict=True):
            assert torch.equal(a, b), kernel


def test_float32_thresholds_are_computed_in_float32() -> None:
    """The crafted case really separates float32 from float64 thresholds, so the
    comparison above would catch a backend that adds the margin in float64."""
    dist, labels, ref_labels, self_index = _float32_thresholds()
    d64 = dist.to(torch.float64)
    a32 = kernels.triplet_counts(dist, labels, ref_labels, self_index, 0.2, backend="torch")
    a64 = kernels.triplet_counts(d64, labels, ref_labels, self_index, 0.2, backend="torch")
    assert not torch.equal(a32, a64)


def _is_count(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype == torch.int64 and t.dim() == 0


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_types_and_dtypes(dtype: torch.dtype, backend: str) -> None:
    """Both backends hand back tensors: sums in the matrix's dtype, counts as 0-dim int64
    tensors (no host read), selections of int64 indices."""
    case = _self_case(_random(10, 3, dtype, 11), _pk(5, 2))
    total, n_valid, n_active, grad = kernels.batch_all_hinge(*case, 0.3, backend=backend)
    assert total.dtype == dtype and total.dim() == 0
    assert _is_count(n_valid) and _is_count(n_active)
    assert grad.dtype == dtype and grad.shape == case[0].shape
    total, n_valid, grad = kernels.batch_all_soft(*case, backend=backend, width=1)
    assert total.dtype == dtype and grad.dtype == dtype and _is_count(n_valid)
    for sel in (
        kernels.batch_hard(*case, backend=backend),
        kernels.semi_hard(*case, backend=backend),
    ):
        assert isinstance(sel, kernels.Selection)
        for idx in sel[:3]:
            assert idx.dtype == torch.int64
        assert (sel.valid is None) == (backend == "numba")
    counts = kernels.triplet_counts(*case, 0.3, backend=backend)
    assert counts.dtype == torch.int64 and counts.shape == (4,)


def test_torch_soft_margin_needs_a_width() -> None:
    case = _self_case(_random(6, 3, torch.float64, 11), _pk(3, 2))
    with pytest.raises(ValueError, match="width"):
        kernels.batch_all_soft(*case, backend="torch")


def test_non_contiguous_and_int32_inputs() -> None:
    """A transposed distance matrix and int32 labels go through the conversion path."""
    dist, labels, _, self_index = _self_case(_random(12, 3, torch.float64, 12), _pk(4, 3))
    dist_t = dist.t()  # symmetric, so the same values, but not contiguous
    labels32 = labels.to(torch.int32)
    expected = _listed(kernels.semi_hard(dist, labels, labels, self_index, backend="torch"))
    for backend in ("torch", "numba"):
        sel = kernels.semi_hard(dist_t, labels32, labels32, self_index, backend=backend, width=2)
        _assert_same(expected, _listed(sel), dist.dtype, f"semi_hard {backend}")


# ---------------------------------------------------------------------------------------------
# Property test: random label layouts
# ---------------------------------------------------------------------------------------------


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[Case, float]:
    n = draw(st.integers(0, 10))
    n_classes = draw(st.integers(1, 4))
    labels = torch.tensor(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if draw(st.booleans()):  # integer grid: many exact ties
        x = torch.randint(0, 3, (n, 2), generator=gen).to(dtype)
    else:
        x = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(dtype)
    margin = draw(st.sampled_from([-0.5, 0.0, 0.25, 1.0, 2.0]))
    if draw(st.booleans()) or n == 0:
        case = (pairwise_distance(x), labels, labels, _masks.self_index(n, x.device))
    else:  # separate references: a few of their own plus the anchors themselves
        extra = draw(st.integers(0, 5))
        ref = torch.cat([torch.randint(0, 3, (extra, 2), generator=gen).to(dtype), x])
        ref_labels = torch.cat([torch.randint(0, n_classes + 1, (extra,), generator=gen), labels])
        offset = draw(st.sampled_from([None, extra]))
        case = (
            pairwise_distance(x, ref),
            labels,
            ref_labels,
            _masks.self_index(n, x.device, offset),
        )
    return case, margin


@settings(max_examples=LAYOUT_EXAMPLES, deadline=None)
@given(_layouts())
def test_backends_agree_on_random_layouts(layout: tuple[Case, float]) -> None:
    case, margin = layout
    for kernel, region in KERNELS:
        _compare(case, kernel, margin, region)


# ---------------------------------------------------------------------------------------------
# Dispatcher and wrappers
# ---------------------------------------------------------------------------------------------


def test_resolve_backend() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu) == "numba"
    assert resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("numba", cpu) == "numba"
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("numba", cuda)
    with pytest.raises(ValueError, match="'auto', 'torch', 'numba'"):
        resolve_backend("jax", cpu)


def test_auto_backend_runs_numba_on_cpu() -> None:
    case = _self_case(_random(8, 3, torch.float64, 13), _pk(4, 2))
    auto = kernels.batch_hard(*case, backend="auto")
    assert auto.valid is None  # the numba backend lists its rows
    _assert_same(
        _listed(kernels.batch_hard(*case, backend="torch")), _listed(auto), torch.float64, "auto"
    )


def test_numba_wrappers_reject_bad_input() -> None:
    from tripletkit.kernels import numba_backend

    dist = np.zeros((3, 3))
    labels = np.array([0, 0, 1])
    self_index = np.arange(3)
    with pytest.raises(ValueError, match="expected one of"):
        numba_backend.triplet_region(dist, labels, labels, self_index, 0.1, "medium")
    t_labels = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="region"):
        kernels.triplet_region(
            torch.zeros(3, 3), t_labels, t_labels, torch.arange(3), 0.1, "medium", "numba"
        )
    with pytest.raises(TypeError, match="float32 or float64"):
        numba_backend.batch_hard(dist.astype(np.float16), labels, labels, self_index)
    with pytest.raises(ValueError, match="shapes"):
        numba_backend.batch_hard(dist, labels[:2], labels, self_index)


#: The parallel kernels of the numba backend, each with its declared signatures.
PARALLEL_KERNELS = (
    "_batch_all_kernel",
    "_hard_kernel",
    "_ranked_kernel",
    "_rows_kernel",
    "_counts_kernel",
)


@pytest.mark.parametrize("name", PARALLEL_KERNELS)
def test_parallel_kernels_compile_only_their_declared_signatures(name: str) -> None:
    """Each parallel kernel declares four signatures, one per float dtype of a C-contiguous
    distance matrix and kind of relation (class labels, or the masks of multi-hot labels /
    explicit masks), compiled on first use: running every kernel in both dtypes, with class
    labels and with masks, compiles only declared ones (a scalar handed as a Python float,
    a non-contiguous view or int32 labels would add a signature, or a copy in the wrapper
    would be missing: both show here), and each relation and dtype that ran has its own."""
    from tripletkit.kernels import _numba_kernels, numba_backend

    kernel = getattr(_numba_kernels, name)
    assert isinstance(kernel, Dispatcher) and kernel.targetoptions.get("parallel")
    declared = [tuple(sig.args) for sig in _numba_kernels.SIGNATURES[name]]
    assert len(declared) == len(set(declared)) == 4
    assert sorted(str((s[0].dtype, s[0].ndim, s[0].layout)) for s in declared) == sorted(
        map(str, [(numba.float32, 2, "C"), (numba.float64, 2, "C")] * 2)
    )
    for case_name in ("pk_float32", "pk_float64", "reference_set"):
        case = CASES[case_name]()
        for kernel_name, region in KERNELS:
            _run(case, kernel_name, 0.2, region, "numba")
    g = torch.Generator().manual_seed(0)
    index = np.arange(6, dtype=np.int64)
    labels = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
    pos = (torch.rand(6, 6, generator=g) < 0.4).numpy()
    for dtype in (np.float32, np.float64):  # both relations, both dtypes, every wrapper
        dist = torch.rand(6, 6, generator=g).numpy().astype(dtype)
        for rel, ref in ((labels, labels), (pos, ~pos)):
            numba_backend.batch_all_hinge(dist, rel, ref, index, 0.2)
            numba_backend.batch_all_soft(dist, rel, ref, index, 0.2)
            numba_backend.batch_hard(dist, rel, ref, index)
            numba_backend.batch_hard(dist, rel, ref, index, (0, 2), (1, 3))
            numba_backend.semi_hard(dist, rel, ref, index)
            numba_backend.triplet_counts(dist, rel, ref, index, 0.2)
            for region in numba_backend.REGIONS:
                numba_backend.triplet_region(dist, rel, ref, index, 0.2, region)
    compiled = [tuple(sig) for sig in kernel.signatures]
    assert set(compiled) <= set(declared), set(compiled) - set(declared)
    assert len(compiled) == len(set(compiled))
    assert set(compiled) == set(declared)  # every dtype and relation ran


def test_numba_backend_runs_as_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``NUMBA_DISABLE_JIT=1`` does, in-process: every kernel replaced by its Python
    function (``prange`` is ``range`` outside numba) gives the same results."""
    from tripletkit.kernels import _numba_kernels, numba_backend

    for module in (numba_backend, _numba_kernels):
        for name, obj in vars(module).copy().items():
            if isinstance(obj, Dispatcher):
                monkeypatch.setattr(module, name, obj.py_func)
    for case_name in ("grid_float32", "reference_set", "offset_anchors"):
        case = CASES[case_name]()
        for kernel, region in KERNELS:
            _compare(case, kernel, 1.0, region)
