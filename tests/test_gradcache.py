"""tripletkit.gradcache: cached_backward against a plain ``loss.backward()``, in float64.

The reference of each test is an ordinary step on the same batch: ``loss_fn(model(x), y)``
then ``backward()``. For a model without randomness or batch-norm the reference forward is
the whole batch at once; for a model with dropout it is the chunked forward
``torch.cat([model(c) for c in x.split(chunk_size)])`` from the same seed (dropout then
draws the same masks in the same order); for batch-norm in training mode too, since it
normalises each chunk on its own. Gradients must agree to 1e-9 (relative and absolute).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from tripletkit.gradcache import GradCache, cached_backward
from tripletkit.losses import (
    MarginLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    semi_hard_triplet_loss,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.miners import SemiHardMiner, random_triplets

TOL = 1e-9
N, IN_DIM, EMB_DIM = 22, 6, 4
#: Chunk sizes: uneven last chunk (5 + 5 + 5 + 5 + 2), one row, the batch, more than it.
CHUNKS = (5, 1, N, 50)


def _data(n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


def _net(*, dropout: float = 0.0, batchnorm: bool = False, momentum: float | None = 0.1):
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(IN_DIM, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16, momentum=momentum))
    layers.append(nn.Tanh())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, EMB_DIM))
    return nn.Sequential(*layers).to(torch.float64)


def _memory() -> CrossBatchMemory:
    memory = CrossBatchMemory(size=12, dim=EMB_DIM, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    memory.enqueue(
        torch.randn(12, EMB_DIM, generator=g, dtype=torch.float64),
        torch.randint(0, 5, (12,), generator=g),
    )
    return memory


MEMORY = _memory()


def _with_memory(e: Tensor, y: Tensor) -> Tensor:
    mem_e, mem_y = MEMORY.get()
    return batch_hard_triplet_loss(e, y) + 0.5 * batch_all_triplet_loss(
        e, y, ref_embeddings=mem_e, ref_labels=mem_y
    )


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": lambda e, y: semi_hard_triplet_loss(e, y, margin=0.5),
    "contrastive": lambda e, y: contrastive_loss(e, y, neg_margin=2.0),
    "miner+TripletMarginLoss": lambda e, y: TripletMarginLoss(margin=0.5)(
        e, y, SemiHardMiner(margin=0.5)(e, y)
    ),
    "sum_with_memory": _with_memory,
    "batch_hard_soft_cosine": lambda e, y: batch_hard_triplet_loss(
        e, y, soft_margin=True, metric="cosine"
    ),
}


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def _close(actual: Any, expected: Any) -> None:
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL)


def _reference(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    chunk_size: int | None,
) -> Tensor:
    """A plain step: forward (whole batch, or chunked), loss, ``backward()``."""
    emb = model(x) if chunk_size is None else torch.cat([model(c) for c in x.split(chunk_size)])
    loss = loss_fn(emb, y)
    loss.backward()
    return loss.detach()


def _compare(
    make: Callable[[], nn.Module],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    chunk_size: int,
    *,
    chunked_reference: bool,
    seed: int = 3,
) -> tuple[nn.Module, nn.Module]:
    """Run cached_backward and the reference on two copies of a model from the same seed;
    check loss, gradients and the random state left behind. Returns both models."""
    x, y = _data()
    ref_model, model = make(), make()
    torch.manual_seed(seed)
    ref_loss = _reference(ref_model, x, y, loss_fn, chunk_size if chunked_reference else None)
    ref_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    loss = cached_backward(model, x, y, loss_fn, chunk_size=chunk_size)
    assert not loss.requires_grad
    _close(loss, ref_loss)
    grads = _grads(model)
    assert any(bool(g.abs().sum() > 0) for g in grads), "a case with no gradient tests nothing"
    _close(grads, _grads(ref_model))
    # The replays leave the random state where an ordinary step leaves it.
    assert torch.equal(torch.get_rng_state(), ref_rng)
    return model, ref_model


# ------------------------------------------------------------------ exact gradients


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_equals_full_batch_backward(loss_name: str, chunk_size: int) -> None:
    _compare(_net, LOSSES[loss_name], chunk_size, chunked_reference=False)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_equals_backward_with_dropout(loss_name: str, chunk_size: int) -> None:
    _compare(lambda: _net(dropout=0.3), LOSSES[loss_name], chunk_size, chunked_reference=True)


def test_dropout_is_active_in_the_tests() -> None:
    """The dropout masks matter: another seed gives other gradients (so equality above
    means the replays drew the first passes' masks)."""
    x, y = _data()
    grads = []
    for seed in (1, 2):
        model = _net(dropout=0.3)
        torch.manual_seed(seed)
        cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
        grads.append(_grads(model))
    assert not torch.allclose(grads[0][0], grads[1][0])


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("chunk_size", [5, N])
def test_batchnorm_normalises_per_chunk_and_updates_once(
    momentum: float | None, chunk_size: int
) -> None:
    model, ref_model = _compare(
        lambda: _net(dropout=0.2, batchnorm=True, momentum=momentum),
        batch_hard_triplet_loss,
        chunk_size,
        chunked_reference=True,
    )
    # Running statistics: those of one ordinary chunked forward (one update per chunk).
    bn, ref_bn = model[1], ref_model[1]
    assert int(bn.num_batches_tracked) == math.ceil(N / chunk_size)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(ref_bn, name)), name
    # ... and also those of a chunked forward without a graph.
    plain = _net(dropout=0.2, batchnorm=True, momentum=momentum)
    with torch.no_grad():
        for chunk in _data()[0].split(chunk_size):
            plain(chunk)
    for name, buffer in plain[1].named_buffers():
        assert torch.equal(getattr(bn, name), buffer), name


