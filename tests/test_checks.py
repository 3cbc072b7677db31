"""``tripletkit._checks``: the scalar and index-tuple checks every entry point shares, and the
hint a reference set passed positionally to a loss gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import X, Y

from tripletkit._checks import (
    check_finite_real,
    check_index_tuple,
    check_nonnegative_int,
    check_nonnegative_real,
    check_positive_real,
)
from tripletkit.losses import (
    BatchHardTripletLoss,
    batch_all_parts,
    batch_all_triplet_loss,
    batch_hard_parts,
    batch_hard_triplet_loss,
    contrastive_parts,
    semi_hard_parts,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)
from tripletkit.stats import triplet_stats
from tripletkit.types import Pairs, Triplets

#: A memory bank, the reference set the hint is about.
MEM_X = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
MEM_Y = torch.tensor([0, 1, 0, 1, 2])
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.2, 0.2), (-3, -3.0), (0, 0.0), (np.float64(1.5), 1.5), (torch.tensor(0.25), 0.25)],
)
def test_check_finite_real_accepts_real_numbers(value: object, expected: float) -> None:
    got = check_finite_real(value, "margin")
    assert type(got) is float and got == expected


@pytest.mark.parametrize(
    ("value", "exc", "words"),
    [
        (math.nan, ValueError, ["margin must be finite", "nan"]),
        (math.inf, ValueError, ["margin must be finite", "inf"]),
        (True, TypeError, ["margin must be a real number", "bool"]),
        ("0.2", TypeError, ["margin must be a real number", "str"]),
        (None, TypeError, ["margin must be a real number", "NoneType"]),
        (torch.tensor([0.1, 0.2]), TypeError, ["margin must be a real number", "Tensor"]),
        (torch.tensor(0.2, requires_grad=True), TypeError, ["margin must be a real number"]),
        (torch.tensor(math.nan), ValueError, ["margin must be finite"]),
    ],
    ids=["nan", "inf", "bool", "str", "none", "vector", "requires_grad", "nan_tensor"],
)
def test_check_finite_real_refuses(value: object, exc: type, words: list[str]) -> None:
    with pytest.raises(exc) as info:
        check_finite_real(value, "margin")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_check_finite_real_hints_at_a_reference_set_passed_positionally() -> None:
    with pytest.raises(TypeError) as info:
        check_finite_real(MEM_X, "margin")
    message = str(info.value)
    assert "margin must be a real number, got a (5, 3) tensor" in message
    assert "pass a reference set by keyword: ref_embeddings=..., ref_labels=..." in message


#: Losses and statistics whose third parameter is a real hyper-parameter: called the 0.1
#: way, ``fn(x, y, mem_x, mem_y)``, they name it and hint at the keywords.
POSITIONAL_REFS = [
    ("margin", lambda: batch_hard_triplet_loss(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: batch_all_triplet_loss(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: semi_hard_triplet_loss(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: batch_all_parts(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: batch_hard_parts(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: semi_hard_parts(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: triplet_stats(X, Y, MEM_X, MEM_Y)),
    ("pos_margin", lambda: contrastive_parts(X, Y, MEM_X, MEM_Y)),
    ("margin", lambda: triplet_margin_loss(X, Y, None, MEM_X)),
    ("margin", lambda: BatchHardTripletLoss(MEM_X)),
]


@pytest.mark.parametrize(
    ("name", "call"), POSITIONAL_REFS, ids=[f"{i}-{p[0]}" for i, p in enumerate(POSITIONAL_REFS)]
)
def test_reference_set_passed_positionally_gets_the_keyword_hint(name: str, call) -> None:
    with pytest.raises(TypeError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{name} must be a real number, got a (5, 3) tensor"), message
    assert "ref_embeddings=..., ref_labels=..." in message


def test_check_nonnegative_and_positive_real() -> None:
    assert check_nonnegative_real(0, "nu") == 0.0
    assert check_positive_real(0.5, "cutoff") == 0.5
    with pytest.raises(ValueError, match="nu must be >= 0, got -0.1"):
        check_nonnegative_real(-0.1, "nu")
    with pytest.raises(ValueError, match="cutoff must be > 0, got 0.0"):
        check_positive_real(0, "cutoff")
    for check in (check_nonnegative_real, check_positive_real):
        with pytest.raises(ValueError, match="x must be finite"):
            check(math.inf, "x")
        with pytest.raises(TypeError, match="x must be a real number"):
            check("1", "x")


def test_check_nonnegative_int() -> None:
    assert check_nonnegative_int(0, "seed") == 0
    got = check_nonnegative_int(np.int64(7), "seed")
    assert type(got) is int and got == 7
    assert check_nonnegative_int(None, "seed", allow_none=True) is None
    with pytest.raises(TypeError, match="seed must be an int, got NoneType"):
        check_nonnegative_int(None, "seed")
    with pytest.raises(TypeError, match="seed must be an int or None, got float"):
        check_nonnegative_int(1.0, "seed", allow_none=True)
    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        check_nonnegative_int(True, "seed")
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        check_nonnegative_int(-1, "seed")


def _index(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def test_check_index_tuple_accepts_and_casts() -> None:
    got = check_index_tuple(
        Triplets(_index(0, 1), _index(2, 3), _index(4, 0)), "triplets", (3,), 2, 5, CPU
    )
    assert len(got) == 3 and all(t.dtype == torch.int64 for t in got)
    assert [t.tolist() for t in got] == [[0, 1], [2, 3], [4, 0]]
    got = check_index_tuple(
        [_index(0), _index(1), _index(0, 1), _index(2, 2)], "pairs", (4,), 2, 3, CPU
    )
    assert [t.tolist() for t in got] == [[0], [1], [0, 1], [2, 2]]
    empty = check_index_tuple(Pairs.empty(), "indices", (3, 4), 0, 0, CPU)
    assert all(t.shape == (0,) for t in empty)


@pytest.mark.parametrize(
    ("indices", "lengths", "exc", "words"),
    [
        (None, (3,), TypeError, ["triplets must be Triplets (a tuple of 3", "got NoneType"]),
        (
            (_index(0),) * 2,
            (3, 4),
            TypeError,
            ["Triplets (a tuple of 3 index tensors) or Pairs (a tuple of 4", "of length 2"],
        ),
        ((_index(0), _index(9), _index(1)), (3,), ValueError, ["triplets.positive", "[0, 5)"]),
        ((_index(3), _index(1), _index(1)), (3,), ValueError, ["triplets.anchor", "[0, 2)"]),
        ((_index(0, 1), _index(1), _index(1)), (3,), ValueError, ["differ in length: 2, 1, 1"]),
        (
            (_index(0), _index(1), _index(0, 1), _index(1)),
            (4,),
            ValueError,
            ["must match in length"],
        ),
        ((_index(0), torch.tensor([1.0]), _index(1)), (3,), TypeError, ["integer"]),
    ],
    ids=["none", "length", "positive_range", "anchor_range", "lengths3", "lengths4", "float"],
)
def test_check_index_tuple_refuses(
    indices: object, lengths: tuple, exc: type, words: list[str]
) -> None:
    name = "pairs" if lengths == (4,) else "triplets"
    with pytest.raises(exc) as info:
        check_index_tuple(indices, name, lengths, 2, 5, CPU)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
