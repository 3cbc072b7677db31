"""The one ``nn.Module`` behind every miner.

A miner holds hyper-parameters and nothing else; calling it passes them to its pure mining
function (the single source of truth, in :mod:`tripletkit.mining` or
:mod:`tripletkit.sampling_miners`). Subclasses only validate their hyper-parameters and name
the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from .._checks import check_bool, check_choice
from ..distances import METRICS
from ..kernels import BACKENDS
from ..types import Pairs, Triplets

__all__ = ["Miner", "common_options"]


class Miner(nn.Module):
    """Base class: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

    Subclasses set :attr:`function` and call ``super().__init__(**options)`` with their
    validated hyper-parameters, which become attributes and are passed to the function as
    keyword arguments on every call.
    """

    function: ClassVar[Callable[..., Triplets | Pairs]]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._option_names = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def options(self) -> dict[str, Any]:
        """The keyword arguments passed to the mining function."""
        return {name: getattr(self, name) for name in self._option_names}

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets | Pairs:
        return type(self).function(embeddings, labels, ref_embeddings, ref_labels, **self.options())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._option_names)


def common_options(metric: str, normalize: bool, backend: str | None = None) -> dict[str, Any]:
    """Validated ``metric``, ``normalize`` (and ``backend``) options shared by miners."""
    options: dict[str, Any] = {
        "metric": check_choice("metric", metric, METRICS),
        "normalize": check_bool(normalize, "normalize"),
    }
    if backend is not None:
        options["backend"] = check_choice("backend", backend, BACKENDS)
    return options