def test_eval_mode_batchnorm_equals_full_batch() -> None:
    def make() -> nn.Module:
        return _net(dropout=0.3, batchnorm=True).eval()

    model, _ = _compare(make, batch_all_triplet_loss, 5, chunked_reference=False)
    assert int(model[1].num_batches_tracked) == 0


def test_spectral_norm_power_iteration_is_replayed() -> None:
    """A module whose forward updates the buffers it reads (spectral norm's power
    iteration): each replay sees the buffers its first pass saw."""

    def make() -> nn.Module:
        model = _net()
        torch.nn.utils.parametrizations.spectral_norm(model[0])
        return model

    model, ref_model = _compare(make, batch_hard_triplet_loss, 5, chunked_reference=True)
    for (name, buffer), (_, ref_buffer) in zip(
        model.named_buffers(), ref_model.named_buffers(), strict=True
    ):
        assert torch.equal(buffer, ref_buffer), name


def test_loss_that_draws_random_numbers() -> None:
    """``random_triplets`` draws from the global generator inside ``loss_fn``: the same
    draws, and the same random state afterwards, as an ordinary step."""

    def loss_fn(e: Tensor, y: Tensor) -> Tensor:
        return TripletMarginLoss(margin=1.0)(e, y, random_triplets(e, y, num_triplets=30))

    _compare(lambda: _net(dropout=0.3), loss_fn, 5, chunked_reference=True)


def test_parameters_of_the_loss_get_their_gradient() -> None:
    """A learnable margin (MarginLoss's beta) gets the gradient of the ordinary step."""
    x, y = _data()
    grads = []
    for run in ("cached", "plain"):
        model, margin = _net(), MarginLoss(margin=0.3, beta=0.8, nu=0.1).double()

        def loss_fn(e: Tensor, y: Tensor, margin: nn.Module = margin) -> Tensor:
            return margin(e, y, SemiHardMiner(margin=0.5)(e, y))

        if run == "cached":
            cached_backward(model, x, y, loss_fn, chunk_size=4)
        else:
            _reference(model, x, y, loss_fn, None)
        grads.append([*_grads(model), margin.beta.grad.clone()])
    assert bool(grads[0][-1].abs().sum() > 0)
    _close(grads[0], grads[1])


def test_gradients_accumulate() -> None:
    x, y = _data()
    model, ref_model = _net(), _net()
    for m in (model, ref_model):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.25)
    cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
    _reference(ref_model, x, y, batch_all_triplet_loss, None)
    _close(_grads(model), _grads(ref_model))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(IN_DIM, EMB_DIM).double()
        self.b = nn.Linear(2, EMB_DIM).double()

    def forward(self, image: Tensor, extra: Tensor) -> Tensor:
        return self.a(image) * torch.sigmoid(self.b(extra))


