"""``tripletkit.losses.triplet``: the fused batch-all, batch-hard and semi-hard losses, their
``*_parts`` forms and modules, and the triplet margin loss, against brute force in float64
(values and gradients)."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from conftest import (
    BACKENDS,
    BAD_INPUTS,
    CASE_NAMES,
    CASES,
    DATA_ERRORS,
    DEGENERATE,
    FUSED,
    FUSED_REDUCTIONS,
    MARGIN,
    METRICS,
    MODULES,
    NO_OFFSET,
    VALUE_TOL,
    Case,
    X,
    Y,
    assert_listed,
    assert_zero_in_graph,
    check_loss,
    covers_every_pair,
    expected_fused,
    leaves_of,
    pairwise,
    separated,
    some_triplets,
    value_and_grads,
)
from reference import (
    LazyDistances,
    as_list,
    fused_terms,
    graph_zero,
    problem,
    ranked_triplets,
    reduce,
    term,
)
from reference import triplet_margin_loss as ref_triplet_margin

from tripletkit import miners
from tripletkit.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    Parts,
    SemiHardTripletLoss,
    TripletMarginLoss,
    batch_all_parts,
    batch_all_triplet_loss,
    batch_hard_parts,
    batch_hard_triplet_loss,
    reduce_parts,
    semi_hard_parts,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)
from tripletkit.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner
from tripletkit.types import Triplets

#: The un-reduced form of each fused loss.
PARTS = {
    "batch_all": batch_all_parts,
    "batch_hard": batch_hard_parts,
    "semi_hard": semi_hard_parts,
}
ALL_REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")
SOFT = (False, True)
MARGIN_IDS = {False: "hinge", True: "soft"}


def _params(rows: list[tuple], *labels: dict | None) -> list:  # type: ignore[type-arg]
    """``pytest.param`` rows of a :func:`~conftest.pairwise` grid with readable ids
    (``labels[i]`` names the values of axis ``i``; ``None``: ``str``)."""
    out = []
    for row in rows:
        parts = [str(v) if lab is None else lab[v] for v, lab in zip(row, labels, strict=True)]
        out.append(pytest.param(*row, id="-".join(parts)))
    return out


# The grids below do not multiply independent axes: each holds every pair of values of any
# two of its axes (pairwise coverage, conftest.pairwise), its first two axes in full; the
# fused losses' reference test keeps every case x backend x loss (each backend has its own
# kernel per loss, each with its awkward-case paths). Every reduction runs in every row.
#: case x backend x loss in full; the margin and the metric pairwise with them (80 rows, not
#: the product's 468).
FUSED_GRID = [
    (name, backend, kind, soft, metric)
    for (name, backend), kind, soft, metric in pairwise(
        tuple(itertools.product(CASE_NAMES, BACKENDS)), tuple(FUSED), SOFT, METRICS
    )
]
#: Tolerances of half and single precision against float64: a value and a gradient.
FLOAT32_VALUE_TOL = {"rtol": 1e-4, "atol": 1e-5}
FLOAT32_GRAD_TOL = {"rtol": 1e-3, "atol": 1e-4}

pytestmark = pytest.mark.usefixtures("one_thread")


def _fused(kind: str, c: Case, reduction: str, **kw: object) -> tuple[torch.Tensor, list]:
    x, ref = c.leaves()
    out = FUSED[kind](x, c.labels, MARGIN, reduction=reduction, **kw, **c.ref_kwargs(ref))
    return out, leaves_of(x, ref)


# -------------------------------------------------------------------- fused losses


def test_fused_grid_holds_every_case_backend_and_loss() -> None:
    assert {r[:3] for r in FUSED_GRID} == set(itertools.product(CASE_NAMES, BACKENDS, FUSED))
    axes = (CASE_NAMES, BACKENDS, tuple(FUSED), SOFT, METRICS)
    assert covers_every_pair(FUSED_GRID, *axes)


@pytest.mark.parametrize(
    ("name", "backend", "kind", "soft_margin", "metric"),
    _params(FUSED_GRID, None, None, None, MARGIN_IDS, None),
)
def test_fused_loss(name: str, backend: str, kind: str, soft_margin: bool, metric: str) -> None:
    case = CASES[name]
    for reduction in FUSED_REDUCTIONS[kind]:
        out, leaves = _fused(
            kind, case, reduction, metric=metric, soft_margin=soft_margin, backend=backend
        )
        expected = expected_fused(case.name, kind, soft_margin, metric, False, reduction)
        check_loss(out, leaves, expected)


@pytest.mark.parametrize("name", ["duplicates", "refs", "refs_offset"])
@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_fused_loss_normalize(
    name: str, kind: str, soft_margin: bool, metric: str, backend: str
) -> None:
    c = CASES[name]
    for reduction in FUSED_REDUCTIONS[kind]:
        out, leaves = _fused(
            kind,
            c,
            reduction,
            metric=metric,
            soft_margin=soft_margin,
            normalize=True,
            backend=backend,
        )
        check_loss(out, leaves, expected_fused(name, kind, soft_margin, metric, True, reduction))


@pytest.mark.parametrize("margin", [0.0, 1.0])
@pytest.mark.parametrize("metric_", ["euclidean", "sqeuclidean"])
def test_fused_loss_at_hinge_kinks(margin: float, metric_: str, backend: str) -> None:
    """On the integer grid ``d_ap - d_an + m == 0`` exactly for some triplets: such a term is
    0, is not counted by ``mean_nonzero`` and has a zero gradient."""
    c = CASES["grid"]
    pb = problem(c.x, c.labels, metric=metric_)
    assert any(pb.d[a][p] - pb.d[a][n] + margin == 0 for a, p, n in pb.valid())
    for kind in FUSED:
        for reduction in FUSED_REDUCTIONS[kind]:
            x = c.x.clone().requires_grad_()
            out = FUSED[kind](x, c.labels, margin, metric_, reduction=reduction, backend=backend)
            x2 = c.x.clone().requires_grad_()
            terms, zero = fused_terms(kind, x2, c.labels, margin=margin, metric=metric_)
            check_loss(out, [x], value_and_grads(reduce(terms, reduction, zero), [x2]))


def test_fused_loss_auto_backend() -> None:
    c = CASES["duplicates"]
    for kind in FUSED:
        out, leaves = _fused(kind, c, "mean")
        check_loss(out, leaves, expected_fused(c.name, kind, False, "euclidean", False, "mean"))


@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard"])
def test_reduction_none_order(kind: str, backend: str) -> None:
    """One term per selected triplet, in the documented order (anchors ascending; then
    positives ascending for semi-hard)."""
    c = CASES["duplicates"]
    x, _ = c.leaves()
    out = FUSED[kind](x, c.labels, MARGIN, reduction="none", backend=backend)
    terms, _ = fused_terms(kind, c.x, c.labels, margin=MARGIN)
    assert out.shape == (len(terms),)
    torch.testing.assert_close(out.detach(), torch.stack(terms), **VALUE_TOL)


def test_worked_example() -> None:
    """A batch small enough to check by hand (1-D, margin 0.2)."""
    x = torch.tensor([[0.0], [0.5], [0.6], [5.0]])
    y = torch.tensor([0, 0, 1, 1])
    # batch-all valid triplets: (0,1,2): .5-.6+.2=.1  (0,1,3): 0  (1,0,2): .5-.1+.2=.6
    # (1,0,3): 0  (2,3,0): 4.4-.6+.2=4.0  (2,3,1): 4.4-.1+.2=4.5  (3,2,0): 4.4-5+.2 -> 0
    # (3,2,1): 4.4-4.5+.2=.1; 8 valid, 5 active, sum 9.3
    ba = batch_all_triplet_loss(x, y, 0.2, reduction="sum", backend="torch")
    torch.testing.assert_close(ba, torch.tensor(9.3))
    ba = batch_all_triplet_loss(x, y, 0.2, reduction="mean", backend="torch")
    torch.testing.assert_close(ba, torch.tensor(9.3 / 8))
    ba = batch_all_triplet_loss(x, y, 0.2, reduction="mean_nonzero", backend="torch")
    torch.testing.assert_close(ba, torch.tensor(9.3 / 5))
    # batch-hard: a0 (p1 .5, n2 .6) .1; a1 (p0 .5, n2 .1) .6; a2 (p3 4.4, n1 .1) 4.5;
    # a3 (p2 4.4, n1 4.5) .1
    bh = batch_hard_triplet_loss(x, y, 0.2, reduction="none", backend="torch")
    torch.testing.assert_close(bh, torch.tensor([0.1, 0.6, 4.5, 0.1]))
    # semi-hard: (0,1): n2 (.6 > .5): .1; (1,0): n3 (4.5 > .5; n2 at .1 is nearer): 0;
    # (2,3): no negative farther than 4.4 -> the farthest, n0 (.6): 4.4-.6+.2=4.0;
    # (3,2): n1 (4.5 > 4.4, nearer than n0 at 5): .1
    sh = semi_hard_triplet_loss(x, y, 0.2, reduction="none", backend="torch")
    torch.testing.assert_close(sh, torch.tensor([0.1, 0.0, 4.0, 0.1]))


@pytest.mark.parametrize("name", DEGENERATE)
def test_no_valid_triplet_is_a_zero_in_the_graph(name: str, backend: str) -> None:
    c = CASES[name]
    for kind, fn in FUSED.items():
        for soft_margin in (False, True):
            for reduction in FUSED_REDUCTIONS[kind]:
                x, ref = c.leaves()
                out = fn(
                    x,
                    c.labels,
                    MARGIN,
                    soft_margin=soft_margin,
                    reduction=reduction,
                    backend=backend,
                    **c.ref_kwargs(ref),
                )
                assert_zero_in_graph(out, x, ref, reduction)
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        out = TripletMarginLoss(reduction=reduction, backend=backend)(
            x, c.labels, None, **c.ref_kwargs(ref, offset=False)
        )
        assert_zero_in_graph(out, x, ref, reduction)
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        out = TripletMarginLoss(reduction=reduction, backend=backend)(
            x, c.labels, Triplets.empty(), **c.ref_kwargs(ref, offset=False)
        )
        assert_zero_in_graph(out, x, ref, reduction)


# ------------------------------------------------------------ un-reduced forms


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_parts_count_the_terms_and_reduce_to_the_loss(
    case: Case, kind: str, soft_margin: bool, backend: str
) -> None:
    """``*_parts`` is ``Parts(total, n_valid, n_active)``: the sum of the reference terms (with
    their gradient), their number and the number above 0; :func:`reduce_parts` of it is the
    loss for every reduction of the fused function."""
    x, ref = case.leaves()
    parts = PARTS[kind](
        x, case.labels, MARGIN, soft_margin=soft_margin, backend=backend, **case.ref_kwargs(ref)
    )
    assert isinstance(parts, Parts) and parts._fields == ("total", "n_valid", "n_active")
    x2, ref2 = case.leaves()
    terms, zero = fused_terms(
        kind,
        x2,
        case.labels,
        ref2,
        case.ref_labels,
        margin=MARGIN,
        soft_margin=soft_margin,
        anchor_offset=case.anchor_offset,
    )
    # counts may be ints or 0-dim integer tensors
    assert int(parts.n_valid) == len(terms)
    assert int(parts.n_active) == sum(1 for t in terms if float(t.detach()) > 0)
    check_loss(
        parts.total,
        leaves_of(x, ref),
        value_and_grads(reduce(terms, "sum", zero), leaves_of(x2, ref2)),
    )
    for reduction in ("mean", "sum", "mean_nonzero"):
        x3, ref3 = case.leaves()
        loss = FUSED[kind](
            x3,
            case.labels,
            MARGIN,
            soft_margin=soft_margin,
            reduction=reduction,
            backend=backend,
            **case.ref_kwargs(ref3),
        )
        torch.testing.assert_close(reduce_parts(*parts, reduction), loss, **VALUE_TOL)


def test_reduce_parts_takes_int_and_tensor_counts() -> None:
    total = torch.tensor(3.0, dtype=torch.float64)
    for n_valid, n_active in [(6, 2), (torch.tensor(6), torch.tensor(2))]:
        assert reduce_parts(total, n_valid, n_active, "sum").item() == 3.0
        assert reduce_parts(total, n_valid, n_active, "mean").item() == 0.5
        assert reduce_parts(total, n_valid, n_active, "mean_nonzero").item() == 1.5
    for zero in (0, torch.tensor(0)):  # no term: both means are the total (0), not NaN
        empty = torch.zeros((), dtype=torch.float64)
        assert reduce_parts(empty, zero, zero, "mean").item() == 0.0
        assert reduce_parts(empty, zero, zero, "mean_nonzero").item() == 0.0


# ------------------------------------------------------------ module forms


def _module_and_function(
    kind: str, c: Case, reduction: str, backend: str, **options: object
) -> tuple[tuple[torch.Tensor, list], tuple[torch.Tensor, list]]:
    """The module form and the function on fresh leaves of ``c``: ``(out, leaves)`` each."""
    x, ref = c.leaves()
    module = MODULES[kind](MARGIN, reduction=reduction, backend=backend, **options)
    kwargs = {} if c.anchor_offset is None else {"anchor_offset": c.anchor_offset}
    got = module(x, c.labels, ref, c.ref_labels, **kwargs)
    x2, ref2 = c.leaves()
    want = FUSED[kind](
        x2, c.labels, MARGIN, reduction=reduction, backend=backend, **options, **c.ref_kwargs(ref2)
    )
    return (got, leaves_of(x, ref)), (want, leaves_of(x2, ref2))


# Every case x loss; backend, margin and metric pairwise (39 rows, not 468).
@pytest.mark.parametrize(
    ("name", "kind", "backend", "soft_margin", "metric"),
    _params(
        pairwise(CASE_NAMES, tuple(FUSED), BACKENDS, SOFT, METRICS),
        None,
        None,
        None,
        MARGIN_IDS,
        None,
    ),
)
def test_module_forms_equal_the_functions(
    name: str, kind: str, backend: str, soft_margin: bool, metric: str
) -> None:
    """``BatchAllTripletLoss``, ``BatchHardTripletLoss`` and ``SemiHardTripletLoss`` give the
    values and gradients of their functions, bit for bit, with and without a reference set
    and ``anchor_offset``; and through them the brute-force reference."""
    case = CASES[name]
    for reduction in FUSED_REDUCTIONS[kind]:
        (got, leaves), (want, want_leaves) = _module_and_function(
            kind, case, reduction, backend, metric=metric, soft_margin=soft_margin
        )
        value, grads = value_and_grads(got, leaves)
        want_value, want_grads = value_and_grads(want, want_leaves)
        assert torch.equal(value, want_value), (kind, reduction)
        for g, w in zip(grads, want_grads, strict=True):
            assert torch.equal(g, w), (kind, reduction)
        expected = expected_fused(case.name, kind, soft_margin, metric, False, reduction)
        check_loss(got, leaves, expected)


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_module_forms_normalize_and_positional_options(kind: str, backend: str) -> None:
    """The hyper-parameters ``(margin, metric, soft_margin, reduction)`` are positional;
    ``normalize`` reaches the function."""
    c = CASES["refs_offset"]
    for reduction in FUSED_REDUCTIONS[kind]:
        x, ref = c.leaves()
        module = MODULES[kind](MARGIN, "cosine", True, reduction, normalize=True, backend=backend)
        got = module(x, c.labels, ref, c.ref_labels, anchor_offset=c.anchor_offset)
        expected = expected_fused(c.name, kind, True, "cosine", True, reduction)
        check_loss(got, leaves_of(x, ref), expected)


def test_module_forms_defaults_and_repr() -> None:
    assert BatchAllTripletLoss().reduction == "mean_nonzero"
    assert BatchHardTripletLoss().reduction == SemiHardTripletLoss().reduction == "mean"
    for kind, cls in MODULES.items():
        module = cls(0.5, "sqeuclidean", reduction="sum")
        text = repr(module)
        for option in ("margin=0.5", "metric='sqeuclidean'", "reduction='sum'", "backend='auto'"):
            assert option in text, (kind, text)
        assert list(module.parameters()) == []
        torch.testing.assert_close(
            module(X, Y), FUSED[kind](X, Y, 0.5, "sqeuclidean", reduction="sum")
        )


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_half_precision_runs_in_float32(dtype: torch.dtype, kind: str, backend: str) -> None:
    """Computed in float32: the float64 value rounded once to ``dtype`` (the output's)."""
    c = CASES["generic"]
    one_rounding = {"rtol": torch.finfo(dtype).eps, "atol": 1e-4}
    x = c.x.to(dtype).requires_grad_()
    for soft_margin in (False, True):
        out = FUSED[kind](
            x, c.labels, MARGIN, soft_margin=soft_margin, reduction="sum", backend=backend
        )
        assert out.dtype == dtype
        terms, zero = fused_terms(
            kind, x.detach().double(), c.labels, margin=MARGIN, soft_margin=soft_margin
        )
        torch.testing.assert_close(out.double(), reduce(terms, "sum", zero), **one_rounding)
        (g,) = torch.autograd.grad(out, x)
        assert g.dtype == dtype and torch.isfinite(g).all()
    tml = TripletMarginLoss(MARGIN, backend=backend)
    out = tml(x, c.labels, miners.batch_hard_triplets(x, c.labels, backend=backend))
    assert out.dtype == dtype
    torch.testing.assert_close(
        out, FUSED["batch_hard"](x, c.labels, MARGIN, backend=backend), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_float32_agrees_with_float64(kind: str, metric: str, backend: str) -> None:
    c = CASES["generic"]
    for reduction in FUSED_REDUCTIONS[kind]:
        x64 = c.x.clone().requires_grad_()
        x32 = c.x.float().requires_grad_()
        out64 = FUSED[kind](x64, c.labels, MARGIN, metric, reduction=reduction, backend=backend)
        out32 = FUSED[kind](x32, c.labels, MARGIN, metric, reduction=reduction, backend=backend)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out64.detach(), **FLOAT32_VALUE_TOL)
        (g64,) = torch.autograd.grad(out64.sum(), x64)
        (g32,) = torch.autograd.grad(out32.sum(), x32)
        torch.testing.assert_close(g32.double(), g64, **FLOAT32_GRAD_TOL)


# ------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_gradcheck_fused(kind: str, soft_margin: bool, metric: str, backend: str) -> None:
    x, labels = separated(metric)
    fn = FUSED[kind]

    def f(e: torch.Tensor) -> torch.Tensor:
        return fn(e, labels, MARGIN, metric, soft_margin, "sum", backend=backend)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_gradcheck_fused_with_refs(kind: str, backend: str) -> None:
    x, labels, ref, ref_labels = separated("euclidean", with_ref=True)

    def f(e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return FUSED[kind](
            e,
            labels,
            MARGIN,
            reduction="mean",
            backend=backend,
            ref_embeddings=r,
            ref_labels=ref_labels,
        )

    assert torch.autograd.gradcheck(
        f, (x.clone().requires_grad_(), ref.clone().requires_grad_()), fast_mode=True
    )


@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_gradcheck_triplet_margin_loss(soft_margin: bool, metric: str) -> None:
    x, labels = separated(metric)
    triplets = Triplets(*(torch.tensor(v) for v in zip(*problem(x, labels).valid(), strict=True)))
    loss = TripletMarginLoss(MARGIN, metric, soft_margin, "mean", normalize=True)
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, triplets), (x.clone().requires_grad_(),), fast_mode=True
    )
    loss = TripletMarginLoss(MARGIN, metric, soft_margin, "none", backend="torch")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, triplets), (x.clone().requires_grad_(),), fast_mode=True
    )


