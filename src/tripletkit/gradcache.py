"""Batches larger than memory: the exact gradient of a whole-batch loss, one chunk at a time.

Every sample's triplet or pairwise loss depends on the whole batch (its positives and
negatives), so plain gradient accumulation changes the loss: the mining of each micro-batch
sees only that micro-batch. Gradient caching (Gao, Zhang, Han & Callan 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup") keeps the loss exact and the
memory of one chunk:

1. embed the batch chunk by chunk without an autograd graph (``torch.no_grad``);
2. compute the loss of the whole batch on those embeddings, and its gradient ``G`` with
   respect to them (the loss's own graph is ``O(N^2)`` at most, and never holds the
   network's activations);
3. run each chunk through the network again, this time with a graph, and back-propagate
   that chunk's rows of ``G`` (``chunk_output.backward(G[rows])``).

By the chain rule the parameters' gradients summed over the chunks are those of
``loss.backward()`` on the whole batch. The price is one extra forward pass per step; the
network's activations are only ever held for one chunk.

:func:`cached_backward` runs the three steps; :class:`GradCache` is its form for training
loops that prefer an object. What makes the replay exact, and what it costs:

- **Randomness.** The CPU random state, and that of every CUDA device holding an input, a
  parameter or a buffer of the model, is saved before each chunk's first pass and restored
  for its replay, so dropout draws the same masks twice. Afterwards the random state is the
  one after the first passes and the loss, i.e. the state an ordinary step (chunked forward,
  loss, backward) would leave: the replays consume no random numbers, as far as the caller
  can tell. Random draws outside torch's global generators (a ``torch.Generator`` of your
  own, numpy, ``random``) are not replayed; the consistency check below catches them.
- **Buffers (batch-norm).** Every buffer of the model (running means and variances,
  ``num_batches_tracked``, spectral-norm vectors, ...) is saved before the first passes and
  restored before the replays, which therefore see the buffers the first passes saw and
  evolve them the same way; after the replays the buffers are set to their state after the
  first passes. Running statistics are thus updated once per chunk, exactly as by one
  ordinary chunked forward, whatever the momentum (``momentum=None`` included). Note that
  batch-norm in training mode normalises each chunk with that chunk's statistics, as any
  chunked forward does: the gradients are those of ``loss.backward()`` through
  ``torch.cat([model(chunk) for chunk in chunks])``, which equals the full-batch forward
  only for models whose rows do not interact (no batch-norm in training mode).
- **Consistency check.** Each chunk's replayed output is compared with its first-pass
  output before its gradient is back-propagated; they must agree to ``sqrt(eps)`` of their
  dtype, relative and absolute (``3.5e-4`` in float32, ``1.5e-8`` in float64; on CPU the
  two passes are normally bitwise equal, the tolerance absorbs non-deterministic GPU
  kernels). A model whose output changes between calls raises a RuntimeError instead of
  returning a silently wrong gradient.
- **Distributed.** With a :class:`~torch.nn.parallel.DistributedDataParallel` model the
  replays run under ``model.no_sync()`` except the last chunk's, so the parameters'
  gradients are all-reduced once per step. With :func:`tripletkit.distributed.gather` (or
  :func:`~tripletkit.distributed.sharded_loss`) inside ``loss_fn``, the averaged gradients
  equal those of single-process training on the concatenated global batch, as without
  chunking. Every replica must call :func:`cached_backward` every step; a model with
  buffers that DDP broadcasts (``broadcast_buffers=True``) needs the same number of chunks
  on every replica (one broadcast per forward).

Errors: bad arguments (``chunk_size``, inputs of different lengths, labels of another
length), a model output that is not one row per input, and a ``loss_fn`` that returns a
non-scalar or a loss that does not depend on the embeddings all raise before any gradient
is computed: the parameters' ``.grad`` are untouched and the model's buffers are restored.
A failed consistency check raises before the chunk's backward; the chunks replayed before
it have then accumulated their gradients (zero them before the next step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._checks import check_positive_int

__all__ = ["GradCache", "Inputs", "LossFn", "cached_backward"]

#: What :func:`cached_backward` accepts as the network's input: one tensor
#: (``model(x)``), a tuple or list of tensors (``model(*xs)``) or a mapping from names to
#: tensors (``model(**xs)``), all batched along dim 0.
Inputs: TypeAlias = Tensor | Sequence[Tensor] | Mapping[str, Tensor]
#: ``loss_fn(embeddings, labels) -> scalar tensor`` (labels ``[N]`` or multi-hot ``[N, L]``).
LossFn: TypeAlias = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- inputs


class _Batch:
    """The inputs, checked: named tensors batched along dim 0 and how the model takes them
    (``model(x)``, ``model(*xs)`` or ``model(**xs)``)."""

    def __init__(self, inputs: object) -> None:
        self.keys: list[str] | None = None
        if isinstance(inputs, Tensor):
            tensors: list[object] = [inputs]
            names = ["inputs"]
            self.kind = "tensor"
        elif isinstance(inputs, Mapping):
            if any(not isinstance(key, str) for key in inputs):
                raise TypeError("inputs as a dict must have str keys (the model's argument names)")
            self.keys = list(inputs)
            tensors = list(inputs.values())
            names = [f"inputs[{key!r}]" for key in self.keys]
            self.kind = "kwargs"
        elif isinstance(inputs, (tuple, list)):
            tensors = list(inputs)
            names = [f"inputs[{i}]" for i in range(len(tensors))]
            self.kind = "args"
        else:
            raise TypeError(
                "inputs must be a torch.Tensor, a tuple or list of tensors, or a dict of "
                f"tensors, got {type(inputs).__name__}"
            )
        if not tensors:
            raise ValueError("inputs is empty: give at least one tensor")
        for name, value in zip(names, tensors, strict=True):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() == 0:
                raise ValueError(f"{name} is 0-dim: inputs must be batched along dim 0")
        self.tensors: list[Tensor] = tensors  # type: ignore[assignment]
        lengths = [int(t.shape[0]) for t in self.tensors]
        if len(set(lengths)) > 1:
            listed = ", ".join(f"{name}: {m}" for name, m in zip(names, lengths, strict=True))
            raise ValueError(f"inputs have different lengths along dim 0 ({listed})")
        self.n = lengths[0]

    def bounds(self, chunk_size: int) -> list[tuple[int, int]]:
        """``[start, stop)`` of each chunk; one empty chunk for an empty batch."""
        if self.n == 0:
            return [(0, 0)]
        return [(start, min(start + chunk_size, self.n)) for start in range(0, self.n, chunk_size)]

    def run(self, model: nn.Module, start: int, stop: int) -> Tensor:
        """``model`` on rows ``start:stop``, its output checked."""
        rows = [t[start:stop] for t in self.tensors]
        if self.kind == "tensor":
            out = model(rows[0])
        elif self.keys is None:
            out = model(*rows)
        else:
            out = model(**dict(zip(self.keys, rows, strict=True)))
        return _check_output(out, start, stop)


def _check_output(out: object, start: int, stop: int) -> Tensor:
    """The model's output for rows ``start:stop`` must be one floating row per input."""
    if not isinstance(out, Tensor):
        raise TypeError(
            f"the model must return a tensor of embeddings, got {type(out).__name__}; wrap it "
            "so that it returns the embeddings alone"
        )
    if not out.dtype.is_floating_point:
        raise TypeError(f"the model must return floating embeddings, got {out.dtype}")
    if out.dim() == 0 or out.shape[0] != stop - start:
        got = "a 0-dim tensor" if out.dim() == 0 else f"{out.shape[0]} rows"
        raise ValueError(
            f"the model returned {got} for the {stop - start} inputs of rows {start}:{stop}; "
            "cached_backward needs one embedding row per input row"
        )
    return out


