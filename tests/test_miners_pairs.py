"""``tripletkit.miners.pairs``: multi-similarity and pair-margin mining (functions and
modules), against explicit loops over every pair (:func:`reference.ms_loop`,
:func:`reference.pm_loop`) and pytorch-metric-learning."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import MODES, ms_loop, pm_loop, random_problem

from tripletkit.losses import contrastive_loss
from tripletkit.miners import (
    MultiSimilarityMiner,
    PairMarginMiner,
    make_generator,
    multi_similarity_pairs,
    pair_margin_pairs,
)
from tripletkit.types import Pairs

#: Random problems each loop comparison draws.
LOOP_EXAMPLES = 60
#: ``(seed, n, d, classes, mode)`` of :func:`reference.random_problem`.
PROBLEMS = st.tuples(
    st.integers(0, 10_000),
    st.integers(0, 12),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(MODES),
)


def pair_list(pairs: Pairs) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    return (
        list(zip(pairs.anchor_pos.tolist(), pairs.positive.tolist(), strict=True)),
        list(zip(pairs.anchor_neg.tolist(), pairs.negative.tolist(), strict=True)),
    )


def _unit(n: int, d: int = 3) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=make_generator(n)), dim=1)


@settings(max_examples=LOOP_EXAMPLES, deadline=None)
@given(
    PROBLEMS,
    st.sampled_from([-0.2, 0.0, 0.1, 0.5]),
    st.sampled_from(["cosine", "euclidean", "sqeuclidean"]),
)
def test_multi_similarity_matches_loop(problem: tuple, epsilon: float, metric: str) -> None:
    p = random_problem(*problem)
    out = multi_similarity_pairs(p.emb, p.labels, epsilon, metric, **p.kwargs)
    assert pair_list(out) == ms_loop(p, epsilon, metric)  # same pairs, row-major


@settings(max_examples=LOOP_EXAMPLES, deadline=None)
@given(
    PROBLEMS,
    st.sampled_from([(0.0, 1.0), (0.5, 1.5), (1.0, 0.5)]),
    st.sampled_from(["cosine", "euclidean", "sqeuclidean"]),
)
def test_pair_margin_matches_loop(problem: tuple, margins: tuple, metric: str) -> None:
    p = random_problem(*problem)
    out = pair_margin_pairs(p.emb, p.labels, *margins, metric, **p.kwargs)
    assert pair_list(out) == pm_loop(p, *margins, metric)


def test_pair_margin_keeps_exactly_the_nonzero_contrastive_terms() -> None:
    p = random_problem(3, 20, 4, 3)
    pairs = PairMarginMiner(pos_margin=0.5, neg_margin=2.0)(p.emb, p.labels)
    mined = contrastive_loss(p.emb, p.labels, pairs, 0.5, 2.0, reduction="none")
    assert bool((mined > 0).all())
    every = contrastive_loss(p.emb, p.labels, None, 0.5, 2.0, reduction="sum")
    torch.testing.assert_close(mined.sum(), every)


def test_modules_wrap_the_functions() -> None:
    """The hyper-parameters are positional: ``MultiSimilarityMiner(epsilon, metric)``,
    ``PairMarginMiner(pos_margin, neg_margin, metric)``."""
    p = random_problem(4, 16, 3, 3)
    assert pair_list(MultiSimilarityMiner(0.2, "euclidean")(p.emb, p.labels)) == pair_list(
        multi_similarity_pairs(p.emb, p.labels, epsilon=0.2, metric="euclidean")
    )
    assert pair_list(PairMarginMiner(0.1, 1.2)(p.emb, p.labels)) == pair_list(
        pair_margin_pairs(p.emb, p.labels, pos_margin=0.1, neg_margin=1.2)
    )
    assert pair_list(PairMarginMiner(0.1, 1.2, "cosine")(p.emb, p.labels)) == pair_list(
        pair_margin_pairs(p.emb, p.labels, 0.1, 1.2, "cosine")
    )
    assert "epsilon=0.2" in repr(MultiSimilarityMiner(0.2))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_ref", [False, True])
def test_multi_similarity_matches_pytorch_metric_learning(distance: str, with_ref: bool) -> None:
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

    pml_distance = CosineSimilarity() if distance == "cosine" else LpDistance()  # normalises
    for seed in range(5):
        p = random_problem(seed, 24, 6, 4, "ref" if with_ref else "self")
        for epsilon in [0.05, 0.1, 0.3]:
            theirs = pml_miners.MultiSimilarityMiner(epsilon, distance=pml_distance)(*p.args)
            ours = multi_similarity_pairs(
                p.emb, p.labels, epsilon, distance, normalize=True, **p.kwargs
            )
            t_pos, t_neg = pair_list(Pairs(*theirs))
            o_pos, o_neg = pair_list(ours)
            assert sorted(t_pos) == o_pos and sorted(t_neg) == o_neg


# --------------------------------------------------------------------------------------------
# Awkward batches, shared by both pair miners

PAIR_MINERS = {
    "multi_similarity": multi_similarity_pairs,
    # Margins that keep every pair.
    "pair_margin": lambda *a, **k: pair_margin_pairs(*a, pos_margin=-1.0, neg_margin=10.0, **k),
}


def _is_empty(out: object) -> bool:
    return isinstance(out, Pairs) and all(t.numel() == 0 for t in out)


@pytest.mark.parametrize("name", list(PAIR_MINERS))
def test_awkward_batches(name: str) -> None:
    fn = PAIR_MINERS[name]
    one_class = fn(_unit(5), torch.zeros(5, dtype=torch.long))
    distinct = fn(_unit(5), torch.arange(5))
    if name == "pair_margin":  # the contrastive loss has terms on one side only
        assert (one_class.num_positive, one_class.num_negative) == (20, 0)
        assert (distinct.num_positive, distinct.num_negative) == (0, 20)
    else:
        assert _is_empty(one_class) and _is_empty(distinct)
    assert _is_empty(fn(_unit(0), torch.zeros(0, dtype=torch.long)))  # N = 0
    assert _is_empty(fn(_unit(1), torch.zeros(1, dtype=torch.long)))  # N = 1
    # Empty reference set.
    empty_ref = {"ref_embeddings": _unit(0), "ref_labels": torch.zeros(0, dtype=torch.long)}
    assert _is_empty(fn(_unit(3), torch.arange(3), **empty_ref))
    # A singleton class: anchor 4 has no positive but is everyone's negative.
    x, labels = _unit(5), torch.tensor([0, 0, 1, 1, 2])
    out = fn(x, labels)
    assert isinstance(out, Pairs)
    assert 4 not in out.anchor_pos.tolist()
    # A reference set where the anchors are not among the references: (a, a) is a positive.
    out = fn(x, labels, ref_embeddings=x, ref_labels=labels)
    if name != "multi_similarity":  # the self pair is the easiest positive: MS may drop it
        assert bool((out.anchor_pos == out.positive).any())
    # ...and with anchor_offset they are, so it is not.
    out = fn(x, labels, ref_embeddings=x, ref_labels=labels, anchor_offset=0)
    assert not bool((out.anchor_pos == out.positive).any())


@pytest.mark.parametrize("name", list(PAIR_MINERS))
def test_bad_input_is_refused(name: str) -> None:
    fn = PAIR_MINERS[name]
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
    with pytest.raises(ValueError, match="unknown metric"):
        MultiSimilarityMiner(metric="manhattan")
    with pytest.raises(ValueError, match="unknown metric"):
        pair_margin_pairs(x, labels, metric="dot")
    with pytest.raises(ValueError, match="unknown metric"):
        multi_similarity_pairs(x, labels, metric="dot")
    with pytest.raises(TypeError, match="epsilon"):
        MultiSimilarityMiner(epsilon="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        multi_similarity_pairs(x, labels, epsilon=math.inf)
    with pytest.raises(ValueError, match="neg_margin"):
        PairMarginMiner(neg_margin=math.nan)
    with pytest.raises(ValueError, match="pos_margin"):
        pair_margin_pairs(x, labels, pos_margin=math.nan)
    with pytest.raises(TypeError, match="normalize"):
        PairMarginMiner(normalize=1)  # type: ignore[arg-type]
