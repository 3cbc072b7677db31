"""``tripletkit.samplers``: ``PKBatchSampler`` (P x K batches, epochs, replicas),
``HardClassPKBatchSampler`` (class-level hard mining) and ``CategoryPKBatchSampler`` (c
categories x p classes x k samples)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from tripletkit.memory import CrossBatchMemory
from tripletkit.samplers import (
    CategoryPKBatchSampler,
    HardClassPKBatchSampler,
    PKBatchSampler,
    hard_class,
)
from tripletkit.samplers.hard_class import _nearest_classes


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


# ---------------------------------------------------------------------------------------------
# HardClassPKBatchSampler and CategoryPKBatchSampler


def _seeded_labels(counts: list[int], seed: int = 1) -> list[int]:
    """Labels with ``counts[c]`` samples of class ``10 * c + 3``, interleaved."""
    out = [10 * c + 3 for c, n in enumerate(counts) for _ in range(n)]
    return [out[i] for i in np.random.default_rng(seed).permutation(len(out))]


def _check_pk(batches: list[list[int]], labels, p: int, k: int) -> None:
    """Every batch: p distinct classes, k samples each, listed class by class."""
    labels = [int(v) for v in labels]
    for batch in batches:
        assert len(batch) == p * k
        assert all(type(i) is int for i in batch)
        per_label = Counter(labels[i] for i in batch)
        assert len(per_label) == p
        assert set(per_label.values()) == {k}
        assert all(
            labels[i] == labels[batch[g * k]] for g in range(p) for i in batch[g * k : (g + 1) * k]
        )


def _epochs(sampler, epochs: int = 1) -> list[list[list[int]]]:
    out = []
    for e in range(epochs):
        sampler.set_epoch(e)
        out.append(list(sampler))
    return out


def _twins(num_pairs: int = 20, per_class: int = 6, noise: float = 0.05, seed: int = 0):
    """``2 * num_pairs`` classes; classes ``2i`` and ``2i + 1`` (twins) have nearly the same
    embeddings, pairs are far apart."""
    labels = torch.arange(2 * num_pairs).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_pairs, 16, generator=g)
    emb = centres[labels // 2] + noise * torch.randn(labels.shape[0], 16, generator=g)
    return labels, emb


def _twin_rate(sampler, labels: torch.Tensor, epochs: int = 10) -> float:
    """Of all class appearances in batches, the fraction whose twin is in the same batch."""
    hits = total = 0
    for batches in _epochs(sampler, epochs):
        for batch in batches:
            classes = {int(labels[i]) for i in batch}
            total += len(classes)
            hits += sum((c ^ 1) in classes for c in classes)
    return hits / total


# ============================================================ HardClassPKBatchSampler


@pytest.mark.parametrize(
    ("counts", "p", "k", "replicas", "mode"),
    [
        ([8] * 12, 4, 2, 1, "replace"),
        ([1, 2, 3, 4, 5, 7, 9, 12, 30], 3, 4, 1, "replace"),
        ([1, 2, 3, 4, 5, 7, 9, 12, 30], 3, 4, 2, "skip"),
        ([5, 6, 9, 4], 2, 4, 3, "replace"),
    ],
)
def test_before_any_update_it_is_pk(counts, p, k, replicas, mode) -> None:
    labels = _seeded_labels(counts)
    for rank in range(replicas):
        kw = {"seed": 3, "num_replicas": replicas, "rank": rank, "small_classes": mode}
        hard = HardClassPKBatchSampler(labels, p, k, hard_fraction=0.75, **kw)
        pk = PKBatchSampler(labels, p, k, **kw)
        assert len(hard) == len(pk)
        assert hard.batch_size == pk.batch_size and hard.num_classes == pk.num_classes
        assert _epochs(hard, 3) == _epochs(pk, 3)
        # an update with no usable class (skipped ones only, or no row) changes nothing
        hard.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
        assert hard.signatures is None and hard.num_updates == 1
        assert _epochs(hard, 2) == _epochs(pk, 2)


def test_hard_fraction_zero_is_pk_even_after_updates() -> None:
    labels, emb = _twins()
    hard = HardClassPKBatchSampler(labels, 8, 2, hard_fraction=0.0, seed=4)
    hard.update(emb, labels)
    assert _epochs(hard, 2) == _epochs(PKBatchSampler(labels, 8, 2, seed=4), 2)


def test_reset_forgets_the_signatures() -> None:
    labels, emb = _twins()
    hard = HardClassPKBatchSampler(labels, 8, 2)
    hard.update(emb, labels)
    assert list(hard) != list(PKBatchSampler(labels, 8, 2))
    hard.reset()
    assert hard.signatures is None and not hard.has_signature.any() and hard.num_updates == 0
    assert list(hard) == list(PKBatchSampler(labels, 8, 2))


def test_confusable_classes_meet_far_more_often_than_with_pk() -> None:
    """40 classes in 20 known near-duplicate pairs. PKBatchSampler puts a class's twin in
    its batch at the chance rate (p - 1) / (C - 1) = 7/39 ~ 0.18 (measured over 10 epochs:
    0.175). After one update, with half of each batch hard (two doppelganger pairs of 8
    classes), the measured rate is 0.54 (3.1x); with every class hard it is 1. Asserted: at
    least 2x and 5x (deterministic seeds: not flaky)."""
    labels, emb = _twins()
    pk = _twin_rate(PKBatchSampler(labels, 8, 2, seed=0), labels)
    assert 0.1 < pk < 0.25
    half = HardClassPKBatchSampler(labels, 8, 2, hard_fraction=0.5, seed=0)
    half.update(emb, labels)
    rate = _twin_rate(half, labels)
    assert rate >= 2 * pk, (rate, pk)
    full = HardClassPKBatchSampler(labels, 8, 2, hard_fraction=1.0, seed=0)
    full.update(emb, labels)
    rate = _twin_rate(full, labels)
    assert rate >= 5 * pk and rate == 1.0, (rate, pk)


def test_one_seed_and_its_nearest_classes() -> None:
    """hard_fraction=1, group_size=p: every batch is a seed class and its p - 1 nearest
    classes (by cosine similarity of the signatures), listed seed first, nearest first."""
    labels = torch.arange(30).repeat_interleave(4)
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(30, 8, generator=g)
    emb = centres[labels] + 0.01 * torch.randn(120, 8, generator=g)
    p = 5
    sampler = HardClassPKBatchSampler(labels, p, 2, hard_fraction=1.0, group_size=p, seed=1)
    sampler.update(emb, labels)
    sig = sampler.signatures
    assert sig is not None
    unit = sig / sig.norm(dim=1, keepdim=True)
    sim = (unit @ unit.T).fill_diagonal_(-math.inf)
    seeds = set()
    for batches in _epochs(sampler, 3):
        for batch in batches:
            order = [int(labels[i]) for i in batch[::2]]
            seed = order[0]
            seeds.add(seed)
            assert order[1:] == sim[seed].argsort(descending=True)[: p - 1].tolist()
    assert len(seeds) > 12  # seeds are drawn uniformly: ~21 distinct of 30 in 36 batches


def test_doppelganger_pairs_are_listed_first() -> None:
    """group_size=2: the hard classes come in (seed, nearest class not yet in the batch)
    pairs, listed before the uniform classes; classes without a signature are never hard."""
    labels, emb = _twins(num_pairs=20)
    known = labels < 20  # twin pairs 0..9 updated, pairs 10..19 never
    sampler = HardClassPKBatchSampler(labels, 6, 2, hard_fraction=0.5, seed=2)
    assert sampler.num_hard == 3
    sampler.update(emb[known], labels[known])
    assert sampler.has_signature.tolist() == [True] * 20 + [False] * 20
    uniform_unknown = 0
    for batch in _epochs(sampler, 3)[2]:
        order = [int(labels[i]) for i in batch[::2]]
        assert order[1] == order[0] ^ 1  # the seed's twin is its nearest class
        assert all(c < 20 for c in order[:3])  # hard classes have a signature
        uniform_unknown += sum(c >= 20 for c in order[3:])
    assert uniform_unknown > 0  # classes without a signature are still drawn uniformly


def test_signatures_are_a_moving_average_of_normalised_class_means() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    sampler = HardClassPKBatchSampler(labels, 2, 2, momentum=0.25, small_classes="skip")
    assert sampler.signatures is None and sampler.classes.tolist() == [0, 1, 2]
    first = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    sampler.update(first, torch.tensor([0, 0, 2]))
    m0 = (torch.tensor([0.6, 0.8]) + torch.tensor([0.0, 1.0])) / 2
    sig = sampler.signatures
    assert sig is not None and sig.dtype == torch.float64
    torch.testing.assert_close(sig[0], m0.double())
    torch.testing.assert_close(sig[2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert sampler.has_signature.tolist() == [True, False, True]
    second = torch.tensor([[0.0, -5.0], [2.0, 0.0]], dtype=torch.float16)
    sampler.update(second, torch.tensor([0, 1], dtype=torch.int32))
    sig = sampler.signatures
    assert sig is not None
    torch.testing.assert_close(sig[0], (0.25 * m0 + 0.75 * torch.tensor([0.0, -1.0])).double())
    torch.testing.assert_close(sig[1], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert sampler.has_signature.all() and sampler.num_updates == 2
    # Labels of classes skipped by small_classes="skip" are ignored, not an error.
    skip = HardClassPKBatchSampler([0, 0, 1, 1, 5], 2, 2, small_classes="skip")
    skip.update(torch.ones(2, 3), torch.tensor([5, 0]))
    assert skip.has_signature.tolist() == [True, False]


def test_update_from_a_cross_batch_memory() -> None:
    labels, emb = _twins()
    memory = CrossBatchMemory(size=128, dim=16)
    memory.enqueue(emb[:100], labels[:100])
    memory.enqueue(emb[100:], labels[100:])
    sampler = HardClassPKBatchSampler(labels, 8, 2, hard_fraction=1.0)
    sampler.update(*memory.get())
    assert int(sampler.has_signature.sum()) == len(set(memory.get()[1].tolist()))
    _check_pk(list(sampler), labels, 8, 2)


def test_deterministic_per_seed_epoch_and_update_history() -> None:
    """Batches are a function of (seed, epoch, update history). Random embeddings (no
    structure), so that the nearest-class lists depend on the exact signatures."""
    labels = torch.arange(40).repeat_interleave(6)
    emb = torch.randn(240, 16, generator=torch.Generator().manual_seed(0))
    even, odd = slice(0, None, 2), slice(1, None, 2)  # every class in both halves

    def make(seed: int = 0, updates: tuple = (even, odd)):
        s = HardClassPKBatchSampler(labels, 8, 2, momentum=0.8, seed=seed)
        for rows in updates:
            s.update(emb[rows], labels[rows])
        return s

    a, b = make(), make()
    assert _epochs(a, 3) == _epochs(b, 3)
    assert list(a) == list(a)  # re-iterating the same epoch repeats it
    a.set_epoch(0)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(make(seed=1)) != list(make())
    # another update history: another order (the moving average differs), fewer updates
    assert list(make(updates=(odd, even))) != list(make())
    assert list(make(updates=(slice(None),))) != list(make())
    # an epoch's batches are fixed when its iteration starts
    s = make()
    it = iter(s)
    first = next(it)
    s.update(-emb, labels)
    rest = list(it)
    assert [first, *rest] == list(make())
    assert list(s) != [first, *rest]


def test_len_and_structure_after_updates() -> None:
    counts = [1, 2, 3, 4, 5, 7, 9, 12, 30, 6, 6, 6]
    labels = torch.tensor(_seeded_labels(counts))
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(labels.shape[0], 5, generator=g)
    for mode in ("replace", "skip"):
        for fraction, group in [(0.5, 2), (1.0, 3), (0.2, 2), (1.0, 2)]:
            sampler = HardClassPKBatchSampler(
                labels, 4, 3, hard_fraction=fraction, group_size=group, small_classes=mode
            )
            sampler.update(emb[:40], labels[:40])
            pk = PKBatchSampler(labels, 4, 3, small_classes=mode)
            assert len(sampler) == len(pk)
            for batches in _epochs(sampler, 2):
                assert len(batches) == len(sampler)
                _check_pk(batches, labels.tolist(), 4, 3)
                if mode == "skip":
                    assert all(counts[(int(labels[i]) - 3) // 10] >= 3 for b in batches for i in b)


def _cover_first(batches: list[list[int]], labels: list[int], k: int) -> None:
    """In the given batch order, each class's first ceil(n_c / k) groups are its cover
    groups: no sample repeats among them, and they hold all of its samples when the class
    was drawn that often."""
    counts = Counter(labels)
    groups: dict[int, list[list[int]]] = {}
    for batch in batches:
        for j in range(0, len(batch), k):
            groups.setdefault(labels[batch[j]], []).append(batch[j : j + k])
    for label, drawn in groups.items():
        cover = math.ceil(counts[label] / k)
        first = [i for grp in drawn[:cover] for i in grp]
        if len(drawn) >= cover:
            assert set(first) == {i for i, y in enumerate(labels) if y == label}
        else:
            assert len(set(first)) == len(first)
        if counts[label] >= k:  # a group of a class with >= k samples is distinct
            assert all(len(set(grp)) == k for grp in drawn)


def test_a_class_uses_all_its_samples_before_repeating_any() -> None:
    """A class's j-th draw in an epoch (in batch order) takes its j-th cover group while it
    has one: its first ceil(n_c / k) groups hold all its samples exactly once."""
    counts = [3, 6, 9, 12, 2, 9, 15, 6]
    labels = _seeded_labels(counts)
    k = 3
    sampler = HardClassPKBatchSampler(labels, 3, k, hard_fraction=0.7, seed=6)
    g = torch.Generator().manual_seed(1)
    sampler.update(torch.randn(len(labels), 4, generator=g), torch.tensor(labels))
    for batches in _epochs(sampler, 4):
        _cover_first(batches, labels, k)


def test_replicas_take_disjoint_shares_of_one_global_list() -> None:
    """Every replica computes the same global list and takes its own slice: the
    concatenation of the replicas' batches (rank by rank) is one list in which every class
    goes through its cover groups first, which independently drawn lists would break."""
    labels = torch.arange(12).repeat_interleave(40)
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(labels.shape[0], 6, generator=g)
    replicas = 3
    for epoch in range(3):
        concatenated: list[list[int]] = []
        for rank in range(replicas):
            sampler = HardClassPKBatchSampler(
                labels, 4, 2, hard_fraction=0.5, seed=7, num_replicas=replicas, rank=rank
            )
            sampler.update(emb, labels)  # the same (gathered) data on every replica
            sampler.set_epoch(epoch)
            batches = list(sampler)
            pk = PKBatchSampler(labels, 4, 2, num_replicas=replicas, rank=rank)
            assert len(batches) == len(sampler) == len(pk) == 20
            _check_pk(batches, labels.tolist(), 4, 2)
            concatenated += batches
        _cover_first(concatenated, labels.tolist(), 2)
        # 40 samples, 20 cover groups per class, drawn ~20 times per epoch: the first
        # 20 groups of a class already hold all its samples, without repeats
        assert len({tuple(b) for b in concatenated}) == len(concatenated)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 10), min_size=2, max_size=9),
    p=st.integers(1, 4),
    k=st.integers(1, 4),
    replicas=st.integers(1, 3),
    fraction=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    group=st.integers(2, 4),
    updated=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_property_len_and_batches(counts, p, k, replicas, fraction, group, updated, seed) -> None:
    labels = _seeded_labels(counts)
    if p > len(counts):
        with pytest.raises(ValueError, match="usable classes"):
            HardClassPKBatchSampler(labels, p, k)
        return
    rows = [i for i, y in enumerate(labels) if (y - 3) // 10 < updated]
    emb = torch.randn(len(rows), 3, generator=torch.Generator().manual_seed(seed))
    for rank in range(replicas):
        kw = {"seed": seed, "num_replicas": replicas, "rank": rank}
        sampler = HardClassPKBatchSampler(
            labels, p, k, hard_fraction=fraction, group_size=group, **kw
        )
        sampler.update(emb, torch.tensor([labels[i] for i in rows]))
        batches = list(sampler)
        assert len(batches) == len(sampler) == len(PKBatchSampler(labels, p, k, **kw))
        _check_pk(batches, labels, p, k)


def test_nearest_classes_is_exact_with_ties_to_the_lowest_index(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    monkeypatch.setattr(hard_class, "_SEARCH_ENTRIES", 37)  # many chunks of a few rows
    for trial in range(40):
        c, d = int(rng.integers(2, 30)), int(rng.integers(1, 5))
        if trial % 2:  # axis directions, some zero rows: exact ties, similarities in {-1, 0, 1}
            sig = np.zeros((c, d))
            sig[np.arange(c), rng.integers(0, d, size=c)] = rng.choice(
                [-3.0, -1.0, 0.0, 2.0], size=c
            )
        else:
            sig = rng.normal(size=(c, d))
        num = int(rng.integers(0, c))
        got = _nearest_classes(sig, num)
        norm = np.linalg.norm(sig, axis=1, keepdims=True)
        unit = np.divide(sig, norm, out=np.zeros_like(sig), where=norm > 0)
        sim = unit @ unit.T
        for i in range(c):
            want = sorted((j for j in range(c) if j != i), key=lambda j: (-sim[i, j], j))[:num]
            assert got[i].tolist() == want


def test_hard_class_sampler_does_not_touch_global_rng() -> None:
    labels, emb = _twins()
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is the subject
    torch_state = torch.random.get_rng_state()
    sampler = HardClassPKBatchSampler(labels, 8, 2)
    sampler.update(emb, labels)
    list(sampler)
    list(CategoryPKBatchSampler(labels, labels // 10, 2, 2, 2))
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after, strict=True))
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_hard_class_sampler_works_as_dataloader_batch_sampler() -> None:
    labels, emb = _twins(num_pairs=6)
    sampler = HardClassPKBatchSampler(labels, 4, 3)
    sampler.update(emb, labels)
    loader = DataLoader(TensorDataset(emb, labels), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    batches = [y for _, y in loader]
    assert len(batches) == len(sampler)
    assert all(sorted(Counter(y.tolist()).values()) == [3] * 4 for y in batches)


def test_hard_sampler_errors() -> None:
    labels = [0, 0, 1, 1, 2]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="hard_fraction"):
            HardClassPKBatchSampler(labels, 2, 2, hard_fraction=bad)
    with pytest.raises(TypeError, match="hard_fraction"):
        HardClassPKBatchSampler(labels, 2, 2, hard_fraction="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        HardClassPKBatchSampler(labels, 2, 2, group_size=1)
    with pytest.raises(TypeError, match="group_size"):
        HardClassPKBatchSampler(labels, 2, 2, group_size=2.0)  # type: ignore[arg-type]
    for bad in (-0.5, 1.0):
        with pytest.raises(ValueError, match="momentum"):
            HardClassPKBatchSampler(labels, 2, 2, momentum=bad)
    with pytest.raises(ValueError, match=r"p=4 .* usable classes, 3"):
        HardClassPKBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match=r"usable classes, 2 \(1 of 3 classes have fewer than k=2"):
        HardClassPKBatchSampler(labels, 3, 2, small_classes="skip")
    with pytest.raises(ValueError, match="rank must be in"):
        HardClassPKBatchSampler(labels, 2, 2, num_replicas=2, rank=2)

    sampler = HardClassPKBatchSampler(labels, 2, 2)
    y = torch.tensor([0, 1, 2])
    bad_updates = [
        ((torch.randn(3), y), ValueError, "2-D"),
        ((torch.randn(3, 2), y[:2]), ValueError, "labels has 2 entries but the embeddings have 3"),
        ((torch.randn(3, 2), y.bool()), TypeError, "integer"),
        ((torch.randn(3, 2), y.float() + 0.5), ValueError, "integer values"),
        ((torch.randn(3, 2), y[:, None]), ValueError, "1-D"),
        ((np.zeros((3, 2)), y), TypeError, "torch.Tensor"),
        ((torch.full((3, 2), float("nan")), y), ValueError, "NaN"),
        ((torch.randn(3, 2, dtype=torch.float64).int(), y), TypeError, "floating"),
        (
            (torch.randn(3, 2), torch.tensor([0, 7, 9])),
            ValueError,
            "2 value.* not among the sampler's labels: 7, 9",
        ),
    ]
    for args, exc, words in bad_updates:
        with pytest.raises(exc, match=words):
            sampler.update(*args)
    assert sampler.num_updates == 0 and sampler.signatures is None
    sampler.update(torch.randn(3, 2), y)
    with pytest.raises(ValueError, match="3 features but earlier updates had 2"):
        sampler.update(torch.randn(3, 3), y)
    assert "hard_fraction=0.5" in repr(sampler) and "num_updates=1" in repr(sampler)


# ============================================================ CategoryPKBatchSampler


def _category_data(seed: int = 0, num_classes: int = 30, num_categories: int = 4):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, size=num_classes)
    labels = np.repeat(np.arange(num_classes) * 3 + 1, counts)
    labels = labels[rng.permutation(labels.shape[0])]
    category = {int(v): int(v) % num_categories for v in np.unique(labels)}
    return labels, category


def _check_categories(batches, labels, category, c: int, p: int, k: int) -> None:
    """Every batch: c distinct categories x p distinct classes x k samples, listed category
    by category, class by class."""
    labels = [int(v) for v in labels]
    for batch in batches:
        assert len(batch) == c * p * k and all(type(i) is int for i in batch)
        _check_pk([batch], labels, c * p, k)
        cats = [category[labels[i]] for i in batch]
        assert len(set(cats)) == c
        block = p * k
        assert all(cats[j] == cats[j - j % block] for j in range(len(batch)))


def _hc_expected_len(labels, category, c, p, k, replicas, skip) -> int:
    counts = Counter(int(v) for v in labels)
    by_category: dict[object, list[int]] = {}
    for label, n in counts.items():
        if n >= (k if skip else 1):
            by_category.setdefault(category[label], []).append(math.ceil(n / k))
    parts = [
        max(math.ceil(sum(groups) / p), max(groups))
        for groups in by_category.values()
        if len(groups) >= p
    ]
    return max(math.ceil(sum(parts) / (c * replicas)), math.ceil(max(parts) / replicas))


@pytest.mark.parametrize("mode", ["replace", "skip"])
def test_category_batches_cover_every_usable_sample(mode: str) -> None:
    labels, category = _category_data()
    c, p, k = 2, 3, 2
    sampler = CategoryPKBatchSampler(labels, category, c, p, k, seed=5, small_classes=mode)
    assert sampler.batch_size == c * p * k
    assert len(sampler) == _hc_expected_len(labels, category, c, p, k, 1, mode == "skip")
    counts = Counter(labels.tolist())
    usable = {i for i, y in enumerate(labels.tolist()) if counts[y] >= (k if mode == "skip" else 1)}
    for batches in _epochs(sampler, 3):
        assert len(batches) == len(sampler)
        _check_categories(batches, labels, category, c, p, k)
        assert {i for b in batches for i in b} == usable


def test_categories_with_fewer_than_p_classes_are_left_out() -> None:
    # category "a": 3 classes, "b": 2 classes, "c": 1 class
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    category = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b", 5: "c"}
    sampler = CategoryPKBatchSampler(labels, category, 2, 2, 2)
    assert (sampler.num_categories, sampler.num_classes) == (2, 5)
    batches = list(sampler)
    _check_categories(batches, labels, category, 2, 2, 2)
    assert {labels[i] for b in batches for i in b} == {0, 1, 2, 3, 4}
    assert len(sampler) == 2  # "a" needs 2 parts (3 groups, 2 per part), "b" one


def test_category_forms_agree() -> None:
    labels, category = _category_data(seed=1)
    per_sample = [category[int(v)] for v in labels]
    as_str = {key: f"cat{value}" for key, value in category.items()}
    reference = list(CategoryPKBatchSampler(labels, category, 2, 2, 3, seed=2))
    for labs, cats in [
        (labels, per_sample),
        (torch.tensor(labels), torch.tensor(per_sample)),
        (labels.tolist(), np.array(per_sample, dtype=np.int32)),
        (labels, as_str),  # category ids sort the same way
        (labels, [as_str[int(v)] for v in labels]),
    ]:
        assert list(CategoryPKBatchSampler(labs, cats, 2, 2, 3, seed=2)) == reference


def test_category_deterministic_per_seed_and_epoch() -> None:
    labels, category = _category_data(seed=2)
    a = CategoryPKBatchSampler(labels, category, 2, 2, 2, seed=3)
    b = CategoryPKBatchSampler(labels, category, 2, 2, 2, seed=3)
    assert _epochs(a, 3) == _epochs(b, 3)
    a.set_epoch(0)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(CategoryPKBatchSampler(labels, category, 2, 2, 2, seed=4)) != list(
        CategoryPKBatchSampler(labels, category, 2, 2, 2, seed=3)
    )


def test_category_replicas_partition_the_samples_when_nothing_is_repeated() -> None:
    # 4 categories x 4 classes x 8 samples, c = 2, p = 2, k = 4: every category needs 4
    # parts, 16 parts make 8 batches, 2 per replica; each sample is drawn exactly once.
    labels = np.repeat(np.arange(16), 8)
    category = labels // 4
    seen: list[int] = []
    for rank in range(4):
        sampler = CategoryPKBatchSampler(
            labels, category, 2, 2, 4, seed=9, num_replicas=4, rank=rank
        )
        assert len(sampler) == 2
        batches = list(sampler)
        _check_categories(batches, labels, dict(enumerate(np.arange(16) // 4)), 2, 2, 4)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(128))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=10),
    num_categories=st.integers(1, 4),
    c=st.integers(1, 3),
    p=st.integers(1, 3),
    k=st.integers(1, 4),
    replicas=st.integers(1, 3),
    skip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_category_property_len_batches_and_coverage(
    counts, num_categories, c, p, k, replicas, skip, seed
) -> None:
    labels = _seeded_labels(counts, seed=seed % 7)
    category = {10 * i + 3: (i * 7) % num_categories for i in range(len(counts))}
    mode = "skip" if skip else "replace"
    usable_classes = [10 * i + 3 for i, n in enumerate(counts) if n >= (k if skip else 1)]
    per_category = Counter(category[y] for y in usable_classes)
    usable_categories = {g for g, n in per_category.items() if n >= p}
    if c > len(usable_categories):
        with pytest.raises(ValueError, match="usable categories"):
            CategoryPKBatchSampler(labels, category, c, p, k, small_classes=mode)
        return
    expected = _hc_expected_len(labels, category, c, p, k, replicas, skip)
    all_batches = []
    for rank in range(replicas):
        sampler = CategoryPKBatchSampler(
            labels,
            category,
            c,
            p,
            k,
            seed=seed,
            num_replicas=replicas,
            rank=rank,
            small_classes=mode,
        )
        assert len(sampler) == expected
        batches = list(sampler)
        assert len(batches) == expected
        _check_categories(batches, labels, category, c, p, k)
        all_batches += batches
    wanted = {
        i for i, y in enumerate(labels) if y in usable_classes and category[y] in usable_categories
    }
    assert {i for b in all_batches for i in b} == wanted


def test_category_works_as_dataloader_batch_sampler() -> None:
    labels, category = _category_data(seed=3)
    data = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)
    sampler = CategoryPKBatchSampler(labels, category, 2, 2, 2)
    loader = DataLoader(TensorDataset(data, torch.tensor(labels)), batch_sampler=sampler)
    assert sum(1 for _ in loader) == len(loader) == len(sampler)


def test_category_errors() -> None:
    labels = [0, 0, 1, 1, 2, 2, 3]
    category = {0: 0, 1: 0, 2: 1, 3: 1}
    for name, value in (("c", 0), ("p", 0), ("k", 0)):
        args = {"c": 1, "p": 1, "k": 1, name: value}
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            CategoryPKBatchSampler(labels, category, **args)
    with pytest.raises(TypeError, match="c must be an int"):
        CategoryPKBatchSampler(labels, category, 1.0, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"c=3 is larger than the number of usable categories, 2"):
        CategoryPKBatchSampler(labels, category, 3, 1, 1)
    with pytest.raises(
        ValueError,
        match=r"usable categories, 0 \(2 of 2 categories have fewer than p=3 usable classes\)",
    ):
        CategoryPKBatchSampler(labels, category, 1, 3, 1)
    with pytest.raises(ValueError, match="counting only classes with at least k samples"):
        CategoryPKBatchSampler(labels, category, 2, 2, 2, small_classes="skip")
    with pytest.raises(ValueError, match="categories has 6 entries but labels has 7"):
        CategoryPKBatchSampler(labels, [0, 0, 0, 0, 1, 1], 1, 1, 1)
    with pytest.raises(ValueError, match=r"no category for 1 label\(s\): 3"):
        CategoryPKBatchSampler(labels, {0: 0, 1: 0, 2: 1}, 1, 1, 1)
    with pytest.raises(ValueError, match="label 1 has samples in more than one category"):
        CategoryPKBatchSampler(labels, [0, 0, 0, 1, 1, 1, 1], 1, 1, 1)
    with pytest.raises(TypeError, match="categories must be integers or strings"):
        CategoryPKBatchSampler(labels, [0.5] * 7, 1, 1, 1)
    with pytest.raises(TypeError, match="categories must be integers or strings"):
        CategoryPKBatchSampler(labels, torch.zeros(7), 1, 1, 1)
    with pytest.raises(TypeError, match="categories must be a sequence"):
        CategoryPKBatchSampler(labels, 3, 1, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="categories must be 1-D"):
        CategoryPKBatchSampler(labels, np.zeros((7, 1), dtype=np.int64), 1, 1, 1)
    with pytest.raises(ValueError, match="labels is empty"):
        CategoryPKBatchSampler([], [], 1, 1, 1)
    with pytest.raises(ValueError, match="rank must be in"):
        CategoryPKBatchSampler(labels, category, 1, 1, 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="unknown small_classes"):
        CategoryPKBatchSampler(labels, category, 1, 1, 1, small_classes="drop")
    sampler = CategoryPKBatchSampler(labels, category, 2, 2, 1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sampler.set_epoch(-1)
    assert "c=2, p=2, k=1" in repr(sampler)