# ------------------------------------------------------ TripletMarginLoss module


def _as_triplets(rows: list[tuple[int, int, int]]) -> Triplets:
    if not rows:
        return Triplets.empty()
    return Triplets(*(torch.tensor(v, dtype=torch.int64) for v in zip(*rows, strict=True)))


@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_triplet_margin_loss_given_triplets(
    case_no_offset: Case, metric: str, soft_margin: bool, normalize: bool
) -> None:
    c = case_no_offset
    rows = some_triplets(c)
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        loss = TripletMarginLoss(MARGIN, metric, soft_margin, reduction, normalize=normalize)
        out = loss(x, c.labels, _as_triplets(rows), *c.ref_kwargs(ref, offset=False).values())
        x2, ref2 = c.leaves()
        exp = ref_triplet_margin(
            x2,
            rows,
            ref2,
            margin=MARGIN,
            metric=metric,
            soft_margin=soft_margin,
            reduction=reduction,
            normalize=normalize,
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


def test_triplet_margin_loss_function_and_tuple_input() -> None:
    c = CASES["generic"]
    rows = some_triplets(c)
    t = _as_triplets(rows)
    for reduction in ALL_REDUCTIONS:
        exp = ref_triplet_margin(c.x, rows, reduction=reduction, margin=MARGIN)
        for triplets in (t, tuple(t), list(t), tuple(v.int() for v in t)):
            out = triplet_margin_loss(c.x, c.labels, triplets, MARGIN, reduction=reduction)
            torch.testing.assert_close(out, exp, **VALUE_TOL)


# Every case x metric; margin and backend pairwise (39 rows, not 156).
@pytest.mark.parametrize(
    ("name", "metric", "soft_margin", "backend"),
    _params(pairwise(CASE_NAMES, METRICS, SOFT, BACKENDS), None, None, MARGIN_IDS, None),
)
def test_triplet_margin_loss_all_valid_triplets(
    name: str, metric: str, soft_margin: bool, backend: str
) -> None:
    """``triplets=None`` is every valid triplet (batch-all), ``anchor_offset`` included."""
    c = CASES[name]
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        loss = TripletMarginLoss(MARGIN, metric, soft_margin, reduction, backend=backend)
        kwargs = {} if c.anchor_offset is None else {"anchor_offset": c.anchor_offset}
        out = loss(x, c.labels, None, *c.ref_kwargs(ref, offset=False).values(), **kwargs)
        check_loss(
            out,
            leaves_of(x, ref),
            expected_fused(c.name, "batch_all", soft_margin, metric, False, reduction),
        )
        x2, ref2 = c.leaves()
        out = triplet_margin_loss(
            x2,
            c.labels,
            None,
            MARGIN,
            metric,
            soft_margin,
            reduction,
            backend=backend,
            **c.ref_kwargs(ref2),
        )
        check_loss(
            out,
            leaves_of(x2, ref2),
            expected_fused(c.name, "batch_all", soft_margin, metric, False, reduction),
        )


def test_anchor_offset_needs_triplets_none() -> None:
    triplets = Triplets(*(torch.tensor([0]),) * 3)
    with pytest.raises(ValueError, match="anchor_offset only applies with triplets=None"):
        triplet_margin_loss(X, Y, triplets, ref_embeddings=X, ref_labels=Y, anchor_offset=0)
    with pytest.raises(ValueError, match="anchor_offset only applies with triplets=None"):
        TripletMarginLoss()(X, Y, triplets, X, Y, anchor_offset=0)


# --------------------------------------------------- miners feeding TripletMarginLoss


def test_miner_output_reproduces_fused_loss(case: Case, metric: str, backend: str) -> None:
    c = case
    kw = {"metric": metric, "backend": backend}
    mined = {
        "semi_hard": miners.semi_hard_triplets(
            c.x, c.labels, margin=MARGIN, **kw, **c.ref_kwargs()
        ),
        "batch_hard": miners.batch_hard_triplets(c.x, c.labels, **kw, **c.ref_kwargs()),
        "batch_all": miners.batch_all_triplets(
            c.x, c.labels, margin=MARGIN, active_only=False, **kw, **c.ref_kwargs()
        ),
        "batch_all_active": miners.batch_all_triplets(
            c.x, c.labels, margin=MARGIN, active_only=True, **kw, **c.ref_kwargs()
        ),
    }
    for key, reduction in [
        ("semi_hard", "mean"),
        ("batch_hard", "mean"),
        ("batch_all", "mean"),
        ("batch_all_active", "mean_nonzero"),
    ]:
        kind = key.removesuffix("_active")
        x, ref = c.leaves()
        fused = FUSED[kind](
            x, c.labels, MARGIN, metric, reduction=reduction, backend=backend, **c.ref_kwargs(ref)
        )
        x2, ref2 = c.leaves()
        loss = TripletMarginLoss(MARGIN, metric, reduction=reduction, backend=backend)
        out = loss(x2, c.labels, mined[key], *c.ref_kwargs(ref2, offset=False).values())
        check_loss(out, leaves_of(x2, ref2), value_and_grads(fused, leaves_of(x, ref)))


@pytest.mark.parametrize("name", NO_OFFSET)
def test_miner_modules_reproduce_fused_loss(name: str, backend: str) -> None:
    c = CASES[name]
    args = (c.x, c.labels, c.ref, c.ref_labels)
    pairs = [
        (SemiHardMiner(MARGIN, backend=backend), "mean", "semi_hard"),
        (BatchHardMiner(backend=backend), "mean", "batch_hard"),
        (BatchAllMiner(MARGIN, active_only=False, backend=backend), "mean", "batch_all"),
        (BatchAllMiner(MARGIN, active_only=True, backend=backend), "mean_nonzero", "batch_all"),
    ]
    for miner, reduction, kind in pairs:
        out = TripletMarginLoss(MARGIN, reduction=reduction)(c.x, c.labels, miner(*args), *args[2:])
        exp = FUSED[kind](
            c.x, c.labels, MARGIN, reduction=reduction, backend=backend, **c.ref_kwargs()
        )
        torch.testing.assert_close(out, exp, **VALUE_TOL)


# ------------------------------------------------------------------------ errors


def _call_fused(fn, kw: dict) -> None:
    kw = dict(kw)
    fn(kw.pop("embeddings"), kw.pop("labels"), **kw)


@pytest.mark.parametrize("fn", [*FUSED.values(), *PARTS.values()], ids=[*FUSED, *PARTS])
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_fused_bad_input(fn, kw: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        _call_fused(fn, kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def _call_with_indices(loss, kw: dict, third: object = None) -> None:
    """``loss(embeddings, labels, triplets, ref_embeddings, ref_labels)``."""
    kw = dict(kw)
    loss(
        kw.pop("embeddings"),
        kw.pop("labels"),
        third,
        kw.pop("ref_embeddings", None),
        kw.pop("ref_labels", None),
    )


def _call_fused_module(loss, kw: dict) -> None:
    """``loss(embeddings, labels, ref_embeddings, ref_labels)``."""
    kw = dict(kw)
    loss(
        kw.pop("embeddings"),
        kw.pop("labels"),
        kw.pop("ref_embeddings", None),
        kw.pop("ref_labels", None),
    )


LOSS_MODULES = [
    ("triplet_all", lambda kw: _call_with_indices(TripletMarginLoss(backend="torch"), kw)),
    (
        "triplet_given",
        lambda kw: _call_with_indices(TripletMarginLoss(), kw, Triplets(*(torch.tensor([0]),) * 3)),
    ),
    *((kind, lambda kw, cls=cls: _call_fused_module(cls(), kw)) for kind, cls in MODULES.items()),
]


@pytest.mark.parametrize("call", [m[1] for m in LOSS_MODULES], ids=[m[0] for m in LOSS_MODULES])
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in DATA_ERRORS], ids=[b[0] for b in DATA_ERRORS]
)
def test_module_bad_input(call, kw: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        call(kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_unknown_reduction(kind: str) -> None:
    with pytest.raises(ValueError) as info:
        FUSED[kind](X, Y, reduction="avg")
    assert_listed(info, "avg", FUSED_REDUCTIONS[kind])
    with pytest.raises(ValueError) as info:
        MODULES[kind](reduction="avg")
    assert_listed(info, "avg", FUSED_REDUCTIONS[kind])


def test_batch_all_has_no_reduction_none() -> None:
    with pytest.raises(ValueError) as info:
        batch_all_triplet_loss(X, Y, reduction="none")
    assert_listed(info, "none", FUSED_REDUCTIONS["batch_all"])
    with pytest.raises(ValueError) as info:
        BatchAllTripletLoss(reduction="none")
    assert_listed(info, "none", FUSED_REDUCTIONS["batch_all"])


@pytest.mark.parametrize("cls", [TripletMarginLoss, *MODULES.values()], ids=lambda c: c.__name__)
def test_module_constructor_errors(cls) -> None:
    if cls is not BatchAllTripletLoss:
        with pytest.raises(ValueError) as info:
            cls(reduction="avg")
        assert_listed(info, "avg", ALL_REDUCTIONS)
    with pytest.raises(ValueError) as info:
        cls(metric="l1")
    assert_listed(info, "l1", METRICS)
    with pytest.raises(ValueError) as info:
        cls(backend="gpu")
    assert_listed(info, "gpu", ("auto", *BACKENDS))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="margin"):
            cls(margin=bad)
    with pytest.raises(TypeError, match="margin"):
        cls(margin="1")
    with pytest.raises(TypeError, match="soft_margin"):
        cls(soft_margin=1)
    with pytest.raises(TypeError, match="normalize"):
        cls(normalize="yes")


def test_triplet_margin_loss_unknown_backend() -> None:
    with pytest.raises(ValueError) as info:
        TripletMarginLoss(backend="gpu")(X, Y)
    assert_listed(info, "gpu", ("auto", *BACKENDS))
    with pytest.raises(ValueError) as info:
        TripletMarginLoss(backend="gpu")
    assert_listed(info, "gpu", ("auto", *BACKENDS))


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_margin(kind: str, margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        FUSED[kind](X, Y, margin)
    with pytest.raises(ValueError, match="margin"):
        PARTS[kind](X, Y, margin)
    with pytest.raises(ValueError, match="margin"):
        triplet_margin_loss(X, Y, None, margin)


def test_reduction_none_needs_explicit_triplets() -> None:
    with pytest.raises(ValueError, match="none"):
        triplet_margin_loss(X, Y, None, reduction="none")


@pytest.mark.parametrize(
    ("triplets", "exc"),
    [
        ((torch.tensor([0]), torch.tensor([1])), TypeError),
        (torch.tensor([[0, 1, 2]]), TypeError),
        ((torch.tensor([0]), torch.tensor([1]), torch.tensor([4])), ValueError),
        ((torch.tensor([-1]), torch.tensor([1]), torch.tensor([2])), ValueError),
        ((torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2])), TypeError),
        ((torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])), ValueError),
        ((torch.tensor([[0]]), torch.tensor([1]), torch.tensor([2])), ValueError),
    ],
    ids=["two", "matrix", "out_of_range", "negative", "float", "lengths", "2d"],
)
def test_bad_triplets(triplets: object, exc: type) -> None:
    with pytest.raises(exc):
        TripletMarginLoss()(X, Y, triplets)


