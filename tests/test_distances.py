"""``pairwise_distance`` and ``paired_distance`` against explicit loops over rows."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, METRICS
from reference import distance, distance_matrix

from tripletkit.distances import normalize_embeddings, paired_distance, pairwise_distance

pytestmark = pytest.mark.usefixtures("one_thread")

#: The duplicate tests: ``ROWS`` rows of width ``WIDTH``, then copies of the first ``COPIES``.
ROWS, WIDTH, COPIES = 20, 5, 3


def _with_copies(x: torch.Tensor) -> torch.Tensor:
    """``x`` followed by copies of its first :data:`COPIES` rows (rows ``ROWS ..``)."""
    return torch.cat([x, x[:COPIES]])


def _x_y(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    c = CASES[name]
    return c.x, c.ref


@pytest.mark.parametrize("name", tuple(CASES))
@pytest.mark.parametrize("with_y", [False, True])
def test_pairwise_matches_loops(name: str, with_y: bool, metric: str) -> None:
    x, y = _x_y(name)
    if with_y and y is None:
        g = torch.Generator().manual_seed(5)
        y = torch.cat([x[:2], torch.randn(3, x.shape[1], generator=g, dtype=torch.float64)])
    if not with_y:
        y = None
    got = pairwise_distance(x, y, metric)
    expected = distance_matrix(x, y, metric)
    assert got.dtype == torch.float64
    assert got.shape == (x.shape[0], (x if y is None else y).shape[0])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["generic", "duplicates", "grid", "refs"])
def test_pairwise_gradient_matches_loops(name: str, metric: str) -> None:
    c = CASES[name]
    x, y = c.leaves()
    w = torch.linspace(0.5, 1.5, x.shape[0] * (y if y is not None else x).shape[0])
    w = w.reshape(x.shape[0], -1).double()
    got = torch.autograd.grad(
        (pairwise_distance(x, y, metric) * w).sum(), [t for t in (x, y) if t is not None]
    )
    x2, y2 = c.leaves()
    exp = torch.autograd.grad(
        (distance_matrix(x2, y2, metric) * w).sum(), [t for t in (x2, y2) if t is not None]
    )
    for g, e in zip(got, exp, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_duplicates_are_at_distance_exactly_zero(metric: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, WIDTH, generator=g, dtype=torch.float64)
    x = _with_copies(x).to(dtype).requires_grad_()
    d = pairwise_distance(x, metric=metric)
    zero = torch.zeros(ROWS + COPIES, dtype=dtype)
    assert torch.equal(d.diagonal().detach(), zero), "d(x_i, x_i) must be exactly 0"
    for i, j in [(i, ROWS + i) for i in range(COPIES)]:
        assert d[i, j].item() == 0.0 and d[j, i].item() == 0.0, (i, j)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("exact_metric", ["euclidean", "sqeuclidean"])
def test_exact_duplicates_create_exact_ties_when_arithmetic_is_exact(
    exact_metric: str, dtype: torch.dtype
) -> None:
    """With small integer coordinates every product and sum is exact, so identical
    references are at identical distances from every anchor, whatever their column."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 5, (ROWS, WIDTH), generator=g).to(torch.float64)
    x = _with_copies(x).to(dtype)
    d = pairwise_distance(x, metric=exact_metric)
    originals, copies = d[:, :COPIES], d[:, ROWS:]
    assert torch.equal(originals, copies), (originals - copies).abs().max()
    assert torch.equal(d[:COPIES], d[ROWS:]), (d[:COPIES] - d[ROWS:]).abs().max()


def test_duplicates_tie_up_to_rounding_in_general(metric: str) -> None:
    """In general the matrix product may round two identical columns differently in the
    last bit (documented): the distances to duplicates agree to a few ulps."""
    g = torch.Generator().manual_seed(1)
    x = _with_copies(torch.randn(ROWS, WIDTH, generator=g, dtype=torch.float64))
    d = pairwise_distance(x, metric=metric)
    torch.testing.assert_close(d[:, :COPIES], d[:, ROWS:], rtol=1e-14, atol=1e-14)


