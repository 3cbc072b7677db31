"""Result types shared by miners, losses and statistics.

Miners return named tuples instead of bare tuples told apart by their length. Because they
*are* tuples, ``Triplets`` also works wherever a 3-tuple of index tensors is expected (for
example the ``indices_tuple`` of pytorch-metric-learning losses) and ``Pairs`` wherever a
4-tuple is expected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Pairs", "TripletStats", "Triplets"]


def _empty_index(device: torch.device | str | None = None) -> Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


class Triplets(NamedTuple):
    """Indices of mined triplets ``(anchor, positive, negative)``.

    ``anchor`` indexes the embeddings; ``positive`` and ``negative`` index the reference set
    (the embeddings themselves when no reference set is given).

    Shape:
        - anchor, positive, negative: ``[T]``, int64, on the embeddings' device.

    Examples:
        >>> t = Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
        >>> anchor, positive, negative = t  # unpacks like a 3-tuple
        >>> t.num_triplets, Triplets.empty().num_triplets
        (1, 0)
    """

    anchor: Tensor
    positive: Tensor
    negative: Tensor

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Triplets:
        """Triplets with no rows."""
        return cls(_empty_index(device), _empty_index(device), _empty_index(device))

    @property
    def num_triplets(self) -> int:
        """Number of triplets ``T``."""
        return int(self.anchor.shape[0])


class Pairs(NamedTuple):
    """Indices of mined pairs: positive pairs ``(anchor_pos, positive)`` and negative pairs
    ``(anchor_neg, negative)``.

    Shape:
        - anchor_pos, positive: ``[P]``, int64.
        - anchor_neg, negative: ``[Q]``, int64.

    Examples:
        >>> p = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 1]), torch.tensor([2, 2]))
        >>> p.num_positive, p.num_negative
        (1, 2)
    """

    anchor_pos: Tensor
    positive: Tensor
    anchor_neg: Tensor
    negative: Tensor

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> Pairs:
        """Pairs with no rows."""
        e = _empty_index(device)
        return cls(e, e.clone(), e.clone(), e.clone())

    @property
    def num_positive(self) -> int:
        return int(self.anchor_pos.shape[0])

    @property
    def num_negative(self) -> int:
        return int(self.anchor_neg.shape[0])


class TripletStats(NamedTuple):
    """Counts of valid triplets by difficulty (Schroff et al. 2015; Hermans et al. 2017).

    With ``d_ap`` the anchor-positive and ``d_an`` the anchor-negative distance and margin
    ``m``: *easy* ``d_an > d_ap + m``, *semi-hard* ``d_ap < d_an <= d_ap + m``, *hard*
    ``d_an <= d_ap``. ``valid = easy + semi_hard + hard``. Plain Python ints.

    Examples:
        >>> TripletStats(valid=8, easy=4, semi_hard=2, hard=2).fractions["semi_hard"]
        0.25
    """

    valid: int
    easy: int
    semi_hard: int
    hard: int

    @property
    def fractions(self) -> dict[str, float]:
        """``{"easy", "semi_hard", "hard"}`` as fractions of the valid triplets (0 when none)."""
        total = max(self.valid, 1)
        return {
            "easy": self.easy / total,
            "semi_hard": self.semi_hard / total,
            "hard": self.hard / total,
        }
