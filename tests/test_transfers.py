"""No hidden host<->device traffic on the GPU path, checked without a GPU.

Every fused loss (forward and backward) and every miner runs on tensors of the ``meta``
device under :class:`benchmarks.syncs.TransferCounter`: any copy of a CPU tensor onto the
device, any tensor built there from Python data (``torch.tensor(v, device=...)``,
``new_tensor``), any CPU tensor operand and any read of a device value is counted (on
``meta`` a read has no value to return: the counter answers with a stand-in so the run goes
on, and counts it). With the input checks off the fused losses must do none of these; with
them on at most one read; miners at most 2, copies included.

On ``meta`` no value exists, so which ops run can depend only on shapes and on what the host
knows: the width (``max_positives``) and the reduction. That is why the cases vary those
(no width, and the bounds of K = 2, 8, 33 and 64 per class, in-batch and against a reference
set of M = 4N): a label layout cannot change the ops without a read, and any read is
counted. The read *counts* with real values are pinned on the CPU by
``tests/test_sync_free.py`` (P x K and irregular labels); on ``meta`` the checks' conditions
are dropped (:class:`~tripletkit._checks.DeviceChecks`), so the checks-on figures here are
lower bounds.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FUSED, TORCH_MINERS
from syncs import TransferCounter, count_transfers

import tripletkit
from benchmarks.syncs import CPU_OPERAND, DEVICE_TO_HOST, FROM_PYTHON, HOST_TO_DEVICE
from tripletkit import losses
from tripletkit.kernels import torch_backend
from tripletkit.losses._reduce import listed_terms

N, DIM = 128, 16
#: Samples per class of the audit: their bounds k - 1 take every kernel path (counted ranks up
#: to 16, a binary search beyond, semi-hard's buckets up to 32 and its sort above).
KS = (2, 8, 33, 64)
MINER_BUDGET = 2


def _meta(n: int, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.empty(n, DIM, device="meta", requires_grad=requires_grad)
    return x, torch.empty(n, dtype=torch.int64, device="meta")


def _step(kind: str, soft: bool, k: int | None, refs: bool, **kw: object):
    """Forward + backward of a fused loss on meta tensors; ``k=None``: no width given."""
    x, y = _meta(N, requires_grad=True)
    extra: dict[str, object] = dict(kw)
    if refs:  # a reference set of M = 4N, e.g. a memory bank: 4 k per class
        ref, ref_y = _meta(4 * N, requires_grad=True)
        extra.update(ref_embeddings=ref, ref_labels=ref_y)
    if k is not None:
        extra["max_positives"] = 4 * k if refs else k - 1

    def step() -> None:
        out = FUSED[kind](x, y, soft_margin=soft, backend="torch", **extra)
        out.sum().backward()

    return step


WIDTHS = (None, *KS)


@pytest.mark.parametrize("refs", [False, True], ids=["in_batch", "refs_4n"])
@pytest.mark.parametrize("k", WIDTHS, ids=["no_width", *(f"k{k}" for k in KS)])
@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_fused_losses_move_nothing_with_checks_off(
    kind: str, soft: bool, k: int | None, refs: bool
) -> None:
    with tripletkit.set_input_checks(False):
        # the reduction acts after the kernels: every one at a single width suffices
        for reduction in ("mean", "sum", "mean_nonzero") if k == 8 else ("mean",):
            counter = count_transfers(_step(kind, soft, k, refs, reduction=reduction))
            if kind == "batch_all" and soft and k is None:
                # documented (batch_all_triplet_loss, max_positives): the soft margin's torch
                # kernel needs a width and reads the largest count when none is given
                assert dict(counter.counts) == {"to_host": 1}, (reduction, counter.counts)
            else:
                assert counter.total == 0, (reduction, dict(counter.counts))
        with tripletkit.set_input_checks(True):
            checked = count_transfers(_step(kind, soft, k, refs))
        assert checked.transfers == 0 and checked.reads <= 1, dict(checked.counts)


@pytest.mark.parametrize(
    "options",
    [{"metric": "cosine"}, {"metric": "sqeuclidean"}, {"normalize": True}, {"anchor_offset": 8}],
    ids=["cosine", "sqeuclidean", "normalize", "anchor_offset"],
)
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_every_metric_and_option_moves_nothing(kind: str, options: dict[str, object]) -> None:
    refs = "anchor_offset" in options  # the anchors are rows 8 .. 8 + N of 4N references
    with tripletkit.set_input_checks(False):
        counter = count_transfers(_step(kind, False, 8, refs, **options))
    assert counter.total == 0, dict(counter.counts)


def test_module_forms_and_parts_move_nothing() -> None:
    x, y = _meta(N, requires_grad=True)
    calls = [
        lambda: losses.BatchAllTripletLoss(backend="torch", max_positives=7)(x, y),
        lambda: losses.BatchHardTripletLoss(backend="torch")(x, y),
        lambda: losses.SemiHardTripletLoss(backend="torch", max_positives=7)(x, y),
        lambda: losses.batch_all_parts(x, y, backend="torch", max_positives=7).total,
        lambda: losses.semi_hard_parts(x, y, backend="torch", max_positives=7).total,
    ]
    with tripletkit.set_input_checks(False):
        for call in calls:
            counter = count_transfers(lambda call=call: call().backward())
            assert counter.total == 0, dict(counter.counts)


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_a_tensor_margin_is_never_read_with_checks_off(kind: str) -> None:
    margin = torch.full((), 0.3, device="meta")
    for m in (margin, torch.tensor(0.3)):  # on the device, or a 0-dim CPU scalar
        with tripletkit.set_input_checks(False):
            counter = count_transfers(_step(kind, False, 8, False, margin=m))
        assert counter.total == 0, dict(counter.counts)


@pytest.mark.parametrize("kind", ["batch_hard", "semi_hard"])
def test_reduction_none_reads_its_size_once(kind: str) -> None:
    """``"none"`` returns one term per real triplet: its size is data, read once (as the
    docstrings say); nothing is copied, and the backward pass reads nothing."""
    for k in (None, 8, 64):
        with tripletkit.set_input_checks(False):
            counter = count_transfers(_step(kind, False, k, False, reduction="none"))
        assert dict(counter.counts) == {"to_host": 1}, (k, counter.counts)


def test_tensor_margin_and_reduction_none_give_the_same_values_on_the_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, dtype=torch.float64, generator=g)
    y = torch.arange(40) % 7
    for kind, fn in FUSED.items():
        reductions = ("mean",) if kind == "batch_all" else ("mean", "none")
        for reduction in reductions:
            want = fn(x, y, 0.3, reduction=reduction, backend="torch")
            with tripletkit.set_input_checks(False):
                got = fn(
                    x, y, torch.tensor(0.3, dtype=x.dtype), reduction=reduction, backend="torch"
                )
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # "none" lists the terms of the real slots in the boolean mask's (row-major) order
    terms = torch.randn(6, 5, generator=g)
    valid = torch.rand(6, 5, generator=g) < 0.4
    torch.testing.assert_close(listed_terms(terms, valid), terms[valid], rtol=0, atol=0)
    torch.testing.assert_close(listed_terms(terms, None), terms.reshape(-1), rtol=0, atol=0)


MINERS = TORCH_MINERS


@pytest.mark.parametrize("checks", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize("name", tuple(MINERS))
def test_miners_at_most_two_copies_or_reads(name: str, checks: bool) -> None:
    # (the random miners draw on the CPU generator for meta tensors and copy: one copy more
    # than on CUDA, where they draw from a CUDA generator)
    x, y = _meta(N)
    miner = MINERS[name]()
    with tripletkit.set_input_checks(checks):
        counter = count_transfers(lambda: miner(x, y))
    assert counter.total <= MINER_BUDGET, dict(counter.counts)


# ---------------------------------------------------------------------------------------------
# The detector sees what it guards against


def test_the_detector_sees_each_kind_of_transfer() -> None:
    d = torch.zeros(3, device="meta")
    cases = {
        HOST_TO_DEVICE: lambda: torch.zeros(()).to(d.device),
        FROM_PYTHON: lambda: torch.tensor(5.0, device=d.device),
        CPU_OPERAND: lambda: d[torch.tensor([0, 2])],
        DEVICE_TO_HOST: lambda: d.cpu(),
        "_local_scalar_dense": lambda: d.sum().item(),
        "index with a boolean mask": lambda: d[d > 0],
        "nonzero": lambda: d.nonzero(),
    }
    for kind, fn in cases.items():
        assert dict(count_transfers(fn).counts) == {kind: 1}, kind
    assert dict(count_transfers(lambda: d.new_tensor([1.0, 2.0])).counts) == {FROM_PYTHON: 1}
    # not transfers: scalars are kernel arguments; factories fill on the device
    quiet = [
        lambda: d + torch.tensor(2.0),
        lambda: torch.where(d > 0, d, 7.0),
        lambda: torch.full((2,), 2**62, device=d.device),
        lambda: torch.as_tensor(d),
        lambda: torch.tensor(1.0),  # on the CPU
    ]
    for fn in quiet:
        assert count_transfers(fn).total == 0
    # the factories are restored on exit
    assert not hasattr(torch.tensor, "__wrapped__")
    assert "new_tensor" not in vars(torch.Tensor)


def test_the_detector_sees_factories_in_the_backward_pass() -> None:
    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def, override]
            return x * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def, override]
            return g * torch.tensor(2.0, device=g.device)

    x = torch.zeros(3, device="meta", requires_grad=True)
    counter = count_transfers(lambda: Scaled.apply(x).sum().backward())
    assert dict(counter.counts) == {FROM_PYTHON: 1}


def test_the_detector_fails_when_a_copy_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.2.0's three copies, put back one at a time, are each seen."""
    step = _step("batch_all", False, 8, False)
    with tripletkit.set_input_checks(False):
        assert count_transfers(step).total == 0

        def cpu_zeros(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            zero = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
            return zero[0].to(device), zero[1].to(device)

        with monkeypatch.context() as patch:
            patch.setattr(torch_backend, "_zero", cpu_zeros)
            assert dict(count_transfers(step).counts) == {HOST_TO_DEVICE: 2}

        def sentinel_from_host(values: torch.Tensor, cols: torch.Tensor):  # type: ignore[no-untyped-def]
            best = values.flip(1).cummin(dim=1).values.flip(1)
            later = torch.arange(values.shape[1], device=values.device)
            holds = (later[None, :] >= later[:, None]) & (values[:, None, :] == best[:, :, None])
            return best, torch.where(holds, cols[:, None, :], cols.new_tensor(2**62)).amin(2)

        semi = _step("semi_hard", False, 8, False)
        assert count_transfers(semi).total == 0
        with monkeypatch.context() as patch:
            patch.setattr(torch_backend, "_suffix_lexmin", sentinel_from_host)
            assert dict(count_transfers(semi).counts) == {FROM_PYTHON: 1}


def test_a_tensor_margin_read_with_item_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    from tripletkit.losses import _triplet_functions as triplet  # where check_margin is read

    step = _step("batch_hard", False, None, False, margin=torch.full((), 0.3, device="meta"))
    with tripletkit.set_input_checks(False):
        monkeypatch.setattr(triplet, "check_margin", lambda m: float(m.item()))
        assert dict(count_transfers(step).counts) == {"_local_scalar_dense": 1}


def test_the_counter_is_a_sync_counter() -> None:
    """The transfer counter counts every read the sync counter does (one home)."""
    x = torch.arange(6.0)
    with TransferCounter() as c:
        int(x.sum())
        tripletkit._checks.to_host(x)
    assert dict(c.counts) == {"_local_scalar_dense": 1, "to_host": 1}
    assert c.reads == 2 and c.transfers == 0


def test_check_margin() -> None:
    from tripletkit._checks import check_margin

    assert check_margin(0.5) == 0.5
    assert check_margin(torch.tensor([0.25])) == 0.25  # checks on: read, then a float
    with pytest.raises(ValueError, match="margin must be finite"):
        check_margin(torch.tensor(float("nan")))
    with pytest.raises(TypeError, match="margin must be a real number"):
        check_margin(torch.tensor(0.2, requires_grad=True))
    with pytest.raises(TypeError, match="margin must be a real number"):
        check_margin(torch.tensor(True))
    with tripletkit.set_input_checks(False):
        kept = check_margin(torch.tensor([0.25], dtype=torch.float64))
        assert isinstance(kept, torch.Tensor) and kept.shape == () and kept.item() == 0.25
        with pytest.raises(TypeError, match="margin must be a real number"):
            check_margin(torch.ones(2))
