"""Hypothesis properties: equivariance, invariance and region algebra on small batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import as_list, problem

from tripletkit import miners
from tripletkit.losses import (
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
)
from tripletkit.stats import triplet_stats

#: Random batches per property.
EXAMPLES = 25
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GRID = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)
TYPES = ("all", "hard", "semihard", "easy")
FUSED = (batch_all_triplet_loss, batch_hard_triplet_loss, semi_hard_triplet_loss)
#: Seeds are drawn from ``[0, SEED_MAX]``.
SEED_MAX = 2**31 - 1
#: Slack of the comparisons between two float64 losses of the same terms (summed in another
#: order, or under another labelling).
EXACT = 1e-12

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def batches(draw: st.DrawFn, grid: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(x [N, D] float64, labels [N], on_grid)`` with N <= 12 and up to 4 classes.

    Continuous batches come from a seeded normal draw (no ties); grid batches have small
    integer coordinates, so every distance is exact and ties are frequent.
    """
    n = draw(st.integers(0, 12))
    labels = torch.tensor(
        draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.int64
    )
    dim = draw(st.integers(1, 4))
    on_grid = draw(st.booleans()) if grid is None else grid
    g = torch.Generator().manual_seed(draw(st.integers(0, SEED_MAX)))
    if on_grid:
        x = GRID[torch.randint(0, 4, (n, dim), generator=g)]
    else:
        x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, labels, on_grid


def _miners(margin: float) -> dict:
    """Every miner, as ``name -> f(x, labels, backend)``."""
    out = {
        "batch_all_valid": lambda x, y, b: miners.batch_all_triplets(
            x, y, margin=margin, active_only=False, backend=b
        ),
        "batch_all_active": lambda x, y, b: miners.batch_all_triplets(
            x, y, margin=margin, active_only=True, backend=b
        ),
        "batch_hard": lambda x, y, b: miners.batch_hard_triplets(x, y, backend=b),
        "semi_hard": lambda x, y, b: miners.semi_hard_triplets(x, y, margin=margin, backend=b),
        "semi_hard_active": lambda x, y, b: miners.semi_hard_triplets(
            x, y, margin=margin, active_only=True, backend=b
        ),
    }
    for t in TYPES:
        out[t] = lambda x, y, b, t=t: miners.triplet_margin_triplets(
            x, y, margin=margin, type_of_triplets=t, backend=b
        )
    return out


@SETTINGS
@given(data=batches(), margin=st.sampled_from([0.0, 0.3, 1.0]), perm_seed=st.integers(0, SEED_MAX))
def test_permuting_the_batch_permutes_the_triplets(
    backend: str, data: tuple, margin: float, perm_seed: int
) -> None:
    x, labels, on_grid = data
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(perm_seed))
    d = problem(x, labels).d
    for name, mine in _miners(margin).items():
        original = as_list(mine(x, labels, backend))
        permuted = as_list(mine(x[perm], labels[perm], backend))
        back = [(int(perm[a]), int(perm[p]), int(perm[n])) for a, p, n in permuted]
        if on_grid and name in ("batch_hard", "semi_hard", "semi_hard_active"):
            # Ties are broken by index, which a permutation changes: the distances chosen
            # are still the same.
            if name == "batch_hard":
                key = lambda t: (t[0], d[t[0]][t[1]], d[t[0]][t[2]])  # noqa: E731
            else:
                key = lambda t: (t[0], t[1], d[t[0]][t[2]])  # noqa: E731
            assert sorted(map(key, back)) == sorted(map(key, original)), name
        else:
            assert len(back) == len(original), name
            assert set(back) == set(original), name