@pytest.mark.parametrize("form", ["tuple", "list", "dict"])
def test_tuple_and_dict_inputs(form: str) -> None:
    x, y = _data()
    extra = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    inputs: Any = {"tuple": (x, extra), "list": [x, extra], "dict": {"extra": extra, "image": x}}[
        form
    ]
    model, ref_model = TwoInputs(), TwoInputs()
    cached_backward(model, inputs, y, batch_hard_triplet_loss, chunk_size=5)
    batch_hard_triplet_loss(ref_model(x, extra), y).backward()
    _close(_grads(model), _grads(ref_model))


def test_inputs_that_require_grad_get_their_gradient() -> None:
    x, y = _data()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    cached_backward(_net(), x1, y, batch_all_triplet_loss, chunk_size=5)
    batch_all_triplet_loss(_net()(x2), y).backward()
    _close(x1.grad, x2.grad)


def test_one_extra_forward_per_chunk() -> None:
    calls: list[bool] = []
    model = _net()
    model.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    x, y = _data()
    cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
    chunks = math.ceil(N / 5)
    assert calls == [False] * chunks + [True] * chunks


def test_runs_under_no_grad() -> None:
    x, y = _data()
    model, ref_model = _net(), _net()
    with torch.no_grad():
        cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
    _reference(ref_model, x, y, batch_all_triplet_loss, None)
    _close(_grads(model), _grads(ref_model))


def test_empty_batch() -> None:
    x, y = _data(0)
    model = _net()
    loss = cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
    assert loss.item() == 0.0
    assert all(bool((g == 0).all()) for g in _grads(model))


def test_module_form_equals_function() -> None:
    x, y = _data()
    model, ref_model = _net(dropout=0.3), _net(dropout=0.3)
    step = GradCache(model, batch_hard_triplet_loss, chunk_size=5)
    torch.manual_seed(0)
    loss = step(x, y)
    torch.manual_seed(0)
    ref_loss = cached_backward(ref_model, x, y, batch_hard_triplet_loss, chunk_size=5)
    assert torch.equal(loss, ref_loss)
    for g, ref_g in zip(_grads(model), _grads(ref_model), strict=True):
        assert torch.equal(g, ref_g)
    assert (
        repr(step) == "GradCache(model=Sequential, loss_fn=batch_hard_triplet_loss, chunk_size=5)"
    )
    with pytest.raises(ValueError, match="chunk_size"):
        GradCache(model, batch_hard_triplet_loss, chunk_size=0)
    with pytest.raises(TypeError, match="loss_fn"):
        GradCache(model, None, chunk_size=2)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dropout_is_replayed() -> None:
    x, y = _data()
    x, y = x.cuda(), y.cuda()
    model, ref_model = _net(dropout=0.3).cuda(), _net(dropout=0.3).cuda()
    torch.manual_seed(3)
    _reference(ref_model, x, y, batch_hard_triplet_loss, 5)
    ref_state = torch.cuda.get_rng_state()
    torch.manual_seed(3)
    cached_backward(model, x, y, batch_hard_triplet_loss, chunk_size=5)
    assert torch.equal(torch.cuda.get_rng_state(), ref_state)
    _close(_grads(model), _grads(ref_model))


# ------------------------------------------------------------------------ bad input


def _untouched(model: nn.Module) -> None:
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("chunk_size", "error"),
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError), ("4", TypeError)],
)
def test_bad_chunk_size(chunk_size: Any, error: type) -> None:
    model = _net()
    x, y = _data()
    with pytest.raises(error, match="chunk_size"):
        cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=chunk_size)
    _untouched(model)


