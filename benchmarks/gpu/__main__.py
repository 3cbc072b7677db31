"""``python -m benchmarks.gpu``: see :mod:`benchmarks.gpu`."""

from ..cli import run as run_command
from .command import main

if __name__ == "__main__":
    run_command(main, "python -m benchmarks.gpu")