def test_graph_zero_helper_is_connected() -> None:
    """Guard for the reference itself: its empty losses backpropagate too."""
    x = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(reduce([], "mean", graph_zero(x)), x)
    assert g.shape == (0, 3)
    assert as_list(Triplets.empty()) == []


# ---------------------------------------------------------------------------------------------
# Rank windows of the batch-hard loss

LOSS_WINDOWS = [((0, 1), (2, 5)), ((1, 3), (0, 2)), ((0, 4), (0, 9))]


# Every case x window; backend and margin pairwise (39 rows, not 156).
@pytest.mark.parametrize(
    ("name", "windows", "backend", "soft_margin"),
    _params(
        pairwise(CASE_NAMES, tuple(LOSS_WINDOWS), BACKENDS, SOFT),
        None,
        {w: f"p{w[0][0]}{w[0][1]}-n{w[1][0]}{w[1][1]}" for w in LOSS_WINDOWS},
        None,
        MARGIN_IDS,
    ),
)
def test_batch_hard_rank_windows(
    name: str,
    windows: tuple[tuple[int, int], tuple[int, int]],
    backend: str,
    soft_margin: bool,
) -> None:
    """Values and gradients of every reduction against the terms of the brute-force rank
    windows (``reference.ranked_triplets``), in their order."""
    case = CASES[name]
    positive_ranks, negative_ranks = windows
    pb = problem(case.x, case.labels, case.ref, case.ref_labels, anchor_offset=case.anchor_offset)
    rows = ranked_triplets(pb, positive_ranks, negative_ranks)
    for reduction in ALL_REDUCTIONS:
        x, ref = case.leaves()
        d = LazyDistances(x, x if ref is None else ref, "euclidean")
        terms = [term(d(a, p), d(a, n), MARGIN, soft_margin) for a, p, n in rows]
        expected = value_and_grads(reduce(terms, reduction, graph_zero(x, ref)), leaves_of(x, ref))
        x2, ref2 = case.leaves()
        out = batch_hard_triplet_loss(
            x2,
            case.labels,
            MARGIN,
            soft_margin=soft_margin,
            reduction=reduction,
            positive_ranks=positive_ranks,
            negative_ranks=negative_ranks,
            backend=backend,
            **case.ref_kwargs(ref2),
        )
        check_loss(out, leaves_of(x2, ref2), expected)


