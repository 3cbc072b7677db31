"""Training monitors: how many valid triplets are easy, semi-hard or hard."""

from __future__ import annotations

from torch import Tensor

from ._batch import prepare
from ._checks import check_nonnegative_real, to_host
from ._masks import given_masks
from .kernels import triplet_counts
from .types import TripletStats

__all__ = ["triplet_stats"]


def triplet_stats(
    embeddings: Tensor,
    labels: Tensor | None,
    margin: float = 0.2,
    metric: str = "euclidean",
    *,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    anchor_offset: int | None = None,
    normalize: bool = False,
    backend: str = "auto",
    positive_mask: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> TripletStats:
    """Count the valid triplets of a batch by difficulty, without listing them.

    The taxonomy of Schroff et al. 2015 and Hermans et al. 2017, with ``d_ap`` and ``d_an``
    the anchor-positive and anchor-negative distances: *easy* ``d_an > d_ap + margin``
    (zero loss), *semi-hard* ``d_ap < d_an <= d_ap + margin``, *hard* ``d_an <= d_ap``.
    O(N² log N) time and O(N²) memory; no gradient.

    Args:
        embeddings: ``[N, D]``; labels: ``[N]``.
        margin: ``m >= 0``.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``.
        ref_embeddings, ref_labels, anchor_offset, normalize, backend: as in
            :func:`~tripletkit.losses.batch_all_triplet_loss`.
        positive_mask: ``[N, M]`` bool, an explicit relation given instead of labels (pass
            ``labels=None`` and no ``ref_labels``): ``True`` marks the positives of each
            anchor (rows) among the references (columns; the anchors themselves without a
            reference set). Pairs in neither mask are ignored; a pair in both is a
            ValueError (input checks on); an anchor's pair with its own sample is never
            used. Without ``negative_mask`` the negatives are the other pairs.
        negative_mask: ``[N, M]`` bool, the negatives (without ``positive_mask``: the
            positives are the other pairs). See the multi-label guide.

    Returns:
        :class:`~tripletkit.types.TripletStats` ``(valid, easy, semi_hard, hard)``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [0.25], [2.0]])
        >>> triplet_stats(x, torch.tensor([0, 0, 1, 1]), margin=0.2)
        TripletStats(valid=8, easy=3, semi_hard=3, hard=2)
    """
    labels = given_masks(labels, positive_mask, negative_mask)
    margin = check_nonnegative_real(margin, "margin")
    b = prepare(
        embeddings,
        labels,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        anchor_offset=anchor_offset,
        metric=metric,
        normalize=normalize,
        backend=backend,
    )
    counts = triplet_counts(b.distances(), b.labels, b.ref_labels, b.self_index, margin, b.backend)
    return TripletStats(*to_host(counts))
