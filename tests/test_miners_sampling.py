"""Sampling and pair miners, and the margin loss, against brute-force and statistical references.

Exact miners (multi-similarity, pair margin) are compared with explicit loops over every pair;
the samplers (distance-weighted, random) with the distributions an explicit loop computes,
by a chi-square test and per-category bounds at the sample size drawn (seeds are fixed, so
the tests are deterministic; the thresholds are those of a 1e-6 false-alarm rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.distances import pairwise_distance
from tripletkit.losses.margin import MarginLoss, margin_loss
from tripletkit.miners.sampling import (
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    RandomTripletMiner,
)
from tripletkit.sampling_miners import (
    _distance_weights,
    distance_weighted_triplets,
    make_generator,
    multi_similarity_pairs,
    pair_margin_pairs,
    random_triplets,
)
from tripletkit.types import Pairs, Triplets

# --------------------------------------------------------------------------------------------
# Problems and loop references


@dataclass
class Problem:
    emb: torch.Tensor
    labels: torch.Tensor
    ref: torch.Tensor | None
    ref_labels: torch.Tensor | None
    offset: int | None

    @property
    def kwargs(self) -> dict:
        return {} if self.offset is None else {"anchor_offset": self.offset}

    @property
    def args(self) -> tuple:
        return (self.emb, self.labels, self.ref, self.ref_labels)

    @property
    def refs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref is None:
            return self.emb, self.labels
        assert self.ref_labels is not None
        return self.ref, self.ref_labels

    def self_index(self) -> list[int]:
        n = self.emb.shape[0]
        if self.ref is None:
            return list(range(n))
        if self.offset is None:
            return [-1] * n
        return [self.offset + i for i in range(n)]


def make_problem(
    seed: int, n: int, d: int, classes: int, mode: str = "self", unit: bool = False
) -> Problem:
    rng = np.random.default_rng(seed)

    def block(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(rng.normal(size=(rows, d)))
        if unit:
            x = x / x.norm(dim=1, keepdim=True)
        return x, torch.from_numpy(rng.integers(0, classes, size=rows))

    emb, labels = block(n)
    if mode == "self":
        return Problem(emb, labels, None, None, None)
    before, lb = block(int(rng.integers(0, 4)))
    after, la = block(int(rng.integers(0, 4)))
    if mode == "ref":
        return Problem(emb, labels, torch.cat([before, after]), torch.cat([lb, la]), None)
    ref = torch.cat([before, emb, after])
    return Problem(emb, labels, ref, torch.cat([lb, labels, la]), before.shape[0])


def roles(p: Problem) -> tuple[list[list[int]], list[list[int]]]:
    """Per anchor: its positives and its negatives among the references, by explicit loops."""
    _, ref_labels = p.refs
    own = p.self_index()
    lab, rl = p.labels.tolist(), ref_labels.tolist()
    pos = [[j for j in range(len(rl)) if rl[j] == lab[a] and j != own[a]] for a in range(len(lab))]
    neg = [[j for j in range(len(rl)) if rl[j] != lab[a]] for a in range(len(lab))]
    return pos, neg


def pair_list(pairs: Pairs) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    return (
        list(zip(pairs.anchor_pos.tolist(), pairs.positive.tolist(), strict=True)),
        list(zip(pairs.anchor_neg.tolist(), pairs.negative.tolist(), strict=True)),
    )


def assert_valid_triplets(t: Triplets, p: Problem) -> None:
    pos, neg = roles(p)
    assert t.anchor.dtype == t.positive.dtype == t.negative.dtype == torch.int64
    for a, pp, n in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True):
        assert pp in pos[a] and n in neg[a]


def chi2_threshold(df: int, z: float = 4.753) -> float:
    """Upper 1e-6 quantile of chi-square(df), Wilson-Hilferty approximation."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def assert_distribution(counts: np.ndarray, probs: np.ndarray) -> None:
    """``counts`` are draws from ``probs``: zero-probability categories never drawn, chi-square
    below its 1e-6 quantile, and every frequency within 5 standard errors."""
    total = counts.sum()
    assert total > 0
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a category of probability 0"
    expected = probs[support] * total
    assert expected.min() >= 5, "test layout too skewed for a chi-square test"
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    if df > 0:
        assert stat < chi2_threshold(df), (stat, counts, probs * total)
    freq = counts / total
    se = np.sqrt(probs * (1 - probs) / total)
    assert np.all(np.abs(freq - probs) <= 5 * se + 1e-12), (freq, probs)


