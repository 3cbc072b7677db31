"""Dataset-level hard negatives: embed a whole dataset, then find every sample's nearest
neighbours of other classes (and of its own), exactly, in bounded memory.

In-batch miners only see the negatives a batch happens to hold. Periodically re-embedding the
training set and mining each sample's nearest other-class neighbours over the *whole* set
brings the hard negatives in: the idea of ANCE (Xiong, Xiong, Li, Tang, Liu, Bennett, Ahmed &
Overwijk 2020, "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", which refreshes an index of the corpus every few thousand steps), here for
labelled data, at the level of samples rather than of classes (Suh, Han, Kim & Lee 2019,
"Stochastic Class-based Hard Example Mining for Deep Metric Learning", mine classes; see
:class:`~tripletkit.samplers.HardClassPKBatchSampler`).

- :func:`embed_dataset` runs a model over a dataset in chunks, without a graph
  (``torch.inference_mode``), on any device, optionally sharded over ``torch.distributed``
  replicas and gathered once.
- :func:`nearest_neighbours` finds, for every sample, its ``num_negatives`` nearest samples
  of other classes and its ``num_positives`` nearest samples of its own class (itself
  excluded), with a false-negative guard. The torch path is exact and streams query chunks
  against reference chunks with a running top-k merge, so memory stays bounded by
  ``memory_budget`` whatever ``N``; ``backend="faiss"`` uses an exact ``IndexFlat`` (or an
  approximate index when asked) and gives the same results where both are exact.
- :class:`~tripletkit.samplers.NeighbourPKBatchSampler` builds P x K batches around the mined
  neighbours and refreshes them from the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ._checks import (
    check_bool,
    check_choice,
    check_embeddings,
    check_labels,
    check_nonnegative_int,
    check_positive_int,
    check_positive_real,
    compute_dtype,
)
from ._world import world
from .distances import _paired_distance_unchecked, _pairwise_distance_unchecked

__all__ = [
    "BACKENDS",
    "DEFAULT_MEMORY_BUDGET",
    "NEIGHBOUR_METRICS",
    "Neighbours",
    "embed_dataset",
    "nearest_neighbours",
]

#: Metrics of :func:`nearest_neighbours` (those of :mod:`tripletkit.distances`).
NEIGHBOUR_METRICS = ("euclidean", "sqeuclidean", "cosine")
#: Search backends: the exact streaming torch path, or faiss (``pip install tripletkit[faiss]``).
BACKENDS = ("torch", "faiss")
#: Default bound on the search's working memory, in bytes (256 MiB).
DEFAULT_MEMORY_BUDGET = 256 << 20
#: Bytes of working memory per entry of a query-chunk x reference-chunk block: the distances,
#: two masked copies (negatives, positives) and the boolean masks.
_BYTES_PER_ENTRY = {4: 24, 8: 36}
#: Largest reference chunk (columns of a block).
_MAX_REF_CHUNK = 16384


class Neighbours(NamedTuple):
    """The result of :func:`nearest_neighbours`; rows follow the dataset order (or that of
    its ``queries``).

    Attributes:
        negatives: ``[N, num_negatives]`` int64 indices of each sample's nearest samples of
            other classes, nearest first (ties: lower index first); ``-1`` pads rows with
            fewer (after the guard).
        negative_distances: ``[N, num_negatives]`` their distances (``inf`` where ``-1``).
        positives: ``[N, num_positives]`` int64 indices of each sample's nearest samples of
            its own class, itself excluded, nearest first; ``-1`` pads.
        positive_distances: ``[N, num_positives]`` their distances (``inf`` where ``-1``).
    """

    negatives: Tensor
    negative_distances: Tensor
    positives: Tensor
    positive_distances: Tensor


# ----------------------------------------------------------------------------------------
# Embedding a dataset


def _split_batch(batch: object) -> tuple[object, Tensor | None]:
    """``(inputs, labels or None)`` of one loader batch: a tensor is inputs only; a tuple or
    list is ``(inputs, labels, ...)`` when its second entry is an integer tensor."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("the data yielded an empty batch")
        labels = batch[1] if len(batch) > 1 else None
        if isinstance(labels, Tensor) and labels.dim() == 1 and not labels.is_floating_point():
            return batch[0], labels
        return batch[0], None
    return batch, None


