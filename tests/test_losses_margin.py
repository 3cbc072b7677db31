"""``tripletkit.losses.margin``: the margin loss of Wu et al. 2017 (``margin_loss`` and
``MarginLoss`` with a learnable boundary) against the pair-by-pair oracle
:func:`reference.margin_loop`, values and gradients (embeddings, references and beta)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import SamplingProblem, margin_loop, margin_reduce, random_problem, roles

from tripletkit.losses import MarginLoss, margin_loss
from tripletkit.types import Pairs, Triplets

#: ``alpha`` (the margin), ``nu`` (the regulariser's weight) and the initial ``beta`` of the
#: comparisons with the oracle.
ALPHA = 0.2
NU = 0.05
BETA = 1.0
#: Classes of the problems drawn by :func:`_margin_case` (per-class ``beta`` has one each).
CLASSES = 3
#: Smallest hinge that gradcheck's finite differences may meet (away from the kink at 0).
KINK_GAP = 1e-3


def _unit(n: int, d: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def _margin_case(seed: int, with_ref: bool = False) -> tuple[SamplingProblem, list]:
    """A unit-norm problem and one random valid triplet per positive pair."""
    p = random_problem(seed, 10, 4, CLASSES, "offset" if with_ref else "self", unit=True)
    pos, neg = roles(p)
    rng = np.random.default_rng(seed)
    triplets = [(a, q, int(rng.choice(neg[a]))) for a in range(len(pos)) if neg[a] for q in pos[a]]
    return p, triplets


def _as_triplets(rows: list[tuple[int, int, int]]) -> Triplets:
    return Triplets(*(torch.tensor(c) for c in zip(*rows, strict=True)))


@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum", "none"])
@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_margin_loss_values_and_gradients_match_loop(
    reduction: str, per_class: bool, metric: str
) -> None:
    for seed, with_ref in [(0, False), (1, True)]:
        p, triplets = _margin_case(seed, with_ref)
        assert triplets
        loss_fn = MarginLoss(
            ALPHA,
            BETA,
            num_classes=CLASSES if per_class else None,
            nu=NU,
            metric=metric,
            reduction=reduction,
        ).double()
        with torch.no_grad():
            loss_fn.beta.copy_(torch.linspace(0.6, 1.1, loss_fn.beta.numel()))
        x = p.emb.clone().requires_grad_()
        ref = None if p.ref is None else p.ref.clone().requires_grad_()
        got = loss_fn(x, p.labels, _as_triplets(triplets), ref, p.ref_labels)

        x2 = p.emb.clone().requires_grad_()
        ref2 = None if p.ref is None else p.ref.clone().requires_grad_()
        beta2 = loss_fn.beta.detach().clone().requires_grad_()
        terms, active = margin_loop(
            x2,
            p.labels,
            [(a, q) for a, q, _ in triplets],
            [(a, n) for a, _, n in triplets],
            beta2,
            ALPHA,
            NU,
            metric,
            ref2,
        )
        want = margin_reduce(terms, active, reduction)
        torch.testing.assert_close(got, want)
        weights = torch.linspace(1, 2, want.numel(), dtype=torch.float64).reshape(want.shape)
        (got * weights).sum().backward()
        (want * weights).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
        torch.testing.assert_close(loss_fn.beta.grad, beta2.grad)
        if ref is not None:
            torch.testing.assert_close(ref.grad, ref2.grad)


def test_margin_loss_with_pairs_and_plain_tuples() -> None:
    x = torch.tensor([[0.0], [1.2], [1.1], [3.0], [0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0])
    pairs = Pairs(torch.tensor([0, 1]), torch.tensor([1, 4]), torch.tensor([0]), torch.tensor([2]))
    beta = torch.tensor([1.2], dtype=torch.float64)
    got = margin_loss(x, labels, pairs, beta, 0.2, 0.1, reduction="none")
    # pos (0,1): 0.2 + 1.2 - 1.2; pos (1,4): 0.2 + 0.9 - 1.2 < 0; neg (0,2): 0.2 - 1.1 + 1.2;
    # each plus nu * beta = 0.1 * 1.2.
    torch.testing.assert_close(got, torch.tensor([0.2, 0.0, 0.3], dtype=torch.float64) + 0.12)
    assert torch.equal(margin_loss(x, labels, tuple(pairs), beta, 0.2, 0.1, reduction="none"), got)
    mean = margin_loss(x, labels, pairs, beta, 0.2, 0.1)
    torch.testing.assert_close(mean, (0.5 + 3 * 0.12) / torch.tensor(2.0, dtype=torch.float64))
    trip = Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    torch.testing.assert_close(
        margin_loss(x, labels, trip, beta, reduction="sum"),
        margin_loss(x, labels, list(trip), beta, reduction="sum"),
    )


def test_margin_loss_gradcheck() -> None:
    p, triplets = _margin_case(2)
    t = _as_triplets(triplets)
    x = p.emb.clone().requires_grad_()
    beta = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float64, requires_grad=True)
    # Keep away from the hinges' kinks.
    terms = margin_loss(x, p.labels, t, beta, ALPHA, reduction="none").detach()
    hinge_free = margin_loss(x, p.labels, t, beta, ALPHA, nu=0.0, reduction="none").detach()
    assert bool(((hinge_free == 0) | (hinge_free > KINK_GAP)).all()) and terms.numel()
    for reduction in ["sum", "mean", "none"]:
        torch.autograd.gradcheck(
            lambda e, b, r=reduction: margin_loss(e, p.labels, t, b, ALPHA, 0.1, reduction=r),
            (x, beta),
        )


def test_beta_learns() -> None:
    p, triplets = _margin_case(3)
    t = _as_triplets(triplets)
    for num_classes in [None, CLASSES]:
        loss_fn = MarginLoss(beta=1.2, num_classes=num_classes).double()
        assert isinstance(loss_fn.beta, torch.nn.Parameter)
        assert [n for n, _ in loss_fn.named_parameters()] == ["beta"]
        opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
        before = loss_fn.beta.detach().clone()
        loss = loss_fn(p.emb, p.labels, t)
        loss.backward()
        assert loss_fn.beta.grad is not None and bool((loss_fn.beta.grad != 0).any())
        opt.step()
        assert not torch.equal(loss_fn.beta.detach(), before)
    frozen = MarginLoss(learn_beta=False)
    assert list(frozen.parameters()) == [] and "beta" in dict(frozen.named_buffers())
    assert "learn_beta=False" in repr(frozen)


def test_margin_loss_regulariser_pushes_beta_down() -> None:
    # No active hinge: the gradient of beta is nu per pair (sum) and the loss is nu * sum(beta).
    x = torch.tensor([[0.0], [0.1], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    t = Triplets(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 2]))
    loss_fn = MarginLoss(beta=1.0, nu=0.3, reduction="mean").double()
    loss = loss_fn(x, labels, t)
    torch.testing.assert_close(loss, torch.tensor(4 * 0.3, dtype=torch.float64))
    loss.backward()
    torch.testing.assert_close(loss_fn.beta.grad, torch.tensor([1.2], dtype=torch.float64))


def test_margin_loss_empty_indices() -> None:
    x = _unit(4).double().requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    loss_fn = MarginLoss(nu=0.1).double()
    for reduction in ["mean", "sum", "mean_nonzero"]:
        loss_fn.reduction = reduction
        loss = loss_fn(x, labels, Triplets.empty())
        assert loss.item() == 0.0
        loss.backward()
        assert x.grad is not None and bool((x.grad == 0).all())
    loss_fn.reduction = "none"
    assert loss_fn(x, labels, Pairs.empty()).shape == (0,)


def test_margin_loss_matches_pytorch_metric_learning() -> None:
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    p, triplets = _margin_case(4)
    t = _as_triplets(triplets)
    theirs = pml_losses.MarginLoss(margin=ALPHA, nu=0.0, beta=BETA)(p.emb, p.labels, tuple(t))
    ours = MarginLoss(ALPHA, BETA).double()(p.emb, p.labels, t)
    torch.testing.assert_close(ours, theirs)


def test_margin_loss_bad_input() -> None:
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    t = Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    loss_fn = MarginLoss()
    with pytest.raises(TypeError, match=r"tuple of 3 index tensors\) or Pairs \(a tuple of 4"):
        loss_fn(x, labels, (torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(TypeError, match=r"must be Triplets .* or Pairs .*, got NoneType"):
        loss_fn(x, labels, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        loss_fn(x, labels, Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([9])))
    with pytest.raises(TypeError, match="integer"):
        loss_fn(x, labels, Triplets(torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="differ in length"):
        loss_fn(x, labels, Triplets(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="must match in length"):
        loss_fn(x, labels, Pairs(torch.tensor([0, 1]), torch.tensor([1]), t[0], t[2]))
    with pytest.raises(ValueError, match=r"anchor labels must be in \[0, 2\)"):
        MarginLoss(num_classes=2)(x, torch.tensor([0, 0, 2, 2]), Triplets(*t[::-1]))
    with pytest.raises(ValueError, match="labels has"):
        loss_fn(x, labels[:3], t)
    with pytest.raises(ValueError, match="unknown reduction"):
        MarginLoss(reduction="max")
    with pytest.raises(ValueError, match="nu must be >= 0"):
        MarginLoss(nu=-0.1)
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(num_classes=0)
    with pytest.raises(ValueError, match="unknown metric"):
        MarginLoss(metric="l1")
    with pytest.raises(TypeError, match="beta"):
        margin_loss(x, labels, t, beta="1.2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        margin_loss(x, labels, t, beta=torch.ones(2, 2))
