"""Retrieval accuracy of an embedding: precision@1, recall@k, R-precision and MAP@R.

The metrics follow Musgrave, Belongie & Lim (2020), "A Metric Learning Reality Check", and
give the same numbers as pytorch-metric-learning's ``AccuracyCalculator`` (with its default
``avg_of_avgs=False`` and a ``k`` large enough for R-precision and MAP@R). The k nearest
neighbours are exact, found by brute force in torch, a chunk of queries at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_pair, check_positive_int
from .distances import METRICS, _pairwise_distance_unchecked

__all__ = ["RetrievalMetrics", "retrieval_metrics"]


class RetrievalMetrics(dict):
    """The result of :func:`retrieval_metrics`: named attributes that also read as the dict
    of tripletkit 0.1 (``result["precision_at_1"]``, ``json.dump(result)``, ``dict(result)``).

    Attributes:
        precision_at_1: fraction of queries whose nearest reference is relevant.
        recall_at_k: ``{k: fraction of queries with a relevant reference among the k
            nearest}``.
        r_precision: mean R-precision.
        mean_average_precision_at_r: mean MAP@R.
    """

    def __init__(
        self,
        precision_at_1: float,
        recall_at_k: dict[int, float],
        r_precision: float,
        mean_average_precision_at_r: float,
    ) -> None:
        super().__init__(
            precision_at_1=precision_at_1,
            recall_at_k=recall_at_k,
            r_precision=r_precision,
            mean_average_precision_at_r=mean_average_precision_at_r,
        )

    @property
    def precision_at_1(self) -> float:
        return self["precision_at_1"]

    @property
    def recall_at_k(self) -> dict[int, float]:
        return self["recall_at_k"]

    @property
    def r_precision(self) -> float:
        return self["r_precision"]

    @property
    def mean_average_precision_at_r(self) -> float:
        return self["mean_average_precision_at_r"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


def _check_ks(k: object) -> tuple[int, ...]:
    """``k`` as a sorted tuple of distinct positive ints."""
    ks = (k,) if isinstance(k, int) else k
    if not isinstance(ks, Sequence) or isinstance(ks, str) or len(ks) == 0:
        raise TypeError(f"k must be a positive int or a non-empty sequence of them, got {k!r}")
    return tuple(sorted({check_positive_int(v, "k") for v in ks}))


def _nearest_stable(dist: Tensor, num: int) -> Tensor:
    """Column indices of the ``num`` smallest entries of each row of ``dist``, nearest first,
    ties broken by the lower column index. ``[C, M] -> [C, num]``."""
    if num >= dist.shape[1]:
        return torch.sort(dist, dim=1, stable=True).indices
    # One more than needed: a row has a tie across the cut-off exactly when its
    # (num + 1)-th smallest value equals its num-th, and topk then picks arbitrarily among
    # the tied entries. Such rows are redone: everything below the num-th value, then the
    # entries equal to it, lowest column first.
    values, chosen = torch.topk(dist, num + 1, dim=1, largest=False, sorted=True)
    kth = values[:, num - 1 : num]
    redo = (values[:, num] == values[:, num - 1]).nonzero().squeeze(1)
    chosen = chosen[:, :num]
    chosen = chosen.sort(dim=1).values  # ascending column, so the sort below is stable
    if redo.numel():
        sub, sub_kth = dist[redo], kth[redo]
        equal = sub == sub_kth
        needed = num - (sub < sub_kth).sum(dim=1, keepdim=True)
        take = (sub < sub_kth) | (equal & (equal.cumsum(dim=1) <= needed))
        chosen[redo] = take.nonzero()[:, 1].view(-1, num)  # row-major: ascending column
    order = torch.sort(dist.gather(1, chosen), dim=1, stable=True).indices
    return chosen.gather(1, order)


def _old_call_form(func: Callable[..., RetrievalMetrics]) -> Callable[..., RetrievalMetrics]:
    """tripletkit 0.1 took ``(query, query_labels, ref, ref_labels, k, metric, chunk_size)``
    positionally and the references as ``ref=``; 0.2 deprecated both and 0.3 removed them:
    they raise a :class:`TypeError` that says what to write instead."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> RetrievalMetrics:
        if len(args) > 2:
            raise TypeError(
                "retrieval_metrics(query, query_labels, ref, ...) was removed in tripletkit "
                "0.3: pass everything after query_labels by keyword (ref_embeddings=, "
                "ref_labels=, k=, metric=, chunk_size=)"
            )
        if "ref" in kwargs:
            raise TypeError(
                "retrieval_metrics(ref=...) was removed in tripletkit 0.3: write "
                "retrieval_metrics(ref_embeddings=...)"
            )
        return func(*args, **kwargs)

    return wrapper