def _to_device(inputs: object, device: torch.device) -> object:
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to_device(x, device) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _to_device(v, device) for k, v in inputs.items()}
    return inputs


def _model_device(model: object) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for param in model.parameters():
            return param.device
        for buffer in model.buffers():
            return buffer.device
    return torch.device("cpu")


def _progress(iterable: Iterable[Any], total: int | None, enabled: bool) -> Iterable[Any]:
    """``iterable`` wrapped in a tqdm bar when asked for and tqdm is installed."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar, no error
        return iterable
    return tqdm(iterable, total=total, desc="embedding", unit="batch")  # type: ignore[no-any-return]


def _gather_strided(x: Tensor, n: int, world_size: int) -> Tensor:
    """Rows ``r, r + R, r + 2R, ...`` of an ``[n, ...]`` tensor held by each rank ``r``: one
    all-gather (rows padded to ``ceil(n / R)``), interleaved back into dataset order."""
    longest = math.ceil(n / world_size)
    pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
    local = torch.cat([x, pad]) if pad.shape[0] else x.contiguous()
    chunks = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(chunks, local)
    out = x.new_empty((n, *x.shape[1:]))
    for r, chunk in enumerate(chunks):
        count = len(range(r, n, world_size))
        out[r::world_size] = chunk[:count]
    return out


def embed_dataset(
    model: Callable[..., Tensor],
    data: Dataset[Any] | DataLoader[Any],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
    distributed: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Embed a whole dataset in chunks, without building a graph.

    The model runs under ``torch.inference_mode()``; an ``nn.Module`` is put in ``eval()``
    mode for the pass and its previous mode is restored afterwards (batch-norm statistics and
    dropout are not disturbed). Items may be inputs alone or ``(inputs, label, ...)`` tuples;
    inputs may be tensors or (nested) tuples / dicts of tensors, moved to ``device``.

    Under ``torch.distributed`` (an initialised process group with more than one replica and
    ``distributed`` not ``False``), a map-style dataset is sharded: replica ``r`` embeds the
    items ``r, r + R, r + 2R, ...`` and the shards are all-gathered once (one collective for
    the embeddings, one for the labels), so that every replica returns the whole ``[N, D]``
    in dataset order. Every replica must call it. A ``DataLoader`` is never sharded: each
    replica embeds all of it.

    Args:
        model: any callable mapping a batch of inputs to ``[B, D]`` embeddings.
        data: a map-style dataset (read in order, ``batch_size`` items at a time) or a
            ``DataLoader`` that does not shuffle (its order is the output's order).
        batch_size: items per forward pass (datasets only).
        device: where the model runs and the embeddings are returned; default: the device
            of the model's first parameter, else the CPU.
        num_workers: loader workers (datasets only).
        progress: show a ``tqdm`` progress bar (silently none if tqdm is not installed).
        distributed: shard over the replicas (default ``None``: whenever a process group
            with more than one replica is initialised and ``data`` is a dataset).

    Returns:
        ``(embeddings, labels)``: ``[N, D]`` embeddings in the model's output dtype (half
        precision returned as float32) on ``device``, and the ``[N]`` int64 labels on the
        same device when every batch yields labels, else ``None``.

    Raises:
        TypeError: a model output that is not a 2-D floating tensor; a bad argument type.
        ValueError: a shuffling ``DataLoader``, an empty dataset, outputs of varying width,
            or ``distributed=True`` with a ``DataLoader``.

    Examples:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
        >>> emb, labels = embed_dataset(torch.nn.Linear(3, 4), data, batch_size=4)
        >>> emb.shape, labels.tolist()
        (torch.Size([10, 4]), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    num_workers = int(check_nonnegative_int(num_workers, "num_workers"))  # type: ignore[arg-type]
    progress = check_bool(progress, "progress")
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model)
    world_size, rank = world()
    is_loader = isinstance(data, DataLoader)
    if distributed is not None:
        check_bool(distributed, "distributed")
    if distributed is True and is_loader:
        raise ValueError("distributed=True needs a map-style dataset; a DataLoader is not sharded")
    shard = world_size > 1 and not is_loader and distributed is not False
    loader: Iterable[Any]
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError(
                "the DataLoader shuffles: embeddings would not follow the dataset order; "
                "pass the dataset itself or a loader with shuffle=False"
            )
        loader = data
        n = len(data.dataset) if hasattr(data.dataset, "__len__") else None  # type: ignore[arg-type]
    else:
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the dataset is empty: there is nothing to embed")
        if shard and n < world_size:
            raise ValueError(
                f"the dataset has {n} items, fewer than the {world_size} replicas: pass "
                "distributed=False"
            )
        part = Subset(data, range(rank, n, world_size)) if shard else data
        loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]

    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    pieces: list[Tensor] = []
    label_pieces: list[Tensor] = []
    have_labels = True
    try:
        with torch.inference_mode():
            for batch in _progress(loader, total, progress):
                inputs, labels = _split_batch(batch)
                out = model(_to_device(inputs, dev))
                if not isinstance(out, Tensor) or out.dim() != 2 or not out.is_floating_point():
                    raise TypeError(
                        "the model must return a 2-D floating tensor [B, D] of embeddings, got "
                        + (
                            f"shape {tuple(out.shape)}, {out.dtype}"
                            if isinstance(out, Tensor)
                            else type(out).__name__
                        )
                    )
                if pieces and out.shape[1] != pieces[0].shape[1]:
                    raise ValueError(
                        f"the model's outputs vary in width: {pieces[0].shape[1]} then {out.shape[1]}"
                    )
                pieces.append(
                    out.to(
                        dev,
                        torch.float32
                        if out.dtype in (torch.float16, torch.bfloat16)
                        else out.dtype,
                    )
                )
                if labels is None:
                    have_labels = False
                elif have_labels:
                    label_pieces.append(labels.to(dev, torch.int64))
    finally:
        if module is not None and was_training:
            module.train()
    if not pieces and not shard:
        raise ValueError("the data yielded no batch: there is nothing to embed")
    with torch.inference_mode(False):  # plain tensors, usable in autograd afterwards
        embeddings = torch.cat(pieces).clone() if pieces else torch.empty(0, 0, device=dev)
        labels_out = torch.cat(label_pieces).clone() if have_labels and label_pieces else None
    if shard:
        assert n is not None
        embeddings = _gather_strided(embeddings, n, world_size)
        if labels_out is not None:
            labels_out = _gather_strided(labels_out, n, world_size)
    return embeddings, labels_out


# ----------------------------------------------------------------------------------------
# Exact k-nearest-neighbour search in bounded memory


def _chunk_sizes(n: int, itemsize: int, memory_budget: int) -> tuple[int, int]:
    """``(query rows, reference columns)`` of a block that fits ``memory_budget``."""
    entries = max(1, memory_budget // _BYTES_PER_ENTRY.get(itemsize, 36))
    cols = max(1, min(n, _MAX_REF_CHUNK, entries))
    rows = max(1, min(n, entries // cols))
    return rows, cols


def _merge(
    best_v: Tensor, best_i: Tensor, block: Tensor, col0: int, k: int
) -> tuple[Tensor, Tensor]:
    """Merge a block of distances into the running ``k`` smallest per row, ties to the lower
    index. ``best_v, best_i``: ``[r, k]``, sorted by (distance, index), every index below
    ``col0`` (or -1 with ``inf``); ``block``: ``[r, c]`` distances to the references
    ``col0 .. col0 + c - 1``, ``inf`` where excluded. Only finite entries are kept.

    The threshold ``t`` is the k-th smallest of the union (taken from the k best of each
    side); every finite entry ``<= t`` is a candidate, and the candidates are ordered by
    (row, distance, index) with three stable sorts. Memory: the block's boolean mask plus
    O(candidates), which is ``r * k`` unless there are ties at the threshold.
    """
    kk = min(k, block.shape[1])
    side = block.topk(kk, dim=1, largest=False).values
    t = torch.cat([best_v, side], dim=1).topk(k, dim=1, largest=False).values[:, -1:]
    keep = (block <= t) & torch.isfinite(block)
    rows_b, cols_b = keep.nonzero(as_tuple=True)
    vals_b = block[rows_b, cols_b]
    idx_b = cols_b + col0
    keep_best = (best_v <= t) & torch.isfinite(best_v)
    rows_a, cols_a = keep_best.nonzero(as_tuple=True)
    rows = torch.cat([rows_a, rows_b])
    vals = torch.cat([best_v[rows_a, cols_a], vals_b])
    idx = torch.cat([best_i[rows_a, cols_a], idx_b])
    # order by (row, value, index): stable sorts from the last key to the first
    order = torch.sort(idx, stable=True).indices
    order = order[torch.sort(vals[order], stable=True).indices]
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, vals, idx = rows[order], vals[order], idx[order]
    r = best_v.shape[0]
    counts = torch.bincount(rows, minlength=r)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.shape[0], device=rows.device) - starts[rows]
    take = pos < k
    out_v = torch.full_like(best_v, math.inf)
    out_i = torch.full_like(best_i, -1)
    out_v[rows[take], pos[take]] = vals[take]
    out_i[rows[take], pos[take]] = idx[take]
    return out_v, out_i


def _stream(
    x: Tensor,
    labels: Tensor,
    queries: Tensor,
    num_neg: int,
    num_pos: int,
    metric: str,
    memory_budget: int,
    floor: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The torch path: every chunk of the ``queries`` (row indices) against every reference
    chunk, in index order, with a running merge. ``floor [Q]``: negatives closer than it are
    excluded (the guard)."""
    n, nq = x.shape[0], queries.shape[0]
    rows, cols = _chunk_sizes(n, x.element_size(), memory_budget)
    dev = x.device
    neg_v = torch.full((nq, num_neg), math.inf, dtype=x.dtype, device=dev)
    neg_i = torch.full((nq, num_neg), -1, dtype=torch.int64, device=dev)
    pos_v = torch.full((nq, num_pos), math.inf, dtype=x.dtype, device=dev)
    pos_i = torch.full((nq, num_pos), -1, dtype=torch.int64, device=dev)
    for q0 in range(0, nq, rows):
        q1 = min(nq, q0 + rows)
        qi = queries[q0:q1]
        xq, lq = x[qi], labels[qi]
        bn_v, bn_i = neg_v[q0:q1], neg_i[q0:q1]
        bp_v, bp_i = pos_v[q0:q1], pos_i[q0:q1]
        for r0 in range(0, n, cols):
            r1 = min(n, r0 + cols)
            d = _pairwise_distance_unchecked(xq, x[r0:r1], metric)
            same = lq[:, None] == labels[None, r0:r1]
            if num_pos:
                own = same.clone()
                inside = ((qi >= r0) & (qi < r1)).nonzero()[:, 0]
                own[inside, qi[inside] - r0] = False  # never a query's own row
                bp_v, bp_i = _merge(bp_v, bp_i, d.masked_fill(~own, math.inf), r0, num_pos)
                del own
            if num_neg:
                excluded = same if floor is None else same | (d < floor[q0:q1, None])
                d.masked_fill_(excluded, math.inf)
                bn_v, bn_i = _merge(bn_v, bn_i, d, r0, num_neg)
            del d, same
        neg_v[q0:q1], neg_i[q0:q1] = bn_v, bn_i
        pos_v[q0:q1], pos_i[q0:q1] = bp_v, bp_i
    return neg_v, neg_i, pos_v, pos_i


