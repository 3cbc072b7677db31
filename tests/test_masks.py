"""``tripletkit._masks``: who is a positive or a negative of whom, against explicit loops."""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, Case
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import self_index as loop_self_index

from tripletkit._masks import pair_masks, self_index

#: Random layouts of the property test.
LAYOUT_EXAMPLES = 100


def _loop_masks(
    labels: list[int], ref_labels: list[int], own: list[int]
) -> tuple[list[list[bool]], list[list[bool]]]:
    """Positive: another reference with the anchor's label (not its own row); negative: a
    reference with another label. One pair at a time."""
    pos = [
        [rl == lab and j != own[a] for j, rl in enumerate(ref_labels)]
        for a, lab in enumerate(labels)
    ]
    neg = [[rl != lab for rl in ref_labels] for lab in labels]
    return pos, neg


def _check(labels: torch.Tensor, ref_labels: torch.Tensor, own: torch.Tensor) -> None:
    pos, neg = pair_masks(labels, ref_labels, own)
    n, m = labels.shape[0], ref_labels.shape[0]
    assert pos.shape == neg.shape == (n, m) and pos.dtype == neg.dtype == torch.bool
    want_pos, want_neg = _loop_masks(labels.tolist(), ref_labels.tolist(), own.tolist())
    assert pos.tolist() == (want_pos if n else [])
    assert neg.tolist() == (want_neg if n else [])


def test_self_index() -> None:
    device = torch.device("cpu")
    assert self_index(4, device).tolist() == [0, 1, 2, 3]
    assert self_index(3, device, 5).tolist() == [5, 6, 7]
    assert self_index(3, device, None).tolist() == [-1, -1, -1]
    assert self_index(0, device, None).shape == (0,)
    for t in (self_index(2, device), self_index(2, device, None)):
        assert t.dtype == torch.int64 and t.device == device


@pytest.mark.parametrize("name", tuple(CASES))
def test_pair_masks_match_loops_on_every_case(name: str) -> None:
    c: Case = CASES[name]
    has_ref = c.ref is not None
    ref_labels = c.ref_labels if has_ref else c.labels
    offset = c.anchor_offset if has_ref else 0
    own = self_index(c.labels.shape[0], c.labels.device, offset)
    assert own.tolist() == loop_self_index(c.labels.shape[0], has_ref, c.anchor_offset)
    _check(c.labels, ref_labels, own)


@settings(max_examples=LAYOUT_EXAMPLES, deadline=None)
@given(data=st.data(), n=st.integers(0, 8), m=st.integers(0, 8), classes=st.integers(1, 4))
def test_pair_masks_match_loops(data: st.DataObject, n: int, m: int, classes: int) -> None:
    labels = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    ref_labels = torch.tensor(
        data.draw(st.lists(st.integers(0, classes - 1), min_size=m, max_size=m))
    )
    # Each anchor's own column: anywhere among the references, or -1 (not among them).
    own = torch.tensor(
        data.draw(st.lists(st.integers(-1, m - 1), min_size=n, max_size=n)), dtype=torch.int64
    )
    _check(labels.to(torch.int64), ref_labels.to(torch.int64), own)


def test_worked_example() -> None:
    labels, ref_labels = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1, 0])
    pos, neg = pair_masks(labels, ref_labels, torch.tensor([0, 2, -1]))
    assert pos.tolist() == [
        [False, True, False, True],  # its own row 0 is not a positive
        [False, False, False, False],  # its own row 2 is the only reference with label 1
        [True, True, False, True],  # not among the references: every label-0 reference
    ]
    assert neg.tolist() == [
        [False, False, True, False],
        [True, True, False, True],
        [False, False, True, False],
    ]
