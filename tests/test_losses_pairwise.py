"""``tripletkit.losses.pairwise``, against brute force in float64 (values and gradients):

- the contrastive loss over every pair or over given pairs, its ``contrastive_parts`` form
  and ``ContrastiveLoss``;
- the multi-similarity, circle and supervised contrastive losses: the brute-force loops of
  ``reference.py``, gradcheck, awkward batches, mined pairs, reference sets, half precision
  and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    BAD_INPUTS,
    CASES,
    CONTRASTIVE_MARGINS,
    DATA_ERRORS,
    DEGENERATE,
    GRAD_TOL,
    METRICS,
    NO_OFFSET,
    VALUE_TOL,
    Case,
    X,
    Y,
    assert_listed,
    assert_zero_in_graph,
    check_loss,
    leaves_of,
    separated,
    some_triplets,
    value_and_grads,
)
from reference import contrastive_loss as ref_contrastive
from reference import problem, similarity_loss, similarity_loss_terms

from tripletkit.losses import (
    REDUCTIONS,
    CircleLoss,
    ContrastiveLoss,
    MultiSimilarityLoss,
    Parts,
    SupConLoss,
    circle_loss,
    circle_parts,
    contrastive_loss,
    contrastive_parts,
    multi_similarity_loss,
    multi_similarity_parts,
    reduce_parts,
    supcon_loss,
    supcon_parts,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.miners import MultiSimilarityMiner
from tripletkit.types import Pairs, Triplets

ALL_REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")
#: The reductions of the loss over every pair (``"none"`` needs explicit pairs).
PAIRS_NONE_REDUCTIONS = ("mean", "sum", "mean_nonzero")
POS_MARGIN, NEG_MARGIN = CONTRASTIVE_MARGINS
#: The negative margin of the tests with given pairs (another value than the default's).
GIVEN_NEG_MARGIN = 1.5

pytestmark = pytest.mark.usefixtures("one_thread")


def _some_pairs(c: Case) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    rows = some_triplets(c)
    return [(a, p) for a, p, _ in rows[:7]], [(a, n) for a, _, n in rows[5:]]


def _as_pairs(pos: list, neg: list) -> Pairs:
    def col(rows: list, i: int) -> torch.Tensor:
        return torch.tensor([r[i] for r in rows], dtype=torch.int64)

    return Pairs(col(pos, 0), col(pos, 1), col(neg, 0), col(neg, 1))


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_contrastive_all_pairs(case: Case, metric: str, normalize: bool) -> None:
    """Every pair, ``anchor_offset`` included (the pair of a sample with itself is left out)."""
    c = case
    for reduction in PAIRS_NONE_REDUCTIONS:
        x, ref = c.leaves()
        loss = ContrastiveLoss(POS_MARGIN, NEG_MARGIN, metric, reduction, normalize=normalize)
        kwargs = {} if c.anchor_offset is None else {"anchor_offset": c.anchor_offset}
        out = loss(x, c.labels, None, *c.ref_kwargs(ref, offset=False).values(), **kwargs)
        x2, ref2 = c.leaves()
        exp = ref_contrastive(
            x2,
            c.labels,
            None,
            ref2,
            c.ref_labels,
            pos_margin=POS_MARGIN,
            neg_margin=NEG_MARGIN,
            metric=metric,
            reduction=reduction,
            normalize=normalize,
            anchor_offset=c.anchor_offset,
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


def test_contrastive_given_pairs(case_no_offset: Case, metric: str) -> None:
    c = case_no_offset
    pos, neg = _some_pairs(c)
    for reduction in ALL_REDUCTIONS:
        x, ref = c.leaves()
        out = contrastive_loss(
            x,
            c.labels,
            _as_pairs(pos, neg),
            POS_MARGIN,
            GIVEN_NEG_MARGIN,
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
            pos_margin=POS_MARGIN,
            neg_margin=GIVEN_NEG_MARGIN,
            metric=metric,
            reduction=reduction,
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


@pytest.mark.parametrize("name", ["one_class", "all_distinct", "empty", "single"])
def test_contrastive_degenerate(name: str) -> None:
    c = CASES[name]
    for reduction in PAIRS_NONE_REDUCTIONS:
        x, _ = c.leaves()
        out = ContrastiveLoss(reduction=reduction)(x, c.labels)
        x2, _ = c.leaves()
        exp = ref_contrastive(x2, c.labels, reduction=reduction)
        check_loss(out, [x], value_and_grads(exp, [x2]))
        if c.x.shape[0] < 2:
            assert_zero_in_graph(
                ContrastiveLoss(reduction=reduction)(x, c.labels), x, None, reduction
            )
    x, _ = c.leaves()
    assert_zero_in_graph(
        ContrastiveLoss(reduction="none")(x, c.labels, Pairs.empty()), x, None, "none"
    )


def test_contrastive_parts_reduce_to_the_loss(case: Case) -> None:
    """``contrastive_parts`` is ``Parts(total, n_valid, n_active)``: the sum of the terms of
    every pair, their number and the number above 0 (counts may be 0-dim tensors)."""
    c = case
    x, ref = c.leaves()
    parts = contrastive_parts(x, c.labels, POS_MARGIN, NEG_MARGIN, **c.ref_kwargs(ref))
    assert isinstance(parts, Parts)
    x2, ref2 = c.leaves()
    terms = ref_contrastive(
        x2,
        c.labels,
        None,
        ref2,
        c.ref_labels,
        pos_margin=POS_MARGIN,
        neg_margin=NEG_MARGIN,
        reduction="none",
        anchor_offset=c.anchor_offset,
    )
    assert int(parts.n_valid) == terms.numel()
    assert int(parts.n_active) == int((terms > 0).sum())
    check_loss(parts.total, leaves_of(x, ref), value_and_grads(terms.sum(), leaves_of(x2, ref2)))
    for reduction in PAIRS_NONE_REDUCTIONS:
        loss = contrastive_loss(
            c.x, c.labels, None, POS_MARGIN, NEG_MARGIN, reduction=reduction, **c.ref_kwargs()
        )
        torch.testing.assert_close(reduce_parts(*parts, reduction), loss, **VALUE_TOL)


def test_gradcheck_contrastive(metric: str) -> None:
    x, labels = separated(metric)
    loss = ContrastiveLoss(POS_MARGIN, NEG_MARGIN, metric, "sum")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels), (x.clone().requires_grad_(),), fast_mode=True
    )
    pairs = Pairs(
        torch.tensor([0, 1, 3]), torch.tensor([2, 0, 4]), torch.tensor([0, 5]), torch.tensor([3, 1])
    )
    loss = ContrastiveLoss(POS_MARGIN, NEG_MARGIN, metric, "none")
    assert torch.autograd.gradcheck(
        lambda e: loss(e, labels, pairs), (x.clone().requires_grad_(),), fast_mode=True
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_returns_its_dtype(dtype: torch.dtype) -> None:
    c = CASES["generic"]
    x = c.x.to(dtype).requires_grad_()
    assert contrastive_loss(x, c.labels).dtype == dtype


# ------------------------------------------------------------------------ errors


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
    ("contrastive_all", None),
    ("contrastive_given", Pairs(*(torch.tensor([0]),) * 4)),
]


@pytest.mark.parametrize("third", [m[1] for m in MODULES], ids=[m[0] for m in MODULES])
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in DATA_ERRORS], ids=[b[0] for b in DATA_ERRORS]
)
def test_module_bad_input(third, kw: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        _module_call(ContrastiveLoss(), kw, third)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_module_constructor_errors() -> None:
    with pytest.raises(ValueError) as info:
        ContrastiveLoss(reduction="avg")
    assert_listed(info, "avg", ALL_REDUCTIONS)
    with pytest.raises(ValueError) as info:
        ContrastiveLoss(metric="l1")
    assert_listed(info, "l1", METRICS)
    for name in ("pos_margin", "neg_margin"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=name):
                ContrastiveLoss(**{name: bad})
        with pytest.raises(TypeError, match=name):
            ContrastiveLoss(**{name: "1"})


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_margin(margin: float) -> None:
    with pytest.raises(ValueError, match="pos_margin"):
        contrastive_loss(X, Y, pos_margin=margin)
    with pytest.raises(ValueError, match="neg_margin"):
        contrastive_loss(X, Y, neg_margin=margin)
    with pytest.raises(ValueError, match="pos_margin"):
        contrastive_parts(X, Y, pos_margin=margin)
    with pytest.raises(ValueError, match="neg_margin"):
        contrastive_parts(X, Y, neg_margin=margin)


def test_reduction_none_needs_explicit_pairs() -> None:
    with pytest.raises(ValueError, match="none"):
        contrastive_loss(X, Y, None, reduction="none")


def test_anchor_offset_needs_pairs_none() -> None:
    pairs = Pairs(*(torch.tensor([0]),) * 4)
    with pytest.raises(ValueError, match="anchor_offset only applies with pairs=None"):
        contrastive_loss(X, Y, pairs, ref_embeddings=X, ref_labels=Y, anchor_offset=0)


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


# ---------------------------------------------------------------------------------------------
# Multi-similarity, circle and supervised contrastive losses

KINDS = ("multi_similarity", "circle", "supcon")
FUNCTIONS = {
    "multi_similarity": multi_similarity_loss,
    "circle": circle_loss,
    "supcon": supcon_loss,
}
PARTS = {
    "multi_similarity": multi_similarity_parts,
    "circle": circle_parts,
    "supcon": supcon_parts,
}
MODULES = {
    "multi_similarity": MultiSimilarityLoss,
    "circle": CircleLoss,
    "supcon": SupConLoss,
}
#: The papers' defaults and a milder setting whose gradients are not dominated by one pair.
HYPER = {
    "multi_similarity": [
        {"alpha": 2.0, "beta": 50.0, "base": 0.5},
        {"alpha": 1.5, "beta": 4.0, "base": 0.2},
    ],
    "circle": [{"m": 0.4, "gamma": 80.0}, {"m": 0.25, "gamma": 3.0}],
    "supcon": [{"temperature": 0.1}, {"temperature": 0.7}],
}
HYPER_IDS = ("paper", "mild")


def _call(kind: str, x, labels, pairs=None, reduction="mean", hyper=None, **kw):
    return FUNCTIONS[kind](x, labels, pairs, reduction=reduction, **(hyper or {}), **kw)


def _weights(out: torch.Tensor) -> torch.Tensor:
    """Distinct weights for a ``reduction="none"`` output, so its gradient checks order."""
    return torch.linspace(1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)


def _value_and_grads(out: torch.Tensor, leaves: list[torch.Tensor]):
    scalar = (out * _weights(out)).sum() if out.dim() else out
    grads = torch.autograd.grad(scalar, leaves, retain_graph=True)
    return out.detach(), [g.detach() for g in grads]


def _check(got: torch.Tensor, got_leaves: list, expected: torch.Tensor, exp_leaves: list) -> None:
    value, grads = _value_and_grads(got, got_leaves)
    exp_value, exp_grads = _value_and_grads(expected, exp_leaves)
    assert value.shape == exp_value.shape
    assert value.dtype == exp_value.dtype == torch.float64
    torch.testing.assert_close(value, exp_value, **VALUE_TOL)
    for g, e in zip(grads, exp_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, **GRAD_TOL)


def _leaves(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t for t in tensors if t is not None]


# ----------------------------------------------------------- every pair (fused)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hyper_index", [0, 1], ids=HYPER_IDS)
def test_every_pair_matches_reference(case: Case, kind: str, hyper_index: int) -> None:
    hyper = HYPER[kind][hyper_index]
    for reduction in REDUCTIONS:
        x, ref = case.leaves()
        out = _call(kind, x, case.labels, None, reduction, hyper, **case.ref_kwargs(ref))
        x2, ref2 = case.leaves()
        exp = similarity_loss(
            kind,
            x2,
            case.labels,
            ref2,
            case.ref_labels,
            anchor_offset=case.anchor_offset,
            reduction=reduction,
            **hyper,
        )
        _check(out, _leaves(x, ref), exp, _leaves(x2, ref2))


@pytest.mark.parametrize("kind", KINDS)
def test_module_equals_function(case_no_offset: Case, kind: str) -> None:
    c = case_no_offset
    hyper = HYPER[kind][1]
    for reduction in REDUCTIONS:
        module = MODULES[kind](**hyper, reduction=reduction)
        out = module(c.x, c.labels, None, c.ref, c.ref_labels)
        exp = _call(kind, c.x, c.labels, None, reduction, hyper, **c.ref_kwargs())
        torch.testing.assert_close(out, exp, rtol=0, atol=0)
    if c.ref is not None and c.ref.shape[0] > c.x.shape[0]:  # the anchors fit at offset 1
        out = MODULES[kind](**hyper)(c.x, c.labels, None, c.ref, c.ref_labels, anchor_offset=1)
        exp = _call(kind, c.x, c.labels, None, "mean", hyper, **c.ref_kwargs(), anchor_offset=1)
        torch.testing.assert_close(out, exp, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_parts_reduce_to_the_loss(case: Case, kind: str) -> None:
    hyper = HYPER[kind][1]
    parts = PARTS[kind](case.x, case.labels, None, **hyper, **case.ref_kwargs())
    for reduction in ("mean", "sum", "mean_nonzero"):
        exp = _call(kind, case.x, case.labels, None, reduction, hyper, **case.ref_kwargs())
        torch.testing.assert_close(reduce_parts(*parts, reduction), exp, rtol=0, atol=0)
    terms, counted = similarity_loss_terms(
        kind,
        case.x,
        case.labels,
        case.ref,
        case.ref_labels,
        anchor_offset=case.anchor_offset,
        **hyper,
    )
    assert int(parts.n_valid) == sum(counted)
    assert int(parts.n_active) == sum(
        1 for t, k in zip(terms, counted, strict=True) if k and float(t) > 0
    )


def test_reduction_none_shapes_and_order() -> None:
    """Multi-similarity: one term per anchor ``[N]``; circle and SupCon: one per counted
    anchor, anchors ascending."""
    c = CASES["generic"]  # label 9 is a singleton: no positive
    hyper = {k: HYPER[k][1] for k in KINDS}
    for kind in KINDS:
        out = _call(kind, c.x, c.labels, None, "none", hyper[kind])
        terms, counted = similarity_loss_terms(kind, c.x, c.labels, **hyper[kind])
        kept = torch.stack([t for t, k in zip(terms, counted, strict=True) if k])
        assert out.shape == kept.shape
        torch.testing.assert_close(out, kept, **VALUE_TOL)
    assert _call("multi_similarity", c.x, c.labels, None, "none").shape == (10,)
    assert _call("circle", c.x, c.labels, None, "none").shape == (9,)
    assert _call("supcon", c.x, c.labels, None, "none").shape == (9,)


def test_which_anchors_count() -> None:
    """The documented semantics, one case at a time."""
    # An anchor without positives keeps its negative part in the multi-similarity loss,
    # and "mean" divides by every anchor.
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    terms = multi_similarity_loss(x, y, reduction="none")
    assert terms[2] > 0
    torch.testing.assert_close(multi_similarity_loss(x, y), terms.sum() / 3)
    # A one-class batch: no negatives. Multi-similarity: the positive parts; SupCon: the
    # paper's loss (each positive against the other positives), > 0; circle: nothing.
    one = CASES["one_class"]
    assert multi_similarity_loss(one.x, one.labels) > 0
    assert supcon_loss(one.x, one.labels) > 0
    assert circle_loss(one.x, one.labels) == 0
    # A single positive and no negative: SupCon's term is exactly 0; "mean" counts it,
    # "mean_nonzero" does not.
    pair = CASES["pair_same"]
    assert supcon_loss(pair.x, pair.labels, reduction="none").tolist() == [0.0, 0.0]
    assert supcon_loss(pair.x, pair.labels, reduction="mean") == 0
    # All labels distinct: only negative pairs.
    distinct = CASES["all_distinct"]
    assert multi_similarity_loss(distinct.x, distinct.labels) > 0
    assert supcon_loss(distinct.x, distinct.labels) == 0
    assert circle_loss(distinct.x, distinct.labels) == 0


def test_worked_example() -> None:
    """Three 2-D points, by hand: S_01 = 0.8, S_02 = 0, S_12 = 0.6."""
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])

    def ms(pos: list[float], neg: list[float]) -> float:
        return (
            math.log1p(sum(math.exp(-2 * (s - 0.5)) for s in pos)) / 2
            + math.log1p(sum(math.exp(50 * (s - 0.5)) for s in neg)) / 50
        )

    want = [ms([0.8], [0.0]), ms([0.8], [0.6]), ms([], [0.0, 0.6])]
    torch.testing.assert_close(
        multi_similarity_loss(x, y, reduction="none"), torch.tensor(want, dtype=torch.float64)
    )
    # SupCon, t = 1: anchor 0: log(e^.8 + e^0) - .8; anchor 1: log(e^.8 + e^.6) - .8
    want = [math.log(math.exp(0.8) + 1) - 0.8, math.log(math.exp(0.8) + math.exp(0.6)) - 0.8]
    torch.testing.assert_close(
        supcon_loss(x, y, temperature=1.0, reduction="none"),
        torch.tensor(want, dtype=torch.float64),
    )

    # Circle, m = 0.25, gamma = 2: anchor 0 (s_p = .8, s_n = 0), anchor 1 (.8, .6)
    def circle(sp: float, sn: float) -> float:
        lp = -2 * max(0, 1.25 - sp) * (sp - 0.75)
        ln = 2 * max(0, sn + 0.25) * (sn - 0.25)
        return math.log1p(math.exp(lp + ln))

    torch.testing.assert_close(
        circle_loss(x, y, m=0.25, gamma=2.0, reduction="none"),
        torch.tensor([circle(0.8, 0.0), circle(0.8, 0.6)], dtype=torch.float64),
    )


# ---------------------------------------------------------------- mined pairs


def _some_pairs(c: Case, seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Arbitrary (anchor, reference) pairs: some against the labels, repeated ones, self
    pairs; a pair is never both positive and negative."""
    n = c.x.shape[0]
    m = n if c.ref is None else c.ref.shape[0]
    if n == 0 or m == 0:
        return [], []
    g = torch.Generator().manual_seed(seed + 7 * n + m)
    rows = list(
        zip(
            torch.randint(0, n, (24,), generator=g).tolist(),
            torch.randint(0, m, (24,), generator=g).tolist(),
            strict=True,
        )
    )
    pos = rows[:10] + rows[:2]
    neg = [r for r in rows[10:] if r not in pos] + [r for r in rows[10:12] if r not in pos]
    return pos, neg


