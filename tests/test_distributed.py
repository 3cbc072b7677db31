"""``tripletkit.distributed``: real multi-process DDP runs against single-process training.

One spawn of two gloo processes runs every case (every loss, reduction and mode, on equal
and unequal per-rank batch sizes, one rank empty included); each rank saves its losses and
parameter gradients, and the parent compares them with a single-process run on the
concatenated batch, in float64. The spawn takes 20-40 s on two shared cores (process
start-up and about 50 DDP steps of a few collectives each), hence the ``slow`` mark; CI runs
these tests all the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from ddp import assert_close, free_port, spawn_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tripletkit.distributed import SHARDED_LOSSES, gather, rank_offset, sharded_loss
from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
)

IN_DIM, EMB_DIM = 5, 3
FULL = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
    "contrastive": contrastive_loss,
}
# (name, kind, reduction, keyword arguments of the loss)
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    (f"{kind}-{reduction}", kind, reduction, {})
    for kind in SHARDED_LOSSES
    for reduction in ("mean", "mean_nonzero", "sum")
] + [
    ("batch_all-soft", "batch_all", "mean", {"soft_margin": True}),
    ("batch_hard-soft-cos", "batch_hard", "mean", {"soft_margin": True, "metric": "cosine"}),
    ("semi_hard-sq-norm", "semi_hard", "mean", {"metric": "sqeuclidean", "normalize": True}),
    ("batch_all-margin", "batch_all", "mean_nonzero", {"margin": 1.0}),
    ("contrastive-margins", "contrastive", "mean_nonzero", {"pos_margin": 0.2, "neg_margin": 2.0}),
]
#: One case of each loss, with its default reduction.
BASIC = [case for case in CASES if case[2] == SHARDED_LOSSES[case[1]] and not case[3]]
#: Per-rank batch sizes of the two-process runs and the cases run on them: every case on
#: unequal sizes; one case of each loss on equal sizes and with one rank empty (each step
#: costs several collectives, and the CPU is shared).
SIZES: dict[tuple[int, int], list[tuple[str, str, str, dict[str, Any]]]] = {
    (7, 11): CASES,
    (6, 6): BASIC,
    (0, 9): BASIC,
}
RUNS = [(sizes, case) for sizes, cases in SIZES.items() for case in cases]


def _data(sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: inputs ``[sum(sizes), IN_DIM]`` and labels, the same in every process."""
    g = torch.Generator().manual_seed(sum(sizes) * 7 + len(sizes))
    n = sum(sizes)
    x = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, EMB_DIM).to(torch.float64)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _local(sizes: tuple[int, ...], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data(sizes)
    start = sum(sizes[:rank])
    return x[start : start + sizes[rank]], y[start : start + sizes[rank]]


def _step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: tuple, mode: str
) -> tuple[float, list[torch.Tensor]]:
    """One forward/backward of ``case`` in ``mode`` ("single", "full" or "sharded")."""
    _, kind, reduction, kwargs = case
    model.zero_grad(set_to_none=False)
    emb = model(x)
    if mode == "sharded":
        loss = sharded_loss(kind, emb, y, reduction=reduction, **kwargs)
    else:
        if mode == "full":
            emb, y = gather(emb, y)
        loss = FULL[kind](emb, y, reduction=reduction, **kwargs)
    loss.backward()
    return loss.item(), _grads(model)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results: dict[str, Any] = {}
        for sizes, cases in SIZES.items():
            x, y = _local(sizes, rank)
            # The forward values of gather, and the offsets.
            all_x, all_y = gather(x, y.to(torch.int32))
            results[f"{sizes}/gather"] = (all_x, all_y, rank_offset(x.shape[0]))
            model = DistributedDataParallel(_model())
            for case in cases:
                for mode in ("full", "sharded"):
                    results[f"{sizes}/{case[0]}/{mode}"] = _step(model, x, y, case, mode)
        # Replicas that disagree on the width all raise (none is left waiting).
        try:
            gather(torch.zeros(2, 3 + rank, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
        except ValueError as error:
            results["mismatch"] = str(error)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # Run every case once here first: a cold numba cache is then compiled once, by this
    # process, and the workers load it instead of both compiling it at once.
    x, y = _data((6,))
    for case in CASES:
        _step(_model(), x, y, case, "single")
    return spawn_ranks(_worker, 2, tmp_path_factory.mktemp("ddp"), timeout=120.0)


@pytest.mark.slow
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_gather_values(two_ranks: list[dict[str, Any]], sizes: tuple[int, ...]) -> None:
    x, y = _data(sizes)
    for rank, results in enumerate(two_ranks):
        all_x, all_y, offset = results[f"{sizes}/gather"]
        assert torch.equal(all_x, x)
        assert all_y.dtype == torch.int64 and torch.equal(all_y, y)
        assert offset == sum(sizes[:rank])


@pytest.mark.slow
@pytest.mark.parametrize(("sizes", "case"), RUNS, ids=[f"{s[0]}x{s[1]}-{c[0]}" for s, c in RUNS])
def test_ddp_matches_single_process(
    two_ranks: list[dict[str, Any]], sizes: tuple[int, ...], case: tuple
) -> None:
    x, y = _data(sizes)
    loss, grads = _step(_model(), x, y, case, "single")
    assert any(bool(g.abs().sum() > 0) for g in grads), "a case with no gradient tests nothing"
    for results in two_ranks:
        for mode in ("full", "sharded"):
            ddp_loss, ddp_grads = results[f"{sizes}/{case[0]}/{mode}"]
            assert_close(ddp_loss, loss)
            assert_close(ddp_grads, grads)


@pytest.mark.slow
def test_mismatched_widths_raise_on_every_rank(two_ranks: list[dict[str, Any]]) -> None:
    for results in two_ranks:
        assert "disagree" in results["mismatch"]


def test_no_process_group_is_single_process() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    x, y = _data((5, 4))
    emb = x[:, :EMB_DIM].clone().requires_grad_(True)
    all_emb, all_y = gather(emb, y)
    assert all_emb is emb and all_y is y
    assert rank_offset(9) == 0
    for kind, reduction in SHARDED_LOSSES.items():
        assert torch.equal(sharded_loss(kind, emb, y), FULL[kind](emb, y, reduction=reduction))


def test_world_size_one() -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        x, y = _data((9,))
        all_x, all_y = gather(x, y)
        assert all_x is x and all_y is y
        assert rank_offset(9) == 0
        for case in BASIC:
            model = DistributedDataParallel(_model())
            for mode in ("full", "sharded"):
                loss, grads = _step(model, x, y, case, mode)
                ref_loss, ref_grads = _step(_model(), x, y, case, "single")
                assert_close(loss, ref_loss)
                assert_close(grads, ref_grads)
    finally:
        dist.destroy_process_group()


#: The options of each family of :func:`sharded_loss`, with a value that is not the default.
TRIPLET_OPTIONS = {"margin": 0.5, "soft_margin": True, "backend": "torch"}
CONTRASTIVE_OPTIONS = {"pos_margin": 0.25, "neg_margin": 2.0}


@pytest.mark.parametrize("kind", list(SHARDED_LOSSES))
def test_sharded_loss_refuses_options_that_do_not_apply(kind: str) -> None:
    """The triplet losses take ``margin``, ``soft_margin`` and ``backend``; the contrastive
    loss ``pos_margin`` and ``neg_margin``: any other is a TypeError that names it and lists
    the kind's options. ``None`` means "not given"."""
    x, y = _data((8,))
    own, other = (
        (CONTRASTIVE_OPTIONS, TRIPLET_OPTIONS)
        if kind == "contrastive"
        else (TRIPLET_OPTIONS, CONTRASTIVE_OPTIONS)
    )
    for name, value in other.items():
        with pytest.raises(TypeError) as info:
            sharded_loss(kind, x, y, **{name: value})
        message = str(info.value)
        assert name in message and kind in message, message
        assert all(option in message for option in own), message
    for name in other:  # None: not given
        assert torch.equal(sharded_loss(kind, x, y, **{name: None}), sharded_loss(kind, x, y))
    # The kind's own options reach its loss.
    options = {"metric": "cosine", "normalize": True, **own}
    want = FULL[kind](x, y, reduction="sum", **options)
    torch.testing.assert_close(sharded_loss(kind, x, y, reduction="sum", **options), want)


def test_argument_errors() -> None:
    x, y = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="kind"):
        sharded_loss("lifted", x, y)
    with pytest.raises(ValueError, match="reduction"):
        sharded_loss("batch_all", x, y, reduction="none")
    with pytest.raises(TypeError, match="anchor_offset"):
        sharded_loss("batch_hard", x, y, anchor_offset=0)
    with pytest.raises(TypeError):
        sharded_loss("contrastive", x, y, soft_margin=True)
    with pytest.raises(ValueError, match="labels"):
        gather(x, y[:3])
    with pytest.raises(ValueError, match="n_local"):
        rank_offset(-1)
