"""``tripletkit.stats``: ``triplet_stats`` against counting every valid triplet."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS, BAD_INPUTS, CASE_NAMES, CASES, DEGENERATE, MARGIN, METRICS, X, Y
from reference import counts, problem, region_triplets

from tripletkit.stats import triplet_stats
from tripletkit.types import TripletStats

pytestmark = pytest.mark.usefixtures("one_thread")


def _expected(name: str, margin: float, metric: str, normalize: bool = False) -> TripletStats:
    c = CASES[name]
    pb = problem(
        c.x,
        c.labels,
        c.ref,
        c.ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=c.anchor_offset,
    )
    return TripletStats(*counts(pb, margin))


def _stats(name: str, margin: float, metric: str, backend: str, **kw: object) -> TripletStats:
    c = CASES[name]
    return triplet_stats(c.x, c.labels, margin, metric, backend=backend, **c.ref_kwargs(), **kw)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("margin", [0.0, MARGIN, 1.0])
def test_counts_match_brute_force(name: str, margin: float, metric: str, backend: str) -> None:
    got = _stats(name, margin, metric, backend)
    assert isinstance(got, TripletStats)
    assert all(isinstance(v, int) for v in got)
    expected = _expected(name, margin, metric)
    assert got == expected
    assert got.valid == got.easy + got.semi_hard + got.hard


@pytest.mark.parametrize("name", ["generic", "duplicates", "refs", "refs_offset"])
def test_normalize(name: str, metric: str, backend: str) -> None:
    got = _stats(name, MARGIN, metric, backend, normalize=True)
    assert got == _expected(name, MARGIN, metric, normalize=True)


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("metric_", ["euclidean", "sqeuclidean"])
def test_boundaries_on_exact_distances(margin: float, metric_: str, backend: str) -> None:
    """On the integer grid ``d_an == d_ap`` (hard) and ``d_an == d_ap + m`` (semi-hard)
    both occur."""
    c = CASES["grid"]
    pb = problem(c.x, c.labels, metric=metric_)
    assert any(pb.d[a][n] == pb.d[a][p] for a, p, n in pb.valid())
    assert any(pb.d[a][n] == pb.d[a][p] + margin for a, p, n in pb.valid())
    assert _stats("grid", margin, metric_, backend) == TripletStats(*counts(pb, margin))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_counts_are_region_sizes(name: str, metric: str, backend: str) -> None:
    """easy / semi-hard / hard are TripletMarginMiner's easy / semihard / hard regions."""
    c = CASES[name]
    pb = problem(c.x, c.labels, c.ref, c.ref_labels, metric=metric, anchor_offset=c.anchor_offset)
    got = _stats(name, MARGIN, metric, backend)
    assert got.valid == len(pb.valid())
    assert got.easy == len(region_triplets(pb, MARGIN, "easy"))
    assert got.semi_hard == len(region_triplets(pb, MARGIN, "semihard"))
    assert got.hard == len(region_triplets(pb, MARGIN, "hard"))


@pytest.mark.parametrize("name", DEGENERATE)
def test_no_valid_triplet(name: str, backend: str) -> None:
    got = _stats(name, MARGIN, "euclidean", backend)
    assert got == TripletStats(0, 0, 0, 0)
    assert got.fractions == {"easy": 0.0, "semi_hard": 0.0, "hard": 0.0}


def test_worked_example() -> None:
    x = torch.tensor([[0.0], [0.1], [0.25], [2.0]])
    # (a,p,n): d_ap, d_an -> (0,1,2): .1, .25 semi  (0,1,3): .1, 2 easy
    # (1,0,2): .1, .15 semi  (1,0,3): .1, 1.9 easy  (2,3,0): 1.75, .25 hard
    # (2,3,1): 1.75, .15 hard  (3,2,0): 1.75, 2 easy (2 > 1.95)  (3,2,1): 1.75, 1.9 semi
    got = triplet_stats(x, torch.tensor([0, 0, 1, 1]), margin=0.2, backend="torch")
    assert got == TripletStats(valid=8, easy=3, semi_hard=3, hard=2)
    assert got.fractions == {"easy": 0.375, "semi_hard": 0.375, "hard": 0.25}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_lower_precision(dtype: torch.dtype, backend: str) -> None:
    c = CASES["generic"]
    x = c.x.to(dtype)
    got = triplet_stats(x, c.labels, MARGIN, backend=backend)
    pb = problem(x.float(), c.labels)
    assert got == TripletStats(*counts(pb, MARGIN))


def test_auto_backend() -> None:
    c = CASES["duplicates"]
    assert triplet_stats(c.x, c.labels, MARGIN) == _expected("duplicates", MARGIN, "euclidean")


def test_no_grad_needed() -> None:
    x = CASES["generic"].x.clone().requires_grad_()
    triplet_stats(x, CASES["generic"].labels)
    assert x.grad is None


@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input(kw: dict, exc: type, words: list[str]) -> None:
    kw = dict(kw)
    with pytest.raises(exc) as info:
        triplet_stats(kw.pop("embeddings"), kw.pop("labels"), **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -0.1])
def test_bad_margin(margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        triplet_stats(X, Y, margin)


def test_unknown_choices_are_listed() -> None:
    with pytest.raises(ValueError) as info:
        triplet_stats(X, Y, metric="l2")
    for w in ("'l2'", *map(repr, METRICS)):
        assert w in str(info.value)
    with pytest.raises(ValueError) as info:
        triplet_stats(X, Y, backend="cpu")
    for w in ("'cpu'", "'auto'", *map(repr, BACKENDS)):
        assert w in str(info.value)