@SETTINGS
@given(
    data=batches(),
    targets=st.lists(st.integers(-(2**40), 2**40), min_size=4, max_size=4, unique=True),
    metric=st.sampled_from(["euclidean", "sqeuclidean", "cosine"]),
)
def test_relabelling_changes_nothing(backend: str, data: tuple, targets: list, metric: str) -> None:
    x, labels, _ = data
    if metric == "cosine":
        x = x + 3.0  # no zero rows
    relabelled = torch.tensor(targets, dtype=torch.int64)[labels]
    for name, mine in _miners(0.3).items():
        if name in TYPES:
            got = miners.triplet_margin_triplets(
                x, relabelled, margin=0.3, type_of_triplets=name, metric=metric, backend=backend
            )
            want = miners.triplet_margin_triplets(
                x, labels, margin=0.3, type_of_triplets=name, metric=metric, backend=backend
            )
        else:
            got, want = mine(x, relabelled, backend), mine(x, labels, backend)
        assert as_list(got) == as_list(want), name
    for fn in FUSED:
        for soft in (False, True):
            a = fn(x, relabelled, 0.3, metric, soft, "mean", backend=backend)
            b = fn(x, labels, 0.3, metric, soft, "mean", backend=backend)
            torch.testing.assert_close(a, b, rtol=EXACT, atol=EXACT)
    torch.testing.assert_close(
        contrastive_loss(x, relabelled, metric=metric), contrastive_loss(x, labels, metric=metric)
    )
    assert triplet_stats(x, relabelled, 0.3, metric, backend=backend) == triplet_stats(
        x, labels, 0.3, metric, backend=backend
    )
    narrow = (labels * 7 - 5).to(torch.int32)  # another injective map, another dtype
    assert triplet_stats(x, narrow, 0.3, metric, backend=backend) == triplet_stats(
        x, labels, 0.3, metric, backend=backend
    )


@SETTINGS
@given(data=batches(), margin=st.floats(0.0, 3.0) | st.sampled_from([0.0, 1.0, 2.0]))
def test_region_algebra_and_stats(backend: str, data: tuple, margin: float) -> None:
    x, labels, _ = data
    region = {
        t: set(
            as_list(
                miners.triplet_margin_triplets(
                    x, labels, margin=margin, type_of_triplets=t, backend=backend
                )
            )
        )
        for t in TYPES
    }
    valid = set(
        as_list(
            miners.batch_all_triplets(x, labels, margin=margin, active_only=False, backend=backend)
        )
    )
    active = set(as_list(miners.batch_all_triplets(x, labels, margin=margin, backend=backend)))
    assert region["hard"] <= region["all"]
    assert region["semihard"] <= region["all"]
    assert region["hard"] | region["semihard"] == region["all"]
    assert not region["hard"] & region["semihard"]
    assert region["easy"] | region["all"] == valid
    assert not region["easy"] & region["all"]
    assert active <= region["all"]
    assert valid == set(problem(x, labels).valid())
    stats = triplet_stats(x, labels, margin, backend=backend)
    assert stats.valid == len(valid)
    assert stats.easy == len(region["easy"])
    assert stats.semi_hard == len(region["semihard"])
    assert stats.hard == len(region["hard"])
    semi = set(as_list(miners.semi_hard_triplets(x, labels, margin=margin, backend=backend)))
    assert semi <= valid
    hard = as_list(miners.batch_hard_triplets(x, labels, backend=backend))
    assert set(hard) <= valid
    assert len({a for a, _, _ in hard}) == len(hard) == len({a for a, _, _ in valid})


@SETTINGS
@given(data=batches(), margin=st.floats(0.0, 2.0))
def test_mean_nonzero_is_at_least_mean(backend: str, data: tuple, margin: float) -> None:
    x, labels, _ = data
    for fn in FUSED:
        mean = fn(x, labels, margin, reduction="mean", backend=backend)
        nonzero = fn(x, labels, margin, reduction="mean_nonzero", backend=backend)
        total = fn(x, labels, margin, reduction="sum", backend=backend)
        assert float(nonzero) >= float(mean) - EXACT
        assert float(total) >= float(nonzero) - EXACT or float(total) == 0.0
        assert float(mean) >= 0.0
    triplets = miners.batch_all_triplets(
        x, labels, margin=margin, active_only=False, backend=backend
    )
    mean = TripletMarginLoss(margin, reduction="mean")(x, labels, triplets)
    nonzero = TripletMarginLoss(margin, reduction="mean_nonzero")(x, labels, triplets)
    assert float(nonzero) >= float(mean) - EXACT


@pytest.mark.parametrize("seed", range(3))
def test_batch_generator_covers_both_kinds(seed: int) -> None:
    """Guard for the strategy itself: it yields ties on the grid and none off it."""
    x = GRID[torch.randint(0, 4, (12, 2), generator=torch.Generator().manual_seed(seed))]
    d = problem(x, torch.zeros(12, dtype=torch.int64)).d
    assert len({v for row in d for v in row}) < 12 * 12 // 2
