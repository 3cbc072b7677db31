"""Fused losses and loss modules: values and gradients against brute force in float64."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import (
    BACKENDS,
    BAD_INPUTS,
    CASES,
    DEGENERATE,
    METRICS,
    N_DATA_ERRORS,
    NO_OFFSET,
    Case,
    X,
    Y,
)
from reference import (
    as_list,
    fused_terms,
    graph_zero,
    problem,
    reduce,
)
from reference import contrastive_loss as ref_contrastive
from reference import triplet_margin_loss as ref_triplet_margin

from tripletkit import mining
from tripletkit.losses import (
    ContrastiveLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)
from tripletkit.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner
from tripletkit.types import Pairs, Triplets

MARGIN = 0.3
FUSED = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
}
FUSED_REDUCTIONS = {
    "batch_all": ("mean", "sum", "mean_nonzero"),
    "batch_hard": ("mean", "sum", "mean_nonzero", "none"),
    "semi_hard": ("mean", "sum", "mean_nonzero", "none"),
}
ALL_REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")
VALUE_TOL = {"rtol": 1e-9, "atol": 1e-11}
GRAD_TOL = {"rtol": 1e-7, "atol": 1e-9}

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(out: torch.Tensor) -> torch.Tensor:
    """Distinct weights for a ``reduction="none"`` output, so its gradient checks order."""
    return torch.linspace(1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)


def _value_and_grads(
    out: torch.Tensor, leaves: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    scalar = (out * _weights(out)).sum() if out.dim() else out
    grads = torch.autograd.grad(scalar, leaves, retain_graph=True)
    return out.detach(), [g.detach() for g in grads]


def _check(
    got: torch.Tensor,
    got_leaves: list[torch.Tensor],
    expected: tuple[torch.Tensor, list[torch.Tensor]],
) -> None:
    value, grads = _value_and_grads(got, got_leaves)
    exp_value, exp_grads = expected
    assert value.shape == exp_value.shape
    torch.testing.assert_close(value, exp_value, **VALUE_TOL)
    for g, e in zip(grads, exp_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, **GRAD_TOL)


@functools.cache
def _expected_fused(
    name: str, kind: str, soft_margin: bool, metric: str, normalize: bool, reduction: str
) -> tuple[torch.Tensor, list[torch.Tensor]]:
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
    )
    out = reduce(terms, reduction, zero)
    return _value_and_grads(out, [t for t in (x, ref) if t is not None])


def _fused(kind: str, c: Case, reduction: str, **kw: object) -> tuple[torch.Tensor, list]:
    x, ref = c.leaves()
    out = FUSED[kind](x, c.labels, MARGIN, reduction=reduction, **kw, **c.ref_kwargs(ref))
    return out, [t for t in (x, ref) if t is not None]


# -------------------------------------------------------------------- fused losses


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_fused_loss(case: Case, kind: str, soft_margin: bool, metric: str, backend: str) -> None:
    for reduction in FUSED_REDUCTIONS[kind]:
        out, leaves = _fused(
            kind, case, reduction, metric=metric, soft_margin=soft_margin, backend=backend
        )
        expected = _expected_fused(case.name, kind, soft_margin, metric, False, reduction)
        _check(out, leaves, expected)


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
        _check(out, leaves, _expected_fused(name, kind, soft_margin, metric, True, reduction))


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
            _check(out, [x], _value_and_grads(reduce(terms, reduction, zero), [x2]))


def test_fused_loss_auto_backend() -> None:
    c = CASES["duplicates"]
    for kind in FUSED:
        out, leaves = _fused(kind, c, "mean")
        _check(out, leaves, _expected_fused(c.name, kind, False, "euclidean", False, "mean"))


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
                _assert_zero_in_graph(out, x, ref, reduction)
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        out = TripletMarginLoss(reduction=reduction, backend=backend)(
            x, c.labels, None, **c.ref_kwargs(ref, offset=False)
        )
        _assert_zero_in_graph(out, x, ref, reduction)
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        out = TripletMarginLoss(reduction=reduction, backend=backend)(
            x, c.labels, Triplets.empty(), **c.ref_kwargs(ref, offset=False)
        )
        _assert_zero_in_graph(out, x, ref, reduction)


def _assert_zero_in_graph(out, x, ref, reduction) -> None:
    assert out.dtype == torch.float64
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out.shape == () and out.item() == 0.0
    assert out.requires_grad, "the loss must stay in the graph"
    leaves = [t for t in (x, ref) if t is not None]
    grads = torch.autograd.grad(out.sum(), leaves)
    for g, leaf in zip(grads, leaves, strict=True):
        assert torch.equal(g, torch.zeros_like(leaf))


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_half_precision_runs_in_float32(dtype: torch.dtype, kind: str, backend: str) -> None:
    c = CASES["generic"]
    x = c.x.to(dtype).requires_grad_()
    for soft_margin in (False, True):
        out = FUSED[kind](
            x, c.labels, MARGIN, soft_margin=soft_margin, reduction="sum", backend=backend
        )
        assert out.dtype == torch.float32
        terms, zero = fused_terms(
            kind, x.detach().double(), c.labels, margin=MARGIN, soft_margin=soft_margin
        )
        torch.testing.assert_close(out.double(), reduce(terms, "sum", zero), rtol=1e-4, atol=1e-4)
        (g,) = torch.autograd.grad(out, x)
        assert g.dtype == dtype and torch.isfinite(g).all()
    tml = TripletMarginLoss(MARGIN, backend=backend)
    out = tml(x, c.labels, mining.batch_hard_triplets(x, c.labels, backend=backend))
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, FUSED["batch_hard"](x, c.labels, MARGIN, backend=backend), rtol=1e-5, atol=1e-6
    )
    assert contrastive_loss(x, c.labels).dtype == torch.float32


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_float32_agrees_with_float64(kind: str, metric: str, backend: str) -> None:
    c = CASES["generic"]
    for reduction in FUSED_REDUCTIONS[kind]:
        x64 = c.x.clone().requires_grad_()
        x32 = c.x.float().requires_grad_()
        out64 = FUSED[kind](x64, c.labels, MARGIN, metric, reduction=reduction, backend=backend)
        out32 = FUSED[kind](x32, c.labels, MARGIN, metric, reduction=reduction, backend=backend)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), out64.detach(), rtol=1e-4, atol=1e-5)
        (g64,) = torch.autograd.grad(out64.sum(), x64)
        (g32,) = torch.autograd.grad(out32.sum(), x32)
        torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------- gradcheck


def _separated(metric: str, with_ref: bool = False) -> tuple[torch.Tensor, ...]:
    """Small float64 inputs away from every tie and every hinge kink (margin and 0.1/1.0
    contrastive margins), so that finite differences see one smooth piece."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    ref_labels = torch.tensor([0, 1, 2, 0, 1])
    for seed in range(1000):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 3, generator=g, dtype=torch.float64)
        ref = torch.randn(5, 3, generator=g, dtype=torch.float64) if with_ref else None
        pb = problem(x, labels, ref, ref_labels if with_ref else None, metric=metric)
        gaps = []
        for row in pb.d:
            s = sorted(row)
            gaps += [b - a for a, b in zip(s[:-1], s[1:], strict=True)]
            gaps += [abs(v - k) for v in row for k in (0.1, 1.0)]
        gaps += [abs(pb.d[a][p] - pb.d[a][n] + MARGIN) for a, p, n in pb.valid()]
        if min(gaps) > 1e-2:
            return (x, labels, ref, ref_labels) if with_ref else (x, labels)
    raise AssertionError("no separated input found")


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_gradcheck_fused(kind: str, soft_margin: bool, metric: str, backend: str) -> None:
    x, labels = _separated(metric)
    fn = FUSED[kind]

    def f(e: torch.Tensor) -> torch.Tensor:
        return fn(e, labels, MARGIN, metric, soft_margin, "sum", backend=backend)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_gradcheck_fused_with_refs(kind: str, backend: str) -> None:
    x, labels, ref, ref_labels = _separated("euclidean", with_ref=True)

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
    x, labels = _separated(metric)
    triplets = Triplets(*(torch.tensor(v) for v in zip(*problem(x, labels).valid(), strict=True)))
    loss = TripletMarginLoss(MARGIN, metric, soft_margin, "mean", normalize=True)
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, triplets), (x.clone().requires_grad_(),), fast_mode=True
    )
    loss = TripletMarginLoss(MARGIN, metric, soft_margin, "none", backend="torch")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, triplets), (x.clone().requires_grad_(),), fast_mode=True
    )


