"""``tripletkit.losses.pairwise``: the contrastive loss over every pair or over given pairs,
its ``contrastive_parts`` form and ``ContrastiveLoss``, against brute force in float64
(values and gradients)."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    CASES,
    CONTRASTIVE_MARGINS,
    DATA_ERRORS,
    METRICS,
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

from tripletkit.losses import (
    ContrastiveLoss,
    Parts,
    contrastive_loss,
    contrastive_parts,
    reduce_parts,
)
from tripletkit.types import Pairs

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
def test_half_precision_runs_in_float32(dtype: torch.dtype) -> None:
    c = CASES["generic"]
    x = c.x.to(dtype).requires_grad_()
    assert contrastive_loss(x, c.labels).dtype == torch.float32


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