def _faiss_module() -> Any:
    try:
        import faiss  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as error:
        raise ImportError(
            "backend='faiss' needs faiss: pip install 'tripletkit[faiss]' (or faiss-cpu / "
            "faiss-gpu); backend='torch' is exact and needs nothing else"
        ) from error
    return faiss


def _faiss_select(
    x: Tensor,
    labels: Tensor,
    queries: Tensor,
    num: int,
    positives: bool,
    metric: str,
    faiss_index: str,
    memory_budget: int,
    floor: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The faiss path for one kind (negatives or positives): search ``K`` candidates per
    row, keep those of the wanted kind, re-rank them by the torch distance with ties to the
    lower index, and search again with a larger ``K`` for the rows where the candidates may
    be incomplete (fewer than ``num`` kept, or, with an exact index, a kept distance within
    rounding of the farthest candidate's, so that a tie could have been cut off)."""
    faiss = _faiss_module()
    n, dim = x.shape
    nq = queries.shape[0]
    out_v = torch.full((nq, num), math.inf, dtype=x.dtype)
    out_i = torch.full((nq, num), -1, dtype=torch.int64)
    if num == 0:
        return out_v, out_i
    xc = x.detach().cpu()
    lab = labels.cpu()
    data = xc.to(torch.float32)
    if metric == "cosine":
        from .distances import normalize_embeddings

        data = normalize_embeddings(data)
    data_np = np.ascontiguousarray(data.numpy())
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    exact = faiss_index == "Flat"
    index = faiss.index_factory(dim, faiss_index, kind)
    if not index.is_trained:
        index.train(data_np)
    index.add(data_np)
    # rounding of faiss's float32 distances, in its own units
    scale = 1.0 if metric == "cosine" else 2.0 * float((data * data).sum(1).max())
    tol = 1e-5 * max(scale, 1e-30)
    floor_c = None if floor is None else floor.cpu()
    query_rows = queries.cpu()
    pending = torch.arange(nq)  # positions among the queries
    width = min(n, 2 * num + 16)
    while pending.numel():
        # per row: the candidates' gathered rows and their differences, [width, D] each
        rows_per = max(1, memory_budget // (width * (2 * dim * x.element_size() + 64)))
        still: list[Tensor] = []
        for s0 in range(0, pending.numel(), rows_per):
            at = pending[s0 : s0 + rows_per]
            rows = query_rows[at]
            fd, fi = index.search(data_np[rows.numpy()], width)
            fd_t, fi_t = torch.from_numpy(fd), torch.from_numpy(fi).to(torch.int64)
            valid = fi_t >= 0
            cand = fi_t.clamp_min(0)
            d = _paired_distance_unchecked(xc[rows][:, None, :], xc[cand], metric)
            same = lab[cand] == lab[rows][:, None]
            wanted = same & (cand != rows[:, None]) if positives else ~same
            if floor_c is not None:
                wanted &= d >= floor_c[at][:, None]
            d = d.masked_fill(~(wanted & valid), math.inf)
            order = torch.argsort(cand, dim=1, stable=True)  # index order, then distance
            d_sorted = d.gather(1, order)
            by_d = torch.sort(d_sorted, dim=1, stable=True).indices[:, :num]
            sel_i = cand.gather(1, order).gather(1, by_d)
            sel_v = d_sorted.gather(1, by_d)
            sel_i = torch.where(torch.isfinite(sel_v), sel_i, torch.full_like(sel_i, -1))
            got = sel_v.shape[1]  # fewer than num when width < num
            out_v[at, :got], out_i[at, :got] = sel_v, sel_i
            if width >= n:
                continue
            found = torch.isfinite(sel_v).sum(1)
            incomplete = found < num
            if exact:
                # faiss units of the last kept candidate vs the farthest one searched
                last = sel_v.gather(1, (found - 1).clamp_min(0)[:, None])[:, 0]
                if metric == "cosine":
                    last_f, far_f = 1.0 - last, fd_t[:, -1]
                    unsure = last_f - tol <= far_f
                else:
                    last_f = last if metric == "sqeuclidean" else last * last
                    unsure = last_f + tol >= fd_t[:, -1]
                incomplete |= unsure & (found > 0)
            still.append(at[incomplete])
        pending = torch.cat(still) if still else pending[:0]
        width = min(n, width * 4)
    return out_v.to(x.device), out_i.to(x.device)


def _check_embeddings_in_chunks(embeddings: object, memory_budget: object) -> Tensor:
    """:func:`check_embeddings` row chunk by row chunk: its finiteness test needs ~7 bytes
    per entry of temporaries, 900 MiB for 1M x 128 at once."""
    if (
        not isinstance(embeddings, Tensor)
        or embeddings.dim() != 2
        or embeddings.shape[0] < 2
        or not isinstance(memory_budget, int)
        or memory_budget < 1
    ):
        return check_embeddings(embeddings)
    step = max(1, memory_budget // (8 * max(1, embeddings.shape[1])))
    for r0 in range(0, embeddings.shape[0], step):
        check_embeddings(embeddings[r0 : r0 + step])
    return embeddings.to(compute_dtype(embeddings.dtype))


def nearest_neighbours(
    embeddings: Tensor,
    labels: Tensor,
    num_negatives: int,
    num_positives: int = 0,
    *,
    metric: str = "euclidean",
    skip_hardest: int = 0,
    positive_ratio: float | None = None,
    backend: str = "torch",
    faiss_index: str = "Flat",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    queries: Tensor | None = None,
) -> Neighbours:
    """Every sample's nearest samples of other classes (hard negatives) and of its own
    class (positives), over the whole set, exactly, in bounded memory.

    Distances are those of :func:`tripletkit.pairwise_distance` for ``metric``. A sample
    is never its own neighbour (its duplicates, other rows, are). **Ties** between equal
    computed distances go to the lower index, and each row lists its neighbours nearest
    first; rows with fewer candidates are padded with ``-1`` (distance ``inf``).

    **False-negative guard** (the rank-window idea of batch-hard mining, at dataset level):
    a mined negative that is much closer to the anchor than the anchor's own positives is
    more likely a labelling error or a near-duplicate than a useful negative.

    - ``positive_ratio=rho`` drops every negative ``j`` of anchor ``a`` with
      ``d(a, j) < rho * d+(a)``, where ``d+(a)`` is the mean distance from ``a`` to its
      ``max(num_positives, 1)`` nearest positives (anchors without a positive are not
      guarded). ``rho=1``: drop negatives closer than the positives; ``rho=0.9``: only those
      clearly closer. Default ``None``: off.
    - ``skip_hardest=r`` then drops each anchor's ``r`` nearest remaining negatives.
      Default 0.

    So row ``a`` of ``negatives`` holds the guarded negatives of ranks ``r + 1 ..
    r + num_negatives``.

    **Memory.** The torch path processes query chunks against reference chunks (all the
    references of one query chunk in index order) and merges each block into a running
    top-k: its working memory is one block, sized from ``memory_budget`` (about 24 bytes per
    block entry in float32, 36 in float64; blocks of at most 16384 references), plus the
    ``[N, k]`` results, plus O(ties) when many distances equal the k-th. The full ``N x N``
    matrix is never formed (the finiteness check of the input runs in row chunks within the
    budget too). Time is O(N^2 D), on the embeddings' device; the guard costs a second pass.
    Measured on one CPU thread (``benchmarks/neighbours.py``): 216 MiB extra peak at 100k x
    128, 348 MiB with 1M references; faiss's exact flat index was ~4x faster in CPU time.

    **faiss** (``backend="faiss"``, ``pip install 'tripletkit[faiss]'``): the default
    ``faiss_index="Flat"`` is exact (``IndexFlatL2``; ``IndexFlatIP`` on normalised rows for
    cosine). faiss returns nearest rows of any class, so each row searches ``K`` candidates,
    keeps those of the wanted kind and searches again with ``4K`` where they do not provably
    contain the answer; candidates are re-ranked with the torch distance and the same ties
    rule, so the results equal the torch path's wherever distances are computed exactly (for
    example integer coordinates), and otherwise differ only by the order of near-ties within
    rounding. Any other ``faiss.index_factory`` string (``"IVF1024,Flat"``, ``"HNSW32"``)
    gives an *approximate* search (trained on the embeddings): faster for large sets, with no
    guarantee. Runs on the CPU (float32) and returns tensors on the embeddings' device.

    Args:
        embeddings: ``[N, D]`` finite floating embeddings (half precision computed in float32).
        labels: ``[N]`` integer labels on the same device.
        num_negatives: negatives per sample, an int >= 0.
        num_positives: positives per sample, an int >= 0.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        skip_hardest: nearest guarded negatives to skip, an int >= 0.
        positive_ratio: the guard's ratio ``rho > 0``, or ``None`` (off).
        backend: ``"torch"`` (exact, any device) or ``"faiss"``.
        faiss_index: a ``faiss.index_factory`` string; ``"Flat"`` is exact.
        memory_budget: bytes of working memory of the torch path's blocks (>= 1).
        queries: ``[Q]`` indices of the samples to search for (default: all ``N``, in
            order); their neighbours are still searched among all ``N``. Replicas can split
            a search this way, or a benchmark time a part of a large one.

    Returns:
        :class:`Neighbours`: ``negatives`` / ``negative_distances`` ``[Q, num_negatives]``
        and ``positives`` / ``positive_distances`` ``[Q, num_positives]`` (``Q = N``
        without ``queries``), on the
        embeddings' device (indices int64, distances in the compute dtype).

    Raises:
        TypeError: non-tensor or non-floating embeddings, non-integer labels or counts.
        ValueError: non-finite embeddings, labels of another length or device, negative
            counts, an unknown metric or backend, ``positive_ratio <= 0``.
        ImportError: ``backend="faiss"`` without faiss installed.

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.0], [10.0]])
        >>> y = torch.tensor([0, 0, 1, 1, 1])
        >>> nb = nearest_neighbours(x, y, num_negatives=2, num_positives=1)
        >>> nb.negatives.tolist()       # sample 1 is at 2 from sample 2 and 3 from sample 3
        [[2, 3], [2, 3], [1, 0], [1, 0], [1, 0]]
        >>> nb.positives.tolist(), nb.positive_distances[:, 0].tolist()
        ([[1], [0], [3], [2], [3]], [1.0, 1.0, 1.0, 1.0, 6.0])
    """
    x = _check_embeddings_in_chunks(embeddings, memory_budget)
    lab = check_labels(labels, x.shape[0], x.device)
    num_neg = int(check_nonnegative_int(num_negatives, "num_negatives"))  # type: ignore[arg-type]
    num_pos = int(check_nonnegative_int(num_positives, "num_positives"))  # type: ignore[arg-type]
    skip = int(check_nonnegative_int(skip_hardest, "skip_hardest"))  # type: ignore[arg-type]
    check_choice("metric", metric, NEIGHBOUR_METRICS)
    check_choice("backend", backend, BACKENDS)
    if not isinstance(faiss_index, str):
        raise TypeError(f"faiss_index must be a str, got {type(faiss_index).__name__}")
    ratio = (
        None if positive_ratio is None else check_positive_real(positive_ratio, "positive_ratio")
    )
    budget = check_positive_int(memory_budget, "memory_budget")
    if backend == "faiss":
        _faiss_module()  # fail early, before any work
    if queries is None:
        q = torch.arange(x.shape[0], device=x.device)
    else:
        if not isinstance(queries, Tensor) or queries.dim() != 1 or queries.is_floating_point():
            raise TypeError("queries must be a 1-D integer tensor of sample indices")
        q = queries.to(x.device, torch.int64)
        if q.numel() and (int(q.min()) < 0 or int(q.max()) >= x.shape[0]):
            raise ValueError(f"queries must be indices in [0, {x.shape[0]})")

    x = x.detach()
    floor = None
    guard_pos = max(num_pos, 1) if ratio is not None else num_pos

    def search(n_neg: int, n_pos: int, fl: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if backend == "torch":
            with torch.inference_mode():
                out = _stream(x, lab, q, n_neg, n_pos, metric, budget, fl)
            return tuple(t.clone() for t in out)  # type: ignore[return-value]
        with torch.inference_mode():
            nv, ni = _faiss_select(x, lab, q, n_neg, False, metric, faiss_index, budget, fl)
            pv, pi = _faiss_select(x, lab, q, n_pos, True, metric, faiss_index, budget, None)
        return nv.clone(), ni.clone(), pv.clone(), pi.clone()

    if ratio is not None:
        _, _, pos_v, pos_i = search(0, guard_pos, None)
        finite = torch.isfinite(pos_v)
        count = finite.sum(1)
        mean = torch.where(finite, pos_v, torch.zeros_like(pos_v)).sum(1) / count.clamp_min(1)
        floor = torch.where(count > 0, ratio * mean, torch.zeros_like(mean))
        neg_v, neg_i, _, _ = search(num_neg + skip, 0, floor)
        pos_v, pos_i = pos_v[:, :num_pos], pos_i[:, :num_pos]
    else:
        neg_v, neg_i, pos_v, pos_i = search(num_neg + skip, num_pos, None)
    if skip:
        neg_v, neg_i = neg_v[:, skip:], neg_i[:, skip:]
    return Neighbours(
        neg_i.contiguous(), neg_v.contiguous(), pos_i.contiguous(), pos_v.contiguous()
    )