# ------------------------------------------------------------------- random state, buffers


def _cuda_devices(model: nn.Module, inputs: list[Tensor]) -> list[int]:
    """The CUDA devices holding an input, a parameter or a buffer (random state to replay)."""
    if not torch.cuda.is_available():
        return []
    devices: set[int] = set()
    for t in [*inputs, *model.parameters(), *model.buffers()]:
        if t.device.type == "cuda":
            index = t.device.index
            devices.add(torch.cuda.current_device() if index is None else index)
    return sorted(devices)


_RngState: TypeAlias = tuple[Tensor, list[Tensor]]


def _get_rng(devices: list[int]) -> _RngState:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng(state: _RngState, devices: list[int]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, device_state in zip(devices, cuda, strict=True):
        torch.cuda.set_rng_state(device_state, device)


_Buffers: TypeAlias = list[tuple[str, Tensor]]


def _save_buffers(model: nn.Module) -> _Buffers:
    return [(name, buffer.detach().clone()) for name, buffer in model.named_buffers()]


@torch.no_grad()
def _load_buffers(model: nn.Module, saved: _Buffers) -> None:
    """Put the saved values back, in place when the buffer is still the same shape (so that
    references to it stay valid), else by re-registering it."""
    for name, value in saved:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        current = getattr(module, attr, None)
        if (
            isinstance(current, Tensor)
            and current.shape == value.shape
            and current.dtype == value.dtype
            and current.device == value.device
        ):
            current.copy_(value)
        else:
            setattr(module, attr, value.clone())


# --------------------------------------------------------------------------- loss checks


def _reaches(loss: Tensor, leaf: Tensor) -> bool:
    """Whether ``leaf`` is in ``loss``'s autograd graph (without running a backward)."""
    root = loss.grad_fn
    if root is None:
        return False
    seen: dict[int, object] = {}  # (holding the nodes keeps their ids unique)
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if getattr(node, "variable", None) is leaf:
            return True
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False


def _check_loss(loss: object, embeddings: Tensor) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar (one element), got shape {tuple(loss.shape)}; "
            "reduce it (e.g. reduction='mean') before returning it"
        )
    if not loss.dtype.is_floating_point:
        raise TypeError(f"loss_fn must return a floating tensor, got {loss.dtype}")
    if not _reaches(loss, embeddings):
        raise ValueError(
            "loss_fn's result does not depend on the embeddings it was given (no gradient "
            "reaches them): compute the loss from its first argument, without detaching it"
        )
    return loss