def test_batch_hard_rank_windows_module_and_parts() -> None:
    c = CASES["generic"]
    windows = {"positive_ranks": (0, 2), "negative_ranks": (1, 3)}
    want = batch_hard_triplet_loss(c.x, c.labels, 0.3, reduction="sum", **windows)
    module = BatchHardTripletLoss(0.3, reduction="sum", **windows)
    assert torch.equal(module(c.x, c.labels), want)
    assert "negative_ranks=(1, 3)" in repr(module)
    total, n_valid, _ = batch_hard_parts(c.x, c.labels, 0.3, **windows)
    assert torch.equal(total, want)
    pb = problem(c.x, c.labels)
    assert int(n_valid) == len(ranked_triplets(pb, (0, 2), (1, 3)))
    with pytest.raises(ValueError, match="negative_ranks must satisfy"):
        batch_hard_triplet_loss(c.x, c.labels, negative_ranks=(3, 3))


# ------------------------------------------------ smooth hinge, swap, triplets per anchor


# Every case x loss; metric and backend pairwise (39 rows, not 234).
@pytest.mark.parametrize(
    ("name", "kind", "metric", "backend"),
    _params(pairwise(CASE_NAMES, tuple(FUSED), METRICS, BACKENDS), None, None, None, None),
)
def test_fused_loss_smooth(name: str, kind: str, metric: str, backend: str) -> None:
    """``smooth=True``: ``softplus(d_ap - d_an + m)`` over the fused selection, function,
    ``*_parts`` and module forms, against brute force (values and gradients, float64)."""
    case = CASES[name]
    for reduction in FUSED_REDUCTIONS[kind]:
        expected = expected_fused(case.name, kind, False, metric, False, reduction, True)
        out, leaves = _fused(kind, case, reduction, metric=metric, smooth=True, backend=backend)
        check_loss(out, leaves, expected)
        (got, leaves), _ = _module_and_function(
            kind, case, reduction, backend, metric=metric, smooth=True
        )
        check_loss(got, leaves, expected)
    x, ref = case.leaves()
    parts = PARTS[kind](
        x, case.labels, MARGIN, metric, smooth=True, backend=backend, **case.ref_kwargs(ref)
    )
    expected = expected_fused(case.name, kind, False, metric, False, "sum", True)
    check_loss(parts.total, leaves_of(x, ref), expected)
    assert int(parts.n_active) == int(parts.n_valid), "every smooth term is positive"


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_smooth_with_margin_zero_is_the_soft_margin(kind: str, backend: str) -> None:
    """The two softplus losses differ by the margin only: ``smooth`` at ``m = 0`` gives the
    soft margin's values and gradients, and a margin changes it (it is not ignored)."""
    c = CASES["refs_offset"]
    for reduction in FUSED_REDUCTIONS[kind]:
        x, ref = c.leaves()
        kw = {"reduction": reduction, "backend": backend, **c.ref_kwargs(ref)}
        smooth = FUSED[kind](x, c.labels, 0.0, smooth=True, **kw)
        x2, ref2 = c.leaves()
        kw = {"reduction": reduction, "backend": backend, **c.ref_kwargs(ref2)}
        soft = FUSED[kind](x2, c.labels, 0.7, soft_margin=True, **kw)
        check_loss(smooth, leaves_of(x, ref), value_and_grads(soft, leaves_of(x2, ref2)))
        shifted = FUSED[kind](c.x, c.labels, 0.7, smooth=True, **{**kw, **c.ref_kwargs()})
        assert not torch.allclose(shifted, soft.detach())


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_gradcheck_fused_smooth(kind: str, metric: str, backend: str) -> None:
    x, labels = separated(metric)

    def f(e: torch.Tensor) -> torch.Tensor:
        return FUSED[kind](e, labels, MARGIN, metric, reduction="sum", smooth=True, backend=backend)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),), fast_mode=True)


