"""``tripletkit.miners.sampling``: distance-weighted sampling and uniformly random triplets
(functions and modules), against the distributions an explicit loop computes.

The samplers are compared with those distributions by a chi-square test and per-category
bounds at the sample size drawn (seeds are fixed, so the tests are deterministic; the
thresholds are those of a 1e-6 false-alarm rate).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import MODES, SamplingProblem, dw_probs_loop, random_problem, roles

import tripletkit.miners.sampling as sampling
from tripletkit.distances import pairwise_distance
from tripletkit.miners import (
    DistanceWeightedMiner,
    RandomTripletMiner,
    distance_weighted_triplets,
    make_generator,
    random_triplets,
)
from tripletkit.miners.sampling import _distance_weights, check_cutoffs
from tripletkit.types import Triplets

#: Upper 1e-6 quantile of the standard normal: the false-alarm rate of every statistical check.
Z_1E6 = 4.753
#: A frequency may stray this many standard errors from its probability.
STANDARD_ERRORS = 5
#: The smallest expected count of a category for the chi-square approximation to hold.
MIN_EXPECTED = 5
#: Distance-weighted sampling's default cutoffs (``cutoff``, ``nonzero_loss_cutoff``).
CUTOFF, NONZERO_LOSS_CUTOFF = 0.5, 1.4
#: How many seeds the row-order tests run per mode.
SEEDS = 4


def assert_valid_triplets(t: Triplets, p: SamplingProblem) -> None:
    pos, neg = roles(p)
    assert t.anchor.dtype == t.positive.dtype == t.negative.dtype == torch.int64
    for a, pp, n in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True):
        assert pp in pos[a] and n in neg[a]


def chi2_threshold(df: int, z: float = Z_1E6) -> float:
    """Upper 1e-6 quantile of chi-square(df), Wilson-Hilferty approximation."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def assert_distribution(counts: np.ndarray, probs: np.ndarray) -> None:
    """``counts`` are draws from ``probs``: zero-probability categories never drawn, chi-square
    below its 1e-6 quantile, and every frequency within :data:`STANDARD_ERRORS` standard
    errors."""
    total = counts.sum()
    assert total > 0
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a category of probability 0"
    expected = probs[support] * total
    assert expected.min() >= MIN_EXPECTED, "test layout too skewed for a chi-square test"
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    if df > 0:
        assert stat < chi2_threshold(df), (stat, counts, probs * total)
    freq = counts / total
    se = np.sqrt(probs * (1 - probs) / total)
    assert np.all(np.abs(freq - probs) <= STANDARD_ERRORS * se + 1e-12), (freq, probs)


