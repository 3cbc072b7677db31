"""Margin-based loss with a learnable boundary (Wu, Manmatha, Smola & Krähenbühl 2017,
"Sampling Matters in Deep Embedding Learning"), the loss that goes with distance-weighted
sampling (:class:`~tripletkit.miners.DistanceWeightedMiner`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._batch import check_options, prepare
from .._checks import (
    DeviceChecks,
    check_bool,
    check_finite_real,
    check_index_tuple,
    check_nonnegative_real,
    check_positive_int,
    check_reduction,
)
from ..distances import _paired_distance_unchecked
from ..types import Pairs, Triplets
from ._base import LossModule
from ._reduce import REDUCTIONS, in_input_dtype, keep_in_graph, reduce_parts

__all__ = ["MarginLoss", "margin_loss"]

Indices = Triplets | Pairs | tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]


def _check_beta(beta: object, checks: DeviceChecks) -> Tensor:
    if isinstance(beta, bool) or not isinstance(beta, (int, float, Tensor)):
        raise TypeError(f"beta must be a real number or a tensor, got {type(beta).__name__}")
    if not isinstance(beta, Tensor):
        beta = torch.tensor([check_finite_real(beta, "beta")])
    if not beta.dtype.is_floating_point:
        raise TypeError(f"beta must be a floating tensor, got {beta.dtype}")
    if beta.dim() > 1 or beta.numel() == 0:
        raise ValueError(
            f"beta must be a scalar, [1] or [num_classes], got shape {tuple(beta.shape)}"
        )
    checks.require(
        torch.isfinite(beta.detach()), lambda: ValueError("beta contains NaN or Inf values")
    )
    return beta.reshape(-1)


def _per_class(beta: Tensor, labels_pos: Tensor, labels_neg: Tensor) -> tuple[Tensor, Tensor]:
    """``beta`` of each pair's anchor class; the labels must index ``beta``."""
    anchor_labels = torch.cat([labels_pos, labels_neg])
    classes = beta.shape[0]

    def out_of_range() -> ValueError:
        return ValueError(
            f"per-class beta has {classes} entries, so anchor labels must be in "
            f"[0, {classes}); got labels in "
            f"[{int(anchor_labels.min())}, {int(anchor_labels.max())}]"
        )

    checks = DeviceChecks()
    if anchor_labels.numel():
        checks.require((anchor_labels >= 0) & (anchor_labels < classes), out_of_range)
    checks.run()
    return beta[labels_pos.clamp(0, classes - 1)], beta[labels_neg.clamp(0, classes - 1)]


@in_input_dtype()
def margin_loss(
    embeddings: Tensor,
    labels: Tensor,
    indices: Indices,
    beta: Tensor | float = 1.2,
    margin: float = 0.2,
    nu: float = 0.0,
    metric: str = "euclidean",
    reduction: str = "mean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    normalize: bool = False,
) -> Tensor:
    """Margin-based loss of Wu et al. 2017 over given positive and negative pairs.

    With ``alpha = margin``, ``beta`` the boundary of the anchor's class and ``d`` the pair's
    distance, each positive pair costs ``max(0, alpha + d - beta)`` and each negative pair
    ``max(0, alpha - d + beta)``, plus the paper's regulariser ``nu * beta`` once per pair
    (the paper sums ``nu * beta`` with every pair's loss; the authors' reference code adds it
    once per triplet instead).

    Reductions, with ``total`` the sum of all pair terms (hinges plus regulariser) and
    ``K`` the number of pairs whose hinge is > 0:

    - ``"mean"``: ``total / K`` (the paper's normalisation: over the pairs with a non-zero
      loss; ``total`` itself, i.e. only the regulariser, when ``K = 0``);
    - ``"mean_nonzero"``: the same as ``"mean"`` (which already averages over non-zero pairs);
    - ``"sum"``: ``total``;
    - ``"none"``: the ``[P + Q]`` pair terms, positive pairs first, each with its
      regulariser.

    Args:
        embeddings: ``[N, D]`` embeddings (the paper uses unit-norm ones; see ``normalize``).
        labels: ``[N]`` integer labels; with per-class ``beta`` they index it (anchor labels).
        indices: :class:`~tripletkit.types.Triplets` (each row gives the positive pair
            ``(a, p)`` and the negative pair ``(a, n)``, so a positive pair listed by several
            triplets counts several times), :class:`~tripletkit.types.Pairs`, or a plain 3- or
            4-tuple of index tensors. Positives and negatives index ``ref_embeddings`` when given.
        beta: the boundary: a number, a ``[1]`` tensor, or a ``[C]`` tensor of one boundary per
            class (then every anchor label must be in ``[0, C)``). Gradients flow into it.
        margin: ``alpha``, the half-width of the margin around ``beta``.
        nu: weight of the regulariser ``nu * beta`` (``>= 0``).
        metric: ``"euclidean"`` (the paper's), ``"sqeuclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"mean_nonzero"``, ``"sum"`` or ``"none"``, as above.
        normalize: L2-normalise the embeddings (and references) first.
        ref_embeddings, ref_labels: optional reference set ``[M, D]``, ``[M]``.

    Returns:
        0-dim loss, or ``[P + Q]`` with ``reduction="none"``.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; beta: ``[]``, ``[1]`` or ``[C]``.
        - output: ``[]``, or ``[P + Q]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> x, labels = torch.tensor([[0.0], [1.2], [1.1], [3.0]]), torch.tensor([0, 0, 1, 1])
        >>> pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 0]), torch.tensor([2, 3]))
        >>> margin_loss(x, labels, pairs, beta=1.2, margin=0.2, reduction="none")
        tensor([0.2000, 0.3000, 0.0000])
        >>> margin_loss(x, labels, pairs, beta=1.2, margin=0.2)  # (0.2 + 0.3) / 2 non-zero pairs
        tensor(0.2500)
    """
    check_reduction(reduction, REDUCTIONS)
    margin = check_finite_real(margin, "margin")
    nu = check_nonnegative_real(nu, "nu")
    check_options(metric=metric)
    checks = DeviceChecks()
    beta = _check_beta(beta, checks)
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        metric=metric,
        matrix=False,
        normalize=normalize,
    )
    emb, lab, ref = b.embeddings, b.labels, b.ref_embeddings
    checked = check_index_tuple(
        indices, "indices", (3, 4), emb.shape[0], ref.shape[0], emb.device, checks
    )
    ap, p, an, neg = checked if len(checked) == 4 else (checked[0], checked[1], *checked[::2])
    checks.run()  # indices in range before anything is gathered with them
    beta = beta.to(device=emb.device, dtype=emb.dtype)
    if beta.shape[0] == 1:
        beta_pos, beta_neg = beta.expand(ap.shape[0]), beta.expand(an.shape[0])
    elif b.masked:
        raise ValueError(
            "a per-class beta needs class labels [N]; with multi-hot labels give one beta"
        )
    else:
        beta_pos, beta_neg = _per_class(beta, lab[ap], lab[an])
    hinge = torch.cat(
        [
            F.relu(margin + _paired_distance_unchecked(emb[ap], ref[p], metric) - beta_pos),
            F.relu(margin - _paired_distance_unchecked(emb[an], ref[neg], metric) + beta_neg),
        ]
    )
    terms = hinge + nu * torch.cat([beta_pos, beta_neg])
    if reduction == "none":
        return terms
    # Zero-weight terms keep an empty selection in the graph of both inputs.
    total = keep_in_graph(terms.sum(), emb, beta)
    n_active = (hinge > 0).sum()
    return reduce_parts(total, n_active, n_active, "sum" if reduction == "sum" else "mean")


