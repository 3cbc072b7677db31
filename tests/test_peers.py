"""Agreement with pytorch-metric-learning and online-triplet-loss where they share a meaning.

Each test is skipped when its package is not installed. Inputs are continuous float64
batches (no ties, no duplicates), since the peers break ties and treat zero distances in
their own ways.

Known, intended differences (not tested for equality):

- online-triplet-loss's ``batch_hard_triplet_loss`` gives an anchor without a positive a
  hardest-positive distance of 0 and averages over *every* anchor, where tripletkit leaves
  such anchors out; the two agree when every anchor has a positive and a negative.
- pytorch-metric-learning's ``LpDistance`` normalises embeddings by default;
  ``normalize_embeddings=False`` matches tripletkit's ``metric="euclidean"``.
- pytorch-metric-learning's ``smooth_loss`` is ``softplus(d_ap - d_an + margin)``; with
  ``margin=0`` it is tripletkit's ``soft_margin``.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import as_list, problem

from tripletkit import miners
from tripletkit.losses import (
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)
from tripletkit.miners import BatchAllMiner, BatchHardMiner, TripletMarginMiner

pytestmark = pytest.mark.usefixtures("one_thread")

TYPES = ("all", "hard", "semihard", "easy")
#: Tolerances of a loss value and of its gradient against a peer's, in float64.
VALUE_TOL = {"rtol": 1e-9, "atol": 1e-12}
GRAD_TOL = {"rtol": 1e-7, "atol": 1e-10}
#: Seeds of every comparison.
SEEDS = range(3)


def _batch(seed: int, n: int = 16, classes: int = 4, singleton: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % classes
    if singleton:
        labels[-1] = classes  # a class of its own
    return x, labels


def _refs(seed: int):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(11, 5, generator=g, dtype=torch.float64), torch.arange(11) % 3


def _pml():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners, reducers

    return distances, losses, miners, reducers


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("type_of_triplets", TYPES)
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_pml_triplet_margin_miner(
    seed: int, type_of_triplets: str, normalize: bool, backend: str
) -> None:
    distances, _, miners, _ = _pml()
    x, labels = _batch(seed)
    margin = 0.3 if normalize else 1.0
    theirs = miners.TripletMarginMiner(
        margin, type_of_triplets, distance=distances.LpDistance(normalize_embeddings=normalize)
    )
    ours = TripletMarginMiner(margin, type_of_triplets, normalize=normalize, backend=backend)
    want = set(as_list(theirs(x, labels)))
    assert want, "the comparison should not be vacuous"
    assert set(as_list(ours(x, labels))) == want
    ref, ref_labels = _refs(seed)
    want = set(as_list(theirs(x, labels, ref, ref_labels)))
    assert set(as_list(ours(x, labels, ref, ref_labels))) == want


@pytest.mark.parametrize("seed", SEEDS)
def test_pml_batch_hard_miner(seed: int, backend: str) -> None:
    distances, _, miners, _ = _pml()
    x, labels = _batch(seed)
    theirs = miners.BatchHardMiner(distance=distances.LpDistance(normalize_embeddings=False))
    got = as_list(BatchHardMiner(backend=backend)(x, labels))
    assert got == as_list(theirs(x, labels))
    assert len(got) == x.shape[0] - 1  # the singleton anchor is left out by both


@pytest.mark.parametrize("seed", SEEDS)
def test_pml_triplet_margin_loss_on_the_same_triplets(seed: int, backend: str) -> None:
    distances, losses, _, reducers = _pml()
    x, labels = _batch(seed)
    lp = distances.LpDistance(normalize_embeddings=False)
    triplets = BatchAllMiner(0.5, active_only=False, backend=backend)(x, labels)
    cases = [
        (
            losses.TripletMarginLoss(0.5, distance=lp),
            TripletMarginLoss(0.5, reduction="mean_nonzero"),
        ),
        (
            losses.TripletMarginLoss(0.5, distance=lp, reducer=reducers.MeanReducer()),
            TripletMarginLoss(0.5, reduction="mean"),
        ),
        (
            losses.TripletMarginLoss(
                0.0, distance=lp, smooth_loss=True, reducer=reducers.MeanReducer()
            ),
            TripletMarginLoss(soft_margin=True, reduction="mean"),
        ),
    ]
    for theirs, ours in cases:
        x1 = x.clone().requires_grad_()
        x2 = x.clone().requires_grad_()
        want = theirs(x1, labels, tuple(triplets))
        got = ours(x2, labels, triplets)
        torch.testing.assert_close(got, want, **VALUE_TOL)
        (g1,) = torch.autograd.grad(want, x1)
        (g2,) = torch.autograd.grad(got, x2)
        torch.testing.assert_close(g2, g1, **GRAD_TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_pml_avg_non_zero_is_fused_mean_nonzero(seed: int, backend: str) -> None:
    distances, losses, _, _ = _pml()
    x, labels = _batch(seed)
    theirs = losses.TripletMarginLoss(
        0.5, distance=distances.LpDistance(normalize_embeddings=False)
    )
    got = batch_all_triplet_loss(x, labels, 0.5, reduction="mean_nonzero", backend=backend)
    torch.testing.assert_close(got, theirs(x, labels), **VALUE_TOL)
    hard = miners.triplet_margin_triplets(
        x, labels, margin=0.5, type_of_triplets="hard", backend=backend
    )
    got = TripletMarginLoss(0.5, reduction="mean_nonzero")(x, labels, hard)
    torch.testing.assert_close(got, theirs(x, labels, tuple(hard)), **VALUE_TOL)


# ------------------------------------------------- regions, smooth loss, swap, per anchor

#: Margins of the region checks: negative, zero and positive (issue 19).
REGION_MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.2)


def _close_batch(seed: int, n: int = 12):
    """Points spread over about one unit, so that for every margin of
    :data:`REGION_MARGINS` each region holds triplets (no vacuous comparison)."""
    g = torch.Generator().manual_seed(seed + 200)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return x, torch.arange(n) % 3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", REGION_MARGINS)
def test_pml_regions_for_every_margin(seed: int, margin: float, backend: str) -> None:
    """``TripletMarginMiner`` selects pytorch-metric-learning's regions for negative, zero
    and positive margins, in-batch and with a reference set; "hard" and "semihard" are
    subsets of "all" and "easy" is its complement among the valid triplets."""
    distances, _, pml_miners, _ = _pml()
    lp = distances.LpDistance(normalize_embeddings=False)
    x, labels = _close_batch(seed)
    g = torch.Generator().manual_seed(seed + 300)
    ref = torch.rand(9, 2, generator=g, dtype=torch.float64)
    ref_labels = torch.arange(9) % 4
    for args in ((x, labels), (x, labels, ref, ref_labels)):
        got = {}
        for kind in TYPES:
            theirs = pml_miners.TripletMarginMiner(margin, kind, distance=lp)
            ours = TripletMarginMiner(margin, kind, backend=backend)
            got[kind] = set(as_list(ours(*args)))
            assert got[kind] == set(as_list(theirs(*args))), (kind, margin, len(args))
        valid = set(as_list(BatchAllMiner(margin, active_only=False, backend=backend)(*args)))
        assert got["hard"] <= got["all"] and got["semihard"] <= got["all"]
        assert got["all"] | got["easy"] == valid and not got["all"] & got["easy"]
        assert got["easy"] and got["all"], "the comparison should not be vacuous"
        if margin <= 0:
            assert got["hard"] == got["all"] and not got["semihard"]
        else:
            assert got["hard"] and got["semihard"] and got["hard"] | got["semihard"] == got["all"]


def test_pml_hard_region_with_a_negative_margin(backend: str) -> None:
    """The issue's example, margin -0.05: anchor 0's triplet ``(0, 1, 2)`` has
    ``t = 0.99 - 1 = -0.01 > -0.05`` (not in "all", so not hard), anchor 1's ``(1, 0, 2)``
    has ``t = 0.01 - 1 = -0.99``: "hard" is anchor 1 alone, as in the peer (with its default,
    normalising distance too)."""
    distances, _, pml_miners, _ = _pml()
    x, labels = torch.tensor([[0.0], [1.0], [0.99]]), torch.tensor([0, 0, 1])
    got = TripletMarginMiner(-0.05, "hard", backend=backend)(x, labels)
    assert as_list(got) == [(1, 0, 2)]
    assert as_list(TripletMarginMiner(-0.05, "all", backend=backend)(x, labels)) == [(1, 0, 2)]
    lp = distances.LpDistance(normalize_embeddings=False)
    for theirs in (
        pml_miners.TripletMarginMiner(-0.05, "hard"),
        pml_miners.TripletMarginMiner(-0.05, "hard", distance=lp),
    ):
        assert as_list(theirs(x, labels)) == [(1, 0, 2)]


def _value_and_grads(loss_fn, x: torch.Tensor, ref: torch.Tensor | None = None):
    leaves = [x.clone().requires_grad_()] + ([] if ref is None else [ref.clone().requires_grad_()])
    out = loss_fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves)


def _assert_same(got, want) -> None:
    """Same value and gradients, to the peer tolerances."""
    torch.testing.assert_close(got[0], want[0], **VALUE_TOL)
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, **GRAD_TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_pml_smooth_loss(seed: int, normalize: bool, backend: str) -> None:
    """``smooth=True`` is pytorch-metric-learning's ``TripletMarginLoss(smooth_loss=True)``:
    over every valid triplet (the fused batch-all loss and ``TripletMarginLoss``), with and
    without a reference set, on batch-hard and on given triplets; values and gradients."""
    distances, losses, pml_miners, _ = _pml()
    lp = distances.LpDistance(normalize_embeddings=normalize)
    x, labels = _batch(seed)
    ref, ref_labels = _refs(seed)
    margin = 0.1 if normalize else 0.5
    theirs = losses.TripletMarginLoss(margin, smooth_loss=True, distance=lp)
    kw = {"normalize": normalize, "backend": backend, "smooth": True}
    want = _value_and_grads(lambda e, f=theirs: f(e, labels), x)
    for ours in (
        lambda e: batch_all_triplet_loss(e, labels, margin, **kw),
        lambda e: TripletMarginLoss(margin, reduction="mean_nonzero", **kw)(e, labels),
    ):
        _assert_same(_value_and_grads(ours, x), want)
    want = _value_and_grads(lambda e, r: theirs(e, labels, None, r, ref_labels), x, ref)
    for ours in (
        lambda e, r: batch_all_triplet_loss(
            e, labels, margin, ref_embeddings=r, ref_labels=ref_labels, **kw
        ),
        lambda e, r: TripletMarginLoss(margin, reduction="mean_nonzero", **kw)(
            e, labels, None, r, ref_labels
        ),
    ):
        _assert_same(_value_and_grads(ours, x, ref), want)
    hard = pml_miners.BatchHardMiner(distance=lp)
    want = _value_and_grads(lambda e: theirs(e, labels, hard(e, labels)), x)
    got = _value_and_grads(lambda e: batch_hard_triplet_loss(e, labels, margin, **kw), x)
    _assert_same(got, want)
    semi = miners.semi_hard_triplets(x, labels, margin, normalize=normalize, backend=backend)
    want = _value_and_grads(lambda e: theirs(e, labels, tuple(semi)), x)
    _assert_same(
        _value_and_grads(lambda e: semi_hard_triplet_loss(e, labels, margin, **kw), x), want
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("smooth", [False, True], ids=["hinge", "smooth"])
def test_pml_swap(seed: int, smooth: bool, backend: str) -> None:
    """``swap=True`` is pytorch-metric-learning's: over every valid triplet and over mined
    triplets, hinge and smooth, values and gradients (no reference set: the peer's swap
    reads ``d(p, n)`` from the anchors' rows, right only in-batch)."""
    distances, losses, _, reducers = _pml()
    lp = distances.LpDistance(normalize_embeddings=False)
    x, labels = _batch(seed)
    for reducer, reduction in ((None, "mean_nonzero"), (reducers.MeanReducer(), "mean")):
        extra = {} if reducer is None else {"reducer": reducer}
        theirs = losses.TripletMarginLoss(0.5, swap=True, smooth_loss=smooth, distance=lp, **extra)
        ours = TripletMarginLoss(
            0.5, reduction=reduction, smooth=smooth, swap=True, backend=backend
        )
        _assert_same(
            _value_and_grads(lambda e, f=ours: f(e, labels), x),
            _value_and_grads(lambda e, f=theirs: f(e, labels), x),
        )
        mined = BatchHardMiner(backend=backend)(x, labels)
        _assert_same(
            _value_and_grads(lambda e, f=ours, t=mined: f(e, labels, t), x),
            _value_and_grads(lambda e, f=theirs, t=mined: f(e, labels, tuple(t)), x),
        )
        plain = TripletMarginLoss(0.5, reduction=reduction, smooth=smooth, backend=backend)
        assert not torch.isclose(ours(x, labels), plain(x, labels)), "swap should matter here"


def test_pml_swap_with_references_reads_the_anchors_rows() -> None:
    """The documented difference: with a reference set the peer's swap takes ``d(p, n)``
    from row ``p`` of the anchors-by-references matrix, i.e. ``d(x[p], ref[n])``, where
    tripletkit uses the two references, ``d(ref[p], ref[n])`` (tested against brute force
    in ``test_losses_triplet.py``)."""
    distances, losses, _, reducers = _pml()
    lp = distances.LpDistance(normalize_embeddings=False)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ref = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels, ref_labels = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 1, 2])
    theirs = losses.TripletMarginLoss(0.5, swap=True, distance=lp, reducer=reducers.MeanReducer())
    rows = [
        (a, p, n)
        for a in range(6)
        for p in range(6)
        for n in range(6)
        if ref_labels[p] == labels[a] and ref_labels[n] != labels[a]
    ]

    def brute(pn_rows: torch.Tensor) -> float:
        terms = [
            max(
                0.0,
                float(
                    torch.dist(x[a], ref[p])
                    - min(torch.dist(x[a], ref[n]), torch.dist(pn_rows[p], ref[n]))
                    + 0.5
                ),
            )
            for a, p, n in rows
        ]
        return sum(terms) / len(terms)

    want = float(theirs(x, labels, None, ref, ref_labels))
    assert want == pytest.approx(brute(x), rel=1e-12)
    ours = TripletMarginLoss(0.5, swap=True)(x, labels, None, ref, ref_labels)
    assert float(ours) == pytest.approx(brute(ref), rel=1e-12)
    assert float(ours) != pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_pml_triplets_per_anchor_single_choice(k: int, backend: str) -> None:
    """Where each anchor has one positive and one negative the draws are forced: the peer's
    ``triplets_per_anchor=k`` and ours give the same triplets ``k`` times, the same loss."""
    distances, losses, _, reducers = _pml()
    lp = distances.LpDistance(normalize_embeddings=False)
    x = torch.tensor([[0.0, 0.1], [0.7, -0.2], [0.4, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])  # anchors 0 and 1: one positive, one negative each
    for reducer, reduction in ((None, "mean_nonzero"), (reducers.MeanReducer(), "mean")):
        extra = {} if reducer is None else {"reducer": reducer}
        for smooth in (False, True):
            theirs = losses.TripletMarginLoss(
                0.5, smooth_loss=smooth, triplets_per_anchor=k, distance=lp, **extra
            )
            ours = TripletMarginLoss(
                0.5, reduction=reduction, smooth=smooth, triplets_per_anchor=k, backend=backend
            )
            _assert_same(
                _value_and_grads(lambda e, f=ours: f(e, labels), x),
                _value_and_grads(lambda e, f=theirs: f(e, labels), x),
            )


def _per_anchor_expectation(x, labels, margin: float):
    """Exact mean and variance of the ``triplets_per_anchor`` estimator's per-anchor terms:
    for each anchor with a positive and a negative, the mean and variance of its hinge over
    its (uniform positive, uniform negative) pairs, by brute force."""
    pb = problem(x, labels)
    means, variances = [], []
    for a in range(pb.n):
        terms = [
            max(0.0, pb.d[a][p] - pb.d[a][n] + margin)
            for p in pb.positives(a)
            for n in pb.negatives(a)
        ]
        if terms:
            mu = sum(terms) / len(terms)
            means.append(mu)
            variances.append(sum((t - mu) ** 2 for t in terms) / len(terms))
    return means, variances


def test_pml_triplets_per_anchor_statistics(backend: str) -> None:
    """With several positives and negatives per anchor the draws are random (the peer's
    random stream cannot be matched), so what is compared is what they estimate: the same
    anchors, ``k`` triplets each, and a ``"mean"`` loss whose expectation is the average
    over anchors of each anchor's mean hinge. Both estimates lie within 5 standard errors
    of that exact value (fixed seeds: deterministic)."""
    distances, losses, _, reducers = _pml()
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    x, labels = _batch(0)
    k, margin = 4000, 1.0
    means, variances = _per_anchor_expectation(x, labels, margin)
    expected = sum(means) / len(means)
    stderr = math.sqrt(sum(variances) / k) / len(means)
    assert stderr > 0
    torch.manual_seed(0)
    drawn = lmu.convert_to_triplets(None, labels, t_per_anchor=k)
    ours = TripletMarginLoss(margin, reduction="none", triplets_per_anchor=k, backend=backend)
    got_terms = ours(x, labels)
    assert got_terms.shape[0] == drawn[0].shape[0] == k * len(means)
    assert sorted(set(drawn[0].tolist())) == [a for a in range(x.shape[0]) if labels[a] < 4]
    theirs = losses.TripletMarginLoss(
        margin,
        triplets_per_anchor=k,
        distance=distances.LpDistance(normalize_embeddings=False),
        reducer=reducers.MeanReducer(),
    )
    torch.manual_seed(1)
    for estimate in (float(got_terms.mean()), float(theirs(x, labels))):
        assert abs(estimate - expected) < 5 * stderr, (estimate, expected, stderr)


def _otl():
    pytest.importorskip("online_triplet_loss")
    from online_triplet_loss import losses

    return losses


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("squared", [False, True])
def test_otl_batch_all(seed: int, squared: bool, backend: str) -> None:
    """online-triplet-loss averages over the triplets with a positive loss: mean_nonzero."""
    otl = _otl()
    x, labels = _batch(seed)
    metric = "sqeuclidean" if squared else "euclidean"
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    want, _ = otl.batch_all_triplet_loss(labels, x1, 0.5, squared=squared)
    got = batch_all_triplet_loss(x2, labels, 0.5, metric, reduction="mean_nonzero", backend=backend)
    torch.testing.assert_close(got, want, **VALUE_TOL)
    (g1,) = torch.autograd.grad(want, x1)
    (g2,) = torch.autograd.grad(got, x2)
    torch.testing.assert_close(g2, g1, **GRAD_TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("squared", [False, True])
def test_otl_batch_hard(seed: int, squared: bool, backend: str) -> None:
    """Equal when every anchor has a positive and a negative (no singleton class)."""
    otl = _otl()
    x, labels = _batch(seed, singleton=False)
    metric = "sqeuclidean" if squared else "euclidean"
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    want = otl.batch_hard_triplet_loss(labels, x1, 0.5, squared=squared)
    got = batch_hard_triplet_loss(x2, labels, 0.5, metric, backend=backend)
    torch.testing.assert_close(got, want, **VALUE_TOL)
    (g1,) = torch.autograd.grad(want, x1)
    (g2,) = torch.autograd.grad(got, x2)
    torch.testing.assert_close(g2, g1, **GRAD_TOL)


# --------------------------------------------------------------- similarity losses (issue 12)
#
# pytorch-metric-learning's MultiSimilarityLoss, CircleLoss and SupConLoss use the cosine
# similarity by default, like tripletkit's. Known, intended differences (not exercised here):
# PML's SupConLoss returns 0 when the batch has no positive pair or no negative pair at all
# (a one-class batch), where tripletkit keeps the paper's loss; PML's AvgNonZeroReducer
# (CircleLoss, SupConLoss) leaves out anchors whose term is exactly 0, which tripletkit's
# default "mean" counts ("mean_nonzero" is PML's rule); and any PML pair loss returns 0 when
# it is given at most one positive and at most one negative pair.

SIMILARITY_LOSSES = ("multi_similarity", "circle", "supcon")
SIMILARITY_HYPER = {
    "multi_similarity": [{}, {"alpha": 1.0, "beta": 20.0, "base": 0.3}],
    "circle": [{}, {"m": 0.25, "gamma": 256.0}],
    "supcon": [{}, {"temperature": 0.07}],
}


def _similarity_pair(kind: str, hyper: dict):
    _, losses, _, _ = _pml()
    from tripletkit import losses as ours

    pml = {
        "multi_similarity": losses.MultiSimilarityLoss,
        "circle": losses.CircleLoss,
        "supcon": losses.SupConLoss,
    }[kind]
    tk = {
        "multi_similarity": ours.MultiSimilarityLoss,
        "circle": ours.CircleLoss,
        "supcon": ours.SupConLoss,
    }[kind]
    return pml(**hyper), tk(**hyper)


def _similarity_inputs(seed: int, given: str):
    """``(x, labels, indices, refs)`` for one comparison: every pair of the batch, a reference
    set, a MultiSimilarityMiner's pairs, or a subset of the valid triplets."""
    from reference import problem

    from tripletkit.miners import MultiSimilarityMiner

    x, labels = _batch(seed)
    if given == "all":
        return x, labels, None, None
    if given == "refs":
        return x, labels, None, _refs(seed)
    if given == "ms_pairs":
        pairs = MultiSimilarityMiner(0.1)(x, labels)
        assert pairs.num_positive > 1 and pairs.num_negative > 1
        return x, labels, pairs, None
    valid = problem(x, labels).valid()[seed::7]
    triplets = tuple(torch.tensor(v) for v in zip(*valid, strict=True))
    return x, labels, triplets, None


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", SIMILARITY_LOSSES)
@pytest.mark.parametrize("hyper_index", [0, 1], ids=["default", "other"])
@pytest.mark.parametrize("given", ["all", "refs", "ms_pairs", "triplets"])
def test_pml_similarity_losses(seed: int, kind: str, hyper_index: int, given: str) -> None:
    """Same value and gradients as pytorch-metric-learning with its default reducers (MS:
    mean over all anchors; circle and SupCon: mean over non-zero anchor terms), to 1e-6."""
    theirs, ours = _similarity_pair(kind, SIMILARITY_HYPER[kind][hyper_index])
    x, labels, indices, refs = _similarity_inputs(seed, given)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    if refs is None:
        want = theirs(x1, labels, None if indices is None else tuple(indices))
        got = ours(x2, labels, indices)
        leaves1, leaves2 = [x1], [x2]
    else:
        r1, r2 = refs[0].clone().requires_grad_(), refs[0].clone().requires_grad_()
        want = theirs(x1, labels, None, r1, refs[1])
        got = ours(x2, labels, None, r2, refs[1])
        leaves1, leaves2 = [x1, r1], [x2, r2]
    assert want.item() > 0, "the comparison should not be vacuous"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    for g1, g2 in zip(
        torch.autograd.grad(want, leaves1), torch.autograd.grad(got, leaves2), strict=True
    ):
        torch.testing.assert_close(g2, g1, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["circle", "supcon"])
def test_pml_avg_non_zero_is_mean_nonzero(kind: str) -> None:
    """With an anchor whose term is exactly 0 (SupCon: one positive, no negative, via mined
    pairs), PML's AvgNonZeroReducer equals reduction="mean_nonzero"."""
    theirs, _ = _similarity_pair(kind, {})
    from tripletkit import losses as ours

    x, labels = _batch(0)
    # anchor 0: pairs (0, 4) positive only; anchor 1: a positive and a negative
    pairs = (torch.tensor([0, 1]), torch.tensor([4, 5]), torch.tensor([1]), torch.tensor([2]))
    fn = ours.circle_loss if kind == "circle" else ours.supcon_loss
    want = theirs(x, labels, pairs)
    torch.testing.assert_close(fn(x, labels, pairs, reduction="mean_nonzero"), want)
    if kind == "supcon":
        assert fn(x, labels, pairs, reduction="none").tolist()[0] == 0.0
        torch.testing.assert_close(fn(x, labels, pairs), want / 2)  # "mean" counts anchor 0


# ----------------------------------------------------------- sentence-transformers (issue 10)
#
# sentence-transformers' BatchAllTripletLoss, BatchHardTripletLoss, BatchHardSoftMarginTripletLoss
# and BatchSemiHardTripletLoss are modules built around a SentenceTransformer model, but each
# computes on raw embeddings in an instance method (``batch_all_triplet_loss(labels, x)``,
# ``batch_hard_triplet_loss``, ``batch_hard_triplet_soft_margin_loss``,
# ``batch_semi_hard_triplet_loss``): built with ``model=None``, no model is downloaded.
#
# Where the semantics coincide (same value and gradients in float64, tested below):
# - distances: their default ``euclidean_distance`` (from the Gram matrix, a zero distance given
#   a zero gradient) is metric="euclidean", ``euclidean_distance(squared=True)`` is
#   "sqeuclidean" and ``cosine_distance`` (1 - cosine similarity) is "cosine". Their default
#   margin is 5; a margin is always passed here.
# - batch-all (online-triplet-loss's code): the hinge summed over every valid triplet, divided
#   by the number of triplets with a loss > 1e-16 (plus 1e-16): reduction="mean_nonzero" (the
#   1e-16 threshold and offset differ only for terms in (0, 1e-16]). Also with singleton classes
#   and in a one-class batch (0 for both).
# - semi-hard: TensorFlow-Addons' selection (per positive pair the nearest negative farther than
#   the positive, else the farthest negative), averaged over the positive pairs: tripletkit's
#   semi_hard_triplet_loss whenever every anchor that has a positive also has a negative (any
#   batch with two classes or more; singleton classes have no positive pair in either).
# - batch-hard, hinge and soft margin (BatchHardSoftMarginTripletLoss is softplus(d_ap - d_an),
#   tripletkit's soft_margin=True): equal when every anchor has a positive and a negative.
#
# Where they differ (tested below, as the formulas they follow):
# - batch-hard, an anchor without a positive (a singleton class): its hardest-positive distance
#   is 0 and its term (max(0, margin - d_an) or softplus(-d_an), d_an its nearest negative)
#   counts in their mean over *all* anchors; tripletkit leaves the anchor out.
# - a one-class batch (no negative at all): their batch-hard takes the row's largest distance
#   as the negative (the hinge gives the margin, the soft margin log 2, for every anchor) and
#   their semi-hard takes the row's minimum, the anchor's own 0 (each pair gives d_ap + margin);
#   tripletkit has no valid triplet there and returns 0.

ST_KINDS = ("batch_all", "batch_hard", "batch_hard_soft", "semi_hard")
ST_METRICS = ("euclidean", "sqeuclidean", "cosine")
#: Margin of the comparisons per metric (cosine distances lie in [0, 2]).
ST_MARGIN = {"euclidean": 0.5, "sqeuclidean": 2.0, "cosine": 0.2}


def _st():
    """sentence-transformers' losses module (version 6 path, else the older one)."""
    pytest.importorskip("sentence_transformers")
    import importlib
    import warnings

    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.losses")
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("sentence_transformers.losses")


def _st_loss(kind: str, metric: str, margin: float):
    """sentence-transformers' loss ``f(labels, x)`` of ``kind`` with ``metric`` (no model)."""
    st = _st()
    dist = st.BatchHardTripletLossDistanceFunction
    distance = {
        "euclidean": dist.euclidean_distance,
        "sqeuclidean": lambda e: dist.euclidean_distance(e, squared=True),
        "cosine": dist.cosine_distance,
    }[metric]
    if kind == "batch_all":
        return st.BatchAllTripletLoss(None, distance, margin).batch_all_triplet_loss
    if kind == "batch_hard":
        return st.BatchHardTripletLoss(None, distance, margin).batch_hard_triplet_loss
    if kind == "batch_hard_soft":
        return st.BatchHardSoftMarginTripletLoss(None, distance).batch_hard_triplet_soft_margin_loss
    return st.BatchSemiHardTripletLoss(None, distance, margin).batch_semi_hard_triplet_loss


def _tk_loss(kind: str, metric: str, margin: float, backend: str):
    """tripletkit's loss ``f(x, labels)`` with the semantics of sentence-transformers' ``kind``."""
    if kind == "batch_all":
        return lambda x, y: batch_all_triplet_loss(
            x, y, margin, metric, reduction="mean_nonzero", backend=backend
        )
    if kind == "semi_hard":
        return lambda x, y: semi_hard_triplet_loss(x, y, margin, metric, backend=backend)
    soft = kind == "batch_hard_soft"
    return lambda x, y: batch_hard_triplet_loss(
        x, y, margin, metric, soft_margin=soft, backend=backend
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("metric", ST_METRICS)
@pytest.mark.parametrize("kind", ST_KINDS)
def test_st_triplet_losses(seed: int, metric: str, kind: str, backend: str) -> None:
    """Same value and gradients as sentence-transformers where the semantics coincide: batch-all
    and semi-hard with a singleton class among the labels, batch-hard without one."""
    margin = ST_MARGIN[metric]
    theirs, ours = _st_loss(kind, metric, margin), _tk_loss(kind, metric, margin, backend)
    x, labels = _batch(seed, singleton=kind in ("batch_all", "semi_hard"))
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    want = theirs(labels, x1)
    got = ours(x2, labels)
    assert want.item() > 0, "the comparison should not be vacuous"
    torch.testing.assert_close(got, want, **VALUE_TOL)
    (g1,) = torch.autograd.grad(want, x1)
    (g2,) = torch.autograd.grad(got, x2)
    torch.testing.assert_close(g2, g1, **GRAD_TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["batch_hard", "batch_hard_soft"])
def test_st_batch_hard_counts_anchors_without_a_positive(seed: int, kind: str) -> None:
    """Their batch-hard averages over every anchor; an anchor without a positive has d_ap = 0."""
    margin = 0.5
    x, labels = _batch(seed)  # the last sample is a class of its own
    n = x.shape[0]
    want = _st_loss(kind, "euclidean", margin)(labels, x)
    soft = kind == "batch_hard_soft"
    ours_sum = batch_hard_triplet_loss(x, labels, margin, soft_margin=soft, reduction="sum")
    assert batch_hard_triplet_loss(x, labels, reduction="none").shape == (n - 1,)
    d_an = torch.cdist(x[-1:], x[:-1]).min()  # every other sample is a negative of the singleton
    lonely = torch.nn.functional.softplus(-d_an) if soft else torch.relu(margin - d_an)
    torch.testing.assert_close((ours_sum + lonely) / n, want, **VALUE_TOL)
    assert not torch.isclose(ours_sum / (n - 1), want)


@pytest.mark.parametrize("kind", ST_KINDS)
def test_st_one_class_batch(kind: str) -> None:
    """No negative at all: tripletkit returns 0; sentence-transformers' batch-hard gives the
    margin (hinge) or log 2 (soft margin), its semi-hard mean(d_ap) + margin, its batch-all 0."""
    margin = 0.5
    x, _ = _batch(0)
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    want = _st_loss(kind, "euclidean", margin)(labels, x)
    got = _tk_loss(kind, "euclidean", margin, "torch")(x, labels)
    assert got.item() == 0.0
    n = x.shape[0]
    expected = {
        "batch_all": 0.0,
        "batch_hard": margin,
        "batch_hard_soft": math.log(2.0),
        "semi_hard": (torch.cdist(x, x).sum() / (n * (n - 1))).item() + margin,
    }[kind]
    torch.testing.assert_close(want.item(), expected, rtol=1e-9, atol=1e-12)