def test_euclidean_gradient_at_duplicates_is_zero() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], dtype=torch.float64, requires_grad=True)
    d = pairwise_distance(x)
    assert d[0, 1].item() == 0.0
    (gx,) = torch.autograd.grad(d[0, 1], x)
    assert torch.equal(gx, torch.zeros_like(x))
    (gx,) = torch.autograd.grad(pairwise_distance(x)[0, 2], x)
    torch.testing.assert_close(gx[0], torch.tensor([-0.6, -0.8], dtype=torch.float64))


@pytest.mark.parametrize("name", ["generic", "duplicates", "grid"])
def test_paired_matches_loops(name: str, metric: str) -> None:
    c = CASES[name]
    x = c.x
    y = c.x.flip(0)
    got = paired_distance(x, y, metric)
    expected = torch.stack([distance(x[i], y[i], metric) for i in range(x.shape[0])])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_normalize_embeddings_unit_rows() -> None:
    x = CASES["generic"].x
    n = normalize_embeddings(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(n[i], x[i] / torch.sqrt((x[i] ** 2).sum()))


def test_gradcheck_pairwise(metric: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pairwise_distance(a, b, metric), (x, y))
    assert torch.autograd.gradcheck(lambda a: pairwise_distance(a, None, metric).triu(1), (x,))
    assert torch.autograd.gradcheck(lambda a, b: paired_distance(a, b, metric), (x, y[:4]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(metric: str, dtype: torch.dtype) -> None:
    x = CASES["generic"].x.to(dtype)
    d = pairwise_distance(x, metric=metric)
    assert d.dtype == torch.float32
    expected = distance_matrix(x.double(), None, metric)
    torch.testing.assert_close(d.double(), expected, rtol=1e-4, atol=1e-4)


def test_float32_agrees_with_float64(metric: str) -> None:
    x = CASES["generic"].x
    d32 = pairwise_distance(x.float(), metric=metric)
    assert d32.dtype == torch.float32
    torch.testing.assert_close(
        d32.double(), pairwise_distance(x, metric=metric), rtol=1e-5, atol=1e-5
    )


def test_mixed_dtypes_promote() -> None:
    x = CASES["generic"].x
    d = pairwise_distance(x.float(), x[:3])
    assert d.dtype == torch.float64


def test_empty_shapes(metric: str) -> None:
    assert pairwise_distance(torch.zeros(0, 3), metric=metric).shape == (0, 0)
    assert pairwise_distance(torch.ones(2, 3), torch.zeros(0, 3), metric).shape == (2, 0)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "exc", "words"),
    [
        (torch.zeros(3), None, {}, ValueError, ["2-D"]),
        (torch.zeros(2, 3, 1), None, {}, ValueError, ["2-D"]),
        (torch.zeros(2, 3, dtype=torch.int64), None, {}, TypeError, ["floating"]),
        (torch.zeros(2, 0), None, {}, ValueError, ["feature"]),
        ([[0.0, 1.0]], None, {}, TypeError, ["Tensor"]),
        (torch.tensor([[0.0, float("nan")]]), None, {}, ValueError, ["NaN"]),
        (torch.tensor([[0.0, float("inf")]]), None, {}, ValueError, ["Inf"]),
        (torch.zeros(2, 2), torch.tensor([[float("nan"), 0.0]]), {}, ValueError, ["NaN"]),
        (torch.zeros(2, 2), torch.zeros(2, 3), {}, ValueError, ["features"]),
        (
            torch.zeros(2, 2),
            None,
            {"metric": "manhattan"},
            ValueError,
            ["manhattan", *(repr(m) for m in METRICS)],
        ),
    ],
)
def test_bad_input(x: object, y: object, kwargs: dict, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        pairwise_distance(x, y, **kwargs)  # type: ignore[arg-type]
    for w in words:
        assert w in str(info.value)
