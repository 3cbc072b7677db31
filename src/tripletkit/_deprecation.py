"""Old call forms and module paths that still work for one release, with a
:class:`DeprecationWarning` that says what to write instead."""

from __future__ import annotations

import functools
import importlib
import inspect
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


def _old_refs_call(args: tuple, third_default_is_none: bool) -> bool:
    """Whether ``args`` are 0.1's ``(embeddings, labels, ref_embeddings, ref_labels, ...)``:
    a 2-D tensor in third place (no hyper-parameter is a matrix), or ``None`` there (no
    hyper-parameter accepts it; where the third parameter's own default is ``None``, only
    with a fourth positional argument, which the new form cannot have)."""
    if len(args) < 3:
        return False
    third = args[2]
    if isinstance(third, Tensor):
        return third.dim() == 2
    return third is None and (len(args) > 3 or not third_default_is_none)


def refs_keyword_only(func: F) -> F:
    """For the mining functions that took ``(embeddings, labels, ref_embeddings,
    ref_labels)`` positionally in 0.1: that old form (see :func:`_old_refs_call`) is passed
    on by keyword, with a warning. The signature seen by ``inspect`` is ``func``'s."""
    third = list(inspect.signature(func).parameters.values())[2]
    third_default_is_none = third.default is None

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _old_refs_call(args, third_default_is_none):
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