def dw_probs_loop(
    emb: torch.Tensor, ref: torch.Tensor, neg: list[list[int]], cutoff: float, nzlc: float
) -> list[dict[int, float]]:
    """Distance-weighted sampling probabilities by the paper's formula, one anchor at a time."""
    n = emb.shape[1]
    out = []
    for a in range(emb.shape[0]):
        logw: dict[int, float] = {}
        for j in neg[a]:
            d = max(math.dist(emb[a].tolist(), ref[j].tolist()), cutoff)
            if d < nzlc:
                logq = (n - 2) * math.log(d) + (n - 3) / 2 * math.log(1 - d * d / 4)
                logw[j] = -logq
        if not logw:  # fallback: uniform over every negative
            out.append({j: 1 / len(neg[a]) for j in neg[a]})
            continue
        top = max(logw.values())
        w = {j: math.exp(v - top) for j, v in logw.items()}
        s = sum(w.values())
        out.append({j: w.get(j, 0.0) / s for j in neg[a]})
    return out


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


# --------------------------------------------------------------------------------------------
# Distance-weighted sampling


@pytest.mark.parametrize("dim", [2, 3, 4, 16, 128, 512])
@pytest.mark.parametrize("mode", ["self", "ref", "offset"])
def test_distance_weights_match_the_formula(dim: int, mode: str) -> None:
    p = make_problem(dim, 12, dim, 3, mode, unit=True)
    ref, _ = p.refs
    _, neg = roles(p)
    for cutoff, nzlc in [(0.5, 1.4), (0.3, 1.9), (1.2, 1.3)]:
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
    probs = dw_probs_loop(x[:1], x, neg, 0.5, 1.4)[0]
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
    for mode in ["self", "ref", "offset"]:
        for seed in range(4):
            p = make_problem(seed, 14, 5, 4, mode, unit=True)
            t = distance_weighted_triplets(*p.args, generator=make_generator(seed), **p.kwargs)
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
        distance_weighted_triplets(unit, labels, x, labels)
    distance_weighted_triplets(x, labels, x, labels, normalize=True)
    with pytest.raises(ValueError, match="normalize=True"):
        DistanceWeightedMiner()(x * 2, labels)


def test_distance_weighted_reproducibility() -> None:
    p = make_problem(0, 30, 16, 3, unit=True)
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
    import tripletkit.sampling_miners as sm

    # u * total rounding up to the total itself (simulated with u = 1): the last column of
    # positive weight is taken, never one past the end or one of weight 0.
    monkeypatch.setattr(sm, "_uniform", lambda count, g, device: torch.ones(count).double())
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.5, 0.0, 0.5]])
    pos = torch.tensor([[True, False, False], [False, True, True], [True, True, True]])
    t = sm._draw_weighted(w, pos, make_generator(0))
    assert t.negative.tolist() == [1, 1, 1, 2, 2, 2]


def test_miner_state_dict_carries_the_random_stream() -> None:
    p = make_problem(5, 20, 8, 3, unit=True)
    for make in (lambda: DistanceWeightedMiner(seed=4), lambda: RandomTripletMiner(seed=4)):
        miner = make()
        miner(p.emb, p.labels)
        state = miner.state_dict()
        expected = miner(p.emb, p.labels)
        resumed = make()
        resumed.load_state_dict(state)
        assert torch.equal(resumed(p.emb, p.labels).negative, expected.negative)


