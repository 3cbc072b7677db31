"""The one ``nn.Module`` pattern behind every miner and loss module.

A module holds validated hyper-parameters and nothing else; calling it passes them, by
keyword, to its pure function (the single source of truth). Subclasses validate their
hyper-parameters in ``__init__`` and name the function.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["HyperParameters"]


class HyperParameters(nn.Module):
    """Base class: ``super().__init__(**options)`` stores each validated hyper-parameter as
    an attribute; :meth:`options` hands them back as the function's keyword arguments and
    ``repr`` lists them."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._option_names = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def options(self) -> dict[str, Any]:
        """The keyword arguments passed to the function on every call."""
        return {name: getattr(self, name) for name in self._option_names}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._option_names)
