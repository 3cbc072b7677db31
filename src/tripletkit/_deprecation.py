"""Deprecations and removals.

A public name that changes keeps its old form for one release: :func:`warn` (and
:func:`moved_module` for a module path) emits a :class:`DeprecationWarning` that says what to
write instead and names the release that deprecated it and the one that removes it. Once
removed, an old form fails for one more release with an error that points at the new form
(:func:`refs_keyword_only`, :class:`RemovedModules`) rather than with Python's bare one.

Removed in 0.3 (deprecated in 0.2): positional reference sets of the mining functions, the
module paths ``tripletkit.sampling_miners``, ``tripletkit.losses.fused`` and
``tripletkit.losses.modules`` (see :data:`REMOVED_MODULES`), and ``retrieval_metrics``'s old
call forms (refused in :mod:`tripletkit.metrics`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import Tensor

__all__ = [
    "DEPRECATED_IN",
    "REMOVED_IN",
    "REMOVED_MODULES",
    "RemovedModules",
    "moved_module",
    "refs_keyword_only",
    "refuse_removed_modules",
    "warn",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The release a deprecation written now belongs to, and the release that removes it: every
#: message ends "(deprecated in tripletkit 0.3, removed in 0.4)". Bump both when the next
#: release starts (and remove what the old ``REMOVED_IN`` promised).
DEPRECATED_IN = "0.3"
REMOVED_IN = "0.4"


def warn(
    message: str,
    stacklevel: int = 3,
    *,
    deprecated_in: str = DEPRECATED_IN,
    removed_in: str = REMOVED_IN,
) -> None:
    """Emit a :class:`DeprecationWarning` pointing at the caller's caller.

    Args:
        message: What changed and what to write instead.
        stacklevel: As for :func:`warnings.warn`; the default 3 attributes the warning to
            the code that called the deprecated function (which calls ``warn``).
        deprecated_in: The release that deprecated it (default :data:`DEPRECATED_IN`).
        removed_in: The release that removes it (default :data:`REMOVED_IN`).
    """
    warnings.warn(
        f"{message} (deprecated in tripletkit {deprecated_in}, removed in {removed_in})",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def moved_module(old: str, new: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for an old module path: each name in ``new`` is looked up
    in the module it moved to, with a warning naming that module."""

    def __getattr__(name: str) -> Any:
        if name not in new:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warn(f"{old}.{name} has moved: import it from {new[name]}")
        return getattr(importlib.import_module(new[name]), name)

    return __getattr__


# ----------------------------------------------------------------- removed in 0.3


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
    ref_labels)`` positionally before 0.2: that form (see :func:`_old_refs_call`), removed
    in 0.3, raises a :class:`TypeError` that says to pass the reference set by keyword,
    instead of reaching the third parameter's own check. The signature seen by
    ``inspect`` is ``func``'s."""
    third = list(inspect.signature(func).parameters.values())[2]
    third_default_is_none = third.default is None

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _old_refs_call(args, third_default_is_none):
            raise TypeError(
                f"{func.__name__}(embeddings, labels, ref_embeddings, ref_labels) was removed "
                "in tripletkit 0.3: pass the reference set by keyword, ref_embeddings=..., "
                f"ref_labels=... (the third positional parameter is {third.name})"
            )
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


#: Module paths removed in 0.3 -> where their names live now.
REMOVED_MODULES: dict[str, str] = {
    "tripletkit.sampling_miners": "tripletkit.miners (or tripletkit.mining)",
    "tripletkit.losses.fused": "tripletkit.losses",
    "tripletkit.losses.modules": "tripletkit.losses",
}


class RemovedModules(importlib.abc.MetaPathFinder):
    """A finder, last on :data:`sys.meta_path`, for the module paths of
    :data:`REMOVED_MODULES`: importing one raises :class:`ModuleNotFoundError` (as if it had
    never existed, so ``except ImportError`` code behaves the same) whose message names the
    new home. The error carries no ``name``: with one, ``from tripletkit import
    sampling_miners`` would swallow it and say only "cannot import name". Every other name
    is left to the other finders."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = REMOVED_MODULES.get(fullname)
        if new is None:
            return None
        raise ModuleNotFoundError(
            f"{fullname} was removed in tripletkit 0.3 (deprecated in 0.2): import its "
            f"names from {new}"
        )


def refuse_removed_modules() -> None:
    """Append a :class:`RemovedModules` finder to :data:`sys.meta_path`, once."""
    if not any(type(f).__name__ == RemovedModules.__name__ for f in sys.meta_path):
        sys.meta_path.append(RemovedModules())
