"""Samplers resume exactly: ``state_dict()`` / ``load_state_dict()`` mid-epoch give the
batches an uninterrupted sampler would have given, through ``torch.save``, across replicas,
with a DataLoader that draws ahead, with the hard-class sampler's signatures and the
neighbour sampler's mined negatives (one harness for every sampler)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tripletkit.samplers import (
    CategoryPKBatchSampler,
    HardClassPKBatchSampler,
    NeighbourPKBatchSampler,
    PKBatchSampler,
)

LABELS = np.repeat(np.arange(12), [5, 7, 4, 9, 6, 5, 8, 4, 6, 7, 5, 4])
CATEGORY = LABELS // 4


KINDS = ("pk", "hard", "category", "neighbour")
#: The neighbour sampler is refreshed every this many steps (so that some refreshes fall
#: mid-epoch, and the resumed run draws from negatives mined before the stop).
REFRESH_EVERY = 3


def _build(kind: str, **kw: object):  # type: ignore[no-untyped-def]
    if kind == "pk":
        return PKBatchSampler(LABELS, p=3, k=2, seed=7, **kw)  # type: ignore[arg-type]
    if kind == "hard":
        return HardClassPKBatchSampler(LABELS, p=3, k=2, seed=7, **kw)  # type: ignore[arg-type]
    if kind == "neighbour":
        return NeighbourPKBatchSampler(
            LABELS,
            p=3,
            k=2,
            num_neighbours=4,
            hard_fraction=0.7,
            seed=7,
            **kw,  # type: ignore[arg-type]
        )
    return CategoryPKBatchSampler(LABELS, CATEGORY, 2, 2, 2, seed=7, **kw)  # type: ignore[arg-type]


def _emb(step: int) -> torch.Tensor:
    """A fake model's embeddings at a step (deterministic per step)."""
    g = torch.Generator().manual_seed(step)
    return torch.randn(len(LABELS), 4, generator=g) + torch.from_numpy(LABELS)[:, None] * 0.1


def _update(sampler, step: int) -> None:  # type: ignore[no-untyped-def]
    """What the training loop feeds the sampler after step ``step``: the hard-class sampler
    every step, the neighbour sampler a refresh every :data:`REFRESH_EVERY` steps."""
    if isinstance(sampler, HardClassPKBatchSampler):
        sampler.update(_emb(step), torch.from_numpy(LABELS))
    if isinstance(sampler, NeighbourPKBatchSampler) and step % REFRESH_EVERY == 0:
        sampler.refresh(embeddings=_emb(step))


def _run(sampler, epochs: range, stop_after: int | None = None, step: int = 0):  # type: ignore[no-untyped-def]
    """Every batch of ``epochs``, updating after each (the update of step ``s`` is the same
    in every run); stop (returning the state) after ``stop_after`` batches in all."""
    seen: list[list[int]] = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for batch in sampler:
            seen.append(batch)
            _update(sampler, step + len(seen))
            if stop_after is not None and len(seen) == stop_after:
                return seen, sampler.state_dict()
    return seen, None