def test_samplers_never_touch_the_global_rng() -> None:
    p = make_problem(1, 20, 8, 3, unit=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    distance_weighted_triplets(p.emb, p.labels)
    DistanceWeightedMiner()(p.emb, p.labels)
    random_triplets(p.emb, p.labels)
    random_triplets(p.emb, p.labels, num_triplets=50)
    RandomTripletMiner()(p.emb, p.labels)
    assert torch.equal(torch.get_rng_state(), state)
    # Unseeded runs are not all the same.
    draws = {tuple(random_triplets(p.emb, p.labels).negative.tolist()) for _ in range(5)}
    assert len(draws) > 1


def test_distance_weighted_float32_and_high_dimension() -> None:
    x = torch.nn.functional.normalize(torch.randn(64, 1024, generator=make_generator(0)), dim=1)
    labels = torch.arange(64) % 8
    t = DistanceWeightedMiner(seed=0)(x, labels)
    assert t.num_triplets == 64 * 7
    assert_valid_triplets(t, Problem(x, labels, None, None, None))


# --------------------------------------------------------------------------------------------
# Uniform sampling


def test_random_per_pair_rows_are_the_positive_pairs() -> None:
    for mode in ["self", "ref", "offset"]:
        for seed in range(4):
            p = make_problem(seed, 13, 3, 4, mode)
            t = random_triplets(*p.args, generator=make_generator(seed), **p.kwargs)
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
    p = make_problem(11, 7, 2, 3, mode)
    pos, neg = roles(p)
    valid = [(a, q, n) for a in range(len(pos)) for q in pos[a] for n in neg[a]]
    assert 10 <= len(valid) <= 200
    draws = 600 * len(valid)
    t = random_triplets(*p.args, num_triplets=draws, generator=make_generator(2), **p.kwargs)
    assert t.num_triplets == draws
    assert_valid_triplets(t, p)
    index = {v: i for i, v in enumerate(valid)}
    rows = zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True)
    counts = np.bincount([index[r] for r in rows], minlength=len(valid))
    assert_distribution(counts, np.full(len(valid), 1 / len(valid)))


def test_random_reproducibility() -> None:
    p = make_problem(0, 20, 4, 3)
    for n in [None, 40]:
        a, b = RandomTripletMiner(n, seed=1), RandomTripletMiner(n, seed=1)
        x1, x2 = a(p.emb, p.labels), a(p.emb, p.labels)
        y1, y2 = b(p.emb, p.labels), b(p.emb, p.labels)
        assert torch.equal(x1.negative, y1.negative) and torch.equal(x2.negative, y2.negative)
        assert not torch.equal(torch.stack(list(x1)), torch.stack(list(x2)))


# --------------------------------------------------------------------------------------------
# Awkward batches, shared by every miner

SAMPLERS = {
    "distance_weighted": lambda *a, **k: distance_weighted_triplets(
        *a, generator=make_generator(0), **k
    ),
    "random": lambda *a, **k: random_triplets(*a, generator=make_generator(0), **k),
    "random_fixed": lambda *a, **k: random_triplets(
        *a, num_triplets=5, generator=make_generator(0), **k
    ),
}
PAIR_MINERS = {
    "multi_similarity": multi_similarity_pairs,
    # Margins that keep every pair.
    "pair_margin": lambda *a, **k: pair_margin_pairs(*a, pos_margin=-1.0, neg_margin=10.0, **k),
}


def _unit(n: int, d: int = 3) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=make_generator(n)), dim=1)


@pytest.mark.parametrize("name", list(SAMPLERS) + list(PAIR_MINERS))
def test_awkward_batches(name: str) -> None:
    fn = SAMPLERS.get(name) or PAIR_MINERS[name]
    empty_kind = Triplets if name in SAMPLERS else Pairs

    def is_empty(out: Triplets | Pairs) -> bool:
        return isinstance(out, empty_kind) and all(t.numel() == 0 for t in out)

    one_class, distinct = (
        fn(_unit(5), torch.zeros(5, dtype=torch.long)),
        fn(_unit(5), torch.arange(5)),
    )
    if name == "pair_margin":  # the contrastive loss has terms on one side only
        assert (one_class.num_positive, one_class.num_negative) == (20, 0)
        assert (distinct.num_positive, distinct.num_negative) == (0, 20)
    else:
        assert is_empty(one_class) and is_empty(distinct)
    assert is_empty(fn(_unit(0), torch.zeros(0, dtype=torch.long)))  # N = 0
    assert is_empty(fn(_unit(1), torch.zeros(1, dtype=torch.long)))  # N = 1
    # Empty reference set.
    assert is_empty(fn(_unit(3), torch.arange(3), _unit(0), torch.zeros(0, dtype=torch.long)))
    # A singleton class: anchor 4 has no positive but is everyone's negative.
    x, labels = _unit(5), torch.tensor([0, 0, 1, 1, 2])
    out = fn(x, labels)
    if isinstance(out, Triplets):
        assert out.num_triplets > 0 and 4 not in out.anchor.tolist()
        assert_valid_triplets(out, Problem(x, labels, None, None, None))
    else:
        assert 4 not in out.anchor_pos.tolist()
    # A reference set where the anchors are not among the references: (a, a) is a positive.
    out = fn(x, labels, x, labels)
    anchors = out.anchor if isinstance(out, Triplets) else out.anchor_pos
    if name != "multi_similarity":  # the self pair is the easiest positive: MS may drop it
        assert bool((anchors == out.positive).any())
    # ...and with anchor_offset they are, so it is not.
    out = fn(x, labels, x, labels, anchor_offset=0)
    anchors = out.anchor if isinstance(out, Triplets) else out.anchor_pos
    assert not bool((anchors == out.positive).any())


