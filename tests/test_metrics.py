"""``tripletkit.metrics``: ``retrieval_metrics`` against the metrics written out with plain
Python loops and against pytorch-metric-learning's ``AccuracyCalculator``; the
``RetrievalMetrics`` result type."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.metrics import RetrievalMetrics, retrieval_metrics

KS = (1, 2, 5, 10)
#: Tolerance against the brute-force loops: float64 in general, and where the arithmetic is
#: exact (integer coordinates) or the same means are taken in another order.
LOOP_TOL = 1e-9
EXACT_TOL = 1e-12
#: Tolerance against pytorch-metric-learning, which computes in float32.
PML_TOL = 1e-6
#: The four metrics, the keys of the result.
KEYS = ("precision_at_1", "recall_at_k", "r_precision", "mean_average_precision_at_r")


def brute_force(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    ref: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    ks: tuple[int, ...],
    metric: str = "euclidean",
) -> dict:
    """The metrics written out with plain Python loops and floats."""
    q, ql = query.tolist(), query_labels.tolist()
    loo = ref is None
    r, rl = (q, ql) if loo else (ref.tolist(), ref_labels.tolist())  # type: ignore[union-attr]

    def dist(a: list[float], b: list[float]) -> float:
        if metric == "cosine":
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            na = math.sqrt(sum(x * x for x in a))
            nb = math.sqrt(sum(y * y for y in b))
            return 1.0 - dot / (na * nb)
        sq = sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
        return sq if metric == "sqeuclidean" else math.sqrt(sq)

    p1, rp, mapr, evaluated = 0.0, 0.0, 0.0, 0
    recall = dict.fromkeys(ks, 0.0)
    for i, (qi, label) in enumerate(zip(q, ql, strict=True)):
        candidates = [j for j in range(len(r)) if not (loo and j == i)]
        ranked = sorted(candidates, key=lambda j: (dist(qi, r[j]), j))
        relevant = [rl[j] == label for j in ranked]
        big_r = sum(relevant)
        if big_r == 0:
            continue
        evaluated += 1
        p1 += relevant[0]
        for kk in ks:
            recall[kk] += any(relevant[:kk])
        rp += sum(relevant[:big_r]) / big_r
        hits, ap = 0, 0.0
        for pos in range(big_r):
            if relevant[pos]:
                hits += 1
                ap += hits / (pos + 1)
        mapr += ap / big_r
    return {
        "precision_at_1": p1 / evaluated,
        "recall_at_k": {kk: v / evaluated for kk, v in recall.items()},
        "r_precision": rp / evaluated,
        "mean_average_precision_at_r": mapr / evaluated,
    }


def _assert_close(got: dict, expected: dict, tol: float = LOOP_TOL) -> None:
    assert isinstance(got, RetrievalMetrics)
    assert set(got) == set(KEYS)
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r"):
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(expected[key], abs=tol), key
    assert got["recall_at_k"] == pytest.approx(expected["recall_at_k"], abs=tol)
    assert all(isinstance(v, float) for v in got["recall_at_k"].values())


def _data(seed: int, n: int, classes: int, dim: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_matches_brute_force(metric: str, seed: int) -> None:
    x, y = _data(seed, 45, 9)
    y[0] = 100  # a query whose class has no other member: left out
    got = retrieval_metrics(x, y, k=KS, metric=metric, chunk_size=7)
    _assert_close(got, brute_force(x, y, None, None, KS, metric))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_explicit_reference_matches_brute_force(metric: str) -> None:
    q, ql = _data(3, 30, 6)
    r, rl = _data(4, 50, 8)
    ql[:3] = 77  # labels absent from the reference set
    got = retrieval_metrics(
        q, ql, ref_embeddings=r, ref_labels=rl, k=KS, metric=metric, chunk_size=8
    )
    _assert_close(got, brute_force(q, ql, r, rl, KS, metric))


def test_ties_are_broken_by_lower_reference_index() -> None:
    q = torch.tensor([[0.0, 0.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [3.0, 0.0]])
    # Three references at distance 1: the lowest index wins every tie.
    got = retrieval_metrics(
        q, torch.tensor([5]), ref_embeddings=r, ref_labels=torch.tensor([1, 5, 5, 5]), k=(1, 2)
    )
    assert got["precision_at_1"] == 0.0
    assert got["recall_at_k"] == {1: 0.0, 2: 1.0}
    assert got["r_precision"] == pytest.approx(2 / 3)
    assert got["mean_average_precision_at_r"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    got = retrieval_metrics(
        q, torch.tensor([5]), ref_embeddings=r, ref_labels=torch.tensor([5, 1, 1, 1]), k=1
    )
    assert got["precision_at_1"] == 1.0


def test_ties_at_the_cut_off_many_duplicates() -> None:
    # Many duplicates straddle the depth at which neighbours are cut off.
    x = torch.tensor([[0.0]] * 6 + [[1.0]] * 6 + [[2.0]] * 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 2, 2, 2])
    got = retrieval_metrics(x, y, k=(1, 3), chunk_size=4)
    _assert_close(got, brute_force(x, y, None, None, (1, 3)))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 12),
    m=st.integers(0, 12),
    metric=st.sampled_from(["euclidean", "sqeuclidean"]),
    chunk_size=st.integers(1, 5),
)
def test_many_ties_match_brute_force(
    data: st.DataObject, n: int, m: int, metric: str, chunk_size: int
) -> None:
    # Small integer coordinates: distances are exact in float64 for both implementations
    # and ties are everywhere, so the tie-breaking rule is what is being tested.
    coords = st.lists(st.integers(-2, 2), min_size=2, max_size=2)
    q = torch.tensor(data.draw(st.lists(coords, min_size=n, max_size=n)), dtype=torch.float64)
    ql = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    ref = ref_labels = None
    if m:  # m == 0: leave-one-out
        ref = torch.tensor(data.draw(st.lists(coords, min_size=m, max_size=m)), dtype=torch.float64)
        ref_labels = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=m, max_size=m)))
    ks = (1, 2, 4)
    expected_nan = False
    try:
        expected = brute_force(q, ql, ref, ref_labels, ks, metric)
    except ZeroDivisionError:  # no query has a relevant reference
        expected_nan = True
    if expected_nan:
        with pytest.raises(ValueError, match="no query has a reference with the same label"):
            retrieval_metrics(q, ql, ref_embeddings=ref, ref_labels=ref_labels, k=ks, metric=metric)
        return
    got = retrieval_metrics(
        q,
        ql,
        ref_embeddings=ref,
        ref_labels=ref_labels,
        k=ks,
        metric=metric,
        chunk_size=chunk_size,
    )
    _assert_close(got, expected, tol=EXACT_TOL)


def test_leave_one_out_equals_explicit_reference_without_self() -> None:
    x, y = _data(5, 40, 5)
    loo = retrieval_metrics(x, y, k=KS)
    total = {"precision_at_1": 0.0, "r_precision": 0.0, "mean_average_precision_at_r": 0.0}
    recall = dict.fromkeys(KS, 0.0)
    for i in range(40):
        others = torch.arange(40) != i
        one = retrieval_metrics(
            x[i : i + 1], y[i : i + 1], ref_embeddings=x[others], ref_labels=y[others], k=KS
        )
        for key in total:
            total[key] += one[key] / 40
        for kk in KS:
            recall[kk] += one["recall_at_k"][kk] / 40
    # Every query has a positive here (5 classes among 40 points), so the means agree.
    assert (torch.bincount(y) > 1).all()
    _assert_close(loo, {**total, "recall_at_k": recall}, tol=EXACT_TOL)


def test_duplicate_of_the_query_counts_but_the_query_itself_does_not() -> None:
    x = torch.tensor([[0.0], [0.0], [5.0], [5.0]])
    y = torch.tensor([0, 0, 1, 0])
    got = retrieval_metrics(x, y, k=1)
    # Queries 0 and 1 find each other (hits); 3 finds 2 (a miss); query 2 has no other
    # member of its class and is left out.
    assert got["precision_at_1"] == pytest.approx(2 / 3)
    # With ref_embeddings=query each query also finds itself at distance 0; query 3 ties
    # with reference 2 there, and the lower index (2, another label) wins.
    got = retrieval_metrics(x, y, ref_embeddings=x, ref_labels=y, k=1)
    assert got["precision_at_1"] == 0.75


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
def test_chunk_size_invariance(chunk_size: int) -> None:
    x, y = _data(6, 37, 4, dtype=torch.float32)
    assert retrieval_metrics(x, y, chunk_size=chunk_size) == retrieval_metrics(x, y)


def test_k_larger_than_reference_set_looks_at_every_reference() -> None:
    x, _ = _data(7, 6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    got = retrieval_metrics(x, y, k=(1, 5, 100))
    assert got["recall_at_k"][5] == got["recall_at_k"][100] == 1.0
    _assert_close(got, brute_force(x, y, None, None, (1, 5, 100)))


def test_k_as_int_and_unsorted_sequence() -> None:
    x, y = _data(8, 20, 3)
    assert list(retrieval_metrics(x, y, k=3)["recall_at_k"]) == [3]
    assert list(retrieval_metrics(x, y, k=[5, 1, 5])["recall_at_k"]) == [1, 5]


def test_half_precision_inputs() -> None:
    x, y = _data(9, 30, 3, dtype=torch.float32)
    half = retrieval_metrics(x.half(), y)
    assert all(math.isfinite(v) for v in (half["precision_at_1"], half["r_precision"]))


def test_no_relevant_reference_anywhere_raises() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="no query has a reference with the same label"):
        retrieval_metrics(x, torch.arange(4))
    with pytest.raises(ValueError, match="no query has a reference with the same label"):
        retrieval_metrics(x[:1], torch.tensor([0]))  # leave-one-out with a single query


def test_no_warning_when_some_query_is_evaluated() -> None:
    x = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = retrieval_metrics(x, torch.tensor([0, 0, 1, 2]))
    assert got["precision_at_1"] == 1.0  # only queries 0 and 1 count


def test_errors() -> None:
    x, y = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="unknown metric"):
        retrieval_metrics(x, y, metric="manhattan")
    with pytest.raises(ValueError, match="k must be >= 1"):
        retrieval_metrics(x, y, k=(1, 0))
    with pytest.raises(TypeError, match="k must be"):
        retrieval_metrics(x, y, k=())
    with pytest.raises(TypeError, match="k must be an int"):
        retrieval_metrics(x, y, k=(1.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        retrieval_metrics(x, y, chunk_size=0)
    with pytest.raises(ValueError, match="given together"):
        retrieval_metrics(x, y, ref_embeddings=x)
    with pytest.raises(ValueError, match="given together"):
        retrieval_metrics(x, y, ref_labels=y)
    with pytest.raises(ValueError, match="4 features"):
        retrieval_metrics(x, y, ref_embeddings=torch.randn(2, 4), ref_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="entries"):
        retrieval_metrics(x, y[:3])
    with pytest.raises(TypeError, match="integer"):
        retrieval_metrics(x, y.bool())
    with pytest.raises(ValueError, match="NaN or Inf"):
        retrieval_metrics(torch.full((2, 3), float("nan")), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="query is empty"):
        retrieval_metrics(torch.empty(0, 3), torch.empty(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="ref_embeddings is empty"):
        retrieval_metrics(
            x, y, ref_embeddings=torch.empty(0, 3), ref_labels=torch.empty(0, dtype=torch.int64)
        )
    with pytest.raises(ValueError, match="overflow"):
        retrieval_metrics(torch.tensor([[3e38], [-3e38]]), torch.tensor([0, 0]))


def test_result_reads_as_a_dict_and_as_attributes() -> None:
    """``RetrievalMetrics`` is the dict of tripletkit 0.1 (keys, ``dict()``, equality,
    ``json.dumps``) with the same values as attributes."""
    x, y = _data(10, 30, 4)
    got = retrieval_metrics(x, y, k=(1, 5))
    assert isinstance(got, RetrievalMetrics) and isinstance(got, dict)
    assert list(got) == list(KEYS)
    for key in KEYS:
        assert getattr(got, key) == got[key]
    assert got.recall_at_k == {1: got.precision_at_1, 5: got["recall_at_k"][5]}
    plain = dict(got)
    assert type(plain) is dict and plain == got
    assert json.loads(json.dumps(got)) == {
        **{key: got[key] for key in KEYS if key != "recall_at_k"},
        "recall_at_k": {str(k): v for k, v in got.recall_at_k.items()},
    }
    text = repr(got)
    assert text.startswith("RetrievalMetrics(") and f"precision_at_1={got.precision_at_1!r}" in text
    built = RetrievalMetrics(0.5, {1: 0.5}, 0.25, 0.125)
    assert built == {
        "precision_at_1": 0.5,
        "recall_at_k": {1: 0.5},
        "r_precision": 0.25,
        "mean_average_precision_at_r": 0.125,
    }
    assert (built.r_precision, built.mean_average_precision_at_r) == (0.25, 0.125)


# --- pytorch-metric-learning's AccuracyCalculator --------------------------------------


def _well_separated(seed: int, n: int, classes: int, metric: str, ref_n: int = 0):
    """float32 data whose sorted distances differ by more than float32 rounding, so that
    PML's and tripletkit's float32 distance computations rank the neighbours alike."""
    for s in range(seed, seed + 200):
        q, ql = _data(s, n, classes, dtype=torch.float32)
        r, rl = _data(s + 1000, ref_n, classes, dtype=torch.float32) if ref_n else (q, ql)
        qd, rd = q.double(), r.double()
        if metric == "cosine":
            qd, rd = torch.nn.functional.normalize(qd), torch.nn.functional.normalize(rd)
        gaps = torch.cdist(qd, rd).sort(dim=1).values.diff(dim=1)
        if gaps.min() > 2e-5:
            return q, ql, r, rl
    raise AssertionError("no well separated sample found")


def _pml_calculator(metric: str):
    pytest.importorskip("sklearn")
    accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    distance = (
        distances.CosineSimilarity()
        if metric == "cosine"
        else distances.LpDistance(normalize_embeddings=False)
    )
    return accuracy.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k=None,
        device=torch.device("cpu"),
        knn_func=inference.CustomKNN(distance),
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_pml_leave_one_out(metric: str) -> None:
    calculator = _pml_calculator(metric)
    q, ql, _, _ = _well_separated(10, 40, 8, metric)
    ql[:2] = torch.tensor([500, 501])  # two lone queries, which PML leaves out
    expected = calculator.get_accuracy(q, ql)
    got = retrieval_metrics(q, ql, metric=metric, chunk_size=16)
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r"):
        assert got[key] == pytest.approx(expected[key], abs=PML_TOL), key
    assert got["recall_at_k"][1] == pytest.approx(expected["precision_at_1"], abs=PML_TOL)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_pml_with_reference_set(metric: str) -> None:
    calculator = _pml_calculator(metric)
    q, ql, r, rl = _well_separated(20, 30, 6, metric, ref_n=40)
    ql[:3] = 99  # queries whose label is absent from the reference set
    expected = calculator.get_accuracy(q, ql, r, rl)
    got = retrieval_metrics(q, ql, ref_embeddings=r, ref_labels=rl, metric=metric, chunk_size=9)
    for key in ("precision_at_1", "r_precision", "mean_average_precision_at_r"):
        assert got[key] == pytest.approx(expected[key], abs=PML_TOL), key


def test_where_pml_returns_nan_we_raise() -> None:
    calculator = _pml_calculator("euclidean")
    q = torch.randn(5, 3)
    ql = torch.arange(5)
    expected = calculator.get_accuracy(q, ql)
    assert all(math.isnan(expected[key]) for key in ("precision_at_1", "r_precision"))
    with pytest.raises(ValueError, match="no query has a reference with the same label"):
        retrieval_metrics(q, ql)
