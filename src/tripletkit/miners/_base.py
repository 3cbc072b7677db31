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
    """A miner that owns its random streams, seeded with ``seed`` (0 by default, like every
    seeded object in tripletkit; ``None`` asks for OS entropy): successive calls draw
    different samples while a run stays reproducible.

    Draws happen on the embeddings' device, from a generator of that device seeded with
    ``seed`` (:attr:`generator` is the CPU one): the same seed reproduces a run on the same
    kind of device, not across devices. The generators' states travel in ``state_dict()``
    (as extra state), so a run resumed from a checkpoint continues the same streams.
    """

    def __init__(self, seed: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.manual_seed(seed)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets | Pairs:
        device = embeddings.device if isinstance(embeddings, Tensor) else torch.device("cpu")
        return type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            generator=self.generator_for(device),
            **self.options(),
        )

    def generator_for(self, device: torch.device) -> torch.Generator:
        """This miner's generator on ``device`` (created, seeded, at first use)."""
        if device.type in ("cpu", "meta"):
            return self.generator
        key = str(device)
        if key not in self._device_generators:
            generator = torch.Generator(device)
            if self.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.seed)
            self._device_generators[key] = generator
        return self._device_generators[key]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}".lstrip(", ")

    def manual_seed(self, seed: int | None) -> None:
        """Restart the miner's random streams from ``seed``."""
        self.generator: torch.Generator = make_generator(seed)
        self.seed = seed
        self._device_generators: dict[str, torch.Generator] = {}

    def get_extra_state(self) -> dict:
        """The generators' states travel in ``state_dict()``, so a resumed run draws on."""
        return {
            "seed": self.seed,
            "generator_state": self.generator.get_state(),
            "device_states": {k: g.get_state() for k, g in self._device_generators.items()},
        }

    def set_extra_state(self, state: dict) -> None:
        self.manual_seed(state["seed"])
        self.generator.set_state(state["generator_state"])
        for key, value in state.get("device_states", {}).items():
            self.generator_for(torch.device(key)).set_state(value)