class MarginLoss(LossModule):
    """Margin-based loss with a learnable boundary ``beta`` (Wu et al. 2017), module form of
    :func:`margin_loss`: ``loss(embeddings, labels, indices)``.

    Positive pairs cost ``max(0, margin + d - beta)``, negative pairs
    ``max(0, margin - d + beta)``, each plus ``nu * beta``; ``"mean"`` divides the sum by the
    number of pairs with a non-zero hinge, as the paper does (see :func:`margin_loss` for
    every reduction). ``beta`` is an ``nn.Parameter`` when ``learn_beta`` (a buffer
    otherwise): one shared value, or one per class when ``num_classes`` is given (indexed by
    the anchor's label, which must then be in ``[0, num_classes)``). Remember to give the
    optimiser this module's parameters.

    Args:
        margin: ``alpha``.
        beta: initial boundary.
        learn_beta: make ``beta`` a learnable parameter.
        num_classes: one ``beta`` per class instead of a shared one.
        nu: weight of the regulariser ``nu * beta`` (``>= 0``).
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        reduction: ``"mean"``, ``"mean_nonzero"`` (same as ``"mean"``), ``"sum"``, ``"none"``.
        normalize: L2-normalise the embeddings first.

    Shape:
        - embeddings: ``[N, D]``; labels: ``[N]``; indices: Triplets (3 x ``[T]``, giving
          ``P = Q = T``) or Pairs (``[P]``, ``[P]``, ``[Q]``, ``[Q]``).
        - output: ``[]``, or ``[P + Q]`` with ``reduction="none"``.

    Examples:
        >>> import torch
        >>> from tripletkit.miners import DistanceWeightedMiner
        >>> x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
        >>> x = torch.nn.functional.normalize(x, dim=1).requires_grad_()
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss_fn = MarginLoss(margin=0.2, beta=1.2)
        >>> loss = loss_fn(x, labels, DistanceWeightedMiner(seed=0)(x, labels))
        >>> loss.backward()
        >>> loss_fn.beta.grad.shape
        torch.Size([1])
    """

    beta: Tensor

    def __init__(
        self,
        margin: float = 0.2,
        beta: float = 1.2,
        *,
        learn_beta: bool = True,
        num_classes: int | None = None,
        nu: float = 0.0,
        metric: str = "euclidean",
        reduction: str = "mean",
        normalize: bool = False,
    ) -> None:
        super().__init__(
            margin=check_finite_real(margin, "margin"),
            nu=check_nonnegative_real(nu, "nu"),
            reduction=check_reduction(reduction, REDUCTIONS),
            **check_options(metric=metric, normalize=normalize),
        )
        self.learn_beta = check_bool(learn_beta, "learn_beta")
        self.num_classes = (
            None if num_classes is None else check_positive_int(num_classes, "num_classes")
        )
        init = torch.full((self.num_classes or 1,), check_finite_real(beta, "beta"))
        if learn_beta:
            self.beta = nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices: Indices,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return margin_loss(
            embeddings,
            labels,
            indices,
            self.beta,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            **self.options(),
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, learn_beta={self.learn_beta}, num_classes={self.num_classes}"
        )