def test_gradcheck_contrastive(metric: str) -> None:
    x, labels = _separated(metric)
    loss = ContrastiveLoss(0.1, 1.0, metric, "sum")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels), (x.clone().requires_grad_(),), fast_mode=True
    )
    pairs = Pairs(
        torch.tensor([0, 1, 3]), torch.tensor([2, 0, 4]), torch.tensor([0, 5]), torch.tensor([3, 1])
    )
    loss = ContrastiveLoss(0.1, 1.0, metric, "none")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, pairs), (x.clone().requires_grad_(),), fast_mode=True
    )


# ------------------------------------------------------ TripletMarginLoss module


def _some_triplets(c: Case) -> list[tuple[int, int, int]]:
    """Arbitrary index triplets (valid or not, repeated rows, exact duplicates included)."""
    n = c.x.shape[0]
    m = n if c.ref is None else c.ref.shape[0]
    if n == 0 or m == 0:
        return []
    g = torch.Generator().manual_seed(n * 31 + m)
    a = torch.randint(0, n, (12,), generator=g).tolist()
    p = torch.randint(0, m, (12,), generator=g).tolist()
    q = torch.randint(0, m, (12,), generator=g).tolist()
    rows = list(zip(a, p, q, strict=True))
    return rows + rows[:2] + [(0, 0, m - 1)]


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
    rows = _some_triplets(c)
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
        leaves = [t for t in (x, ref) if t is not None]
        _check(out, leaves, _value_and_grads(exp, [t for t in (x2, ref2) if t is not None]))