@pytest.mark.parametrize("name", list(SAMPLERS) + list(PAIR_MINERS))
def test_bad_input_is_refused(name: str) -> None:
    fn = SAMPLERS.get(name) or PAIR_MINERS[name]
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels has 3 entries"):
        fn(x, labels[:3])
    with pytest.raises(TypeError, match="integer"):
        fn(x, labels.float())
    with pytest.raises(ValueError, match="2-D"):
        fn(x[0], labels)
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.full((4, 3), math.nan), labels)
    with pytest.raises(ValueError, match="together"):
        fn(x, labels, x)
    with pytest.raises(ValueError, match="features"):
        fn(x, labels, _unit(4, 5), labels)
    with pytest.raises(ValueError, match="anchor_offset"):
        fn(x, labels, x[:2], labels[:2], anchor_offset=0)


def test_hyperparameters_are_validated() -> None:
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        DistanceWeightedMiner(cutoff=0.0)
    with pytest.raises(ValueError, match="greater than cutoff"):
        DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.5)
    with pytest.raises(ValueError, match="finite"):
        distance_weighted_triplets(x, labels, nonzero_loss_cutoff=math.inf)
    with pytest.raises(TypeError, match="generator"):
        distance_weighted_triplets(x, labels, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        RandomTripletMiner(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        DistanceWeightedMiner(seed=-1)
    with pytest.raises(ValueError, match="num_triplets"):
        RandomTripletMiner(0)
    with pytest.raises(TypeError, match="num_triplets"):
        random_triplets(x, labels, num_triplets=True)
    with pytest.raises(ValueError, match="unknown metric"):
        MultiSimilarityMiner(metric="manhattan")
    with pytest.raises(ValueError, match="unknown metric"):
        pair_margin_pairs(x, labels, metric="dot")
    with pytest.raises(TypeError, match="epsilon"):
        MultiSimilarityMiner(epsilon="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neg_margin"):
        PairMarginMiner(neg_margin=math.nan)
    with pytest.raises(TypeError, match="normalize"):
        PairMarginMiner(normalize=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Multi-similarity and pair-margin mining


def ms_loop(p: Problem, epsilon: float, metric: str) -> tuple[list, list]:
    ref, _ = p.refs
    dist = pairwise_distance(p.emb, ref, metric).tolist()
    pos, neg = roles(p)
    keep_pos, keep_neg = [], []
    for a in range(len(pos)):
        if metric == "cosine":  # the paper's similarity form
            sim = [1 - v for v in dist[a]]
            for j in range(len(sim)):
                if j in pos[a] and neg[a] and sim[j] < max(sim[n] for n in neg[a]) + epsilon:
                    keep_pos.append((a, j))
            for j in range(len(sim)):
                if j in neg[a] and pos[a] and sim[j] > min(sim[q] for q in pos[a]) - epsilon:
                    keep_neg.append((a, j))
        else:
            for j in range(len(dist[a])):
                if (
                    j in pos[a]
                    and neg[a]
                    and dist[a][j] > min(dist[a][n] for n in neg[a]) - epsilon
                ):
                    keep_pos.append((a, j))
            for j in range(len(dist[a])):
                if (
                    j in neg[a]
                    and pos[a]
                    and dist[a][j] < max(dist[a][q] for q in pos[a]) + epsilon
                ):
                    keep_neg.append((a, j))
    return keep_pos, keep_neg


def pm_loop(p: Problem, pos_margin: float, neg_margin: float, metric: str) -> tuple[list, list]:
    ref, _ = p.refs
    dist = pairwise_distance(p.emb, ref, metric).tolist()
    pos, neg = roles(p)
    keep_pos = [(a, j) for a in range(len(pos)) for j in pos[a] if dist[a][j] > pos_margin]
    keep_neg = [(a, j) for a in range(len(neg)) for j in neg[a] if dist[a][j] < neg_margin]
    return keep_pos, keep_neg


PROBLEMS = st.tuples(
    st.integers(0, 10_000),
    st.integers(0, 12),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(["self", "ref", "offset"]),
)


@settings(max_examples=60, deadline=None)
@given(
    PROBLEMS,
    st.sampled_from([-0.2, 0.0, 0.1, 0.5]),
    st.sampled_from(["cosine", "euclidean", "sqeuclidean"]),
)
def test_multi_similarity_matches_loop(problem: tuple, epsilon: float, metric: str) -> None:
    p = make_problem(*problem)
    out = multi_similarity_pairs(*p.args, epsilon=epsilon, metric=metric, **p.kwargs)
    assert pair_list(out) == ms_loop(p, epsilon, metric)  # same pairs, row-major


@settings(max_examples=60, deadline=None)
@given(
    PROBLEMS,
    st.sampled_from([(0.0, 1.0), (0.5, 1.5), (1.0, 0.5)]),
    st.sampled_from(["cosine", "euclidean", "sqeuclidean"]),
)
def test_pair_margin_matches_loop(problem: tuple, margins: tuple, metric: str) -> None:
    p = make_problem(*problem)
    out = pair_margin_pairs(
        *p.args, pos_margin=margins[0], neg_margin=margins[1], metric=metric, **p.kwargs
    )
    assert pair_list(out) == pm_loop(p, *margins, metric)


def test_pair_margin_keeps_exactly_the_nonzero_contrastive_terms() -> None:
    from tripletkit.losses.modules import contrastive_loss

    p = make_problem(3, 20, 4, 3)
    pairs = PairMarginMiner(pos_margin=0.5, neg_margin=2.0)(p.emb, p.labels)
    mined = contrastive_loss(p.emb, p.labels, pairs, 0.5, 2.0, reduction="none")
    assert bool((mined > 0).all())
    every = contrastive_loss(p.emb, p.labels, None, 0.5, 2.0, reduction="sum")
    torch.testing.assert_close(mined.sum(), every)


def test_modules_wrap_the_functions() -> None:
    p = make_problem(4, 16, 3, 3)
    assert pair_list(MultiSimilarityMiner(0.2, metric="euclidean")(p.emb, p.labels)) == pair_list(
        multi_similarity_pairs(p.emb, p.labels, epsilon=0.2, metric="euclidean")
    )
    assert pair_list(PairMarginMiner(0.1, 1.2)(p.emb, p.labels)) == pair_list(
        pair_margin_pairs(p.emb, p.labels, pos_margin=0.1, neg_margin=1.2)
    )
    assert "epsilon=0.2" in repr(MultiSimilarityMiner(0.2))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_ref", [False, True])
def test_multi_similarity_matches_pytorch_metric_learning(distance: str, with_ref: bool) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

    pml_distance = CosineSimilarity() if distance == "cosine" else LpDistance()  # normalises
    for seed in range(5):
        p = make_problem(seed, 24, 6, 4, "ref" if with_ref else "self")
        for epsilon in [0.05, 0.1, 0.3]:
            theirs = pml_miners.MultiSimilarityMiner(epsilon, distance=pml_distance)(*p.args)
            ours = multi_similarity_pairs(*p.args, epsilon=epsilon, metric=distance, normalize=True)
            t_pos, t_neg = pair_list(Pairs(*theirs))
            o_pos, o_neg = pair_list(ours)
            assert sorted(t_pos) == o_pos and sorted(t_neg) == o_neg


# --------------------------------------------------------------------------------------------
# Margin loss


def margin_loop(
    emb: torch.Tensor,
    labels: torch.Tensor,
    pos_pairs: list[tuple[int, int]],
    neg_pairs: list[tuple[int, int]],
    beta: torch.Tensor,
    margin: float,
    nu: float,
    metric: str = "euclidean",
    ref: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], int]:
    """Pair terms (hinge + nu * beta) and the number of non-zero hinges, one pair at a time."""
    ref = emb if ref is None else ref
    terms, active = [], 0

    def dist(i: int, j: int) -> torch.Tensor:
        x, y = emb[i], ref[j]
        if metric == "cosine":
            return 1 - (x @ y) / (x.norm() * y.norm())
        sq = ((x - y) ** 2).sum()
        return sq if metric == "sqeuclidean" else sq.sqrt()

    for sign, pairs in ((1.0, pos_pairs), (-1.0, neg_pairs)):
        for a, j in pairs:
            b = beta[0] if beta.numel() == 1 else beta[int(labels[a])]
            hinge = torch.clamp(margin + sign * (dist(a, j) - b), min=0)
            active += int(hinge.item() > 0)
            terms.append(hinge + nu * b)
    return terms, active


def _margin_case(seed: int, with_ref: bool = False) -> tuple:
    p = make_problem(seed, 10, 4, 3, "offset" if with_ref else "self", unit=True)
    ref, ref_labels = p.refs
    pos, neg = roles(p)
    rng = np.random.default_rng(seed)
    triplets = [(a, q, int(rng.choice(neg[a]))) for a in range(len(pos)) if neg[a] for q in pos[a]]
    return p, triplets


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
            0.2,
            1.0,
            num_classes=3 if per_class else None,
            nu=0.05,
            metric=metric,
            reduction=reduction,
        ).double()
        with torch.no_grad():
            loss_fn.beta.copy_(torch.linspace(0.6, 1.1, loss_fn.beta.numel()))
        x = p.emb.clone().requires_grad_()
        ref = None if p.ref is None else p.ref.clone().requires_grad_()
        t = Triplets(*(torch.tensor(c) for c in zip(*triplets, strict=True)))
        got = loss_fn(x, p.labels, t, ref, p.ref_labels)

        x2 = p.emb.clone().requires_grad_()
        ref2 = None if p.ref is None else p.ref.clone().requires_grad_()
        beta2 = loss_fn.beta.detach().clone().requires_grad_()
        terms, active = margin_loop(
            x2,
            p.labels,
            [(a, q) for a, q, _ in triplets],
            [(a, n) for a, _, n in triplets],
            beta2,
            0.2,
            0.05,
            metric,
            ref2,
        )
        want = torch.stack(terms)
        if reduction == "sum":
            want = want.sum()
        elif reduction in ("mean", "mean_nonzero"):
            want = want.sum() / max(active, 1)
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
    # pos (0,1): 0.2 + 1.2 - 1.2; pos (1,4): 0.2 + 0.9 - 1.2 < 0; neg (0,2): 0.2 - 1.1 + 1.2.
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
    t = Triplets(*(torch.tensor(c) for c in zip(*triplets, strict=True)))
    x = p.emb.clone().requires_grad_()
    beta = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float64, requires_grad=True)
    # Keep away from the hinges' kinks.
    terms = margin_loss(x, p.labels, t, beta, 0.2, reduction="none").detach()
    hinge_free = margin_loss(x, p.labels, t, beta, 0.2, nu=0.0, reduction="none").detach()
    assert bool(((hinge_free == 0) | (hinge_free > 1e-3)).all()) and terms.numel()
    for reduction in ["sum", "mean", "none"]:
        torch.autograd.gradcheck(
            lambda e, b, r=reduction: margin_loss(e, p.labels, t, b, 0.2, 0.1, reduction=r),
            (x, beta),
        )


def test_beta_learns() -> None:
    p, triplets = _margin_case(3)
    t = Triplets(*(torch.tensor(c) for c in zip(*triplets, strict=True)))
    for num_classes in [None, 3]:
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
    t = Triplets(*(torch.tensor(c) for c in zip(*triplets, strict=True)))
    theirs = pml_losses.MarginLoss(margin=0.2, nu=0.0, beta=1.0)(p.emb, p.labels, tuple(t))
    ours = MarginLoss(0.2, 1.0).double()(p.emb, p.labels, t)
    torch.testing.assert_close(ours, theirs)


def test_margin_loss_bad_input() -> None:
    x, labels = _unit(4), torch.tensor([0, 0, 1, 1])
    t = Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    loss_fn = MarginLoss()
    with pytest.raises(TypeError, match="3 or 4"):
        loss_fn(x, labels, (torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(TypeError, match="Triplets, Pairs"):
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
