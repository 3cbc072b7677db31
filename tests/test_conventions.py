"""The dtype and label conventions (README, "Conventions"), at every loss.

- A loss is computed in float32 (float64 stays float64) and returned in the dtype of its
  embeddings (promoted with the reference set's): exactly the float32 computation rounded
  once, with gradients in the embeddings' dtype.
- Labels: float labels with integral values are the integer labels; non-integral, NaN or
  infinite floats are refused with a ValueError when the input checks are on (in the one
  host read), taken without a look when they are off; bool and complex labels are refused
  with a TypeError; labels on another device than the embeddings are copied there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from reference import as_list
from syncs import count_syncs

import tripletkit
from tripletkit import distributed, losses
from tripletkit.miners import batch_hard_triplets

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
HALF = (torch.float16, torch.bfloat16)


def _triplets(x: torch.Tensor, y: torch.Tensor) -> tripletkit.Triplets:
    return batch_hard_triplets(x.detach().float(), y)


#: Every loss, by name: ``call(embeddings, labels, reduction)``. ``tripletkit.losses``'
#: functions and modules all appear (checked below).
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]] = {
    "batch_all_triplet_loss": lambda x, y, r: losses.batch_all_triplet_loss(x, y, reduction=r),
    "batch_hard_triplet_loss": lambda x, y, r: losses.batch_hard_triplet_loss(x, y, reduction=r),
    "semi_hard_triplet_loss": lambda x, y, r: losses.semi_hard_triplet_loss(x, y, reduction=r),
    "triplet_margin_loss": lambda x, y, r: losses.triplet_margin_loss(
        x, y, _triplets(x, y), reduction=r
    ),
    "contrastive_loss": lambda x, y, r: losses.contrastive_loss(x, y, reduction=r),
    "multi_similarity_loss": lambda x, y, r: losses.multi_similarity_loss(x, y, reduction=r),
    "circle_loss": lambda x, y, r: losses.circle_loss(x, y, reduction=r),
    "supcon_loss": lambda x, y, r: losses.supcon_loss(x, y, reduction=r),
    "margin_loss": lambda x, y, r: losses.margin_loss(x, y, _triplets(x, y), reduction=r),
    "BatchAllTripletLoss": lambda x, y, r: losses.BatchAllTripletLoss(reduction=r)(x, y),
    "BatchHardTripletLoss": lambda x, y, r: losses.BatchHardTripletLoss(reduction=r)(x, y),
    "SemiHardTripletLoss": lambda x, y, r: losses.SemiHardTripletLoss(reduction=r)(x, y),
    "TripletMarginLoss": lambda x, y, r: losses.TripletMarginLoss(reduction=r)(
        x, y, _triplets(x, y)
    ),
    "ContrastiveLoss": lambda x, y, r: losses.ContrastiveLoss(reduction=r)(x, y),
    "MultiSimilarityLoss": lambda x, y, r: losses.MultiSimilarityLoss(reduction=r)(x, y),
    "CircleLoss": lambda x, y, r: losses.CircleLoss(reduction=r)(x, y),
    "SupConLoss": lambda x, y, r: losses.SupConLoss(reduction=r)(x, y),
    "MarginLoss": lambda x, y, r: losses.MarginLoss(reduction=r)(x, y, _triplets(x, y)),
    "sharded_loss": lambda x, y, r: distributed.sharded_loss("batch_hard", x, y, reduction=r),
}
#: Losses without ``reduction="none"`` when given no triplets or pairs.
FUSED_ONLY = {
    "batch_all_triplet_loss",
    "BatchAllTripletLoss",
    "sharded_loss",
    "contrastive_loss",
    "ContrastiveLoss",
}


def _reductions(name: str) -> tuple[str, ...]:
    return ("mean", "sum") if name in FUSED_ONLY else ("mean", "none")


def test_every_loss_is_covered() -> None:
    public = {
        name
        for name in losses.__all__
        if name.endswith(("_loss", "Loss")) and name not in ("LossModule",)
    }
    assert public <= set(LOSSES), sorted(public - set(LOSSES))
    for name in public:
        obj = getattr(losses, name)
        fn = obj.function if inspect.isclass(obj) and hasattr(obj, "function") else obj
        if inspect.isfunction(fn):  # the decorator of the convention is on every function
            assert hasattr(fn, "__wrapped__"), name


@pytest.mark.parametrize("dtype", [*HALF, torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(LOSSES))
def test_a_loss_has_its_embeddings_dtype(name: str, dtype: torch.dtype) -> None:
    """Half embeddings: the float32 computation rounded once to their dtype (bit for bit),
    and the float32 gradient rounded once to it."""
    for reduction in _reductions(name):
        x = X.to(dtype).requires_grad_()
        out = LOSSES[name](x, Y, reduction)
        assert out.dtype == dtype, (reduction, out.dtype)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert grad.dtype == dtype
        if dtype in HALF:
            x32 = x.detach().float().requires_grad_()
            out32 = LOSSES[name](x32, Y, reduction)
            assert out32.dtype == torch.float32
            assert torch.equal(out, out32.to(dtype))
            (grad32,) = torch.autograd.grad(out32.sum(), x32)
            assert torch.equal(grad, grad32.to(dtype))


@pytest.mark.parametrize(
    ("emb", "ref", "want"),
    [
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float16, torch.bfloat16, torch.float32),
        (torch.float32, torch.float64, torch.float64),
    ],
)
def test_with_references_the_dtypes_promote(
    emb: torch.dtype, ref: torch.dtype, want: torch.dtype
) -> None:
    kw = {"ref_embeddings": X.to(ref), "ref_labels": Y}
    assert losses.batch_hard_triplet_loss(X.to(emb), Y, **kw).dtype == want
    assert losses.SupConLoss()(X.to(emb), Y, **kw).dtype == want
    assert losses.batch_all_triplet_loss(X.to(emb), Y, **kw).dtype == want


def test_autocast_bfloat16_on_cpu() -> None:
    """Under ``torch.autocast`` a linear layer returns bfloat16 embeddings: the loss is
    bfloat16 and the layer's float32 weights get float32 gradients."""
    net = torch.nn.Linear(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = net(X)
        loss = losses.BatchHardTripletLoss(margin=0.2)(emb, Y)
    assert emb.dtype == loss.dtype == torch.bfloat16
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.dtype == torch.float32


# ------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_integral_float_labels_are_the_integer_labels(dtype: torch.dtype, backend: str) -> None:
    y = Y.to(dtype)
    want = losses.batch_hard_triplet_loss(X, Y, backend=backend)
    assert torch.equal(losses.batch_hard_triplet_loss(X, y, backend=backend), want)
    assert torch.equal(losses.SupConLoss()(X, y), losses.SupConLoss()(X, Y))
    mined = batch_hard_triplets(X, y, backend=backend)
    assert as_list(mined) == as_list(batch_hard_triplets(X, Y, backend=backend))
    kw = {"ref_embeddings": X, "ref_labels": Y.to(dtype)}
    assert torch.equal(
        losses.batch_all_triplet_loss(X, y, **kw), losses.batch_all_triplet_loss(X, Y, **kw)
    )


@pytest.mark.parametrize(
    "bad",
    [0.5, -1.5, float("nan"), float("inf"), 2.0**63],
    ids=["half", "neg", "nan", "inf", "big"],
)
@pytest.mark.parametrize("which", ["labels", "ref_labels"])
def test_non_integral_float_labels_are_refused(bad: float, which: str) -> None:
    y = Y.double()
    y[3] = bad
    kw = {"ref_embeddings": X, "ref_labels": y} if which == "ref_labels" else {}
    with pytest.raises(ValueError, match=f"^{which} must hold integer values.*entry 3") as info:
        losses.batch_hard_triplet_loss(X, Y if kw else y, **kw)
    assert "integral" in str(info.value)


def test_float_labels_cost_no_extra_host_read() -> None:
    """Their integrality is read with the other value checks: one host read either way;
    with the checks off none at all (and nothing is verified: 0.5 is taken as 0)."""
    call = lambda y: losses.batch_hard_triplet_loss(X, y, backend="torch")  # noqa: E731
    assert count_syncs(lambda: call(Y.float())).total == count_syncs(lambda: call(Y)).total
    y = Y.float()
    y[1] = 0.5  # truncated to 0: the caller's promise with checks off
    with tripletkit.set_input_checks(False):
        assert count_syncs(lambda: call(Y.float())).total == 0
        assert torch.equal(call(y), call(Y))


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_bool_and_complex_labels_are_refused(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=f"labels must be an integer tensor.*{dtype}"):
        losses.batch_hard_triplet_loss(X, Y.to(dtype))
    with pytest.raises(TypeError, match=f"ref_labels must be an integer tensor.*{dtype}"):
        losses.batch_hard_triplet_loss(X, Y, ref_embeddings=X, ref_labels=Y.to(dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("where", ["labels_on_cpu", "embeddings_on_cpu"])
def test_labels_on_another_device_are_moved(where: str) -> None:
    x = X.cuda() if where == "labels_on_cpu" else X
    y = Y if where == "labels_on_cpu" else Y.cuda()
    ref = losses.batch_hard_triplet_loss(X.to(x.device), Y.to(x.device), backend="torch")
    got = losses.batch_hard_triplet_loss(x, y, backend="torch")
    assert got.device == x.device
    torch.testing.assert_close(got, ref)
    kw = {"ref_embeddings": x, "ref_labels": y}
    assert losses.SupConLoss()(x, y, **kw).device == x.device
    assert batch_hard_triplets(x, y).anchor.device == x.device


def test_labels_on_the_meta_device_are_refused() -> None:
    with pytest.raises(ValueError, match="labels is on meta but the embeddings are on cpu"):
        losses.batch_hard_triplet_loss(X, Y.to("meta"))
