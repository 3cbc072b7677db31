"""Shared fixtures and helpers: the kernel backends, a seeded factory of awkward batches,
the bad inputs every entry point must refuse, and the checks of a loss against its
brute-force reference (values and gradients)."""

from __future__ import annotations

import os

# Triton's interpreter (tests/test_triton.py runs the kernels on CPU tensors): triton reads
# TRITON_INTERPRET when it is first imported, so it is set here, before any test module can
# import it. Nothing else in the suite uses triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import functools  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass

import pytest
import torch
from reference import fused_terms, problem, reduce
from torch import Tensor

from tripletkit.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    SemiHardTripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

BACKENDS = ("torch", "numba")
METRICS = ("euclidean", "sqeuclidean", "cosine")
#: The triplet margin of the brute-force comparisons (miners, losses, statistics).
MARGIN = 0.3

#: The fused triplet losses (function form), by kind.
FUSED = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
}
#: The module form of each fused loss.
MODULES = {
    "batch_all": BatchAllTripletLoss,
    "batch_hard": BatchHardTripletLoss,
    "semi_hard": SemiHardTripletLoss,
}


#: Every miner on the torch path (the GPU path's audits: host synchronisations in
#: test_sync_free, transfers on ``meta`` in test_transfers). TripletMarginMiner mines a thin
#: semi-hard region, so that a large batch lists few triplets.
def _torch_miners() -> dict:  # type: ignore[type-arg]
    from tripletkit import miners

    return {
        "BatchAllMiner": lambda: miners.BatchAllMiner(backend="torch"),
        "BatchHardMiner": lambda: miners.BatchHardMiner(backend="torch"),
        "SemiHardMiner": lambda: miners.SemiHardMiner(backend="torch"),
        "SemiHardMiner_active": lambda: miners.SemiHardMiner(active_only=True, backend="torch"),
        "TripletMarginMiner": lambda: miners.TripletMarginMiner(
            0.01, type_of_triplets="semihard", backend="torch"
        ),
        "MultiSimilarityMiner": miners.MultiSimilarityMiner,
        "PairMarginMiner": miners.PairMarginMiner,
        "RandomTripletMiner": miners.RandomTripletMiner,
        "RandomTripletMiner_fixed": lambda: miners.RandomTripletMiner(num_triplets=100),
        "DistanceWeightedMiner": lambda: miners.DistanceWeightedMiner(normalize=True),
    }


TORCH_MINERS = _torch_miners()
#: The reductions each fused loss takes (batch-all lists no terms: no ``"none"``).
FUSED_REDUCTIONS = {
    "batch_all": ("mean", "sum", "mean_nonzero"),
    "batch_hard": ("mean", "sum", "mean_nonzero", "none"),
    "semi_hard": ("mean", "sum", "mean_nonzero", "none"),
}


@dataclass(frozen=True)
class Case:
    """A mining problem: anchors ``x`` with ``labels``, optionally a reference set.

    ``x`` and ``ref`` are float64 leaves without grad; :meth:`leaves` hands out fresh
    copies that require grad.
    """

    name: str
    x: Tensor
    labels: Tensor
    ref: Tensor | None = None
    ref_labels: Tensor | None = None
    anchor_offset: int | None = None

    @property
    def has_ref(self) -> bool:
        return self.ref is not None

    def leaves(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor | None]:
        x = self.x.to(dtype).clone().requires_grad_()
        ref = None if self.ref is None else self.ref.to(dtype).clone().requires_grad_()
        return x, ref

    def ref_kwargs(self, ref: Tensor | None = None, *, offset: bool = True) -> dict:
        """Keyword arguments naming the reference set (and the anchor offset)."""
        out: dict = {}
        if self.ref is not None:
            out["ref_embeddings"] = self.ref if ref is None else ref
            out["ref_labels"] = self.ref_labels
        if offset and self.anchor_offset is not None:
            out["anchor_offset"] = self.anchor_offset
        return out

    def __repr__(self) -> str:  # short ids in test reports
        return f"Case({self.name})"


