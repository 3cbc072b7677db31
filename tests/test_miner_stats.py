"""Miner statistics (issue 19): every miner module records the :class:`MinerStats` of its
last call (numbers of triplets and pairs, distinct anchors, mean positive and negative
distances), against brute force over its output, and without a host synchronisation."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from conftest import CASES, METRICS, NO_OFFSET, pairwise
from reference import distance, normalize_rows
from syncs import count_syncs

from tripletkit import miners
from tripletkit.miners import Miner, MinerStats, SeededMiner, miner_stats
from tripletkit.types import Pairs, Triplets

pytestmark = pytest.mark.usefixtures("one_thread")

#: A miner module of each kind for a metric and ``normalize``; miners without a metric use
#: the Euclidean distance (distance-weighted sampling needs unit-norm rows: normalised).
FACTORIES: dict[str, Callable[[str, bool], Miner]] = {
    "BatchAllMiner": lambda m, nz: miners.BatchAllMiner(0.3, m, False, normalize=nz),
    "BatchHardMiner": lambda m, nz: miners.BatchHardMiner(m, normalize=nz),
    "SemiHardMiner": lambda m, nz: miners.SemiHardMiner(0.3, m, normalize=nz),
    "TripletMarginMiner": lambda m, nz: miners.TripletMarginMiner(0.3, "all", m, normalize=nz),
    "DistanceWeightedMiner": lambda m, nz: miners.DistanceWeightedMiner(normalize=True),
    "RandomTripletMiner": lambda m, nz: miners.RandomTripletMiner(),
    "MultiSimilarityMiner": lambda m, nz: miners.MultiSimilarityMiner(0.1, m, normalize=nz),
    "PairMarginMiner": lambda m, nz: miners.PairMarginMiner(0.2, 1.0, m, normalize=nz),
}
#: Mean distances are computed in float64 by the library from a matrix or from the rows;
#: the brute force from the rows.
MEAN_TOL = {"rtol": 1e-9, "atol": 1e-7}


def expected_stats(
    mined: Triplets | Pairs, x: torch.Tensor, ref: torch.Tensor | None, metric: str, normalize: bool
) -> dict[str, float]:
    """The statistics of ``mined`` by brute force: its pairs listed, each distance through
    :func:`reference.distance`."""
    xs = normalize_rows(x) if normalize else x
    rs = xs if ref is None else (normalize_rows(ref) if normalize else ref)
    rows = [t.tolist() for t in mined]
    if isinstance(mined, Triplets):
        a, p, n = rows
        pos, neg, triplets = list(zip(a, p, strict=True)), list(zip(a, n, strict=True)), len(a)
    else:
        pos, neg, triplets = list(zip(*rows[:2], strict=True)), list(zip(*rows[2:], strict=True)), 0

    def mean(pairs: list[tuple[int, int]]) -> float:
        values = [float(distance(xs[i], rs[j], metric)) for i, j in pairs]
        return sum(values) / len(values) if values else 0.0

    return {
        "num_triplets": triplets,
        "num_pos_pairs": len(pos),
        "num_neg_pairs": len(neg),
        "num_anchors": len({i for i, _ in pos} | {i for i, _ in neg}),
        "pos_distance": mean(pos),
        "neg_distance": mean(neg),
    }


def assert_stats(stats: MinerStats | None, expected: dict[str, float], like: torch.Tensor) -> None:
    assert isinstance(stats, MinerStats)
    read = stats.as_dict()
    assert list(read) == list(expected)
    for name, value in expected.items():
        tensor = getattr(stats, name)
        assert tensor.shape == () and tensor.device == like.device, name
        if name.startswith("num_"):
            assert tensor.dtype == torch.int64 and read[name] == value, (name, read[name], value)
        else:
            assert tensor.dtype == like.dtype, name
            torch.testing.assert_close(read[name], value, **MEAN_TOL)


def test_every_miner_module_is_covered() -> None:
    """A new miner module must get a factory here (and so its statistics tested)."""
    modules = {
        name
        for name in miners.__all__
        if inspect.isclass(obj := getattr(miners, name))
        and issubclass(obj, Miner)
        and obj not in (Miner, SeededMiner)
    }
    assert modules == set(FACTORIES)


# Every miner x case; the metric and the normalisation pairwise with them and each other
# (conftest.pairwise: 96 rows instead of the product's 576).
@pytest.mark.parametrize(
    ("name", "case_name", "metric", "normalize"),
    [
        pytest.param(*row, id=f"{row[0]}-{row[1]}-{row[2]}-{'normalized' if row[3] else 'raw'}")
        for row in pairwise(tuple(FACTORIES), NO_OFFSET, METRICS, (False, True))
    ],
)
def test_stats_equal_brute_force(name: str, case_name: str, metric: str, normalize: bool) -> None:
    """After each call, ``miner.stats`` describes that call's output: in-batch and with a
    reference set, every metric, degenerate batches (empty outputs: counts and means 0)."""
    c = CASES[case_name]
    miner = FACTORIES[name](metric, normalize)
    options = miner.options()
    refs = () if c.ref is None else (c.ref, c.ref_labels)
    mined = miner(c.x, c.labels, *refs)
    want = expected_stats(
        mined, c.x, c.ref, options.get("metric", "euclidean"), options.get("normalize", False)
    )
    assert_stats(miner.stats, want, c.x)


def test_stats_both_ways_of_computing_the_means() -> None:
    """Few pairs: distances from the rows; many (T D > N M): gathered from one matrix. Both
    branches are exercised here and agree with brute force."""
    c = CASES["generic"]
    n, d = c.x.shape
    few = miners.BatchHardMiner()
    many = miners.BatchAllMiner(active_only=False)
    for miner, is_many in ((few, False), (many, True)):
        mined = miner(c.x, c.labels)
        assert (mined.anchor.shape[0] * d > n * n) == is_many
        assert_stats(miner.stats, expected_stats(mined, c.x, None, "euclidean", False), c.x)


def test_stats_follow_every_call_and_can_be_switched_off() -> None:
    c, g = CASES["generic"], CASES["grid"]
    miner = miners.BatchHardMiner()
    assert miner.stats is None
    miner(c.x, c.labels)
    first = miner.stats
    miner(g.x, g.labels)
    assert miner.stats is not first
    assert_stats(
        miner.stats, expected_stats(miner(g.x, g.labels), g.x, None, "euclidean", False), g.x
    )
    quiet = miners.SemiHardMiner()
    quiet.collect_stats = False
    quiet(c.x, c.labels)
    assert quiet.stats is None
    assert miners.BatchHardMiner.collect_stats is True  # the instance's switch only


def test_stats_of_half_precision_embeddings_are_float32() -> None:
    c = CASES["generic"]
    miner = miners.BatchHardMiner()
    x = c.x.to(torch.bfloat16)
    mined = miner(x, c.labels)
    assert miner.stats is not None and miner.stats.pos_distance.dtype == torch.float32
    want = expected_stats(mined, x.float(), None, "euclidean", False)
    assert miner.stats.as_dict()["pos_distance"] == pytest.approx(want["pos_distance"], rel=1e-5)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_stats_add_no_synchronisation(name: str) -> None:
    """Computing the statistics reads nothing on the host (no ``.item()``, ``nonzero``,
    boolean indexing, host read): a miner call counts the same synchronisations with and
    without them, and :func:`miner_stats` alone counts none. Reading them is one host
    read (:meth:`MinerStats.as_dict`)."""
    c = CASES["refs"]
    miner = FACTORIES[name]("euclidean", False)
    call = lambda: miner(c.x, c.labels, c.ref, c.ref_labels)  # noqa: E731
    with_stats = count_syncs(call).counts
    miner.collect_stats = False
    assert count_syncs(call).counts == with_stats
    mined = call()
    normalize = miner.options().get("normalize", False)
    counter = count_syncs(lambda: miner_stats(mined, c.x, c.ref, "euclidean", normalize))
    assert counter.total == 0, counter.counts
    stats = miner_stats(mined, c.x, c.ref, "euclidean", normalize)
    assert dict(count_syncs(stats.as_dict).counts) == {"to_host": 1}


def test_miner_stats_of_pairs_by_hand() -> None:
    """A worked example (1-D): positive pairs (0, 1) at 0.5 and (1, 0) at 0.5, negative
    pairs (0, 2) at 0.6 and (2, 0) at 0.6 and (2, 1) at 0.1."""
    x = torch.tensor([[0.0], [0.5], [0.6]], dtype=torch.float64)
    idx = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    stats = miner_stats(Pairs(idx(0, 1), idx(1, 0), idx(0, 2, 2), idx(2, 0, 1)), x)
    read = stats.as_dict()
    assert read["num_triplets"] == 0 and read["num_anchors"] == 3
    assert (read["num_pos_pairs"], read["num_neg_pairs"]) == (2, 3)
    assert read["pos_distance"] == pytest.approx(0.5)
    assert read["neg_distance"] == pytest.approx((0.6 + 0.6 + 0.1) / 3)
