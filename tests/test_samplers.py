"""``tripletkit.samplers``: ``PKBatchSampler`` (P x K batches, epochs, replicas)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from tripletkit.samplers import PKBatchSampler


def _labels(counts: list[int]) -> list[int]:
    """Labels with ``counts[c]`` samples of class ``10 * c + 3``, interleaved."""
    out = [10 * c + 3 for c, n in enumerate(counts) for _ in range(n)]
    return [out[i] for i in np.random.default_rng(1).permutation(len(out))]


def _check_batches(batches: list[list[int]], labels: list[int], p: int, k: int) -> None:
    for batch in batches:
        assert len(batch) == p * k
        per_label = Counter(labels[i] for i in batch)
        assert len(per_label) == p
        assert set(per_label.values()) == {k}
        # Listed class by class.
        assert all(
            labels[i] == labels[batch[g * k]] for g in range(p) for i in batch[g * k : (g + 1) * k]
        )


def _expected_len(counts: list[int], p: int, k: int, replicas: int, skip: bool) -> int:
    groups = [math.ceil(n / k) for n in counts if n >= (k if skip else 1)]
    return max(math.ceil(sum(groups) / (p * replicas)), math.ceil(max(groups) / replicas))


@pytest.mark.parametrize("small_classes", ["replace", "skip"])
def test_batches_are_p_by_k_and_cover_every_usable_sample(small_classes: str) -> None:
    counts = [1, 2, 3, 4, 5, 7, 9, 12, 30]
    labels = _labels(counts)
    p, k = 3, 4
    sampler = PKBatchSampler(labels, p, k, seed=5, small_classes=small_classes)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        _check_batches(batches, labels, p, k)
        seen = {i for b in batches for i in b}
        usable = {
            i for i, y in enumerate(labels) if small_classes == "replace" or labels.count(y) >= k
        }
        assert seen == usable


def test_groups_of_large_classes_hold_distinct_samples() -> None:
    labels = _labels([5, 6, 9, 4])
    sampler = PKBatchSampler(labels, 2, 4, seed=0)
    for batch in sampler:
        for g in range(2):
            group = batch[g * 4 : (g + 1) * 4]
            assert len(set(group)) == 4


def test_small_class_group_holds_all_its_samples_plus_repeats() -> None:
    labels = [0, 1, 1, 2, 2, 2, 2]
    sampler = PKBatchSampler(labels, p=3, k=4, seed=0)
    for batch in sampler:
        assert sorted(i for i in batch if labels[i] == 0) == [0, 0, 0, 0]
        assert {i for i in batch if labels[i] == 1} == {1, 2}


def test_deterministic_per_seed_and_epoch_and_different_across_epochs() -> None:
    labels = _labels([8] * 12)
    a = PKBatchSampler(labels, 4, 2, seed=3)
    b = PKBatchSampler(torch.tensor(labels), 4, 2, seed=3)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 == list(b)
    a.set_epoch(0)
    assert list(a) != epoch1
    c = PKBatchSampler(labels, 4, 2, seed=4)
    assert list(c) != list(PKBatchSampler(labels, 4, 2, seed=3))


def test_does_not_touch_global_rng() -> None:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is the subject
    torch_state = torch.random.get_rng_state()
    list(PKBatchSampler(_labels([4] * 5), 2, 2))
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after, strict=True))
    assert torch.equal(torch.random.get_rng_state(), torch_state)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    p=st.integers(1, 4),
    k=st.integers(1, 5),
    replicas=st.integers(1, 3),
    skip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_len_is_exact_and_replicas_partition_the_batches(
    counts: list[int], p: int, k: int, replicas: int, skip: bool, seed: int
) -> None:
    labels = _labels(counts)
    usable = sum(n >= (k if skip else 1) for n in counts)
    mode = "skip" if skip else "replace"
    if p > usable:
        with pytest.raises(ValueError, match="usable classes"):
            PKBatchSampler(labels, p, k, num_replicas=replicas, rank=0, small_classes=mode)
        return
    expected = _expected_len(counts, p, k, replicas, skip)
    per_replica = []
    for rank in range(replicas):
        sampler = PKBatchSampler(
            labels, p, k, seed=seed, num_replicas=replicas, rank=rank, small_classes=mode
        )
        assert len(sampler) == expected
        batches = list(sampler)
        assert len(batches) == expected
        _check_batches(batches, labels, p, k)
        per_replica.append(batches)
    # Disjoint: every (global) batch belongs to one replica. Batches are compared as
    # whole lists, since with replacement two batches may contain equal indices.
    all_batches = [tuple(b) for batches in per_replica for b in batches]
    assert len(all_batches) == expected * replicas
    seen = {i for b in all_batches for i in b}
    usable_idx = {i for i, y in enumerate(labels) if counts[(y - 3) // 10] >= (k if skip else 1)}
    assert seen == usable_idx


def test_replicas_get_disjoint_index_sets_when_every_class_fills_its_groups() -> None:
    # Every class size is a multiple of k and no extra group is needed, so each sample
    # appears exactly once across all replicas.
    labels = _labels([4] * 12)
    seen: list[int] = []
    for rank in range(3):
        sampler = PKBatchSampler(labels, 2, 4, seed=9, num_replicas=3, rank=rank)
        assert len(sampler) == 2
        seen += [i for b in sampler for i in b]
    assert sorted(seen) == list(range(len(labels)))


def test_labels_as_numpy_tensor_and_list_agree() -> None:
    labels = _labels([3, 5, 6, 2])
    as_list = list(PKBatchSampler(labels, 2, 3, seed=1))
    assert list(PKBatchSampler(np.array(labels, dtype=np.int32), 2, 3, seed=1)) == as_list
    assert list(PKBatchSampler(torch.tensor(labels), 2, 3, seed=1)) == as_list
    assert all(type(i) is int for b in as_list for i in b)


def test_works_as_dataloader_batch_sampler() -> None:
    labels = torch.tensor(_labels([6, 6, 7, 3, 9]))
    data = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    sampler = PKBatchSampler(labels, 3, 2, seed=0)
    loader = DataLoader(TensorDataset(data, labels), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    count = 0
    for x, y in loader:
        assert x.shape == (6, 1) and y.shape == (6,)
        assert torch.equal(labels[x[:, 0].long()], y)
        assert sorted(Counter(y.tolist()).values()) == [2, 2, 2]
        count += 1
    assert count == len(sampler)


def test_batch_size_and_repr() -> None:
    sampler = PKBatchSampler([0, 0, 1, 1, 2, 2], 2, 2)
    assert sampler.batch_size == 4
    assert sampler.num_classes == 3
    assert "p=2" in repr(sampler)


def test_errors() -> None:
    labels = [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="p must be >= 1"):
        PKBatchSampler(labels, 0, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        PKBatchSampler(labels, 2, 0)
    with pytest.raises(TypeError, match="p must be an int"):
        PKBatchSampler(labels, 2.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"p=4 .* usable classes, 3"):
        PKBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match=r"usable classes, 2 \(1 of 3 classes have fewer than k=2"):
        PKBatchSampler(labels, 3, 2, small_classes="skip")
    with pytest.raises(ValueError, match="rank must be in"):
        PKBatchSampler(labels, 2, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank must be in"):
        PKBatchSampler(labels, 2, 2, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match="num_replicas must be >= 1"):
        PKBatchSampler(labels, 2, 2, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="unknown small_classes"):
        PKBatchSampler(labels, 2, 2, small_classes="drop")
    with pytest.raises(ValueError, match="empty"):
        PKBatchSampler([], 1, 1)
    with pytest.raises(ValueError, match="1-D"):
        PKBatchSampler(np.zeros((2, 2), dtype=np.int64), 1, 1)
    with pytest.raises(TypeError, match="integer"):
        PKBatchSampler(torch.tensor([0.0, 1.0]), 1, 1)
    with pytest.raises(TypeError, match="integers"):
        PKBatchSampler([0.5, 1.0], 1, 1)
    with pytest.raises(TypeError, match="labels must be"):
        PKBatchSampler(5, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be >= 0"):
        PKBatchSampler(labels, 2, 2, seed=-1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        PKBatchSampler(labels, 2, 2).set_epoch(-1)


def test_replicas_default_to_the_initialised_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _labels([4] * 12)
    assert (PKBatchSampler(labels, 2, 4).num_replicas, PKBatchSampler(labels, 2, 4).rank) == (1, 0)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 3)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 2)
    sampler = PKBatchSampler(labels, 2, 4, seed=9)
    assert (sampler.num_replicas, sampler.rank) == (3, 2)
    explicit = PKBatchSampler(labels, 2, 4, seed=9, num_replicas=3, rank=2)
    assert list(sampler) == list(explicit)
    assert PKBatchSampler(labels, 2, 4, num_replicas=1, rank=0).num_replicas == 1


def test_max_positives_is_the_bound_of_every_batch() -> None:
    """``k - 1``: every anchor of a P x K batch has exactly that many positives, also when a
    small class is drawn with repeats (a repeated sample is another row, so a positive)."""
    from tripletkit.losses import batch_all_triplet_loss

    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    sampler = PKBatchSampler(labels, p=2, k=3, seed=0)
    assert sampler.max_positives == 2
    for batch in sampler:
        y = torch.tensor([labels[i] for i in batch])
        x = torch.randn(len(batch), 2)
        want = batch_all_triplet_loss(x, y, backend="torch")
        got = batch_all_triplet_loss(x, y, backend="torch", max_positives=sampler.max_positives)
        torch.testing.assert_close(got, want)
