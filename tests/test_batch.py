"""``tripletkit._batch``: ``prepare``, the one first step of every miner, loss and statistic.

It validates everything before the distance matrix is built, so that bad input costs no
``N x M`` computation; its :class:`~tripletkit._batch.Batch` holds what every kernel needs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import BAD_INPUTS, CASES, METRICS, X, Y
from reference import distance_matrix, normalize_rows
from reference import self_index as loop_self_index

import tripletkit._batch as batch_module
from tripletkit import set_input_checks
from tripletkit._batch import Batch, check_anchor_offset, check_options, prepare
from tripletkit.losses import BatchHardTripletLoss, batch_all_triplet_loss
from tripletkit.miners import batch_hard_triplets
from tripletkit.stats import triplet_stats


class _NoDistances(AssertionError):
    """Raised by the patched distance function: a matrix was about to be computed."""


@pytest.fixture
def no_distances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any distance matrix computed by ``prepare`` raises :class:`_NoDistances`."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise _NoDistances("prepare() computed distances before refusing its input")

    monkeypatch.setattr(batch_module, "_pairwise_distance_unchecked", refuse)


@pytest.mark.parametrize("backend", ["cuda", "gpu", "Numba", "", None, 1])
def test_bad_backend_is_refused_before_distances(no_distances: None, backend: object) -> None:
    with pytest.raises(ValueError) as info:
        prepare(X, Y, backend=backend)  # type: ignore[arg-type]
    message = str(info.value)
    assert "backend" in message and all(repr(b) in message for b in ("auto", "torch", "numba"))


@pytest.mark.parametrize(
    ("call", "exc", "word"),
    [
        (lambda: batch_all_triplet_loss(X, Y, backend="gpu"), ValueError, "backend"),
        (lambda: batch_hard_triplets(X, Y, backend="gpu"), ValueError, "backend"),
        (lambda: triplet_stats(X, Y, backend="gpu"), ValueError, "backend"),
        (lambda: BatchHardTripletLoss()(X, Y.bool()), TypeError, "labels"),
    ],
    ids=["batch_all_triplet_loss", "batch_hard_triplets", "triplet_stats", "module_labels"],
)
def test_public_entry_points_refuse_before_distances(
    no_distances: None, call, exc: type, word: str
) -> None:
    with pytest.raises(exc, match=word):
        call()


@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_every_bad_input_is_refused_before_distances(
    no_distances: None, kw: dict, exc: type, words: list[str]
) -> None:
    kw = dict(kw)
    with pytest.raises(exc) as info:
        prepare(kw.pop("embeddings"), kw.pop("labels"), **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_the_patch_is_what_computes_distances(no_distances: None) -> None:
    """Guard for the fixture: valid input does reach the patched function, when the matrix
    is asked for (``prepare`` itself never computes it)."""
    b = prepare(X, Y)
    with pytest.raises(_NoDistances):
        b.distances()


@pytest.mark.parametrize("name", tuple(CASES))
def test_batch_of_every_case(name: str, metric: str) -> None:
    c = CASES[name]
    b = prepare(c.x, c.labels, metric=metric, backend="torch", **c.ref_kwargs())
    assert isinstance(b, Batch)
    assert b.backend == "torch"
    assert b.labels.dtype == b.ref_labels.dtype == b.self_index.dtype == torch.int64
    assert torch.equal(b.embeddings, c.x) and torch.equal(b.labels, c.labels)
    ref = c.x if c.ref is None else c.ref
    assert torch.equal(b.ref_embeddings, ref)
    assert torch.equal(b.ref_labels, c.labels if c.ref is None else c.ref_labels)
    n = c.x.shape[0]
    assert b.self_index.tolist() == loop_self_index(n, c.ref is not None, c.anchor_offset)
    torch.testing.assert_close(
        b.distances(), distance_matrix(c.x, c.ref, metric), rtol=1e-10, atol=1e-12
    )
    pos, neg = b.masks()
    assert pos.shape == neg.shape == (n, ref.shape[0])


def test_normalize_and_half_precision() -> None:
    c = CASES["refs"]
    b = prepare(c.x, c.labels, normalize=True, **c.ref_kwargs())
    torch.testing.assert_close(b.embeddings, normalize_rows(c.x))
    torch.testing.assert_close(b.ref_embeddings, normalize_rows(c.ref))
    half = prepare(c.x.half(), c.labels)
    assert half.embeddings.dtype == torch.float32 and half.distances().dtype == torch.float32


def test_auto_backend_is_numba_on_cpu() -> None:
    assert prepare(X, Y).backend == "numba"
    assert prepare(X, Y, backend="torch").backend == "torch"


def test_grad() -> None:
    x = X.clone().requires_grad_()
    assert prepare(x, Y).distances(grad=True).requires_grad
    assert not prepare(x, Y).distances().requires_grad
    with torch.no_grad():
        assert not prepare(x, Y).distances(grad=True).requires_grad


def test_metric_is_always_validated() -> None:
    for metric in (None, "l1"):
        with pytest.raises(ValueError, match="unknown metric"):
            prepare(X, Y, metric=metric, matrix=False)  # type: ignore[arg-type]


def test_matrix_false_skips_only_the_overflow_check() -> None:
    big = torch.tensor([[3e38], [-3e38]])
    prepare(big, torch.tensor([0, 1]), matrix=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        prepare(torch.tensor([[float("nan")]]), torch.tensor([0]), matrix=False)


@pytest.mark.parametrize("name", tuple(CASES))
def test_positive_counts_and_width(name: str) -> None:
    """``positive_counts`` (from the label histogram) equals the mask's row sums; the width
    read with the checks is their maximum; a caller's bound is checked, and trusted with
    the checks off."""
    c = CASES[name]
    b = prepare(c.x, c.labels, need_width=True, **c.ref_kwargs())
    pos, _ = b.masks()
    counts = pos.sum(dim=1)
    assert torch.equal(b.positive_counts(), counts)
    largest = int(counts.max()) if counts.numel() else 0
    assert b.width == largest
    assert prepare(c.x, c.labels, max_positives=largest + 2, **c.ref_kwargs()).width == largest + 2
    if largest > 0:
        with pytest.raises(ValueError, match=f"max_positives={largest - 1}, but anchor"):
            prepare(c.x, c.labels, max_positives=largest - 1, **c.ref_kwargs())
        with set_input_checks(False):
            assert prepare(c.x, c.labels, max_positives=0, **c.ref_kwargs()).width == 0
    with set_input_checks(False):
        assert prepare(c.x, c.labels, need_width=True, **c.ref_kwargs()).width in (None, 0)


def test_bad_max_positives() -> None:
    with pytest.raises(ValueError, match="max_positives must be >= 0"):
        prepare(X, Y, max_positives=-1)
    with pytest.raises(TypeError, match="max_positives must be an int"):
        prepare(X, Y, max_positives=2.0)  # type: ignore[arg-type]


def test_unit_norm() -> None:
    unit = torch.nn.functional.normalize(X, dim=1)
    prepare(unit, Y, unit_norm="this sampler")
    with pytest.raises(ValueError, match="this sampler needs unit-norm embeddings, but row"):
        prepare(unit * 2, Y, unit_norm="this sampler")
    prepare(unit * 2, Y, unit_norm="this sampler", normalize=True)  # normalised first
    with pytest.raises(ValueError, match="unit-norm ref_embeddings"):
        prepare(unit, Y, ref_embeddings=unit * 3, ref_labels=Y, unit_norm="this sampler")
    with set_input_checks(False):
        prepare(unit * 2, Y, unit_norm="this sampler")  # a value check: off


def test_overflow_is_refused() -> None:
    big = torch.tensor([[3e38], [-3e38]])
    with pytest.raises(ValueError, match="overflow"):
        prepare(big, torch.tensor([0, 1]))
    prepare(big, torch.tensor([0, 1]), metric="cosine")  # cosine normalises: no overflow


def test_check_anchor_offset() -> None:
    assert check_anchor_offset(None, 3, 3, has_ref=False) == 0
    assert check_anchor_offset(None, 3, 5, has_ref=True) is None
    assert check_anchor_offset(0, 3, 3, has_ref=False) == 0
    assert check_anchor_offset(2, 3, 5, has_ref=True) == 2
    with pytest.raises(TypeError, match="anchor_offset must be an int"):
        check_anchor_offset(True, 3, 5, has_ref=True)
    with pytest.raises(TypeError, match="anchor_offset must be an int"):
        check_anchor_offset(1.0, 3, 5, has_ref=True)
    with pytest.raises(ValueError, match="needs ref_embeddings"):
        check_anchor_offset(1, 3, 3, has_ref=False)
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="outside the 5 references"):
            check_anchor_offset(bad, 3, 5, has_ref=True)


def test_check_options() -> None:
    assert check_options(metric="cosine", normalize=True, backend="torch") == {
        "metric": "cosine",
        "normalize": True,
        "backend": "torch",
    }
    assert check_options() == {}
    with pytest.raises(ValueError) as info:
        check_options(metric="l1")
    assert all(repr(m) in str(info.value) for m in METRICS)
    with pytest.raises(TypeError, match="normalize"):
        check_options(normalize=0)
    with pytest.raises(ValueError, match="backend"):
        check_options(backend="gpu")
