"""Helpers shared by the benchmark scripts: machine description, JSON output, progress bars.

Every benchmark writes its results under :data:`RESULTS_DIR` as a dict that starts with
:func:`new_result` (the benchmark's name and :func:`machine_info`), so that a number can always
be traced back to the machine, the library versions and the commit that produced it.

The other shared layers of the package: :mod:`benchmarks.registry` (what is measured),
:mod:`benchmarks.measure` (how time and memory are measured) and :mod:`benchmarks.report`
(aggregation, tables and figures).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = [
    "GIB",
    "MIB",
    "STREAMING_LOSSES",
    "STREAMING_TARGET_BYTES",
    "STREAMING_TARGET_N",
    "REPO_ROOT",
    "RESULTS_DIR",
    "ProgressBar",
    "load_json",
    "load_average",
    "machine_info",
    "new_result",
    "progress",
    "save_json",
]

T = TypeVar("T")

#: Bytes in a GiB, and in a MiB.
GIB = 1024**3
MIB = 1024**2

#: Issue 18's memory target, shared by the benchmarks that check it (:mod:`benchmarks.speed`
#: and :mod:`benchmarks.streaming`): one forward + backward of each of these fused losses
#: with ``backend="streaming"`` at ``N = STREAMING_TARGET_N`` (``D = 128``, ``K = 8``) needs
#: at most ``STREAMING_TARGET_BYTES`` of extra peak memory (one float32 ``N x N`` matrix is
#: 16 GiB).
STREAMING_LOSSES = ("batch_hard", "semi_hard", "batch_all")
STREAMING_TARGET_N = 65536
STREAMING_TARGET_BYTES = 256 * MIB

#: The ``benchmarks/`` folder.
BENCH_DIR = Path(__file__).resolve().parent
#: The repository root (the folder above ``benchmarks/``).
REPO_ROOT = BENCH_DIR.parent
#: Where the benchmarks write their JSON files and plots.
RESULTS_DIR = BENCH_DIR / "results"


def _cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int | None:
    """Cores this process may run on (affinity), falling back to the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _git_commit() -> str | None:
    """The current commit of the repository (``+dirty`` when the tree has changes), if any."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if status else commit or None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def machine_info() -> dict[str, Any]:
    """Describe the machine and software a benchmark runs on.

    Returns:
        A JSON-serialisable dict: platform, python, torch / numpy / numba versions (``None``
        when not installed), CPU model, core counts, torch's thread count, the CUDA device
        name (``None`` without CUDA), an ISO-8601 UTC timestamp, the 1/5/15-minute load
        averages and the git commit.
    """
    import torch

    cuda_name = None
    if torch.cuda.is_available():
        try:
            cuda_name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a broken driver should not stop a benchmark
            cuda_name = "unknown"
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": cuda_name,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average": load_average(),
        "git_commit": _git_commit(),
    }


def _jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars, paths and non-finite floats to plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(obj)


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path``, creating its folders.

    Non-finite floats become ``null`` (strict JSON); numpy and torch scalars become
    numbers. The file is written to a temporary name first, then renamed.

    Returns:
        The path written, as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(_jsonable(obj), fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def load_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document of ``path``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (None where unknown)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def new_result(benchmark: str, **fields: Any) -> dict[str, Any]:
    """The head of every benchmark's results: ``{"benchmark", "machine", **fields}``.

    Args:
        benchmark: the benchmark's name (``"speed"``, ``"quality"``...).
        **fields: the benchmark's own keys, in the order they should appear in the JSON.

    Returns:
        A new dict; :func:`machine_info` is taken now, so call this when the measurements
        it describes are made.
    """
    return {"benchmark": benchmark, "machine": machine_info(), **fields}


class ProgressBar(Generic[T]):
    """A tqdm progress bar when tqdm is installed, else a silent stand-in with the same methods.

    Iterate over it to iterate over the wrapped iterable, or call :meth:`update` to advance a
    bar made without one (``ProgressBar(None, total=...)``). Also a context manager that closes
    the bar.

    Args:
        iterable: what to iterate over, or ``None`` for a bar advanced by :meth:`update`.
        **kw: passed to :class:`tqdm.tqdm` (``desc``, ``total``, ``leave``, ``unit``...);
            ignored without tqdm.
    """

    def __init__(self, iterable: Iterable[T] | None = None, **kw: Any) -> None:
        self._iterable = iterable
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar: Any = None
        else:
            self._bar = tqdm(iterable, **kw)

    def __iter__(self) -> Iterator[T]:
        if self._bar is not None:
            return iter(self._bar)
        return iter(self._iterable if self._iterable is not None else ())

    def set_postfix_str(self, text: str) -> None:
        """Show ``text`` after the bar (what is running now)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n``."""
        if self._bar is not None:
            self._bar.update(n)

    def write(self, text: str) -> None:
        """Print a line above the bar (plain :func:`print` without tqdm)."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text)

    def close(self) -> None:
        """Close the bar (tqdm also closes it when an iteration over it ends)."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ProgressBar[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, **kw: Any) -> ProgressBar[T]:
    """A :class:`ProgressBar` over ``iterable`` (tqdm when installed, silent otherwise).

    Keyword arguments (``desc``, ``total``, ``leave``...) go to :class:`tqdm.tqdm` and are
    ignored without tqdm.
    """
    return ProgressBar(iterable, **kw)
