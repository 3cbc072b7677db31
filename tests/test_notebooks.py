"""Execute the notebooks of ``notebooks/``, and keep the committed copies clean: committed
*with* their outputs (a reader on a code host or on the documentation site sees the plots),
but without errors, widget state or absolute paths, and small.

The notebooks run with ``TRIPLETKIT_NB_QUICK=1`` (their tiny settings) in a Jupyter kernel
of this very interpreter, with ``notebooks/`` as working directory, as Jupyter runs them.
``02_mining_strategies`` runs twice: on an empty results folder, where it must fall back to
running the quick benchmarks itself, and on a folder holding result files (the repository's
own when there are any), where it must only read them. So it never depends on a real
benchmark having run, and never writes into ``benchmarks/results/``.

Kernel: the ``ipykernel`` wheel installs a ``python3`` kernel spec into ``sys.prefix``, and
jupyter_client runs ``"python"`` in a spec's argv as ``sys.executable``, so a fresh machine
needs no ``python -m ipykernel install``. A ``python3`` spec in the user's Jupyter folder
would shadow it, though, and could start another interpreter; the tests therefore register
their own spec in a temporary folder placed first on ``JUPYTER_PATH`` (no network, no
install).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REPO_RESULTS = ROOT / "benchmarks" / "results"
QUICKSTART = "01_quickstart.ipynb"
STRATEGIES = "02_mining_strategies.ipynb"
KERNEL = "python3"
#: Per-cell limit. The quick settings take seconds per cell on an idle laptop; the limit only
#: stops a hung kernel, and leaves room for a slow, shared CI machine.
CELL_TIMEOUT_S = 600
#: Result files read by 02_mining_strategies, as (full run, quick run).
RESULT_FILES = (("quality.json", "quality_quick.json"), ("speed_cpu.json", "speed_cpu_quick.json"))


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``python3`` kernel spec for ``sys.executable``, found before any other, and the
    environment the kernels inherit."""
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspec(prefix=str(prefix), kernel_name=KERNEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(prefix / "runtime"))  # connection files
        mp.setenv("TRIPLETKIT_NB_QUICK", "1")
        # The kernel's inline backend draws the figures; MPLBACKEND=Agg (as CI sets it)
        # would replace it and the notebooks would show no figure.
        mp.delenv("MPLBACKEND", raising=False)
        mp.delenv("TRIPLETKIT_NB_RESULTS", raising=False)
        yield prefix


def _execute(name: str) -> tuple[nbformat.NotebookNode, float]:
    """Run every cell of ``notebooks/<name>`` in a fresh kernel; return it and the seconds."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the traceback, on the first error
    elapsed = time.perf_counter() - start
    print(f"{name} executed in {elapsed:.1f} s")
    errors = [o for cell in _code_cells(nb) for o in cell.outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    return nb, elapsed


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for cell in _code_cells(nb) for o in cell.outputs)


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.text
        for cell in _code_cells(nb)
        for o in cell.outputs
        if o.output_type == "stream" and o.name == "stdout"
    )


#: Largest committed notebook, outputs included.
MAX_BYTES = 2 * 1024 * 1024


@pytest.mark.parametrize("name", [QUICKSTART, STRATEGIES])
def test_committed_notebook_shows_its_outputs(name: str) -> None:
    path = NOTEBOOKS / name
    assert path.stat().st_size < MAX_BYTES, f"{name}: {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    assert "widgets" not in nb.metadata
    cells = _code_cells(nb)
    assert cells
    # Executed top to bottom, in one run: counts 1, 2, 3, ...
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), name
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: committed with an error output"
    assert _figures(nb) >= 4, f"{name}: committed without its plots"
    assert str(ROOT) not in path.read_text(), f"{name}: an absolute path in the outputs"


def test_kernel_is_this_interpreter(jupyter_env: Path) -> None:
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert Path(spec.resource_dir).is_relative_to(jupyter_env)
    assert spec.argv[0] == sys.executable


def test_quickstart_runs(jupyter_env: Path) -> None:
    nb, _ = _execute(QUICKSTART)
    # The P x K batch, the difficulty plot, the PCA projection and the retrieval grid.
    assert _figures(nb) >= 4
    out = _stdout(nb)
    assert "trained net" in out and "MAP@R" in out


@pytest.fixture(scope="module")
def fallback_run(
    jupyter_env: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[nbformat.NotebookNode, Path]]:
    """02_mining_strategies on an empty results folder: it runs the quick benchmarks."""
    results = tmp_path_factory.mktemp("results_empty")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRIPLETKIT_NB_RESULTS", str(results))
        nb, _ = _execute(STRATEGIES)
    yield nb, results


def test_strategies_falls_back_to_quick_benchmarks(
    fallback_run: tuple[nbformat.NotebookNode, Path],
) -> None:
    nb, results = fallback_run
    for _, quick in RESULT_FILES:
        assert (results / quick).is_file(), quick
    # Final MAP@R bars, MAP@R vs step, difficulty fractions, speed vs N.
    assert _figures(nb) >= 4
    out = _stdout(nb)
    assert "running `python -m benchmarks.quality" in out
    assert "running `python -m benchmarks.speed" in out
    assert "STRATEGY" in out and "MARGIN" in out and "BATCH SIZE" in out


def test_strategies_reads_existing_results(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The repository's result files when it has some, else those of the fallback run (only
    # run when needed).
    expected = {}
    for full, quick in RESULT_FILES:
        sources = [REPO_RESULTS / n for n in (full, quick) if (REPO_RESULTS / n).is_file()]
        if not sources:
            _, fallback = request.getfixturevalue("fallback_run")
        for src in sources or [fallback / quick]:
            shutil.copy2(src, tmp_path / src.name)
        expected[full] = tmp_path / (sources[0].name if sources else quick)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setenv("TRIPLETKIT_NB_RESULTS", str(tmp_path))

    nb, _ = _execute(STRATEGIES)

    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was rerun
    out = _stdout(nb)
    assert "running `python -m benchmarks" not in out
    for path in expected.values():  # the full run's file is preferred to the quick one
        assert f"loaded {path}" in out
    assert _figures(nb) >= 4