def _tolerance(dtype: torch.dtype) -> float:
    """``sqrt(eps)`` of the dtype: the replay/first-pass agreement required."""
    return math.sqrt(torch.finfo(dtype).eps)


def _check_replay(out: Tensor, cached: Tensor, start: int, stop: int, index: int) -> None:
    tol = _tolerance(cached.dtype)
    replayed = out.detach()
    if replayed.shape == cached.shape and torch.allclose(
        replayed, cached, rtol=tol, atol=tol, equal_nan=True
    ):
        return
    if replayed.shape != cached.shape:
        detail = f"shape {tuple(replayed.shape)} instead of {tuple(cached.shape)}"
    else:
        diff = (replayed.to(torch.float64) - cached.to(torch.float64)).abs().max().item()
        detail = f"max abs difference {diff:.3g} > tolerance {tol:.2g}"
    raise RuntimeError(
        f"cached_backward: the model's output for chunk {index} (rows {start}:{stop}) differs "
        f"between the first pass and the replay ({detail}), so the cached gradient would be "
        "wrong. The model must give the same output for the same input twice in a row: look "
        "for a module with state that changes on every call, or randomness outside torch's "
        "global generators (a torch.Generator of its own, numpy, random)"
        + (" (earlier chunks' gradients have been accumulated)" if index else "")
    )


# ------------------------------------------------------------------------------- the API