def test_smooth_and_soft_margin_are_exclusive() -> None:
    """``soft_margin`` (no margin) and ``smooth`` (with the margin) name two different
    losses: asking for both is refused, naming both; ``smooth`` must be a bool."""
    calls = [
        *(functools.partial(fn, X, Y) for fn in FUSED.values()),
        *(functools.partial(fn, X, Y) for fn in PARTS.values()),
        functools.partial(triplet_margin_loss, X, Y, None),
        *MODULES.values(),
        TripletMarginLoss,
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"soft_margin=True .* smooth=True"):
            call(soft_margin=True, smooth=True)
        with pytest.raises(TypeError, match="smooth"):
            call(smooth="yes")
    assert BatchAllTripletLoss(smooth=True).smooth is True
    assert "smooth=True" in repr(BatchHardTripletLoss(smooth=True))


def test_sharded_loss_takes_smooth() -> None:
    """Without a process group, ``sharded_loss`` is the single-process loss, smooth too."""
    from tripletkit.distributed import sharded_loss

    c = CASES["generic"]
    for kind in FUSED:
        got = sharded_loss(kind, c.x, c.labels, margin=MARGIN, smooth=True)
        terms, zero = fused_terms(kind, c.x, c.labels, margin=MARGIN, smooth=True)
        torch.testing.assert_close(got, reduce(terms, "mean", zero), **VALUE_TOL)


