"""Mining across replicas with DistributedDataParallel (DDP), on top of ``torch.distributed``.

A replica's batch alone holds only ``1 / world_size`` of the global batch, so it sees only a
fraction of the positives and negatives. :func:`gather` concatenates every replica's
embeddings and labels, differentiably, so that each replica can mine the whole global batch.
Nothing here is needed for single-process training: without an initialised process group, or
with a world size of 1, :func:`gather` returns its inputs and :func:`sharded_loss` is the
plain loss.

DDP recipe (``torchrun --nproc_per_node=R train.py``; see ``examples/ddp_train.py``)::

    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    model = DistributedDataParallel(net)
    sampler = PKBatchSampler(train_labels, p=P, k=K, num_replicas=R, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader:
            emb = model(images)
            # full mode: every replica computes the loss of the gathered global batch ...
            all_emb, all_labels = gather(emb, labels)
            loss = batch_hard_triplet_loss(all_emb, all_labels)
            # ... or sharded mode: each replica mines only its own anchors
            loss = sharded_loss("batch_hard", emb, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

Contract: every replica calls the loss and ``backward()`` every step (the backward pass of
:func:`gather` is a collective). Then, after DDP averages the parameter gradients over the
replicas, they equal those of single-process training on the concatenation of the replicas'
batches in rank order (up to rounding: 1e-9 in float64 in the tests), in both modes: in full
mode for any loss computed from the gathered batch, in sharded mode for the losses and
reductions :func:`sharded_loss` offers. The loss value returned on every replica is that
single-process loss too. Why:

- :func:`gather`'s backward sums the gradients that all replicas computed for a row and hands
  the sum to the replica that owns the row. In full mode every replica computes the same
  loss ``L``, so the owner receives ``R * dL/dx``; DDP's average over ``R`` replicas then
  gives exactly ``dL/dtheta``. (Gathering without a gradient, as some libraries do, loses
  the gradient that the other replicas' anchors send to this replica's rows.)
- In sharded mode replica ``r`` computes only the terms ``S_r`` of its own anchors, against
  the gathered references; the global sum is ``S = sum_r S_r``. A term's gradient reaches
  its anchor row directly and its positive and negative rows through :func:`gather`, so the
  gradient that replica ``q`` ends up with for each of its rows ``x`` is ``dS/dx``. The
  normalising count ``C`` (valid triplets for ``"mean"``, positive terms for
  ``"mean_nonzero"``, 1 for ``"sum"``) is all-reduced, and replica ``r`` back-propagates
  ``R * S_r / C``. Replica ``q`` then holds ``R / C * G_q``, with ``G_q`` the part of
  ``dS/dtheta`` that flows through its rows, and DDP's average over the ``R`` replicas is
  ``sum_q G_q / C = dS/dtheta / C``: the single-process gradient. The returned value is ``R * S_r / C`` plus the detached
  correction ``S / C - R * S_r / C``: it reads ``S / C`` on every replica (for logging)
  and has the gradient of ``R * S_r / C``.

Sharded mode builds an ``N_r x N`` distance matrix per replica instead of ``N x N``, at the
cost of one extra all-reduce of three numbers. Full mode works with any loss, miner or
function of the gathered batch. Without DDP (parameters averaged by hand, or no model
at all), average the gradients over the replicas the same way DDP does.

Companions under DDP:

- :class:`~tripletkit.samplers.PKBatchSampler` with ``num_replicas=world_size,
  rank=rank`` (the defaults when a process group is initialised), the same labels and seed
  on every replica and ``set_epoch(epoch)`` each epoch: the replicas get disjoint P x K
  batches of the same size, and the gathered global batch holds ``world_size * p`` groups
  of ``k`` (a class may appear on several replicas).
- :class:`~tripletkit.memory.CrossBatchMemory`: enqueue the *gathered* batch (detached) on
  every replica, so that the memories stay identical; read the memory before enqueueing and
  use it as ``ref_embeddings`` / ``ref_labels`` of the gathered anchors. Every replica then
  computes the same memory loss and the equivalence above holds; with local anchors each
  replica normalises by its own counts instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._batch import prepare
from ._checks import check_choice, check_reduction
from ._world import world
from .losses import (
    FUSED_REDUCTIONS,
    Parts,
    batch_all_parts,
    batch_hard_parts,
    contrastive_parts,
    reduce_parts,
    semi_hard_parts,
)
from .losses._reduce import in_input_dtype

__all__ = ["SHARDED_LOSSES", "gather", "rank_offset", "sharded_loss"]

#: The losses :func:`sharded_loss` computes, with their default reduction (that of the
#: corresponding single-process loss function).
SHARDED_LOSSES = {
    "batch_all": "mean_nonzero",
    "batch_hard": "mean",
    "semi_hard": "mean",
    "contrastive": "mean",
}

_PARTS: dict[str, Callable[..., Parts]] = {
    "batch_all": batch_all_parts,
    "batch_hard": batch_hard_parts,
    "semi_hard": semi_hard_parts,
    "contrastive": contrastive_parts,
}
#: The keyword arguments each kind of :func:`sharded_loss` takes (besides ``reduction``).
_OPTIONS = {
    "triplet": ("margin", "metric", "soft_margin", "smooth", "normalize", "backend"),
    "contrastive": ("pos_margin", "neg_margin", "metric", "normalize"),
}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _collective_device() -> torch.device:
    """Where small bookkeeping tensors must live for the default group's backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_sizes(local: list[int], device: torch.device) -> list[list[int]]:
    """All-gather a few ints per replica: one list per rank, in rank order."""
    mine = torch.tensor(local, dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [t.tolist() for t in out]


def _all_gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every replica's rows of ``x`` (first dimension ``sizes[rank]``)."""
    longest = max(sizes)
    if x.shape[0] < longest:  # all_gather needs equal shapes: pad, gather, trim
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    chunks = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(chunks, x.contiguous())
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes, strict=True)])