def _as_pairs(pos: list, neg: list) -> Pairs:
    def col(rows: list, i: int) -> torch.Tensor:
        return torch.tensor([r[i] for r in rows], dtype=torch.int64)

    return Pairs(col(pos, 0), col(pos, 1), col(neg, 0), col(neg, 1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hyper_index", [0, 1], ids=HYPER_IDS)
def test_given_pairs_match_reference(case_no_offset: Case, kind: str, hyper_index: int) -> None:
    c = case_no_offset
    hyper = HYPER[kind][hyper_index]
    pos, neg = _some_pairs(c)
    for reduction in REDUCTIONS:
        x, ref = c.leaves()
        out = _call(kind, x, c.labels, _as_pairs(pos, neg), reduction, hyper, **c.ref_kwargs(ref))
        x2, ref2 = c.leaves()
        exp = similarity_loss(
            kind, x2, c.labels, ref2, c.ref_labels, pairs=(pos, neg), reduction=reduction, **hyper
        )
        _check(out, _leaves(x, ref), exp, _leaves(x2, ref2))


@pytest.mark.parametrize("kind", KINDS)
def test_pairs_as_tuples_and_triplets(kind: str) -> None:
    c = CASES["generic"]
    hyper = HYPER[kind][1]
    pos, neg = _some_pairs(c)
    pairs = _as_pairs(pos, neg)
    exp = similarity_loss(kind, c.x, c.labels, pairs=(pos, neg), **hyper)
    for given in (pairs, tuple(pairs), list(pairs), tuple(t.int() for t in pairs)):
        torch.testing.assert_close(_call(kind, c.x, c.labels, given, hyper=hyper), exp, **VALUE_TOL)
    # Triplets are read as their (a, p) and (a, n) pairs, as pytorch-metric-learning does.
    valid = problem(c.x, c.labels).valid()[::5]
    triplets = Triplets(*(torch.tensor(v) for v in zip(*valid, strict=True)))
    exp = similarity_loss(
        kind,
        c.x,
        c.labels,
        pairs=([(a, p) for a, p, _ in valid], [(a, n) for a, _, n in valid]),
        **hyper,
    )
    torch.testing.assert_close(_call(kind, c.x, c.labels, triplets, hyper=hyper), exp, **VALUE_TOL)
    out = MODULES[kind](**hyper)(c.x, c.labels, tuple(triplets))
    torch.testing.assert_close(out, exp, **VALUE_TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_every_pair_listed_equals_pairs_none(case_no_offset: Case, kind: str) -> None:
    c = case_no_offset
    pb = problem(c.x, c.labels, c.ref, c.ref_labels)
    pos = [(a, j) for a in range(pb.n) for j in pb.positives(a)]
    neg = [(a, j) for a in range(pb.n) for j in pb.negatives(a)]
    for reduction in REDUCTIONS:
        got = _call(kind, c.x, c.labels, _as_pairs(pos, neg), reduction, **c.ref_kwargs())
        exp = _call(kind, c.x, c.labels, None, reduction, **c.ref_kwargs())
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["generic", "duplicates", "grid", "refs"])
def test_multi_similarity_miner_feeds_the_loss(name: str) -> None:
    c = CASES[name]
    pairs = MultiSimilarityMiner(0.1)(c.x, c.labels, c.ref, c.ref_labels)
    pos = list(zip(pairs.anchor_pos.tolist(), pairs.positive.tolist(), strict=True))
    neg = list(zip(pairs.anchor_neg.tolist(), pairs.negative.tolist(), strict=True))
    assert pos or neg, "the comparison should not be vacuous"
    x, ref = c.leaves()
    out = MultiSimilarityLoss()(x, c.labels, pairs, ref, c.ref_labels)
    x2, ref2 = c.leaves()
    exp = similarity_loss("multi_similarity", x2, c.labels, ref2, c.ref_labels, pairs=(pos, neg))
    _check(out, _leaves(x, ref), exp, _leaves(x2, ref2))


def test_cross_batch_memory_as_references() -> None:
    g = torch.Generator().manual_seed(3)
    memory = CrossBatchMemory(size=20, dim=4, dtype=torch.float64)
    for _ in range(3):
        memory.enqueue(
            torch.randn(8, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (8,), generator=g),
        )
    mem_emb, mem_labels = memory.get()
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    for kind in KINDS:
        x1 = x.clone().requires_grad_()
        out = MODULES[kind]()(x1, labels, None, mem_emb, mem_labels)
        x2 = x.clone().requires_grad_()
        exp = similarity_loss(kind, x2, labels, mem_emb, mem_labels)
        _check(out, [x1], exp, [x2])


# ------------------------------------------------------------- no valid pair


#: Cases in which each loss counts no anchor at all.
NOTHING_COUNTED = {
    "multi_similarity": ("empty", "single", "refs_empty"),
    "circle": DEGENERATE,
    "supcon": ("all_distinct", "empty", "single", "refs_empty"),
}


def _assert_zero_in_graph(out: torch.Tensor, leaves: list, reduction: str) -> None:
    assert out.dtype == torch.float64
    if reduction == "none":
        assert out.shape == (0,)
    else:
        assert out.shape == () and out.item() == 0.0
    assert out.requires_grad, "the loss must stay in the graph"
    grads = torch.autograd.grad(out.sum(), leaves)
    for g, leaf in zip(grads, leaves, strict=True):
        assert torch.equal(g, torch.zeros_like(leaf))


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_counted_is_an_exact_zero_in_the_graph(kind: str) -> None:
    for name in NOTHING_COUNTED[kind]:
        c = CASES[name]
        for reduction in REDUCTIONS:
            if kind == "multi_similarity" and reduction == "none":
                continue  # one (zero) term per anchor
            x, ref = c.leaves()
            out = _call(kind, x, c.labels, None, reduction, **c.ref_kwargs(ref))
            _assert_zero_in_graph(out, _leaves(x, ref), reduction)
    for name in NO_OFFSET:
        c = CASES[name]
        for reduction in REDUCTIONS:
            x, ref = c.leaves()
            out = _call(kind, x, c.labels, Pairs.empty(), reduction, **c.ref_kwargs(ref))
            if kind == "multi_similarity" and reduction == "none":
                assert out.shape == (c.x.shape[0],) and not out.any()
                continue
            _assert_zero_in_graph(out, _leaves(x, ref), reduction)


@pytest.mark.parametrize("kind", KINDS)
def test_uncounted_anchors_get_no_gradient(kind: str) -> None:
    """Anchors outside every counted pair (here: mined pairs of anchor 0 only) get an exact
    zero gradient, also at huge scales."""
    c = CASES["generic"]
    pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([3]))
    big = {
        "multi_similarity": {"beta": 1e4},
        "circle": {"gamma": 1e4},
        "supcon": {"temperature": 1e-4},
    }
    for hyper in (HYPER[kind][0], big[kind]):
        x = c.x.clone().requires_grad_()
        (g,) = torch.autograd.grad(_call(kind, x, c.labels, pairs, hyper=hyper), x)
        assert torch.isfinite(g).all()
        assert torch.equal(g[[2, 4, 5, 6, 7, 8, 9]], torch.zeros(7, 4, dtype=torch.float64))


# ------------------------------------------------------------------ gradcheck


def _gradcheck_inputs(with_ref: bool = False):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    if not with_ref:
        return x, labels
    ref = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    return x, labels, ref, torch.tensor([0, 1, 2, 0, 1])


@pytest.mark.parametrize("kind", ["multi_similarity", "supcon"])
@pytest.mark.parametrize("hyper_index", [0, 1], ids=HYPER_IDS)
def test_gradcheck(kind: str, hyper_index: int) -> None:
    """Both losses are smooth in the embeddings. (The circle loss is not gradchecked: its
    weights ``alpha_p``, ``alpha_n`` are constants of the backward pass by definition, so its
    gradient is not the derivative of its value; it is checked against the reference loops,
    which hold them constant too.)"""
    hyper = HYPER[kind][hyper_index]
    x, labels = _gradcheck_inputs()
    fn = FUNCTIONS[kind]
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, None, **hyper), (x,))
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, None, **hyper, reduction="none"), (x,))
    pairs = Pairs(
        torch.tensor([0, 1, 3, 3]),
        torch.tensor([2, 0, 4, 6]),
        torch.tensor([0, 5, 6]),
        torch.tensor([3, 1, 2]),
    )
    assert torch.autograd.gradcheck(lambda e: fn(e, labels, pairs, **hyper), (x,))
    x, labels, ref, ref_labels = _gradcheck_inputs(with_ref=True)
    assert torch.autograd.gradcheck(
        lambda e, r: fn(e, labels, None, **hyper, ref_embeddings=r, ref_labels=ref_labels),
        (x, ref),
    )


