"""Old call forms and module paths that still work for one release, with a
:class:`DeprecationWarning` that says what to write instead."""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["moved_module", "refs_keyword_only", "warn"]

F = TypeVar("F", bound=Callable[..., Any])


def warn(message: str, stacklevel: int = 3) -> None:
    """Emit a :class:`DeprecationWarning` pointing at the caller's caller."""
    warnings.warn(
        message + " (deprecated in tripletkit 0.2, removed in 0.3)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def refs_keyword_only(func: F) -> F:
    """For the mining functions that took ``(embeddings, labels, ref_embeddings,
    ref_labels)`` positionally in 0.1: a 2-D tensor in third place is that old form; it is
    passed on by keyword, with a warning. The signature seen by ``inspect`` is ``func``'s."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 2 and isinstance(args[2], Tensor) and args[2].dim() == 2:
            old = ("ref_embeddings", "ref_labels")
            extra = args[2:4]
            warn(
                f"{func.__name__}(embeddings, labels, ref_embeddings, ref_labels): pass the "
                "reference set by keyword, ref_embeddings=..., ref_labels=...",
            )
            kwargs.update(zip(old, extra, strict=False))
            args = args[:2] + args[4:]
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def moved_module(old: str, new: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for an old module path: each name in ``new`` is looked up
    in the module it moved to, with a warning naming that module."""

    def __getattr__(name: str) -> Any:
        if name not in new:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warn(f"{old}.{name} has moved: import it from {new[name]}")
        return getattr(importlib.import_module(new[name]), name)

    return __getattr__
