"""Precision of close points: the loss of selected pairs comes from the difference form.

A distance matrix from one matrix product (the Gram form ``|a|^2 + |b|^2 - 2 a.b``) is off by
up to ~1e-4 at ``d ~ 0.004`` between unit-norm float32 points (``benchmarks/precision.py``
measures it); the selection is made on that matrix, but the loss of the selected triplets
(batch-hard, semi-hard, a miner's triplets in ``TripletMarginLoss``) is computed from the
rows in the difference form ``sum((a - b)^2)``, exact to float32 rounding.

The batch: eight float32 points ``c + 0.002 t u`` with ``|c| = 1``, ``u`` a unit direction
orthogonal to ``c`` and ``t`` the marks of a Golomb ruler (0 1 4 9 15 22 32 34: every pairwise
difference is distinct), so every pairwise distance is a distinct multiple of 0.002 between
0.002 and 0.068: the Gram form's errors (< 2e-4) cannot change a selection, and the
selection of the float64 brute force is the library's. Each loss is compared with the float64
brute force on the same float32 points; each test also shows that the Gram form's values
would miss that tolerance (the test can fail).
"""

from __future__ import annotations

import pytest
import torch
from reference import LazyDistances, Problem, distance_matrix, term
from reference import batch_hard_triplets as ref_batch_hard
from reference import ranked_triplets as ref_ranked
from reference import semi_hard_triplets as ref_semi_hard

import tripletkit
from tripletkit.distances import paired_distance, pairwise_distance
from tripletkit.losses import (
    TripletMarginLoss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)
from tripletkit.miners import batch_hard_triplets, semi_hard_triplets

pytestmark = pytest.mark.usefixtures("one_thread")

GOLOMB = (0, 1, 4, 9, 15, 22, 32, 34)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
#: float32 rounding of terms of size ~0.05 to 0.7 (a few ulp), far below the Gram form's
#: errors: ~1e-5 on a Euclidean distance, ~1e-7 on a squared one (itself ~1e-5 here).
EXACT = {
    "euclidean": {"rtol": 1e-6, "atol": 1e-7},
    "sqeuclidean": {"rtol": 1e-7, "atol": 1e-8},
}
#: Margins: the hinge region boundaries (multiples of 0.002) never tie with 0.051.
MARGIN = 0.051
METRICS = ("euclidean", "sqeuclidean")


def _close_points(dim: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.randn(dim, generator=g, dtype=torch.float64), dim=0)
    u = torch.randn(dim, generator=g, dtype=torch.float64)
    u = torch.nn.functional.normalize(u - (u @ c) * c, dim=0)
    t = torch.tensor(GOLOMB, dtype=torch.float64)
    return (c + 0.002 * t[:, None] * u).float()


def _reference_terms(
    x32: torch.Tensor, select, metric: str, soft_margin: bool
) -> tuple[torch.Tensor, list]:
    """The float64 brute force on the float32 points: its selection and terms."""
    x64 = x32.double()
    pb = Problem(distance_matrix(x64, None, metric), LABELS)
    triplets = select(pb)
    d = LazyDistances(x64, x64, metric)
    terms = [term(d(a, p), d(a, n), MARGIN, soft_margin) for a, p, n in triplets]
    return torch.stack(terms), triplets


def _gram_terms(x32: torch.Tensor, triplets: list, metric: str, soft_margin: bool) -> torch.Tensor:
    """The same triplets' terms from the Gram-form matrix (what the selection sees)."""
    dist = pairwise_distance(x32, metric=metric).double()
    return torch.stack([term(dist[a, p], dist[a, n], MARGIN, soft_margin) for a, p, n in triplets])


def _check(got: torch.Tensor, x32: torch.Tensor, select, metric: str, soft_margin: bool) -> None:
    want, triplets = _reference_terms(x32, select, metric, soft_margin)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, **EXACT[metric])
    if metric == "sqeuclidean" and soft_margin:
        return  # the Gram form's ~1e-7 is below the rounding of a term of ~0.69
    gram = _gram_terms(x32, triplets, metric, soft_margin)
    with pytest.raises(AssertionError):  # the Gram form would not pass this comparison
        torch.testing.assert_close(gram, want, **EXACT[metric])