def _roundtrip(state: dict) -> dict:  # type: ignore[type-arg]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("at", ["mid-first", "boundary", "mid-second"])
@pytest.mark.parametrize("kind", KINDS)
def test_resume_gives_the_uninterrupted_batches(kind: str, at: str) -> None:
    full, _ = _run(_build(kind), range(3))
    per_epoch = len(_build(kind))
    stop = (
        {"mid-first": per_epoch // 2, "boundary": per_epoch}[at]
        if at != "mid-second"
        else (per_epoch + per_epoch // 2)
    )
    first, state = _run(_build(kind), range(3), stop_after=stop)
    assert state["epoch"] == stop // per_epoch  # the epoch to iterate next
    resumed = _build(kind)
    resumed.load_state_dict(_roundtrip(state))
    rest, _ = _run(resumed, range(resumed.epoch, 3), step=stop)  # the documented recipe
    assert first + rest == full
    assert len(rest) == 3 * per_epoch - stop


@pytest.mark.parametrize("rank", [0, 1])
def test_neighbour_replicas_resume_with_their_negatives(rank: int) -> None:
    """Each replica of the neighbour sampler resumes after one epoch and a half with the
    negatives mined before the stop (refreshed since the start)."""
    kw = {"num_replicas": 2, "rank": rank}
    full, _ = _run(_build("neighbour", **kw), range(3))
    per_epoch = len(_build("neighbour", **kw))
    stop = per_epoch + per_epoch // 2
    first, state = _run(_build("neighbour", **kw), range(3), stop_after=stop)
    assert state is not None and state["negatives"] is not None and state["num_refreshes"] > 0
    resumed = _build("neighbour", **kw)
    resumed.load_state_dict(_roundtrip(state))
    assert torch.equal(resumed.negatives, state["negatives"])  # type: ignore[arg-type]
    rest, _ = _run(resumed, range(1, 3), step=stop)
    assert first + rest == full


def test_hard_class_state_holds_its_signatures() -> None:
    a = _build("hard")
    _update(a, 1)
    _update(a, 2)
    b = _build("hard")
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert b.num_updates == a.num_updates == 2
    assert torch.equal(b.signatures, a.signatures)  # type: ignore[arg-type]
    assert torch.equal(b.has_signature, a.has_signature)
    for epoch in (0, 1):  # later epochs are drawn from the same signatures
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)


def test_resume_at_an_epoch_boundary_and_another_epoch() -> None:
    a = _build("pk")
    a.set_epoch(2)
    state = a.state_dict()
    assert state["batches"] is None and state["epoch"] == 2
    b = _build("pk")
    b.load_state_dict(state)
    assert b.epoch == 2 and list(b) == list(a)
    # a loaded mid-epoch state is dropped when the loop sets another epoch
    it = iter(a)
    next(it)
    c = _build("pk")
    c.load_state_dict(a.state_dict())
    c.set_epoch(3)
    a.set_epoch(3)
    assert list(c) == list(a)


@pytest.mark.parametrize("rank", [0, 1])
def test_replicas_resume_their_own_share(rank: int) -> None:
    full = list(PKBatchSampler(LABELS, p=2, k=2, seed=3, num_replicas=2, rank=rank))
    s = PKBatchSampler(LABELS, p=2, k=2, seed=3, num_replicas=2, rank=rank)
    it = iter(s)
    first = [next(it) for _ in range(2)]
    r = PKBatchSampler(LABELS, p=2, k=2, seed=3, num_replicas=2, rank=rank)
    r.load_state_dict(s.state_dict())
    assert first + list(r) == full
    other = PKBatchSampler(LABELS, p=2, k=2, seed=3, num_replicas=2, rank=1 - rank)
    with pytest.raises(ValueError, match="rank: saved"):
        other.load_state_dict(s.state_dict())


def test_dataloader_with_workers_resumes_from_the_consumed_step() -> None:
    data = TensorDataset(torch.arange(len(LABELS)))
    sampler = PKBatchSampler(LABELS, p=2, k=2, seed=1)
    full = [b[0].tolist() for b in DataLoader(data, batch_sampler=sampler)]
    loader = DataLoader(data, batch_sampler=sampler, num_workers=1, prefetch_factor=2)
    used = []
    for step, (batch,) in enumerate(loader, start=1):
        used.append(batch.tolist())
        if step == 3:
            state = sampler.state_dict(consumed=step)  # the workers drew further ahead
            break
    assert state["position"] == 3
    resumed = PKBatchSampler(LABELS, p=2, k=2, seed=1)
    resumed.load_state_dict(state)
    rest = [b[0].tolist() for b in DataLoader(data, batch_sampler=resumed)]
    assert used + rest == full


def test_errors() -> None:
    s = _build("pk")
    with pytest.raises(ValueError, match="no epoch is being iterated"):
        s.state_dict(consumed=1)
    it = iter(s)
    next(it)
    with pytest.raises(ValueError, match="handed out only 1"):
        s.state_dict(consumed=2)
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"epoch": 0})
    other = PKBatchSampler(LABELS[::-1].copy(), p=3, k=2, seed=7)
    with pytest.raises(ValueError, match="labels_crc32"):
        other.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="type: saved 'PKBatchSampler'"):
        _build("hard").load_state_dict(
            {
                **s.state_dict(),
                "signatures": None,
                "has_signature": torch.zeros(12, dtype=torch.bool),
                "num_updates": 0,
            }
        )
    with pytest.raises(ValueError, match="k: saved 2, here 3"):
        PKBatchSampler(LABELS, p=3, k=3, seed=7).load_state_dict(s.state_dict())


def test_cross_batch_memory_resumes_exactly() -> None:
    from tripletkit.memory import CrossBatchMemory

    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(3, 4, generator=g), torch.randint(0, 5, (3,), generator=g)) for _ in range(7)
    ]
    a = CrossBatchMemory(size=5, dim=4)
    for emb, lab in batches[:4]:  # wrapped around: the ring's start is not row 0
        a.enqueue(emb, lab)
    with pytest.raises(ValueError, match="size=5, dim=4; this one has size=6"):
        CrossBatchMemory(size=6, dim=4).load_state_dict(a.state_dict())
    b = CrossBatchMemory(size=5, dim=4)
    b.load_state_dict(_roundtrip(a.state_dict()))
    for emb, lab in batches[4:]:
        for m in (a, b):
            m.enqueue(emb, lab)
            assert len(m) == 5
        ea, la = a.get()
        eb, lb = b.get()
        assert torch.equal(ea, eb) and torch.equal(la, lb)
    empty = CrossBatchMemory(size=5, dim=4)
    c = CrossBatchMemory(size=5, dim=4)
    c.load_state_dict(empty.state_dict())
    assert len(c) == 0
    with pytest.raises(ValueError, match="missing"):
        c.load_state_dict({"size": 5})
