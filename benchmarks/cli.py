"""How the benchmark commands end on a user's mistake: one line on stderr, exit status 2.

A bad argument is argparse's business (it prints the usage and one ``error:`` line, exit 2);
a bad *file* or setting found later raises :class:`UsageError`, which :func:`run` prints as
``<prog>: error: <message>`` without a traceback. Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = ["UsageError", "run"]


class UsageError(ValueError):
    """A user's input (a file, a combination of options) that the command cannot use. A
    ``ValueError``, so library callers catch it as before."""


def run(main: Callable[[Sequence[str] | None], Any], prog: str) -> NoReturn:
    """Call ``main(None)`` as a command: exit 0 when it returns (or the integer it returns),
    2 with one ``error:`` line on a :class:`UsageError`."""
    try:
        code = main(None)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
