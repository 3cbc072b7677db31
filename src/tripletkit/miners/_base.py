"""The ``nn.Module`` behind every miner: hyper-parameters in, the pure function called.

A miner holds validated hyper-parameters (see :class:`~tripletkit._module.HyperParameters`)
and is called as ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``; the
mining function beside it in the same file is the single source of truth. Random miners own
a seeded :class:`torch.Generator` (:class:`SeededMiner`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_nonnegative_int
from .._module import HyperParameters
from ..types import Pairs, Triplets

__all__ = ["Miner", "SeededMiner", "make_generator"]


class Miner(HyperParameters):
    """Base class: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

    Subclasses set :attr:`function` and call ``super().__init__(**options)`` with their
    validated hyper-parameters, which are passed to the function by keyword on every call.
    """

    function: ClassVar[Callable[..., Triplets | Pairs]]

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets | Pairs:
        return type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            **self.options(),
        )


def make_generator(seed: int | None = 0) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed`` (from OS entropy only when ``None``
    is passed explicitly).

    Example:
        >>> g1, g2 = make_generator(0), make_generator(0)
        >>> bool(torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2)))
        True
    """
    seed = check_nonnegative_int(seed, "seed", allow_none=True)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class SeededMiner(Miner):
    """A miner that owns a :class:`torch.Generator`, seeded with ``seed`` (0 by default, like
    every seeded object in tripletkit; ``None`` asks for OS entropy) and passed to its
    function on every call, so successive calls draw different samples while a run stays
    reproducible. The generator's state travels in ``state_dict()`` (as extra state), so a
    run resumed from a checkpoint continues the same stream."""

    def __init__(self, seed: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.generator: torch.Generator = make_generator(seed)
        self.seed = seed

    def options(self) -> dict[str, Any]:
        return {**super().options(), "generator": self.generator}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}".lstrip(", ")

    def manual_seed(self, seed: int) -> None:
        """Restart the miner's random stream from ``seed``."""
        self.generator = make_generator(seed)
        self.seed = seed

    def get_extra_state(self) -> dict:
        """The generator's state travels in ``state_dict()``, so a resumed run draws on."""
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.seed = state["seed"]
        self.generator.set_state(state["generator_state"])