class _GatherRows(torch.autograd.Function):
    """All-gather of rows whose backward sums every replica's gradient into the owner."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int], rank: int) -> Tensor:  # type: ignore[override]
        ctx.start = sum(sizes[:rank])
        ctx.n = sizes[rank]
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.n], None, None


def _check_local(embeddings: Tensor, labels: Tensor) -> None:
    """The shared first step's checks (shape, dtype, finite values, label length and
    device); what is gathered are the caller's tensors, in their own dtype."""
    prepare(embeddings, labels, matrix=False)


def _gather(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """:func:`gather` plus this replica's row offset, for a world size above 1."""
    world_size, rank = world()
    label_width = labels.shape[1] if labels.dim() == 2 else -1  # -1: class labels [N]
    meta = [
        embeddings.shape[0],
        embeddings.shape[1],
        _DTYPES.index(embeddings.dtype),
        label_width,
    ]
    table = _all_gather_sizes(meta, embeddings.device)
    widths = {row[1] for row in table}
    dtypes = {_DTYPES[row[2]] for row in table}
    label_widths = {row[3] for row in table}
    if len(widths) > 1 or len(dtypes) > 1:  # every replica sees the same table: all raise
        raise ValueError(
            "gather: replicas disagree on the embeddings' width or dtype: "
            f"widths {sorted(widths)}, dtypes {sorted(map(str, dtypes))}"
        )
    if len(label_widths) > 1:
        kinds = sorted("[N]" if w < 0 else f"[N, {w}]" for w in label_widths)
        raise ValueError(
            f"gather: replicas disagree on the labels' shape (class labels [N] or multi-hot "
            f"[N, L]): {', '.join(kinds)}"
        )
    sizes = [row[0] for row in table]
    gathered = _GatherRows.apply(embeddings, sizes, rank)
    # Labels travel as int64 (multi-hot ones as int64 0/1 [N, L]), so that replicas agree on
    # the dtype whatever each one passed.
    gathered_labels = _all_gather_rows(labels.detach().to(torch.int64), sizes)
    return gathered, gathered_labels, sum(sizes[:rank])


def gather(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate every replica's embeddings and labels, in rank order, differentiably.

    A collective: every replica of the default process group must call it, in the same
    order as the other collectives. Replicas may hold different numbers of rows (sizes are
    exchanged first; rows are padded to the largest, gathered and trimmed). In the backward
    pass the gradients that all replicas computed for a row are summed into the replica that
    owns it (one all-reduce of the ``[sum N_r, D]`` gradient), which is what makes DDP's
    gradient average match single-process training (see the module docstring). Labels are
    gathered without gradient.

    Without an initialised process group (or without ``torch.distributed``), or with a
    world size of 1, the inputs are returned as they are (the same objects).

    Args:
        embeddings: ``[N_r, D]`` floating embeddings of this replica; ``D`` and the dtype
            must agree across replicas.
        labels: ``[N_r]`` integer labels on the same device, or multi-hot ``[N_r, L]``
            (the same ``L`` on every replica).

    Returns:
        ``(embeddings [sum_r N_r, D], labels [sum_r N_r] int64)`` (multi-hot: ``[sum_r
        N_r, L]`` int64 0/1); this replica's rows start at :func:`rank_offset`.

    Raises:
        ValueError: on every replica, if the replicas' embedding widths or dtypes, or their
            labels' shapes (class or multi-hot, ``L``), differ.

    Examples:
        >>> import torch
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
        >>> all_x, all_y = gather(x, y)  # no process group: nothing to gather
        >>> all_x is x and all_y is y
        True
    """
    _check_local(embeddings, labels)
    if world()[0] == 1:
        return embeddings, labels
    gathered, gathered_labels, _ = _gather(embeddings, labels)
    return gathered, gathered_labels


def rank_offset(n_local: int) -> int:
    """Where this replica's rows start in the batch :func:`gather` returns.

    The sum of the row counts of the lower ranks. A collective (it all-gathers the row
    counts) unless there is no process group or a world size of 1, where it is 0.
    :func:`sharded_loss` finds the offset itself; this is for sharded mining with other
    functions (``anchor_offset=rank_offset(n)`` of the miners and losses).

    Args:
        n_local: this replica's number of rows ``N_r``.

    Examples:
        >>> rank_offset(8)  # no process group
        0
    """
    if isinstance(n_local, bool) or not isinstance(n_local, int):
        raise TypeError(f"n_local must be an int, got {type(n_local).__name__}")
    if n_local < 0:
        raise ValueError(f"n_local must be >= 0, got {n_local}")
    world_size, rank = world()
    if world_size == 1:
        return 0
    sizes = _all_gather_sizes([n_local], _collective_device())
    return sum(row[0] for row in sizes[:rank])


@in_input_dtype(embeddings_at=1)
def sharded_loss(
    kind: str,
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float | None = None,
    metric: str = "euclidean",
    soft_margin: bool | None = None,
    smooth: bool | None = None,
    pos_margin: float | None = None,
    neg_margin: float | None = None,
    reduction: str | None = None,
    normalize: bool = False,
    backend: str | None = None,
) -> Tensor:
    """A loss of the global batch in which each replica mines only its own anchors.

    Replica ``r`` computes the terms of its ``N_r`` anchors against the gathered global
    batch (an ``N_r x N`` distance matrix instead of ``N x N``), and the normalising counts
    are all-reduced. Under DDP the averaged parameter gradients then equal those of the
    single-process loss of the concatenated batch, and the returned value is that loss on
    every replica; see the module docstring for the scaling by the world size that this
    takes. A collective: every replica must call it and then ``backward()``.

    Without a process group, or with a world size of 1, this is the single-process loss.

    Args:
        kind: ``"batch_all"``, ``"batch_hard"``, ``"semi_hard"`` (the fused triplet losses
            of :mod:`tripletkit.losses`) or ``"contrastive"`` (every pair, as
            :func:`~tripletkit.losses.contrastive_loss` with ``pairs=None``).
        embeddings: ``[N_r, D]`` embeddings of this replica.
        labels: ``[N_r]`` integer labels.
        margin, soft_margin, smooth, backend: the triplet losses' options (their defaults
            when ``None``: 0.2, ``False``, ``False``, ``"auto"``); a TypeError for
            ``"contrastive"``.
        pos_margin, neg_margin: the contrastive loss's margins (defaults 0.0 and 1.0); a
            TypeError for the triplet losses.
        metric, normalize: as in every loss.
        reduction: ``"mean"``, ``"sum"`` or ``"mean_nonzero"``; by default that of the
            single-process function (``"mean_nonzero"`` for batch-all, else ``"mean"``).

    Returns:
        0-dim loss: the global loss in value; its gradient is this replica's share, scaled
        for DDP's averaging.

    Examples:
        >>> import torch
        >>> from tripletkit.losses import batch_hard_triplet_loss
        >>> x, y = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> loss = sharded_loss("batch_hard", x, y, margin=0.3)  # no process group
        >>> torch.equal(loss, batch_hard_triplet_loss(x, y, margin=0.3))
        True
    """
    check_choice("kind", kind, tuple(SHARDED_LOSSES))
    reduction = check_reduction(
        SHARDED_LOSSES[kind] if reduction is None else reduction, FUSED_REDUCTIONS
    )
    options = _loss_options(
        kind,
        margin=margin,
        metric=metric,
        soft_margin=soft_margin,
        smooth=smooth,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        normalize=normalize,
        backend=backend,
    )
    parts_of = _PARTS[kind]
    _check_local(embeddings, labels)
    world_size, _ = world()
    if world_size == 1:
        return reduce_parts(*parts_of(embeddings, labels, **options), reduction)
    ref, ref_labels, offset = _gather(embeddings, labels)
    total, n_valid, n_active = parts_of(
        embeddings,
        labels,
        ref_embeddings=ref,
        ref_labels=ref_labels,
        anchor_offset=offset,
        **options,
    )
    # One all-reduce for the partial sum (for the logged value) and both counts; float64
    # holds counts exactly up to 2**53.
    stats = torch.stack(
        [
            total.detach().to(torch.float64),
            torch.as_tensor(n_valid, dtype=torch.float64, device=total.device),
            torch.as_tensor(n_active, dtype=torch.float64, device=total.device),
        ]
    )
    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    global_total, global_valid, global_active = stats.tolist()
    count = {"sum": 1.0, "mean": global_valid, "mean_nonzero": global_active}[reduction]
    count = max(count, 1.0)
    share = total * (world_size / count)  # gradient: R * dS_r / C, averaged by DDP to dS / C
    value = torch.tensor(global_total / count, dtype=total.dtype, device=total.device)
    # share - share.detach() is exactly 0 in value and carries share's gradient.
    return share - share.detach() + value


def _loss_options(kind: str, **given: Any) -> dict[str, Any]:
    """The options of ``kind``'s loss that were given (not ``None``); a TypeError names any
    option that ``kind`` does not take."""
    family = "contrastive" if kind == "contrastive" else "triplet"
    given = {name: value for name, value in given.items() if value is not None}
    wrong = sorted(set(given) - set(_OPTIONS[family]) - {"metric", "normalize"})
    if wrong:
        raise TypeError(
            f"sharded_loss({kind!r}) does not take {', '.join(wrong)}; its options are "
            f"{', '.join(_OPTIONS[family])} and reduction"
        )
    return given