@_old_call_form
def retrieval_metrics(
    query: Tensor,
    query_labels: Tensor,
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    k: int | Sequence[int] = (1, 5, 10),
    metric: str = "euclidean",
    chunk_size: int = 1024,
) -> RetrievalMetrics:
    """Nearest-neighbour retrieval metrics of query embeddings against a reference set.

    Each query ranks the references by distance (ties broken by the lower reference index).
    A reference is *relevant* to a query when it has the query's label; ``R`` is the number
    of relevant references of the query. Per query:

    - precision@1: 1 if the nearest reference is relevant, else 0;
    - recall@k: 1 if any of the ``k`` nearest references is relevant, else 0 (with fewer
      than ``k`` references, all of them are looked at);
    - R-precision: the fraction of relevant references among the ``R`` nearest;
    - MAP@R: ``(1 / R) * sum_{i <= R} P(i) * rel(i)``, with ``rel(i)`` 1 when the ``i``-th
      nearest is relevant and ``P(i)`` the precision among the ``i`` nearest.

    Each metric is the mean over queries. Queries with no relevant reference (``R = 0``)
    are left out of every mean, as pytorch-metric-learning's ``AccuracyCalculator`` does;
    when no query has a relevant reference the metrics are undefined and a ValueError says
    so (pytorch-metric-learning returns NaN there; tripletkit never returns NaN).

    When ``ref_embeddings`` is None, every query is compared with all the *other* queries
    (leave-one-out): a query is never its own neighbour, but duplicates of it are.
    Passing ``ref_embeddings=query`` instead counts each query as its own nearest neighbour.

    Memory is ``O(chunk_size * M)``; results do not depend on ``chunk_size``.

    Args:
        query: ``[N, D]`` query embeddings.
        query_labels: ``[N]`` integer labels.
        ref_embeddings: ``[M, D]`` reference embeddings, or None for leave-one-out on
            ``query``.
        ref_labels: ``[M]`` integer labels, given exactly when ``ref_embeddings`` is.
        k: one or several neighbourhood sizes for recall@k.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"`` (see
            :func:`tripletkit.distances.pairwise_distance`).
        chunk_size: number of queries whose distances are held at once.

    Returns:
        :class:`RetrievalMetrics`: ``precision_at_1``, ``recall_at_k`` (``{k: float}``),
        ``r_precision`` and ``mean_average_precision_at_r``, as attributes and as dict keys.

    Raises:
        ValueError / TypeError: malformed embeddings or labels, an empty query or reference
            set, an unknown metric, non-positive ``k`` or ``chunk_size``, or distances that
            overflow to infinity.

    Shape:
        - query: ``[N, D]``, query_labels: ``[N]``.
        - ref_embeddings: ``[M, D]``, ref_labels: ``[M]``.

    Examples:
        >>> query = torch.tensor([[0.0], [0.1], [1.0], [1.2], [5.0]])
        >>> labels = torch.tensor([0, 0, 1, 0, 1])
        >>> m = retrieval_metrics(query, labels, k=(1, 2))
        >>> m.precision_at_1, m.recall_at_k
        (0.4, {1: 0.4, 2: 0.8})
        >>> m["r_precision"], m["mean_average_precision_at_r"]  # also a dict
        (0.3, 0.25)
    """
    check_choice("metric", metric, METRICS)
    ks = _check_ks(k)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    q, q_lab, r, r_lab = check_pair(query, query_labels, ref_embeddings, ref_labels)
    q = q.detach()  # evaluation only: never build an autograd graph
    leave_one_out = r is None
    if r is None or r_lab is None:
        r, r_lab = q, q_lab
    r = r.detach()
    if q.shape[0] == 0:
        raise ValueError("query is empty: there is nothing to evaluate")
    if r.shape[0] == 0:
        raise ValueError("ref_embeddings is empty: there is nothing to retrieve")

    # R per query: references sharing its label, less the query itself when leave-one-out.
    uniq, counts = torch.unique(r_lab, return_counts=True)
    pos = torch.searchsorted(uniq, q_lab.contiguous()).clamp_max(uniq.shape[0] - 1)
    num_relevant = torch.where(uniq[pos] == q_lab, counts[pos], 0) - int(leave_one_out)
    evaluated = (num_relevant > 0).nonzero().squeeze(1)
    num_evaluated = int(evaluated.shape[0])
    if num_evaluated == 0:
        raise ValueError(
            "no query has a reference with the same label, so retrieval metrics are undefined "
            "(does every class have a single sample?)"
        )

    num_refs = r.shape[0] - int(leave_one_out)
    depth = min(num_refs, max(ks[-1], int(num_relevant[evaluated].max())))
    rank = torch.arange(1, depth + 1, device=q.device)
    # Per-query scores, averaged once at the end so that chunking cannot change the result.
    scores = torch.empty(num_evaluated, 3 + len(ks), dtype=torch.float64, device=q.device)
    for start in range(0, num_evaluated, chunk_size):
        rows = evaluated[start : start + chunk_size]
        dist = _pairwise_distance_unchecked(q[rows], r, metric)
        if not math.isfinite(float(dist.amax())):  # amax propagates NaN
            raise ValueError("distances overflow to inf or NaN; scale or normalise the embeddings")
        if leave_one_out:
            dist[torch.arange(rows.shape[0], device=q.device), rows] = math.inf
        hits = r_lab[_nearest_stable(dist, depth)] == q_lab[rows, None]  # [C, depth]
        big_r = num_relevant[rows]
        relevant_within_r = hits & (rank <= big_r[:, None])
        precision_at_i = hits.cumsum(dim=1, dtype=torch.float64) / rank
        out = scores[start : start + chunk_size]
        out[:, 0] = hits[:, 0]
        out[:, 1] = relevant_within_r.sum(dim=1) / big_r.double()
        out[:, 2] = (precision_at_i * relevant_within_r).sum(dim=1) / big_r
        for j, kk in enumerate(ks):
            out[:, 3 + j] = hits[:, :kk].any(dim=1)
    means = scores.mean(dim=0).tolist()
    return RetrievalMetrics(
        precision_at_1=means[0],
        recall_at_k={kk: means[3 + j] for j, kk in enumerate(ks)},
        r_precision=means[1],
        mean_average_precision_at_r=means[2],
    )