def cached_backward(
    model: nn.Module,
    inputs: Inputs,
    labels: Tensor,
    loss_fn: LossFn,
    *,
    chunk_size: int,
) -> Tensor:
    """Back-propagate ``loss_fn(model(inputs), labels)`` chunk by chunk, exactly (GradCache).

    Gao et al. 2021 ("Scaling Deep Contrastive Learning Batch Size under Memory Limited
    Setup"): (1) embed the batch in chunks of ``chunk_size`` rows without a graph; (2)
    compute the loss on the whole batch of embeddings, and its gradient with respect to
    them; (3) re-run each chunk with a graph and back-propagate that chunk's rows of the
    embedding gradient. The parameters' ``.grad`` accumulate exactly as after
    ``loss.backward()`` of the whole batch (through a chunked forward: batch-norm in
    training mode normalises per chunk), while the network's activations are held for one
    chunk at a time. The caller zeroes the gradients and steps the optimiser, as usual.

    The random state is replayed so that dropout draws the same masks twice, and left as an
    ordinary step (chunked forward, loss, backward) leaves it; the model's buffers
    (batch-norm running statistics) are updated once per chunk, as by one ordinary chunked
    forward; each replay is checked against the first pass; a ``DistributedDataParallel``
    model all-reduces once (the replays run under ``no_sync()`` but the last). Memory: the
    activations of one chunk, plus the ``[N, D]`` embeddings and their gradient, plus what
    ``loss_fn`` needs. See :mod:`tripletkit.gradcache` for the details.

    Args:
        model: the network, an ``nn.Module`` (possibly ``DistributedDataParallel``) mapping
            each input row to one embedding row, in its training mode of choice.
        inputs: ``[N, ...]`` tensor (``model(x)``), a tuple or list of ``[N, ...]``
            tensors (``model(*xs)``) or a dict of them (``model(**xs)``).
        labels: ``[N]`` class labels or multi-hot ``[N, L]`` labels (one row per input
            row), passed whole to ``loss_fn``: the loss sees the whole batch's relation,
            only the model's forward passes are chunked.
        loss_fn: ``loss_fn(embeddings [N, D], labels) -> scalar``: any tripletkit loss
            (fused, or miner + loss), a sum of several, a
            :class:`~tripletkit.memory.CrossBatchMemory` term, or a loss of
            :func:`~tripletkit.distributed.gather`'s global batch. Called once per step.
        chunk_size: rows per forward pass (the last chunk may be smaller); a ``chunk_size``
            of at least ``N`` runs the whole batch in one chunk (with one extra forward).

    Returns:
        The loss, detached (0-dim, or the shape ``loss_fn`` returned).

    Raises:
        TypeError, ValueError: ``chunk_size`` not a positive int; inputs not tensors, of
            different lengths, or labels without one row per input; a model output that is
            not one floating row per input; ``loss_fn`` returning a non-scalar, a non-floating
            tensor or a loss that does not depend on the embeddings. All before any
            gradient is computed: ``.grad`` untouched, buffers restored.
        RuntimeError: a chunk's replay differs from its first pass (beyond ``sqrt(eps)`` of
            the dtype, relative and absolute).

    Examples:
        >>> import torch
        >>> from tripletkit.losses import batch_hard_triplet_loss
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1),
        ...                           torch.nn.ReLU(), torch.nn.Linear(16, 4))
        >>> x, y = torch.randn(24, 8), torch.arange(6).repeat_interleave(4)
        >>> loss = cached_backward(net, x, y, batch_hard_triplet_loss, chunk_size=10)
        >>> loss.requires_grad, net[0].weight.grad.shape  # 3 chunks: 10 + 10 + 4 rows
        (False, torch.Size([16, 8]))
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    batch = _Batch(inputs)
    n = batch.n
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 0 or labels.shape[0] != n:
        got = "a 0-dim tensor" if labels.dim() == 0 else f"{labels.shape[0]} rows"
        raise ValueError(f"labels has {got} but the inputs have {n} rows")

    bounds = batch.bounds(chunk_size)
    devices = _cuda_devices(model, batch.tensors)
    buffers_before = _save_buffers(model)

    try:
        # (1) Embed every chunk without a graph, saving the random state before each.
        states: list[_RngState] = []
        outputs: list[Tensor] = []
        with torch.no_grad():
            for start, stop in bounds:
                states.append(_get_rng(devices))
                outputs.append(batch.run(model, start, stop).detach())
        try:
            cached = torch.cat(outputs)
        except RuntimeError as error:
            shapes = sorted({tuple(out.shape[1:]) for out in outputs})
            raise ValueError(
                f"the model's outputs for different chunks do not concatenate: {shapes}"
            ) from error
        del outputs
        buffers_after = _save_buffers(model)

        # (2) The loss of the whole batch and its gradient with respect to the embeddings
        # (backward also reaches any parameter of loss_fn itself, e.g. a learnable margin).
        with torch.enable_grad():
            embeddings = cached.detach().requires_grad_(True)
            loss = _check_loss(loss_fn(embeddings, labels), embeddings)
            loss.backward()
    except BaseException:
        _load_buffers(model, buffers_before)
        raise
    grad = embeddings.grad
    if grad is None:  # pragma: no cover - _check_loss makes sure the graph reaches them
        raise RuntimeError("loss_fn's gradient did not reach the embeddings")
    state_after = _get_rng(devices)
    del embeddings

    # (3) Replay each chunk with a graph (same random state, same buffers as its first
    # pass), check it, and back-propagate its rows of the gradient.
    no_sync = model.no_sync if isinstance(model, DistributedDataParallel) else None
    last = len(bounds) - 1
    _load_buffers(model, buffers_before)
    try:
        with torch.enable_grad():
            for index, ((start, stop), state) in enumerate(zip(bounds, states, strict=True)):
                context: AbstractContextManager[Any] = (
                    no_sync() if no_sync is not None and index < last else nullcontext()
                )
                with context:
                    _set_rng(state, devices)
                    out = batch.run(model, start, stop)
                    _check_replay(out, cached[start:stop], start, stop, index)
                    if out.requires_grad:
                        out.backward(grad[start:stop].to(out.dtype))
                    del out
    finally:
        _load_buffers(model, buffers_after)
        _set_rng(state_after, devices)
    return loss.detach()


class GradCache:
    """Module-like form of :func:`cached_backward`: ``GradCache(model, loss_fn,
    chunk_size=...)(inputs, labels)`` back-propagates one batch and returns the detached
    loss.

    Holds the model, the loss and the chunk size so that a training loop reads like an
    ordinary one (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
    Memory Limited Setup"). Every call is exactly :func:`cached_backward`.

    Args:
        model: the network (``nn.Module``, possibly ``DistributedDataParallel``).
        loss_fn: ``loss_fn(embeddings, labels) -> scalar``.
        chunk_size: rows per forward pass.

    Examples:
        >>> import torch
        >>> from tripletkit.losses import BatchAllTripletLoss
        >>> net = torch.nn.Linear(8, 4)
        >>> step = GradCache(net, BatchAllTripletLoss(margin=0.2), chunk_size=16)
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> x, y = torch.randn(40, 8), torch.arange(10).repeat_interleave(4)
        >>> optimizer.zero_grad()
        >>> loss = step(x, y)  # three forward passes without a graph, then three replays
        >>> optimizer.step()
        >>> step
        GradCache(model=Linear, loss_fn=BatchAllTripletLoss, chunk_size=16)
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, chunk_size: int) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")

    def __call__(self, inputs: Inputs, labels: Tensor) -> Tensor:
        """Back-propagate the loss of ``(inputs, labels)``; returns it, detached."""
        return cached_backward(self.model, inputs, labels, self.loss_fn, chunk_size=self.chunk_size)

    def __repr__(self) -> str:
        loss_name = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, loss_fn={loss_name}, "
            f"chunk_size={self.chunk_size})"
        )