def test_the_batch_is_what_the_docstring_says() -> None:
    x = _close_points().double()
    d = distance_matrix(x, None, "euclidean")
    off = d[~torch.eye(8, dtype=torch.bool)]
    assert float(off.min()) == pytest.approx(0.002, rel=1e-4)
    gaps = off.unique().diff()
    assert float(gaps.min()) > 0.0019  # distinct distances, 0.002 apart
    assert float(x.norm(dim=1).min()) >= 1.0
    gram = pairwise_distance(x.float()).double()
    assert float((gram - d).abs().max()) < 2e-4  # far below the gaps: same selections
    assert float((gram - d).abs().max()) > 1e-6  # and far above float32 rounding


@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_loss_is_exact(metric: str, soft_margin: bool, backend: str) -> None:
    x = _close_points()
    got = batch_hard_triplet_loss(x, LABELS, MARGIN, metric, soft_margin, "none", backend=backend)
    _check(got, x, ref_batch_hard, metric, soft_margin)


@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_rank_windows_read_from_the_matrix_are_exact(metric: str, backend: str) -> None:
    """Wide windows select more triplets than a quarter of the matrix: their distances are
    read from the matrix in the graph, with the difference form's values."""
    x = _close_points()
    windows = {"positive_ranks": (0, 3), "negative_ranks": (0, 5)}
    got = batch_hard_triplet_loss(
        x, LABELS, MARGIN, metric, reduction="none", backend=backend, **windows
    )
    _check(got, x, lambda pb: ref_ranked(pb, (0, 3), (0, 5)), metric, False)


@pytest.mark.parametrize("checks", [True, False], ids=["checks_on", "checks_off"])
@pytest.mark.parametrize("metric", METRICS)
def test_semi_hard_loss_is_exact(metric: str, checks: bool, backend: str) -> None:
    """With the checks off and no ``max_positives`` the torch kernels select over the whole
    ``[N, M]`` matrix (the read-from-the-matrix path); with them on, by positive slots."""
    x = _close_points()
    with tripletkit.set_input_checks(checks):
        got = semi_hard_triplet_loss(x, LABELS, MARGIN, metric, reduction="none", backend=backend)
    _check(got, x, ref_semi_hard, metric, False)


@pytest.mark.parametrize("metric", METRICS)
def test_miner_and_triplet_margin_loss_are_exact(metric: str, backend: str) -> None:
    x = _close_points()
    loss = TripletMarginLoss(MARGIN, metric, reduction="none")
    for mine, select in (
        (batch_hard_triplets, ref_batch_hard),
        (semi_hard_triplets, ref_semi_hard),
    ):
        triplets = mine(x, LABELS, metric=metric, backend=backend)
        _check(loss(x, LABELS, triplets), x, select, metric, False)


def test_paired_cosine_uses_the_difference_form() -> None:
    """``1 - cos`` of close unit vectors cancels to ~eps absolute; ``|x^ - y^|^2 / 2`` keeps
    the relative precision (the error of the normalisation itself, ~eps / theta, remains)."""
    x = _close_points()
    a, b = x[:1].expand(7, -1), x[1:]
    x64 = x.double()
    want = 1 - torch.nn.functional.cosine_similarity(x64[:1], x64[1:])
    got = paired_distance(a, b, "cosine").double()
    naive = 1 - torch.nn.functional.cosine_similarity(a, b).double()
    assert float(((got - want) / want).abs().max()) < 1e-3
    assert float(((naive - want) / want).abs().max()) > 1e-2
    zero = torch.zeros(1, 32)
    assert paired_distance(zero, x[:1], "cosine").item() == 1.0  # a zero row: distance 1
    assert paired_distance(zero, zero, "cosine").item() == 1.0