@pytest.mark.parametrize(
    ("inputs", "labels", "error", "words"),
    [
        ((torch.zeros(5, 2), torch.zeros(4, 2)), torch.zeros(5), ValueError, ["different lengths"]),
        (
            {"a": torch.zeros(5, 2), "b": torch.zeros(6)},
            torch.zeros(5),
            ValueError,
            ["inputs['b']: 6"],
        ),
        (torch.zeros(5, 2), torch.zeros(4), ValueError, ["labels", "4", "5"]),
        (torch.zeros(5, 2), [0, 1, 2, 3, 4], TypeError, ["labels"]),
        ([[0.0, 1.0]] * 5, torch.zeros(5), TypeError, ["inputs[0]"]),
        ("images", torch.zeros(5), TypeError, ["inputs"]),
        ((), torch.zeros(5), ValueError, ["empty"]),
        (torch.tensor(1.0), torch.zeros(5), ValueError, ["0-dim"]),
        ({0: torch.zeros(5, 2)}, torch.zeros(5), TypeError, ["str keys"]),
    ],
    ids=[
        "tuple_lengths",
        "dict_lengths",
        "labels_length",
        "labels_list",
        "nested_list",
        "str",
        "empty",
        "0-dim",
        "int_keys",
    ],
)
def test_bad_inputs(inputs: Any, labels: Any, error: type, words: list[str]) -> None:
    model = _net()
    with pytest.raises(error) as info:
        cached_backward(model, inputs, labels, batch_all_triplet_loss, chunk_size=2)
    for word in words:
        assert word in str(info.value)
    _untouched(model)