def sphere_layout(dim: int, k: int, distances: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` copies of the unit vector e0 (label 0, so every copy is an anchor with ``k - 1``
    positives and the same negatives) and one unit negative per entry of ``distances`` at that
    Euclidean distance from e0, each with its own label (so negatives never anchor)."""
    rows = [torch.eye(dim, dtype=torch.float64)[0].expand(k, dim)]
    for d in distances:
        c = 1 - d * d / 2
        v = torch.zeros(dim, dtype=torch.float64)
        v[0], v[1] = c, math.sqrt(1 - c * c)
        rows.append(v[None])
    labels = torch.tensor([0] * k + list(range(1, len(distances) + 1)))
    return torch.cat(rows), labels


def negative_counts(t: Triplets, k: int, num_neg: int) -> np.ndarray:
    assert bool((t.anchor < k).all())
    return np.bincount((t.negative - k).numpy(), minlength=num_neg)


def _unit(n: int, d: int = 3) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=make_generator(n)), dim=1)


# --------------------------------------------------------------------------------------------
# Distance-weighted sampling


@pytest.mark.parametrize("dim", [2, 3, 4, 16, 128, 512])
@pytest.mark.parametrize("mode", MODES)
def test_distance_weights_match_the_formula(dim: int, mode: str) -> None:
    p = random_problem(dim, 12, dim, 3, mode, unit=True)
    ref, _ = p.refs
    _, neg = roles(p)
    for cutoff, nzlc in [(CUTOFF, NONZERO_LOSS_CUTOFF), (0.3, 1.9), (1.2, 1.3)]:
        dist = pairwise_distance(p.emb, ref)
        neg_mask = torch.zeros_like(dist, dtype=torch.bool)
        for a, js in enumerate(neg):
            neg_mask[a, js] = True
        probs = _distance_weights(dist, neg_mask, dim, cutoff, nzlc)
        assert torch.isfinite(probs).all()
        expected = dw_probs_loop(p.emb, ref, neg, cutoff, nzlc)
        for a, row in enumerate(expected):
            want = torch.zeros(dist.shape[1], dtype=torch.float64)
            for j, v in row.items():
                want[j] = v
            torch.testing.assert_close(probs[a], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("dim", "distances"),
    [
        # 0.3 and 0.45 are clipped to the cutoff 0.5 (same weight); 1.45 is past the
        # nonzero-loss cutoff (never drawn).
        (4, [0.3, 0.45, 0.5, 0.8, 1.0, 1.2, 1.39, 1.45]),
        # At n = 128 the weights vary by e^90 over [0.5, 1.4]; pick distances whose weights
        # are comparable, to test the log-space computation at high dimension statistically.
        (128, [1.30, 1.34, 1.37, 1.39, 1.45, 1.8]),
    ],
)
def test_distance_weighted_frequencies_follow_the_weights(dim: int, distances: list[float]) -> None:
    k = 120  # 120 * 119 = 14280 draws per call
    x, labels = sphere_layout(dim, k, distances)
    miner = DistanceWeightedMiner(seed=3)
    counts = np.zeros(len(distances), dtype=np.int64)
    for _ in range(2):
        t = miner(x, labels)
        assert t.num_triplets == k * (k - 1)
        counts += negative_counts(t, k, len(distances))
    neg = [list(range(k, k + len(distances)))]
    probs = dw_probs_loop(x[:1], x, neg, CUTOFF, NONZERO_LOSS_CUTOFF)[0]
    p = np.array([probs[k + i] for i in range(len(distances))])
    assert p[-1] == 0.0
    if dim == 4:
        assert p[0] == pytest.approx(p[1]) and p[1] == pytest.approx(p[2])  # the cutoff
    assert_distribution(counts, p)


def test_nonzero_loss_cutoff_bounds_what_is_drawn() -> None:
    k, distances = 40, [0.8, 1.2, 1.45, 1.6]
    x, labels = sphere_layout(8, k, distances)
    g = make_generator(0)
    drawn = negative_counts(distance_weighted_triplets(x, labels, generator=g), k, 4)
    assert drawn[2] == drawn[3] == 0 and drawn[:2].sum() == k * (k - 1)
    wide = distance_weighted_triplets(x, labels, nonzero_loss_cutoff=1.7, generator=g)
    assert negative_counts(wide, k, 4)[2:].sum() > 0


def test_fallback_is_uniform_over_every_negative() -> None:
    # Every negative at d >= nonzero_loss_cutoff: all weights 0, so a uniform draw.
    k, distances = 100, [1.5, 1.6, 1.7, 1.8, 1.9]
    x, labels = sphere_layout(6, k, distances)
    counts = negative_counts(DistanceWeightedMiner(seed=5)(x, labels), k, 5)
    assert_distribution(counts, np.full(5, 0.2))


def test_fallback_is_per_anchor() -> None:
    # Anchor 0 has a near and a far negative; anchor 2's only negatives are far.
    x = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0], [-1.0, 0.05], [0.6, 0.8]]), dim=1
    )
    labels = torch.tensor([0, 0, 1, 1, 2])
    t = distance_weighted_triplets(x, labels, generator=make_generator(0))
    keys = zip(t.anchor.tolist(), t.positive.tolist(), strict=True)
    rows = dict(zip(keys, t.negative.tolist(), strict=True))
    assert set(rows) == {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert rows[(0, 1)] == rows[(1, 0)] == 4  # the only negative closer than 1.4
    assert rows[(2, 3)] in (0, 1, 4) and rows[(3, 2)] in (0, 1, 4)


def test_distance_weighted_rows_are_the_positive_pairs() -> None:
    for mode in MODES:
        for seed in range(SEEDS):
            p = random_problem(seed, 14, 5, 4, mode, unit=True)
            t = distance_weighted_triplets(
                p.emb, p.labels, generator=make_generator(seed), **p.kwargs
            )
            assert_valid_triplets(t, p)
            pos, neg = roles(p)
            want = [(a, j) for a in range(len(pos)) if neg[a] for j in pos[a]]
            assert list(zip(t.anchor.tolist(), t.positive.tolist(), strict=True)) == want


def test_distance_weighted_unit_norm_validation() -> None:
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"unit-norm embeddings, but row \d"):
        distance_weighted_triplets(x, labels)
    unit = torch.nn.functional.normalize(x, dim=1)
    distance_weighted_triplets(unit, labels)  # fine
    distance_weighted_triplets(x, labels, normalize=True)  # fine
    distance_weighted_triplets(unit * (1 + 5e-4), labels)  # within tolerance
    distance_weighted_triplets(unit.half(), labels)  # half precision rounding is tolerated
    with pytest.raises(ValueError, match="unit-norm ref_embeddings"):
        distance_weighted_triplets(unit, labels, ref_embeddings=x, ref_labels=labels)
    distance_weighted_triplets(x, labels, ref_embeddings=x, ref_labels=labels, normalize=True)
    with pytest.raises(ValueError, match="normalize=True"):
        DistanceWeightedMiner()(x * 2, labels)


def test_distance_weighted_reproducibility() -> None:
    p = random_problem(0, 30, 16, 3, unit=True)
    a, b = DistanceWeightedMiner(seed=7), DistanceWeightedMiner(seed=7)
    first = [a(p.emb, p.labels) for _ in range(3)]
    second = [b(p.emb, p.labels) for _ in range(3)]
    for x, y in zip(first, second, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))
    assert not torch.equal(first[0].negative, first[1].negative)  # successive calls differ
    a.manual_seed(7)
    assert torch.equal(a(p.emb, p.labels).negative, first[0].negative)
    again = distance_weighted_triplets(p.emb, p.labels, generator=make_generator(7))
    assert torch.equal(again.negative, first[0].negative)


def test_a_draw_at_the_top_of_the_cdf_lands_on_a_positive_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # u * total rounding up to the total itself (simulated with u = 1): the last column of
    # positive weight is taken, never one past the end or one of weight 0.
    monkeypatch.setattr(sampling, "_uniform", lambda count, g, device: torch.ones(count).double())
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.5, 0.0, 0.5]])
    pos = torch.tensor([[True, False, False], [False, True, True], [True, True, True]])
    t = sampling._draw_weighted(w, pos, make_generator(0))
    assert t.negative.tolist() == [1, 1, 1, 2, 2, 2]


def test_miner_state_dict_carries_the_random_stream() -> None:
    p = random_problem(5, 20, 8, 3, unit=True)
    for make in (lambda: DistanceWeightedMiner(seed=4), lambda: RandomTripletMiner(seed=4)):
        miner = make()
        miner(p.emb, p.labels)
        state = miner.state_dict()
        expected = miner(p.emb, p.labels)
        resumed = make()
        resumed.load_state_dict(state)
        assert torch.equal(resumed(p.emb, p.labels).negative, expected.negative)


def test_miners_never_touch_the_global_rng() -> None:
    """The modules draw from their own generator (seeded with 0 by default, or from OS
    entropy with ``seed=None``); the functions given a generator draw from it."""
    p = random_problem(1, 20, 8, 3, unit=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    distance_weighted_triplets(p.emb, p.labels, generator=make_generator(1))
    DistanceWeightedMiner()(p.emb, p.labels)
    DistanceWeightedMiner(seed=None)(p.emb, p.labels)
    random_triplets(p.emb, p.labels, generator=make_generator(1))
    random_triplets(p.emb, p.labels, num_triplets=50, generator=make_generator(1))
    RandomTripletMiner()(p.emb, p.labels)
    RandomTripletMiner(50, seed=None)(p.emb, p.labels)
    assert torch.equal(torch.get_rng_state(), state)


def test_default_seed_is_zero_and_none_is_entropy() -> None:
    """``seed=0`` by default: two default miners draw the same; ``seed=None`` asks the OS for
    entropy, so unseeded miners are not all the same."""
    p = random_problem(2, 20, 8, 3, unit=True)
    for cls in (DistanceWeightedMiner, RandomTripletMiner):
        assert cls().seed == 0
        assert torch.equal(cls()(p.emb, p.labels).negative, cls(seed=0)(p.emb, p.labels).negative)
        draws = {tuple(cls(seed=None)(p.emb, p.labels).negative.tolist()) for _ in range(5)}
        assert len(draws) > 1, cls.__name__


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: distance_weighted_triplets(p.emb, p.labels),
        lambda p: random_triplets(p.emb, p.labels),
        lambda p: random_triplets(p.emb, p.labels, num_triplets=50),
    ],
    ids=["distance_weighted", "random", "random_fixed"],
)
def test_functions_without_a_generator_draw_from_torch_default_generator(draw) -> None:
    """``generator=None``: torch's default generator of the device, seeded by
    ``torch.manual_seed`` like every torch random function (and advanced by the draw)."""
    p = random_problem(3, 20, 8, 3, unit=True)
    torch.manual_seed(11)
    first = draw(p)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    again = draw(p)
    assert not torch.equal(torch.get_rng_state(), state)  # the default generator was used
    assert all(torch.equal(u, v) for u, v in zip(first, again, strict=True))
    # Successive calls draw on: not all the same.
    draws = {tuple(draw(p).negative.tolist()) for _ in range(5)}
    assert len(draws) > 1


def test_distance_weighted_float32_and_high_dimension() -> None:
    x = torch.nn.functional.normalize(torch.randn(64, 1024, generator=make_generator(0)), dim=1)
    labels = torch.arange(64) % 8
    t = DistanceWeightedMiner(seed=0)(x, labels)
    assert t.num_triplets == 64 * 7
    assert_valid_triplets(t, SamplingProblem(x, labels, None, None, None))


# --------------------------------------------------------------------------------------------
# Uniform sampling


def test_random_per_pair_rows_are_the_positive_pairs() -> None:
    for mode in MODES:
        for seed in range(SEEDS):
            p = random_problem(seed, 13, 3, 4, mode)
            t = random_triplets(p.emb, p.labels, generator=make_generator(seed), **p.kwargs)
            assert_valid_triplets(t, p)
            pos, neg = roles(p)
            want = [(a, j) for a in range(len(pos)) if neg[a] for j in pos[a]]
            assert list(zip(t.anchor.tolist(), t.positive.tolist(), strict=True)) == want


def test_random_per_pair_is_uniform_over_the_negatives() -> None:
    k, num_neg = 100, 7
    x, labels = sphere_layout(3, k, [1.0] * num_neg)
    counts = negative_counts(RandomTripletMiner(seed=0)(x, labels), k, num_neg)
    assert_distribution(counts, np.full(num_neg, 1 / num_neg))


@pytest.mark.parametrize("mode", ["self", "offset"])
def test_random_fixed_count_is_uniform_over_valid_triplets(mode: str) -> None:
    p = random_problem(11, 7, 2, 3, mode)
    pos, neg = roles(p)
    valid = [(a, q, n) for a in range(len(pos)) for q in pos[a] for n in neg[a]]
    assert 10 <= len(valid) <= 200
    draws = 600 * len(valid)
    t = random_triplets(
        p.emb, p.labels, num_triplets=draws, generator=make_generator(2), **p.kwargs
    )
    assert t.num_triplets == draws
    assert_valid_triplets(t, p)
    index = {v: i for i, v in enumerate(valid)}
    rows = zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True)
    counts = np.bincount([index[r] for r in rows], minlength=len(valid))
    assert_distribution(counts, np.full(len(valid), 1 / len(valid)))


def test_random_reproducibility() -> None:
    p = random_problem(0, 20, 4, 3)
    for n in [None, 40]:
        a, b = RandomTripletMiner(n, seed=1), RandomTripletMiner(n, seed=1)
        x1, x2 = a(p.emb, p.labels), a(p.emb, p.labels)
        y1, y2 = b(p.emb, p.labels), b(p.emb, p.labels)
        assert torch.equal(x1.negative, y1.negative) and torch.equal(x2.negative, y2.negative)
        assert not torch.equal(torch.stack(list(x1)), torch.stack(list(x2)))


def test_modules_wrap_the_functions() -> None:
    """A module calls its function with its options and its own generator."""
    p = random_problem(6, 16, 8, 3, unit=True)
    got = DistanceWeightedMiner(0.3, 1.9, seed=2)(p.emb, p.labels)
    want = distance_weighted_triplets(p.emb, p.labels, 0.3, 1.9, generator=make_generator(2))
    assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))
    got = RandomTripletMiner(30, seed=2)(p.emb, p.labels)
    want = random_triplets(p.emb, p.labels, 30, generator=make_generator(2))
    assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))
    assert "cutoff=0.3" in repr(DistanceWeightedMiner(0.3, 1.9)) and "seed=0" in repr(
        RandomTripletMiner()
    )


# --------------------------------------------------------------------------------------------
# Awkward batches, shared by both samplers

SAMPLERS = {
    "distance_weighted": lambda *a, **k: distance_weighted_triplets(
        *a, generator=make_generator(0), **k
    ),
    "random": lambda *a, **k: random_triplets(*a, generator=make_generator(0), **k),
    "random_fixed": lambda *a, **k: random_triplets(
        *a, num_triplets=5, generator=make_generator(0), **k
    ),
}


def _is_empty(out: object) -> bool:
    return isinstance(out, Triplets) and all(t.numel() == 0 for t in out)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_awkward_batches(name: str) -> None:
    fn = SAMPLERS[name]
    assert _is_empty(fn(_unit(5), torch.zeros(5, dtype=torch.long)))  # one class
    assert _is_empty(fn(_unit(5), torch.arange(5)))  # all distinct
    assert _is_empty(fn(_unit(0), torch.zeros(0, dtype=torch.long)))  # N = 0
    assert _is_empty(fn(_unit(1), torch.zeros(1, dtype=torch.long)))  # N = 1
    # Empty reference set.
    empty_ref = {"ref_embeddings": _unit(0), "ref_labels": torch.zeros(0, dtype=torch.long)}
    assert _is_empty(fn(_unit(3), torch.arange(3), **empty_ref))
    # A singleton class: anchor 4 has no positive but is everyone's negative.
    x, labels = _unit(5), torch.tensor([0, 0, 1, 1, 2])
    out = fn(x, labels)
    assert isinstance(out, Triplets)
    assert out.num_triplets > 0 and 4 not in out.anchor.tolist()
    assert_valid_triplets(out, SamplingProblem(x, labels, None, None, None))
    # A reference set where the anchors are not among the references: (a, a) is a positive.
    out = fn(x, labels, ref_embeddings=x, ref_labels=labels)
    assert bool((out.anchor == out.positive).any())
    # ...and with anchor_offset they are, so it is not.
    out = fn(x, labels, ref_embeddings=x, ref_labels=labels, anchor_offset=0)
    assert not bool((out.anchor == out.positive).any())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_input_is_refused(name: str) -> None:
    fn = SAMPLERS[name]
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        fn(x, labels[:3])
    with pytest.raises(TypeError, match="integer"):
        fn(x, labels.bool())
    with pytest.raises(ValueError, match="2-D"):
        fn(x[0], labels)
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.full((4, 3), math.nan), labels)
    with pytest.raises(ValueError, match="together"):
        fn(x, labels, ref_embeddings=x)
    with pytest.raises(ValueError, match="features"):
        fn(x, labels, ref_embeddings=_unit(4, 5), ref_labels=labels)
    with pytest.raises(ValueError, match="anchor_offset"):
        fn(x, labels, ref_embeddings=x[:2], ref_labels=labels[:2], anchor_offset=0)


def test_hyperparameters_are_validated() -> None:
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        DistanceWeightedMiner(cutoff=0.0)
    with pytest.raises(ValueError, match="greater than cutoff"):
        DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.5)
    with pytest.raises(ValueError, match="greater than cutoff"):
        check_cutoffs(0.5, 0.4)
    assert check_cutoffs(CUTOFF, NONZERO_LOSS_CUTOFF) == (CUTOFF, NONZERO_LOSS_CUTOFF)
    with pytest.raises(ValueError, match="finite"):
        distance_weighted_triplets(x, labels, nonzero_loss_cutoff=math.inf)
    with pytest.raises(TypeError, match="generator"):
        distance_weighted_triplets(x, labels, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        random_triplets(x, labels, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        RandomTripletMiner(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        DistanceWeightedMiner(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        make_generator(-1)
    with pytest.raises(ValueError, match="num_triplets"):
        RandomTripletMiner(0)
    with pytest.raises(TypeError, match="num_triplets"):
        random_triplets(x, labels, num_triplets=True)
    with pytest.raises(TypeError, match="normalize"):
        DistanceWeightedMiner(normalize=1)  # type: ignore[arg-type]
