"""How every loss turns its terms into one number: the reduction names, "mean over the
active terms", and keeping a loss with no term in the autograd graph.

A loss computed without listing its terms reports :class:`Parts`: the sum of its terms (in
the graph) and two counts, which :func:`reduce_parts` turns into the requested reduction.
The split is what lets :mod:`tripletkit.distributed` all-reduce the counts across replicas.

The dtype convention lives here too (:func:`in_input_dtype`): a loss is computed in float32
(or float64) and returned in the dtype of its embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, ParamSpec

import torch
from torch import Tensor

from .._checks import to_host

__all__ = [
    "FUSED_REDUCTIONS",
    "in_input_dtype",
    "REDUCTIONS",
    "Parts",
    "keep_in_graph",
    "listed_terms",
    "reduce_parts",
    "reduce_terms",
]

#: Every reduction: ``"none"`` needs one term per listed row (a fused loss reads how many
#: there are: see :func:`listed_terms`).
REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")
#: The reductions of a loss whose terms are never listed.
FUSED_REDUCTIONS = ("mean", "sum", "mean_nonzero")


class Parts(NamedTuple):
    """An un-reduced loss: ``total`` (0-dim, in the autograd graph), the number of terms
    ``n_valid`` and the number of terms > 0 ``n_active`` (ints, or 0-dim integer tensors)."""

    total: Tensor
    n_valid: int | Tensor
    n_active: int | Tensor


def reduce_parts(
    total: Tensor, n_valid: int | Tensor, n_active: int | Tensor, reduction: str
) -> Tensor:
    """``"sum"``: the total; ``"mean"``: total / n_valid; ``"mean_nonzero"``: total /
    n_active (the mean over terms > 0). Both means are 0 when their count is 0.

    Shape:
        - total: ``[]`` -> ``[]``.

    Examples:
        >>> import torch
        >>> reduce_parts(torch.tensor(3.0), n_valid=6, n_active=2, reduction="mean_nonzero")
        tensor(1.5000)
    """
    if reduction == "sum":
        return total
    count = n_valid if reduction == "mean" else n_active
    if isinstance(count, Tensor):
        return total / count.clamp_min(1).to(total.dtype)
    return total / max(count, 1)


def keep_in_graph(total: Tensor, *roots: Tensor) -> Tensor:
    """``total`` plus zero-weight sums of ``roots``: a loss with no term still belongs to
    the autograd graph of every input, with a zero gradient (never an error in backward)."""
    for root in roots:
        total = total + root.sum() * 0
    return total


def reduce_terms(terms: Tensor, reduction: str, *roots: Tensor) -> Tensor:
    """Reduce listed terms ``[T]``: ``"none"`` returns them; otherwise :func:`reduce_parts`
    over ``T`` terms of which those > 0 are active; with no term, kept in the graph of
    ``roots``."""
    if reduction == "none":
        return terms
    total = terms.sum() if terms.numel() else keep_in_graph(terms.sum(), *roots)
    return reduce_parts(total, terms.shape[0], (terms > 0).sum(), reduction)


_P = ParamSpec("_P")


def in_input_dtype(
    embeddings_at: int = 0,
) -> Callable[[Callable[_P, Tensor]], Callable[_P, Tensor]]:
    """Decorator of every public loss function: the one place that applies the dtype
    convention.

    A loss is computed in the embeddings' compute dtype (float16 and bfloat16 in float32,
    see :func:`~tripletkit._checks.compute_dtype`) and returned in the dtype the embeddings
    promote to: ``embeddings.dtype``, or ``torch.promote_types(embeddings.dtype,
    ref_embeddings.dtype)`` with a reference set (bfloat16 anchors against a float32
    memory give a float32 loss). So float16 and bfloat16 embeddings give a float16 or
    bfloat16 loss, like ``torch.nn`` losses, and float32/float64 losses are unchanged. The
    cast is differentiable: gradients reach the embeddings in their own dtype.

    Args:
        embeddings_at: the position of the ``embeddings`` argument (also accepted by
            keyword); ``ref_embeddings`` is keyword-only in every loss.
    """

    def decorate(fn: Callable[_P, Tensor]) -> Callable[_P, Tensor]:
        @functools.wraps(fn)
        def loss(*args: _P.args, **kwargs: _P.kwargs) -> Tensor:
            out = fn(*args, **kwargs)
            emb = args[embeddings_at] if len(args) > embeddings_at else kwargs.get("embeddings")
            ref = kwargs.get("ref_embeddings")
            if not isinstance(emb, Tensor):  # refused by fn already; nothing to follow
                return out
            dtype = emb.dtype
            if isinstance(ref, Tensor):
                dtype = torch.promote_types(dtype, ref.dtype)
            return out if out.dtype == dtype else out.to(dtype)

        return loss

    return decorate


def listed_terms(terms: Tensor, valid: Tensor | None) -> Tensor:
    """The terms of the slots that hold a triplet, row-major: ``reduction="none"`` of a fused
    loss whose selection has a fixed layout (``valid``; ``None``: every slot is one).

    Their number depends on the data, so it is read on the host: **one** host read
    (:func:`~tripletkit._checks.to_host`, a synchronisation on a GPU), whatever the input
    checks; the terms are then gathered by position (``nonzero_static``), so neither the
    forward nor the backward pass reads anything else (no boolean-mask indexing).

    Shape:
        - terms, valid: any matching shape -> ``[T]``, ``T`` the number of valid slots.
    """
    if valid is None:
        return terms.reshape(-1)
    flat = valid.reshape(-1)
    (size,) = to_host(flat.sum().reshape(1))
    where = torch.nonzero_static(flat, size=size).reshape(-1)
    return terms.reshape(-1)[where]
