"""Execute the notebooks in place, so that they are committed with their outputs.

Run as ``python docs/run_notebooks.py [NAME ...]`` from a checkout with the package and the
``test`` extra installed. Each notebook runs top to bottom in a fresh ``python3`` kernel with
``notebooks/`` as working directory (its default settings, not ``TRIPLETKIT_NB_QUICK``), and
the repository's absolute path in the outputs is written as ``..`` (the notebooks' view of
it), so no local path is committed. ``tests/test_notebooks.py`` checks the committed copies.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, kernel_name="python3", timeout=3600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = out["text"].replace(str(ROOT), "..")
            for key, value in out.get("data", {}).items():
                if key.startswith("text/") and isinstance(value, str):
                    out["data"][key] = value.replace(str(ROOT), "..")
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    size = path.stat().st_size / 1024**2
    print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, {size:.2f} MiB")


def main(names: list[str]) -> int:
    os.environ.pop("TRIPLETKIT_NB_QUICK", None)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    for name in names or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")):
        run(NOTEBOOKS / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