def test_bad_model_and_loss_fn_types() -> None:
    x, y = _data()
    with pytest.raises(TypeError, match="nn.Module"):
        cached_backward(lambda t: t, x, y, batch_all_triplet_loss, chunk_size=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn"):
        cached_backward(_net(), x, y, "batch_all", chunk_size=2)  # type: ignore[arg-type]


BAD_LOSSES: list[tuple[str, Callable[[Tensor, Tensor], Any], type, str]] = [
    (
        "non_scalar",
        lambda e, y: TripletMarginLoss(reduction="none")(e, y, SemiHardMiner()(e, y)),
        ValueError,
        "scalar",
    ),
    ("one_row_per_sample", lambda e, y: e.norm(dim=1), ValueError, r"shape \(22,\)"),
    ("float", lambda e, y: 1.0, TypeError, "must return a tensor"),
    ("constant", lambda e, y: torch.tensor(1.0, dtype=torch.float64), ValueError, "depend"),
    ("detached", lambda e, y: batch_all_triplet_loss(e.detach(), y), ValueError, "depend"),
    ("integer", lambda e, y: (e.sum() > 0).long(), TypeError, "floating"),
    ("raises", lambda e, y: batch_all_triplet_loss(e, y.bool()), TypeError, "labels"),
]


@pytest.mark.parametrize(
    ("fn", "error", "words"), [c[1:] for c in BAD_LOSSES], ids=[c[0] for c in BAD_LOSSES]
)
def test_bad_loss_fn_leaves_gradients_and_buffers_untouched(
    fn: Callable[[Tensor, Tensor], Any], error: type, words: str
) -> None:
    model = _net(batchnorm=True)
    before = copy.deepcopy(model.state_dict())
    x, y = _data()
    with pytest.raises(error, match=words):
        cached_backward(model, x, y, fn, chunk_size=5)
    _untouched(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


class Drifting(nn.Module):
    """Adds ``drift(calls so far)`` to a linear map's output; by default the number of calls:
    never the same output twice."""

    def __init__(self, drift: Callable[[int], float] = float) -> None:
        super().__init__()
        self.lin = nn.Linear(IN_DIM, EMB_DIM).double()
        self.drift = drift
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.lin(x) + self.drift(self.calls)


class OwnGenerator(nn.Module):
    """Noise from a generator of its own, which cached_backward cannot replay."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN_DIM, EMB_DIM).double()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.lin(x)
        return out + 0.1 * torch.randn(out.shape, generator=self.generator, dtype=out.dtype)


@pytest.mark.parametrize("make", [Drifting, OwnGenerator])
def test_model_that_changes_between_passes(make: Callable[[], nn.Module]) -> None:
    model = make()
    x, y = _data()
    with pytest.raises(RuntimeError, match=r"chunk 0 \(rows 0:5\) differs"):
        cached_backward(model, x, y, batch_all_triplet_loss, chunk_size=5)
    _untouched(model)  # the first chunk's replay fails before its backward


def test_drift_in_a_later_chunk_is_reported() -> None:
    late = Drifting(lambda calls: 1.0 if calls == 7 else 0.0)  # 5 chunks: the 2nd replay
    x, y = _data()
    with pytest.raises(RuntimeError, match="chunk 1 .*earlier chunks' gradients"):
        cached_backward(late, x, y, batch_all_triplet_loss, chunk_size=5)


@pytest.mark.parametrize(
    ("forward", "error", "words"),
    [
        (lambda lin, x: (lin(x), x), TypeError, "tensor of embeddings"),
        (lambda lin, x: lin(x)[:1], ValueError, "one embedding row per input row"),
        (lambda lin, x: lin(x).sum(), ValueError, "0-dim"),
        (lambda lin, x: (lin(x) > 0).long(), TypeError, "floating"),
        (lambda lin, x: lin(x)[:, : x.shape[0]], ValueError, "concatenate"),
    ],
    ids=["tuple", "rows", "scalar", "integer", "widths"],
)
def test_bad_model_output(forward: Callable[..., Any], error: type, words: str) -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(IN_DIM, EMB_DIM).double()

        def forward(self, x: Tensor) -> Any:
            return forward(self.lin, x)

    model = Bad()
    x, y = _data()
    with pytest.raises(error, match=words):
        cached_backward(
            model, x, y, batch_all_triplet_loss, chunk_size=3 if words == "concatenate" else 5
        )
    _untouched(model)


# ------------------------------------------------------------------ benchmark smoke run


@pytest.mark.slow
def test_memory_benchmark_quick_run(tmp_path: Any) -> None:
    """``python -m benchmarks.gradcache_memory --quick`` writes its JSON (structure only:
    memory and time are the benchmark's business, not a test's)."""
    import json
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import gradcache_memory

    assert gradcache_memory.main(["--quick", "--steps", "1", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "gradcache_quick.json").read_text())
    assert out["machine"]["torch"] == torch.__version__
    assert [[r["batch"], r["chunk_size"]] for r in out["results"]] == [
        list(c) for c in gradcache_memory.QUICK_CONFIGS
    ]
    for result in out["results"]:
        assert "error" not in result, result
        assert result["extra_peak_bytes"] > 0 and result["step_median_s"] > 0
    assert len(out["ratios"]) == 1 and out["ratios"][0]["extra_peak_ratio"] > 0


# ---------------------------------------------------------- multi-hot labels (issue 19)


def _multi_hot(n: int = N, seed: int = 1) -> Tensor:
    """``[N, 4]`` multi-hot labels: several labels per sample, one sample without any."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, 4, generator=g) < 0.35).to(torch.int64)
    y[0] = 0
    return y


#: The losses of :data:`LOSSES` that take multi-hot labels (the memory term holds class labels).
MULTI_HOT_LOSSES = [name for name in LOSSES if name != "sum_with_memory"]


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("loss_name", MULTI_HOT_LOSSES)
def test_multi_hot_labels_equal_full_batch_backward(loss_name: str, chunk_size: int) -> None:
    """Multi-hot ``[N, L]`` labels go to ``loss_fn`` whole (the chunks slice the inputs'
    rows only): loss and parameter gradients equal those of one ``loss.backward()`` on the
    whole batch (float64, 1e-9), and differ from those of the class labels (the relation is
    the multi-hot one)."""
    x, y_class = _data()
    y = _multi_hot()
    loss_fn = LOSSES[loss_name]
    ref_model, model, class_model = _net(), _net(), _net()
    ref_loss = _reference(ref_model, x, y, loss_fn, None)
    loss = cached_backward(model, x, y, loss_fn, chunk_size=chunk_size)
    _close(loss, ref_loss)
    grads = _grads(model)
    assert any(bool(g.abs().sum() > 0) for g in grads), "a case with no gradient tests nothing"
    _close(grads, _grads(ref_model))
    _reference(class_model, x, y_class, loss_fn, None)
    assert any(not torch.allclose(g, c) for g, c in zip(grads, _grads(class_model), strict=True))


def test_multi_hot_labels_of_another_length() -> None:
    x = _data()[0]
    model = _net()
    with pytest.raises(ValueError, match=r"labels has 21 rows but the inputs have 22 rows"):
        cached_backward(model, x, _multi_hot()[:21], batch_all_triplet_loss, chunk_size=5)
    _untouched(model)