def _lab(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def make_cases(seed: int = 0) -> dict[str, Case]:
    """Batches covering the awkward layouts, all float64 and reproducible."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases: list[Case] = []

    # Three classes and a singleton class (label 9), non-contiguous labels.
    cases.append(Case("generic", randn(10, 4), _lab(0, 0, 0, 4, 4, 4, 4, 2, 2, 9)))

    # Exact duplicates that create exact ties: 0 == 1 (same class, a positive at distance
    # 0), 2 == 3 (different classes: d_ap == d_an for every anchor of either class),
    # 4 == 5 == 6 (two negatives of class 0 tie; a positive ties a negative), 8 singleton.
    x = randn(10, 3)
    x[1] = x[0]
    x[3] = x[2]
    x[5] = x[4]
    x[6] = x[4]
    cases.append(Case("duplicates", x, _lab(0, 0, 1, 2, 1, 1, 2, 2, 5, 0)))

    # Small integer coordinates: distances are exact, so ties between different pairs
    # are exact too (no zero vector, so that cosine is defined).
    grid = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)
    idx = torch.randint(0, 4, (12, 2), generator=g)
    x = grid[idx]
    x[7] = x[2]
    cases.append(Case("grid", x, _lab(0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1)))

    cases.append(Case("one_class", randn(5, 3), _lab(7, 7, 7, 7, 7)))
    cases.append(Case("all_distinct", randn(5, 3), _lab(3, 1, 4, 0, 2)))
    cases.append(Case("empty", randn(0, 3), _lab()))
    cases.append(Case("single", randn(1, 3), _lab(1)))
    cases.append(Case("pair_same", randn(2, 3), _lab(1, 1)))

    # Reference set, anchors not among the references: ref 0 is a copy of anchor 0 with the
    # same label (a positive at distance 0), ref 1 a copy of anchor 1 with another label.
    x = randn(5, 3)
    ref = randn(8, 3)
    ref[0] = x[0]
    ref[1] = x[1]
    cases.append(Case("refs", x, _lab(0, 1, 1, 2, 3), ref, _lab(0, 0, 1, 1, 2, 2, 1, 0)))

    # Anchors are rows 2..6 of the references (anchor_offset=2): the self pair is excluded,
    # but ref 8, a copy of anchor 0 (ref 2) with its label, is still a positive.
    ref = randn(9, 3)
    ref[8] = ref[2]
    ref_labels = _lab(0, 1, 0, 1, 2, 0, 1, 2, 0)
    cases.append(Case("refs_offset", ref[2:7].clone(), ref_labels[2:7].clone(), ref, ref_labels, 2))

    # The same anchors and references without anchor_offset: every anchor's own copy is
    # now a positive at distance 0.
    cases.append(
        Case("refs_overlap", ref[2:7].clone(), ref_labels[2:7].clone(), ref, ref_labels, None)
    )

    # A reference set with a single class, and an empty one.
    cases.append(Case("refs_one_class", randn(3, 3), _lab(0, 1, 0), randn(4, 3), _lab(0, 0, 0, 0)))
    cases.append(Case("refs_empty", randn(3, 3), _lab(0, 1, 0), randn(0, 3), _lab()))
    return {c.name: c for c in cases}


CASES = make_cases()
CASE_NAMES = tuple(CASES)
#: Cases without ``anchor_offset`` (for entry points that do not take it).
NO_OFFSET = tuple(n for n, c in CASES.items() if c.anchor_offset is None)
#: Cases without a reference set.
NO_REF = tuple(n for n, c in CASES.items() if not c.has_ref)
#: Cases with no valid triplet at all.
DEGENERATE = (
    "one_class",
    "all_distinct",
    "empty",
    "single",
    "pair_same",
    "refs_one_class",
    "refs_empty",
)


# ------------------------------------------------------------------ bad input

X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 0, 1, 1])


def _bad(**changes: object) -> dict:
    kw: dict = {"embeddings": X, "labels": Y}
    kw.update(changes)
    return kw


BAD_INPUTS = [
    ("emb_1d", _bad(embeddings=torch.randn(4)), ValueError, ["embeddings", "2-D"]),
    ("emb_3d", _bad(embeddings=torch.randn(4, 3, 1)), ValueError, ["embeddings", "2-D"]),
    ("emb_int", _bad(embeddings=torch.ones(4, 3, dtype=torch.int64)), TypeError, ["floating"]),
    ("emb_list", _bad(embeddings=[[0.0]] * 4), TypeError, ["embeddings"]),
    ("labels_2d", _bad(labels=Y[:, None, None]), ValueError, ["labels", "1-D"]),  # 2-D: multi-hot
    ("labels_float", _bad(labels=Y.float() + 0.5), ValueError, ["labels", "integer"]),
    ("labels_bool", _bad(labels=Y.bool()), TypeError, ["labels", "integer"]),
    ("length", _bad(labels=Y[:3]), ValueError, ["labels", "3", "4"]),
    ("nan", _bad(embeddings=torch.tensor([[float("nan")]] * 4)), ValueError, ["NaN"]),
    ("inf", _bad(embeddings=torch.tensor([[float("inf")]] * 4)), ValueError, ["Inf"]),
    (
        "ref_nan",
        _bad(ref_embeddings=torch.full((2, 3), float("nan")), ref_labels=Y[:2]),
        ValueError,
        ["ref_embeddings", "NaN"],
    ),
    ("ref_without_labels", _bad(ref_embeddings=X), ValueError, ["ref_labels"]),
    ("labels_without_ref", _bad(ref_labels=Y), ValueError, ["ref_embeddings"]),
    (
        "ref_width",
        _bad(ref_embeddings=torch.randn(2, 5), ref_labels=Y[:2]),
        ValueError,
        ["ref_embeddings", "5", "3"],
    ),
    (
        "ref_labels_length",
        _bad(ref_embeddings=torch.randn(2, 3), ref_labels=Y),
        ValueError,
        ["ref_labels"],
    ),
    ("metric", _bad(metric="l1"), ValueError, ["'l1'", *map(repr, METRICS)]),
    ("backend", _bad(backend="cuda"), ValueError, ["'cuda'", "'auto'", *map(repr, BACKENDS)]),
    (
        "offset_without_ref",
        _bad(anchor_offset=1),
        ValueError,
        ["anchor_offset"],
    ),
    (
        "offset_out_of_range",
        _bad(ref_embeddings=torch.randn(5, 3), ref_labels=Y.repeat(2)[:5], anchor_offset=2),
        ValueError,
        ["anchor_offset"],
    ),
    ("normalize_type", _bad(normalize="yes"), TypeError, ["normalize"]),
]


#: The arguments that carry data; every other key of a :data:`BAD_INPUTS` entry is an option.
DATA_ARGUMENTS = frozenset({"embeddings", "labels", "ref_embeddings", "ref_labels"})
#: The entries of :data:`BAD_INPUTS` that concern the data alone (no option): what a module,
#: whose options are checked when it is built, must refuse when it is called.
DATA_ERRORS = [b for b in BAD_INPUTS if set(b[1]) <= DATA_ARGUMENTS]


# ------------------------------------------------------------------ loss checks

#: float64 tolerances of a loss value and of its gradient against the brute-force reference.
VALUE_TOL = {"rtol": 1e-9, "atol": 1e-11}
GRAD_TOL = {"rtol": 1e-7, "atol": 1e-9}
#: ``(pos_margin, neg_margin)`` of the contrastive gradient checks; :func:`separated` keeps
#: every distance away from both, so finite differences never straddle a hinge.
CONTRASTIVE_MARGINS = (0.1, 1.0)
#: The smallest gap between two distances, or between a distance and a kink, that
#: :func:`separated` accepts (far above gradcheck's finite-difference step).
SEPARATION = 1e-2
#: How many seeds :func:`separated` tries before giving up.
SEPARATION_TRIES = 1000


def weights(out: Tensor) -> Tensor:
    """Distinct weights for a ``reduction="none"`` output, so its gradient checks order."""
    return torch.linspace(1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)


def value_and_grads(out: Tensor, leaves: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """A loss's value and its gradients (a weighted sum for ``reduction="none"``)."""
    scalar = (out * weights(out)).sum() if out.dim() else out
    grads = torch.autograd.grad(scalar, leaves, retain_graph=True)
    return out.detach(), [g.detach() for g in grads]


def check_loss(
    got: Tensor, got_leaves: list[Tensor], expected: tuple[Tensor, list[Tensor]]
) -> None:
    """``got`` has the value and gradients of ``expected`` (from :func:`value_and_grads`)."""
    value, grads = value_and_grads(got, got_leaves)
    exp_value, exp_grads = expected
    assert value.shape == exp_value.shape
    torch.testing.assert_close(value, exp_value, **VALUE_TOL)
    for g, e in zip(grads, exp_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, **GRAD_TOL)


def leaves_of(*tensors: Tensor | None) -> list[Tensor]:
    """The tensors that are given (the reference set may be ``None``)."""
    return [t for t in tensors if t is not None]


@functools.cache
def expected_fused(
    name: str,
    kind: str,
    soft_margin: bool,
    metric: str,
    normalize: bool,
    reduction: str,
    smooth: bool = False,
) -> tuple[Tensor, list[Tensor]]:
    """The brute-force value and gradients of a fused loss on ``CASES[name]`` (float64,
    margin :data:`MARGIN`), computed once per argument set and shared by every backend's
    test (in-memory, streaming)."""
    c = CASES[name]
    x, ref = c.leaves()
    terms, zero = fused_terms(
        kind,
        x,
        c.labels,
        ref,
        c.ref_labels,
        margin=MARGIN,
        metric=metric,
        soft_margin=soft_margin,
        normalize=normalize,
        anchor_offset=c.anchor_offset,
        smooth=smooth,
    )
    return value_and_grads(reduce(terms, reduction, zero), leaves_of(x, ref))


def assert_zero_in_graph(out: Tensor, x: Tensor, ref: Tensor | None, reduction: str) -> None:
    """A loss with no term: 0 (or empty with ``"none"``), in the graph, zero gradients."""
    assert out.dtype == torch.float64
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out.shape == () and out.item() == 0.0
    assert out.requires_grad, "the loss must stay in the graph"
    leaves = leaves_of(x, ref)
    grads = torch.autograd.grad(out.sum(), leaves)
    for g, leaf in zip(grads, leaves, strict=True):
        assert torch.equal(g, torch.zeros_like(leaf))


def assert_listed(info: pytest.ExceptionInfo, bad: str, valid: tuple[str, ...]) -> None:
    """The error names the bad choice and every valid one."""
    msg = str(info.value)
    for w in (repr(bad), *map(repr, valid)):
        assert w in msg, (w, msg)


def separated(metric: str, with_ref: bool = False) -> tuple[Tensor, ...]:
    """Small float64 inputs away from every tie and every hinge kink (:data:`MARGIN` and
    :data:`CONTRASTIVE_MARGINS`), so that finite differences see one smooth piece:
    ``(x, labels)``, or ``(x, labels, ref, ref_labels)`` with a reference set."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    ref_labels = torch.tensor([0, 1, 2, 0, 1])
    for seed in range(SEPARATION_TRIES):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 3, generator=g, dtype=torch.float64)
        ref = torch.randn(5, 3, generator=g, dtype=torch.float64) if with_ref else None
        pb = problem(x, labels, ref, ref_labels if with_ref else None, metric=metric)
        gaps = []
        for row in pb.d:
            s = sorted(row)
            gaps += [b - a for a, b in zip(s[:-1], s[1:], strict=True)]
            gaps += [abs(v - k) for v in row for k in CONTRASTIVE_MARGINS]
        gaps += [abs(pb.d[a][p] - pb.d[a][n] + MARGIN) for a, p, n in pb.valid()]
        if min(gaps) > SEPARATION:
            return (x, labels, ref, ref_labels) if with_ref else (x, labels)
    raise AssertionError("no separated input found")


#: How many random index rows :func:`some_triplets` draws (then repeats two and adds one).
SOME_ROWS = 12


def some_triplets(c: Case) -> list[tuple[int, int, int]]:
    """Arbitrary index triplets (valid or not, repeated rows, exact duplicates included)."""
    n = c.x.shape[0]
    m = n if c.ref is None else c.ref.shape[0]
    if n == 0 or m == 0:
        return []
    g = torch.Generator().manual_seed(n * 31 + m)
    a = torch.randint(0, n, (SOME_ROWS,), generator=g).tolist()
    p = torch.randint(0, m, (SOME_ROWS,), generator=g).tolist()
    q = torch.randint(0, m, (SOME_ROWS,), generator=g).tolist()
    rows = list(zip(a, p, q, strict=True))
    return rows + rows[:2] + [(0, 0, m - 1)]


# ------------------------------------------------------------------ torch.compile


def check_compiled(  # type: ignore[no-untyped-def]
    fn, xs: Sequence[Tensor], labels: Tensor, backend: str, value_tol: dict, grad_tol: dict
) -> None:
    """``torch.compile(fn, fullgraph=True, backend=backend)`` (any graph break fails) gives
    eager's values and gradients, with the input checks off. ``fn(*leaves, labels)`` returns
    a loss or a tuple of losses, each of its own leaf (so each leaf's gradient is its loss's);
    the leaves are fresh copies of ``xs``."""
    import tripletkit

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    with tripletkit.set_input_checks(False):
        got_leaves = [x.clone().requires_grad_() for x in xs]
        want_leaves = [x.clone().requires_grad_() for x in xs]
        got, want = compiled(*got_leaves, labels), fn(*want_leaves, labels)
        got, want = (t if isinstance(t, tuple) else (t,) for t in (got, want))
        sum(got).backward()
        sum(want).backward()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **value_tol)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        torch.testing.assert_close(g.grad, w.grad, **grad_tol)
    torch._dynamo.reset()


# ------------------------------------------------------------------ pairwise grids


def pairwise(*axes: Sequence[object]) -> list[tuple[object, ...]]:
    """Rows that hold every pair of values of every two axes at least once (a covering
    array of strength 2), instead of the full product of the axes.

    The first two axes are crossed in full (put the ones whose combinations matter there,
    e.g. the awkward case and the loss); each further axis is then added value by value
    where it covers the most pairs not yet seen (IPO: horizontal growth), and the pairs
    still missing get rows of their own (vertical growth). Deterministic: the same axes
    always give the same rows, so test ids are stable. For 13 cases x 3 losses x 2 margins
    x 3 metrics x 3 tilings that is 41 rows instead of 702.
    """
    if len(axes) < 2:
        return [(v,) for v in (axes[0] if axes else ())]
    free = object()  # a slot that any value fills
    rows: list[list[object]] = [[a, b] for a in axes[0] for b in axes[1]]
    for k in range(2, len(axes)):
        seen = [list(axis) for axis in axes[: k + 1]]
        # the pairs (axis j < k, its value i, value v of axis k) that no row holds yet
        missing = {
            (j, i, v) for j in range(k) for i in range(len(seen[j])) for v in range(len(seen[k]))
        }
        for r, row in enumerate(rows):
            held = [(j, seen[j].index(row[j])) for j in range(k) if row[j] is not free]
            # the value that covers the most missing pairs; ties: the next one in turn
            order = [(r + t) % len(seen[k]) for t in range(len(seen[k]))]
            v = max(order, key=lambda v, held=held: sum((j, i, v) in missing for j, i in held))
            missing -= {(j, i, v) for j, i in held}
            row.append(seen[k][v])
        extra: list[list[object]] = []
        for j, i, v in sorted(missing):
            for row in extra:
                if row[k] == seen[k][v] and row[j] is free:
                    row[j] = seen[j][i]
                    break
            else:
                row = [free] * k + [seen[k][v]]
                row[j] = seen[j][i]
                extra.append(row)
        rows += extra
    # free slots take the first value of their axis
    return [
        tuple(axes[j][0] if value is free else value for j, value in enumerate(row)) for row in rows
    ]


def covers_every_pair(rows: Sequence[Sequence[object]], *axes: Sequence[object]) -> bool:
    """Whether ``rows`` hold every pair of values of every two of ``axes``."""
    for a, b in itertools.combinations(range(len(axes)), 2):
        seen = {(row[a], row[b]) for row in rows}
        if any((u, v) not in seen for u in axes[a] for v in axes[b]):
            return False
    return True


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one torch and one numba thread, then restore both.

    The brute-force tests make thousands of calls on tiny batches; on two busy shared cores a
    second thread only adds wake-up latency (measured: 10 ms instead of 10 us for a torch
    ``repeat_interleave``, 12 ms instead of 0.3 ms per numba parallel kernel). Results do not
    depend on the thread count (see ``test_miners_triplet.py::test_default_thread_count``).
    """
    import numba

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=CASE_NAMES)
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture(params=NO_OFFSET)
def case_no_offset(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture(params=METRICS)
def metric(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_task():  # type: ignore[no-untyped-def]
    """The quality benchmark's final task on 20 Omniglot training classes (4 subset classes,
    4 test classes): one for the session (the protocol and the quality tests share it; runs
    never modify it)."""
    from benchmarks import data

    return data.load_omniglot(max_train_classes=20).task("final", 4, 4)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move every object alive after collection (modules, test items, parameters: they live
    to the end of the session) out of the cyclic garbage collector's reach (``gc.freeze``),
    so that each collection, the benchmarks' own ``gc.collect()`` before a measurement
    included, scans only what the tests create (0.4 s per full collection otherwise)."""
    gc.collect()
    gc.freeze()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After a test module's last test: collect its garbage, then freeze what survives
    (caches, compiled functions: alive to the end) as above."""
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        gc.freeze()
