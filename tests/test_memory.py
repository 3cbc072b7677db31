"""``tripletkit.memory``: ``CrossBatchMemory`` against a Python list of the last rows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.memory import CrossBatchMemory


class ListModel:
    """The obvious reference: a Python list that keeps the last ``size`` rows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: list[tuple[list[float], int]] = []

    def enqueue(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        self.rows += list(zip(emb.tolist(), labels.tolist(), strict=True))
        self.rows = self.rows[-self.size :]


def _batch(start: int, n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.arange(start, start + n, dtype=torch.float32)
    return values[:, None].repeat(1, dim) + torch.arange(dim) / 10, torch.arange(start, start + n)


def _assert_matches(memory: CrossBatchMemory, model: ListModel) -> None:
    emb, labels = memory.get()
    assert len(memory) == len(model.rows) == emb.shape[0] == labels.shape[0]
    assert memory.is_full == (len(model.rows) == model.size)
    assert emb.tolist() == [row for row, _ in model.rows]
    assert labels.tolist() == [label for _, label in model.rows]
    assert labels.dtype == torch.int64 and emb.dtype == memory.dtype


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 7), batches=st.lists(st.integers(0, 10), max_size=8))
def test_ring_semantics_match_a_list(size: int, batches: list[int]) -> None:
    memory = CrossBatchMemory(size, 3)
    model = ListModel(size)
    start = 0
    _assert_matches(memory, model)
    for n in batches:
        emb, labels = _batch(start, n, 3)
        memory.enqueue(emb, labels)
        model.enqueue(emb, labels)
        start += n
        _assert_matches(memory, model)


def test_wraparound_is_oldest_first() -> None:
    memory = CrossBatchMemory(5, 1)
    for start in (0, 3, 6):
        memory.enqueue(*_batch(start, 3, 1))
    emb, labels = memory.get()
    assert labels.tolist() == [4, 5, 6, 7, 8]
    assert emb[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert memory.is_full and len(memory) == 5


def test_batch_larger_than_size_keeps_its_last_rows() -> None:
    memory = CrossBatchMemory(4, 2)
    memory.enqueue(*_batch(0, 2, 2))
    memory.enqueue(*_batch(10, 9, 2))
    assert memory.get()[1].tolist() == [15, 16, 17, 18]
    memory.enqueue(*_batch(30, 1, 2))
    assert memory.get()[1].tolist() == [16, 17, 18, 30]


def test_stores_detached_copies() -> None:
    memory = CrossBatchMemory(4, 2)
    emb = torch.randn(3, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    memory.enqueue(emb * 2, labels)
    stored, _ = memory.get()
    assert not stored.requires_grad and stored.grad_fn is None
    expected = (emb * 2).detach().clone()
    with torch.no_grad():
        emb.add_(100.0)
    labels.fill_(9)
    stored, stored_labels = memory.get()
    assert torch.equal(stored, expected)
    assert stored_labels.tolist() == [0, 1, 2]


def test_get_returns_copies_usable_in_autograd_after_enqueue() -> None:
    memory = CrossBatchMemory(8, 2)
    memory.enqueue(torch.randn(3, 2), torch.tensor([0, 1, 0]))
    mem_emb, _ = memory.get()
    anchors = torch.randn(2, 2, requires_grad=True)
    loss = torch.cdist(anchors, mem_emb).sum()
    memory.enqueue(torch.randn(5, 2), torch.arange(5))  # overwrites nothing returned
    loss.backward()
    assert anchors.grad is not None and torch.isfinite(anchors.grad).all()


def test_reset() -> None:
    memory = CrossBatchMemory(3, 2)
    memory.enqueue(*_batch(0, 5, 2))
    memory.reset()
    assert len(memory) == 0 and not memory.is_full
    emb, labels = memory.get()
    assert emb.shape == (0, 2) and labels.shape == (0,)
    memory.enqueue(*_batch(7, 2, 2))
    assert memory.get()[1].tolist() == [7, 8]


def test_dtype_is_cast_and_empty_batch_is_a_no_op() -> None:
    memory = CrossBatchMemory(4, 2, dtype=torch.float64)
    memory.enqueue(torch.ones(2, 2, dtype=torch.float16), torch.tensor([1, 2], dtype=torch.int32))
    memory.enqueue(torch.empty(0, 2), torch.empty(0, dtype=torch.int64))
    emb, labels = memory.get()
    assert emb.dtype == torch.float64 and labels.dtype == torch.int64
    assert len(memory) == 2 and labels.tolist() == [1, 2]


def test_errors() -> None:
    with pytest.raises(ValueError, match="size must be >= 1"):
        CrossBatchMemory(0, 2)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        CrossBatchMemory(2, 0)
    with pytest.raises(TypeError, match="dtype"):
        CrossBatchMemory(2, 2, dtype=torch.int64)
    memory = CrossBatchMemory(4, 3)
    with pytest.raises(ValueError, match="3"):
        memory.enqueue(torch.randn(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 entries"):
        memory.enqueue(torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        memory.enqueue(torch.randn(2, 3), torch.tensor([False, True]))
    with pytest.raises(ValueError, match="integer values"):
        memory.enqueue(torch.randn(2, 3), torch.tensor([0.0, 1.5]))
    with pytest.raises(ValueError, match="NaN"):
        memory.enqueue(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2-D"):
        memory.enqueue(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="on meta but the memory is on cpu"):
        memory.enqueue(
            torch.empty(2, 3, device="meta"), torch.empty(2, dtype=torch.int64, device="meta")
        )
    assert len(memory) == 0