def test_triplet_margin_loss_function_and_tuple_input() -> None:
    c = CASES["generic"]
    rows = _some_triplets(c)
    t = _as_triplets(rows)
    for reduction in ALL_REDUCTIONS:
        exp = ref_triplet_margin(c.x, rows, reduction=reduction, margin=MARGIN)
        for triplets in (t, tuple(t), list(t), tuple(v.int() for v in t)):
            out = triplet_margin_loss(c.x, c.labels, triplets, MARGIN, reduction=reduction)
            torch.testing.assert_close(out, exp, **VALUE_TOL)


@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
def test_triplet_margin_loss_all_valid_triplets(
    case_no_offset: Case, metric: str, soft_margin: bool, backend: str
) -> None:
    """``triplets=None`` is every valid triplet (batch-all)."""
    c = case_no_offset
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        loss = TripletMarginLoss(MARGIN, metric, soft_margin, reduction, backend=backend)
        out = loss(x, c.labels, None, *c.ref_kwargs(ref, offset=False).values())
        leaves = [t for t in (x, ref) if t is not None]
        _check(
            out, leaves, _expected_fused(c.name, "batch_all", soft_margin, metric, False, reduction)
        )


# --------------------------------------------------- miners feeding TripletMarginLoss


def test_miner_output_reproduces_fused_loss(case: Case, metric: str, backend: str) -> None:
    c = case
    kw = {"metric": metric, "backend": backend}
    mined = {
        "semi_hard": mining.semi_hard_triplets(
            c.x, c.labels, margin=MARGIN, **kw, **c.ref_kwargs()
        ),
        "batch_hard": mining.batch_hard_triplets(c.x, c.labels, **kw, **c.ref_kwargs()),
        "batch_all": mining.batch_all_triplets(
            c.x, c.labels, margin=MARGIN, active_only=False, **kw, **c.ref_kwargs()
        ),
        "batch_all_active": mining.batch_all_triplets(
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
        leaves = [t for t in (x, ref) if t is not None]
        leaves2 = [t for t in (x2, ref2) if t is not None]
        _check(out, leaves2, _value_and_grads(fused, leaves))


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


# --------------------------------------------------------------- ContrastiveLoss


def _some_pairs(c: Case) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    rows = _some_triplets(c)
    return [(a, p) for a, p, _ in rows[:7]], [(a, n) for a, _, n in rows[5:]]


def _as_pairs(pos: list, neg: list) -> Pairs:
    def col(rows: list, i: int) -> torch.Tensor:
        return torch.tensor([r[i] for r in rows], dtype=torch.int64)

    return Pairs(col(pos, 0), col(pos, 1), col(neg, 0), col(neg, 1))


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_contrastive_all_pairs(case_no_offset: Case, metric: str, normalize: bool) -> None:
    c = case_no_offset
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = c.leaves()
        loss = ContrastiveLoss(0.1, 1.0, metric, reduction, normalize=normalize)
        out = loss(x, c.labels, None, *c.ref_kwargs(ref, offset=False).values())
        x2, ref2 = c.leaves()
        exp = ref_contrastive(
            x2,
            c.labels,
            None,
            ref2,
            c.ref_labels,
            pos_margin=0.1,
            neg_margin=1.0,
            metric=metric,
            reduction=reduction,
            normalize=normalize,
        )
        leaves = [t for t in (x, ref) if t is not None]
        _check(out, leaves, _value_and_grads(exp, [t for t in (x2, ref2) if t is not None]))


def test_contrastive_given_pairs(case_no_offset: Case, metric: str) -> None:
    c = case_no_offset
    pos, neg = _some_pairs(c)
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        out = contrastive_loss(
            x,
            c.labels,
            _as_pairs(pos, neg),
            0.1,
            1.5,
            metric,
            reduction,
            **c.ref_kwargs(ref, offset=False),
        )
        x2, ref2 = c.leaves()
        exp = ref_contrastive(
            x2,
            c.labels,
            (pos, neg),
            ref2,
            c.ref_labels,
            pos_margin=0.1,
            neg_margin=1.5,
            metric=metric,
            reduction=reduction,
        )
        leaves = [t for t in (x, ref) if t is not None]
        _check(out, leaves, _value_and_grads(exp, [t for t in (x2, ref2) if t is not None]))


@pytest.mark.parametrize("name", ["one_class", "all_distinct", "empty", "single"])
def test_contrastive_degenerate(name: str) -> None:
    c = CASES[name]
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, _ = c.leaves()
        out = ContrastiveLoss(reduction=reduction)(x, c.labels)
        x2, _ = c.leaves()
        exp = ref_contrastive(x2, c.labels, reduction=reduction)
        _check(out, [x], _value_and_grads(exp, [x2]))
        if c.x.shape[0] < 2:
            _assert_zero_in_graph(
                ContrastiveLoss(reduction=reduction)(x, c.labels), x, None, reduction
            )
    x, _ = c.leaves()
    _assert_zero_in_graph(
        ContrastiveLoss(reduction="none")(x, c.labels, Pairs.empty()), x, None, "none"
    )


# ------------------------------------------------------------------------ errors


def _call_fused(fn, kw: dict) -> None:
    kw = dict(kw)
    fn(kw.pop("embeddings"), kw.pop("labels"), **kw)


@pytest.mark.parametrize("fn", tuple(FUSED.values()), ids=tuple(FUSED))
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_fused_bad_input(fn, kw: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        _call_fused(fn, kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def _module_call(loss, kw: dict, third: object = None) -> None:
    kw = dict(kw)
    loss(
        kw.pop("embeddings"),
        kw.pop("labels"),
        third,
        kw.pop("ref_embeddings", None),
        kw.pop("ref_labels", None),
    )


MODULES = [
    ("triplet_all", lambda: TripletMarginLoss(backend="torch"), None),
    ("triplet_given", lambda: TripletMarginLoss(), Triplets(*(torch.tensor([0]),) * 3)),
    ("contrastive_all", lambda: ContrastiveLoss(), None),
    ("contrastive_given", lambda: ContrastiveLoss(), Pairs(*(torch.tensor([0]),) * 4)),
]


@pytest.mark.parametrize(("make", "third"), [m[1:] for m in MODULES], ids=[m[0] for m in MODULES])
@pytest.mark.parametrize(
    ("kw", "exc", "words"),
    [b[1:] for b in BAD_INPUTS[:N_DATA_ERRORS]],
    ids=[b[0] for b in BAD_INPUTS[:N_DATA_ERRORS]],
)
def test_module_bad_input(make, third, kw: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        _module_call(make(), kw, third)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def _listed(info: pytest.ExceptionInfo, bad: str, valid: tuple[str, ...]) -> None:
    msg = str(info.value)
    for w in (repr(bad), *map(repr, valid)):
        assert w in msg, (w, msg)


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_unknown_reduction(kind: str) -> None:
    with pytest.raises(ValueError) as info:
        FUSED[kind](X, Y, reduction="avg")
    _listed(info, "avg", FUSED_REDUCTIONS[kind])


def test_batch_all_has_no_reduction_none() -> None:
    with pytest.raises(ValueError) as info:
        batch_all_triplet_loss(X, Y, reduction="none")
    _listed(info, "none", FUSED_REDUCTIONS["batch_all"])


@pytest.mark.parametrize("cls", [TripletMarginLoss, ContrastiveLoss], ids=lambda c: c.__name__)
def test_module_constructor_errors(cls) -> None:
    with pytest.raises(ValueError) as info:
        cls(reduction="avg")
    _listed(info, "avg", ALL_REDUCTIONS)
    with pytest.raises(ValueError) as info:
        cls(metric="l1")
    _listed(info, "l1", METRICS)
    names = ("margin",) if cls is TripletMarginLoss else ("pos_margin", "neg_margin")
    for name in names:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=name):
                cls(**{name: bad})
        with pytest.raises(TypeError, match=name):
            cls(**{name: "1"})


def test_triplet_margin_loss_unknown_backend() -> None:
    with pytest.raises(ValueError) as info:
        TripletMarginLoss(backend="gpu")(X, Y)
    _listed(info, "gpu", ("auto", *BACKENDS))
    with pytest.raises(ValueError) as info:
        TripletMarginLoss(backend="gpu")
    _listed(info, "gpu", ("auto", *BACKENDS))


@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_margin(kind: str, margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        FUSED[kind](X, Y, margin)
    with pytest.raises(ValueError, match="margin"):
        triplet_margin_loss(X, Y, None, margin)
    with pytest.raises(ValueError, match="pos_margin"):
        contrastive_loss(X, Y, pos_margin=margin)
    with pytest.raises(ValueError, match="neg_margin"):
        contrastive_loss(X, Y, neg_margin=margin)


def test_reduction_none_needs_explicit_indices() -> None:
    with pytest.raises(ValueError, match="none"):
        triplet_margin_loss(X, Y, None, reduction="none")
    with pytest.raises(ValueError, match="none"):
        contrastive_loss(X, Y, None, reduction="none")


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


@pytest.mark.parametrize(
    ("pairs", "exc"),
    [
        ((torch.tensor([0]), torch.tensor([1])), TypeError),
        ((torch.tensor([0]), torch.tensor([9]), torch.tensor([0]), torch.tensor([2])), ValueError),
        (
            (torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2])),
            ValueError,
        ),
        ((torch.tensor([0]), torch.tensor([1]), torch.tensor([0.0]), torch.tensor([2])), TypeError),
    ],
    ids=["two", "out_of_range", "lengths", "float"],
)
def test_bad_pairs(pairs: object, exc: type) -> None:
    with pytest.raises(exc):
        ContrastiveLoss()(X, Y, pairs)


def test_graph_zero_helper_is_connected() -> None:
    """Guard for the reference itself: its empty losses backpropagate too."""
    x = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(reduce([], "mean", graph_zero(x)), x)
    assert g.shape == (0, 3)
    assert as_list(Triplets.empty()) == []