def test_circle_gradient_holds_the_weights_constant() -> None:
    """The circle loss's gradient equals the derivative of the same loss with ``alpha_p``,
    ``alpha_n`` frozen at the current point (checked by finite differences of the
    reference with frozen weights)."""
    x, labels = _gradcheck_inputs()
    m, gamma = 0.25, 3.0
    (g,) = torch.autograd.grad(circle_loss(x, labels, m=m, gamma=gamma, reduction="sum"), x)
    sim = torch.nn.functional.normalize(x.detach(), dim=1)
    sim = sim @ sim.T
    alpha_p = (1 + m - sim).clamp_min(0)
    alpha_n = (sim + m).clamp_min(0)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(7, dtype=torch.bool)

    def frozen(e: torch.Tensor) -> torch.Tensor:
        s = torch.nn.functional.normalize(e, dim=1)
        s = s @ s.T
        lp = torch.where(pos, -gamma * alpha_p * (s - 1 + m), -math.inf).logsumexp(1)
        ln = torch.where(~same, gamma * alpha_n * (s - m), -math.inf).logsumexp(1)
        keep = pos.any(1) & (~same).any(1)
        return torch.nn.functional.softplus((lp + ln)[keep]).sum()

    assert torch.autograd.gradcheck(frozen, (x,))
    (g_frozen,) = torch.autograd.grad(frozen(x), x)
    torch.testing.assert_close(g, g_frozen, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_is_finite_and_close(dtype: torch.dtype, kind: str) -> None:
    """Half inputs are computed in float32; with the papers' scales (gamma = 80, beta =
    50, t = 0.1) and far larger ones, values and gradients stay finite and close to
    float64 on the same (rounded) inputs, rows without positives included."""
    c = CASES["generic"]
    big = {
        "multi_similarity": {"beta": 5e3},
        "circle": {"gamma": 1e4},
        "supcon": {"temperature": 1e-4},
    }
    for hyper in (HYPER[kind][0], big[kind]):
        for reduction in ("mean", "none"):
            x = c.x.to(dtype).requires_grad_()
            out = _call(kind, x, c.labels, None, reduction, hyper)
            assert out.dtype == dtype  # computed in float32, returned in the input's dtype
            (g,) = torch.autograd.grad(out.sum(), x)
            assert g.dtype == dtype and torch.isfinite(g).all()
            x64 = x.detach().double().requires_grad_()
            exp = _call(kind, x64, c.labels, None, reduction, hyper)
            tol = max(1e-5, torch.finfo(dtype).eps)  # float32 inside, one rounding to dtype
            torch.testing.assert_close(out.double(), exp.detach(), rtol=tol, atol=tol)
            (g64,) = torch.autograd.grad(exp.sum(), x64)
            scale = float(g64.abs().max()) or 1.0
            assert float((g.double() - g64).abs().max()) <= 1e-2 * scale


def test_extreme_scales_do_not_overflow_float32() -> None:
    """exp(gamma * ...) overflows float32 for gamma > ~40; the log-sum-exps must not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    labels = torch.arange(32) % 5
    labels[-1] = 9  # an anchor without positives
    for kind, hyper in [
        ("multi_similarity", {"alpha": 200.0, "beta": 1e6}),
        ("circle", {"gamma": 1e6}),
        ("supcon", {"temperature": 1e-6}),
    ]:
        x1 = x.clone().requires_grad_()
        out = _call(kind, x1, labels, None, hyper=hyper)
        (grad,) = torch.autograd.grad(out, x1)
        assert torch.isfinite(out) and torch.isfinite(grad).all(), kind
        torch.testing.assert_close(
            out.double(), _call(kind, x.double(), labels, None, hyper=hyper), rtol=1e-4, atol=0
        )


# ------------------------------------------------------------------ bad input

#: The data errors of ``conftest.BAD_INPUTS`` (these losses have no metric, backend or
#: normalize argument).
DATA_ERRORS = [b for b in BAD_INPUTS if b[0] not in ("metric", "backend", "normalize_type")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in DATA_ERRORS], ids=[b[0] for b in DATA_ERRORS]
)
def test_bad_input(kind: str, kw: dict, exc: type, words: list[str]) -> None:
    kw = dict(kw)
    for call in (
        lambda: FUNCTIONS[kind](kw["embeddings"], kw["labels"], **_rest(kw)),
        lambda: PARTS[kind](kw["embeddings"], kw["labels"], **_rest(kw)),
        lambda: MODULES[kind]()(kw["embeddings"], kw["labels"], **_rest(kw)),
    ):
        with pytest.raises(exc) as info:
            call()
        for w in words:
            assert w in str(info.value), (w, str(info.value))


def _rest(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in ("embeddings", "labels")}


BAD_HYPER = {
    "multi_similarity": [
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"beta": 0.0}, ValueError, "beta"),
        ({"beta": float("inf")}, ValueError, "beta"),
        ({"base": float("nan")}, ValueError, "base"),
        ({"base": "0.5"}, TypeError, "base"),
    ],
    "circle": [
        ({"gamma": 0.0}, ValueError, "gamma"),
        ({"gamma": -80.0}, ValueError, "gamma"),
        ({"m": float("inf")}, ValueError, "m must be finite"),
        ({"m": None}, TypeError, "m must be a real number"),
    ],
    "supcon": [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": True}, TypeError, "temperature"),
    ],
}


@pytest.mark.parametrize("kind", KINDS)
def test_bad_hyper_parameters(kind: str) -> None:
    for hyper, exc, words in BAD_HYPER[kind]:
        with pytest.raises(exc, match=words):
            MODULES[kind](**hyper)
        with pytest.raises(exc, match=words):
            FUNCTIONS[kind](X, Y, **hyper)
        with pytest.raises(exc, match=words):
            PARTS[kind](X, Y, **hyper)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_reduction_lists_the_valid_ones(kind: str) -> None:
    for call in (
        lambda: MODULES[kind](reduction="avg"),
        lambda: FUNCTIONS[kind](X, Y, reduction="avg"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        for w in ("'avg'", *map(repr, REDUCTIONS)):
            assert w in str(info.value)


@pytest.mark.parametrize(
    ("pairs", "exc", "words"),
    [
        ((torch.tensor([0]), torch.tensor([1])), TypeError, "Triplets"),
        (torch.tensor([[0, 1, 0, 2]]), TypeError, "Pairs"),
        (
            (torch.tensor([0]), torch.tensor([9]), torch.tensor([0]), torch.tensor([2])),
            ValueError,
            "outside",
        ),
        (
            (torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2])),
            ValueError,
            "length",
        ),
        (
            (torch.tensor([0]), torch.tensor([1]), torch.tensor([0.0]), torch.tensor([2])),
            TypeError,
            "integer",
        ),
        (
            (torch.tensor([0]), torch.tensor([1]), torch.tensor([1, 0]), torch.tensor([0, 1])),
            ValueError,
            r"\(0, 1\) both",
        ),
        ((torch.tensor([0]), torch.tensor([1]), torch.tensor([5])), ValueError, "outside"),
    ],
    ids=["two", "matrix", "out_of_range", "lengths", "float", "overlap", "triplet_range"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_similarity_bad_pairs(kind: str, pairs: object, exc: type, words: str) -> None:
    with pytest.raises(exc, match=words):
        MODULES[kind]()(X, Y, pairs)


@pytest.mark.parametrize("kind", KINDS)
def test_similarity_anchor_offset_needs_pairs_none(kind: str) -> None:
    ref = torch.randn(6, 3)
    ref_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="anchor_offset only applies with pairs=None"):
        FUNCTIONS[kind](
            X, Y, Pairs.empty(), ref_embeddings=ref, ref_labels=ref_labels, anchor_offset=0
        )
    with pytest.raises(ValueError, match="anchor_offset"):
        FUNCTIONS[kind](X, Y, anchor_offset=1)  # no reference set


def test_module_call_signature_and_repr() -> None:
    import inspect

    for kind in KINDS:
        params = list(inspect.signature(MODULES[kind].forward).parameters)
        assert params[1:6] == ["embeddings", "labels", "pairs", "ref_embeddings", "ref_labels"]
    assert repr(MultiSimilarityLoss()) == (
        "MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, reduction='mean')"
    )
    assert repr(CircleLoss()) == "CircleLoss(m=0.4, gamma=80.0, reduction='mean')"
    assert repr(SupConLoss()) == "SupConLoss(temperature=0.1, reduction='mean')"