#: ``(soft_margin, smooth, swap)`` of the triplet margin loss checks beyond the hinge.
TERM_OPTIONS = [
    (False, True, False),
    (False, False, True),
    (True, False, True),
    (False, True, True),
]
TERM_IDS = ["smooth", "swap", "soft-swap", "smooth-swap"]


# Every case x term option; metric and normalisation pairwise (48 rows, not 288).
@pytest.mark.parametrize(
    ("name", "options", "metric", "normalize"),
    _params(
        pairwise(NO_OFFSET, tuple(TERM_OPTIONS), METRICS, (False, True)),
        None,
        dict(zip(TERM_OPTIONS, TERM_IDS, strict=True)),
        None,
        {False: "raw", True: "normalized"},
    ),
)
def test_triplet_margin_loss_smooth_and_swap_given_triplets(
    name: str, options: tuple[bool, bool, bool], metric: str, normalize: bool
) -> None:
    """Given triplets (valid or not, repeated): the smooth hinge and the swap (``d_an`` :=
    ``min(d(a, n), d(p, n))``, ``d(p, n)`` between the references) against brute force."""
    c = CASES[name]
    soft_margin, smooth, swap = options
    rows = some_triplets(c)
    options = {"soft_margin": soft_margin, "smooth": smooth, "swap": swap}
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        loss = TripletMarginLoss(
            MARGIN, metric, reduction=reduction, normalize=normalize, **options
        )
        out = loss(x, c.labels, _as_triplets(rows), *c.ref_kwargs(ref, offset=False).values())
        x2, ref2 = c.leaves()
        exp = ref_triplet_margin(
            x2,
            rows,
            ref2,
            margin=MARGIN,
            metric=metric,
            reduction=reduction,
            normalize=normalize,
            **options,
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


# Every case x term option; metric and backend pairwise (52 rows, not 312).
@pytest.mark.parametrize(
    ("name", "options", "metric", "backend"),
    _params(
        pairwise(CASE_NAMES, tuple(TERM_OPTIONS), METRICS, BACKENDS),
        None,
        dict(zip(TERM_OPTIONS, TERM_IDS, strict=True)),
        None,
        None,
    ),
)
def test_triplet_margin_loss_swap_all_valid_triplets(
    name: str, options: tuple[bool, bool, bool], metric: str, backend: str
) -> None:
    """``triplets=None``: every valid triplet (listed when swapping), ``anchor_offset``
    included, against brute force over the reference's valid triplets."""
    c = CASES[name]
    soft_margin, smooth, swap = options
    options = {"soft_margin": soft_margin, "smooth": smooth, "swap": swap}
    rows = problem(
        c.x, c.labels, c.ref, c.ref_labels, metric=metric, anchor_offset=c.anchor_offset
    ).valid()
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        out = triplet_margin_loss(
            x,
            c.labels,
            None,
            MARGIN,
            metric,
            reduction=reduction,
            backend=backend,
            **options,
            **c.ref_kwargs(ref),
        )
        x2, ref2 = c.leaves()
        exp = ref_triplet_margin(
            x2, rows, ref2, margin=MARGIN, metric=metric, reduction=reduction, **options
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


def test_swap_takes_the_harder_negative_distance() -> None:
    """By hand (1-D, margin 0.2): ``(0, 1, 2)``: d_ap = 0.5, negative 2 at 0.6 from the
    anchor but 0.1 from the positive: the swap takes 0.1, 0.5 - 0.1 + 0.2 = 0.6 instead of
    0.1. ``(1, 0, 2)``: the anchor is the nearer (0.1 < 0.6): 0.6 either way."""
    x = torch.tensor([[0.0], [0.5], [0.6]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    t = _as_triplets([(0, 1, 2), (1, 0, 2)])
    out = triplet_margin_loss(x, y, t, 0.2, reduction="none", swap=True)
    torch.testing.assert_close(out, torch.tensor([0.6, 0.6], dtype=torch.float64))
    out = triplet_margin_loss(x, y, t, 0.2, reduction="none")
    torch.testing.assert_close(out, torch.tensor([0.1, 0.6], dtype=torch.float64))


def _one_choice_batch() -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
    """Anchors 0 and 1 each have one positive and one negative, anchor 2 none: every draw
    of ``triplets_per_anchor`` is forced."""
    x = torch.tensor([[0.0, 0.1], [0.7, -0.2], [0.4, 0.5]], dtype=torch.float64)
    return x, torch.tensor([0, 0, 1]), [(0, 1, 2), (1, 0, 2)]


@pytest.mark.parametrize("k", [1, 3])
def test_triplets_per_anchor_forced_draws(k: int, backend: str) -> None:
    """Where the draws are forced, ``triplets_per_anchor=k`` is each anchor's triplet ``k``
    times (``"none"`` lists them by anchor), for every term and reduction, module and
    function, in-batch and with a reference set."""
    x0, labels, rows = _one_choice_batch()
    want_rows = [r for r in rows for _ in range(k)]
    ref0 = torch.tensor([[1.0, 1.0], [-0.5, 0.2]], dtype=torch.float64)
    ref_labels = torch.tensor([0, 1])  # every anchor of label 0: positive 0, negative 1
    for soft_margin, smooth, swap in [(False, False, False), *TERM_OPTIONS]:
        options = {"soft_margin": soft_margin, "smooth": smooth, "swap": swap}
        for reduction in ALL_REDUCTIONS:
            x = x0.clone().requires_grad_()
            loss = TripletMarginLoss(
                MARGIN, reduction=reduction, triplets_per_anchor=k, backend=backend, **options
            )
            x2 = x0.clone().requires_grad_()
            exp = ref_triplet_margin(x2, want_rows, margin=MARGIN, reduction=reduction, **options)
            check_loss(loss(x, labels), [x], value_and_grads(exp, [x2]))
            x, ref = x0[:2].clone().requires_grad_(), ref0.clone().requires_grad_()
            out = triplet_margin_loss(
                x,
                labels[:2],
                None,
                MARGIN,
                reduction=reduction,
                triplets_per_anchor=k,
                ref_embeddings=ref,
                ref_labels=ref_labels,
                **options,
            )
            x2, ref2 = x0[:2].clone().requires_grad_(), ref0.clone().requires_grad_()
            ref_rows = [(a, 0, 1) for a in (0, 1) for _ in range(k)]
            exp = ref_triplet_margin(
                x2, ref_rows, ref2, margin=MARGIN, reduction=reduction, **options
            )
            check_loss(out, [x, ref], value_and_grads(exp, [x2, ref2]))


def test_triplets_per_anchor_draws_uniformly() -> None:
    """The draws of ``triplets_per_anchor=k``: valid triplets only, ``k`` per anchor that
    has a positive and a negative (none for the others), positives and negatives uniform
    within each anchor (every frequency within 5 standard deviations of ``k / count``;
    a fixed generator, so deterministic), and independent of each other (every anchor's
    (positive, negative) pairs all appear)."""
    from tripletkit.miners.sampling import _per_anchor_triplets

    c = CASES["refs_offset"]
    pb = problem(c.x, c.labels, c.ref, c.ref_labels, anchor_offset=c.anchor_offset)
    from tripletkit._batch import prepare

    b = prepare(
        c.x,
        c.labels,
        ref_embeddings=c.ref,
        ref_labels=c.ref_labels,
        anchor_offset=c.anchor_offset,
        matrix=False,
    )
    k = 3000
    g = torch.Generator().manual_seed(0)
    a, p, n, valid = _per_anchor_triplets(*b.masks(), k, g)
    assert a.shape == p.shape == n.shape == valid.shape == (pb.n, k)
    for anchor in range(pb.n):
        pos, neg = pb.positives(anchor), pb.negatives(anchor)
        assert bool(valid[anchor].all()) == bool(pos and neg)
        assert bool(valid[anchor].any()) == bool(pos and neg)
        if not (pos and neg):
            continue
        assert set(a[anchor].tolist()) == {anchor}
        assert set(p[anchor].tolist()) <= set(pos) and set(n[anchor].tolist()) <= set(neg)
        for drawn, among in ((p[anchor], pos), (n[anchor], neg)):
            share = 1 / len(among)
            sd = (k * share * (1 - share)) ** 0.5
            for j in among:
                assert abs(int((drawn == j).sum()) - k * share) <= 5 * sd + 1e-9, (anchor, j)
        pairs = set(zip(p[anchor].tolist(), n[anchor].tolist(), strict=True))
        assert pairs == {(q, r) for q in pos for r in neg}


def test_triplets_per_anchor_generator_and_explicit_triplets() -> None:
    """A generator makes the draws reproducible (and the default generator is
    ``torch.manual_seed``'s); explicit triplets ignore ``triplets_per_anchor``, as the
    peer does; degenerate batches give a zero in the graph."""
    c = CASES["generic"]
    draw = functools.partial(
        triplet_margin_loss, c.x, c.labels, None, MARGIN, reduction="none", triplets_per_anchor=5
    )
    first = draw(generator=torch.Generator().manual_seed(3))
    assert first.shape == (5 * 9,)  # the singleton anchor has no positive
    assert torch.equal(first, draw(generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, draw(generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(11)
    module = TripletMarginLoss(MARGIN, reduction="none", triplets_per_anchor=5)
    once = module(c.x, c.labels)
    torch.manual_seed(11)
    assert torch.equal(once, module(c.x, c.labels))
    t = some_triplets(c)
    for reduction in ALL_REDUCTIONS:
        plain = TripletMarginLoss(MARGIN, reduction=reduction)(c.x, c.labels, _as_triplets(t))
        sampled = TripletMarginLoss(MARGIN, reduction=reduction, triplets_per_anchor=2)
        assert torch.equal(sampled(c.x, c.labels, _as_triplets(t)), plain)
    for name in DEGENERATE:
        d = CASES[name]
        for reduction in ALL_REDUCTIONS:
            x, ref = d.leaves()
            out = triplet_margin_loss(
                x,
                d.labels,
                None,
                reduction=reduction,
                triplets_per_anchor=2,
                **d.ref_kwargs(ref),
            )
            assert_zero_in_graph(out, x, ref, reduction)
            x, ref = d.leaves()
            if reduction != "none":
                out = triplet_margin_loss(
                    x, d.labels, None, reduction=reduction, swap=True, **d.ref_kwargs(ref)
                )
                assert_zero_in_graph(out, x, ref, reduction)


@pytest.mark.parametrize(
    ("value", "exc"),
    [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("some", TypeError), (True, TypeError)],
)
def test_triplets_per_anchor_bad_values(value: object, exc: type) -> None:
    with pytest.raises(exc, match="triplets_per_anchor"):
        TripletMarginLoss(triplets_per_anchor=value)
    with pytest.raises(exc, match="triplets_per_anchor"):
        triplet_margin_loss(X, Y, triplets_per_anchor=value)
    with pytest.raises(TypeError, match="swap"):
        TripletMarginLoss(swap=1)
    with pytest.raises(TypeError, match="generator"):
        triplet_margin_loss(X, Y, triplets_per_anchor=2, generator=0)


def test_smooth_and_triplets_per_anchor_add_no_synchronisation() -> None:
    """With the input checks off and ``max_positives`` given, the smooth fused losses run
    without a host synchronisation (forward and backward), as the soft margin does, and so
    does ``triplets_per_anchor=k`` with a reducing ``reduction`` (its draws have fixed
    shapes); ``reduction="none"`` lists the anchors that have triplets (one read)."""
    from syncs import count_syncs

    import tripletkit

    c = CASES["generic"]
    x = c.x.clone().requires_grad_()
    bound = int(c.labels.bincount().max()) - 1
    with tripletkit.set_input_checks(False):
        for kind, fn in FUSED.items():
            counter = count_syncs(
                lambda fn=fn: fn(
                    x, c.labels, smooth=True, backend="torch", max_positives=bound
                ).backward()
            )
            assert counter.total == 0, (kind, dict(counter.counts))
        for reduction in ("mean", "sum", "mean_nonzero"):
            loss = TripletMarginLoss(
                reduction=reduction, smooth=True, swap=True, triplets_per_anchor=3
            )
            counter = count_syncs(lambda loss=loss: loss(x, c.labels).backward())
            assert counter.total == 0, (reduction, dict(counter.counts))
        loss = TripletMarginLoss(reduction="none", triplets_per_anchor=3)
        counter = count_syncs(lambda: loss(x, c.labels).sum().backward())
        assert counter.total == 1, dict(counter.counts)
