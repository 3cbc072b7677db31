"""The documentation site builds without a warning (``mkdocs build --strict``), its API
reference names every public name of every public module, every self-contained Python
example on its pages runs, and its benchmark figures are those ``docs/gen_figures.py``
writes from the committed JSON."""

from __future__ import annotations

import filecmp
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import tripletkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

if not os.environ.get("CI"):  # CI installs the docs extra: there a missing mkdocs fails
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")


def public_modules() -> list[str]:
    """``tripletkit`` and its public submodules that declare ``__all__`` (deprecated
    shims excluded: they declare none)."""
    names = ["tripletkit"]
    for info in pkgutil.iter_modules(tripletkit.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tripletkit.{info.name}")
        if hasattr(module, "__all__") and module.__all__:
            names.append(module.__name__)
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _inventory(site: Path) -> set[str]:
    """The object names of the site's ``objects.inv`` (Sphinx inventory v2: four header
    lines, then zlib-compressed ``name domain:role priority uri dispname`` lines)."""
    raw = (site / "objects.inv").read_bytes()
    body = raw.split(b"\n", 4)[4]
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines()}


def test_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()


@pytest.mark.parametrize("module", public_modules())
def test_api_reference_names_every_public_name(site: Path, module: str) -> None:
    names = _inventory(site)
    exported = importlib.import_module(module).__all__
    missing = [n for n in exported if f"{module}.{n}" not in names]
    assert not missing, f"{module}: not in the API reference: {missing}"


def test_every_public_module_has_a_reference_page() -> None:
    pages = {p.stem for p in (DOCS / "api").glob("*.md")}
    wanted = {m.removeprefix("tripletkit.") or "tripletkit" for m in public_modules()}
    assert wanted <= pages, sorted(wanted - pages)


def _examples() -> list[tuple[str, int, str]]:
    """Self-contained Python examples of every page (blocks that start with ``import``;
    fragments that continue an earlier block start otherwise)."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        rel = str(page.relative_to(DOCS))
        found += [(rel, i, b) for i, b in enumerate(blocks) if b.startswith(("import ", "from "))]
    return found


def test_pages_have_runnable_examples() -> None:
    """The examples that used to live in the README are on the pages, and every Python
    block of every page is self-contained, so every one runs (below)."""
    blocks = sum(len(re.findall(r"```python\n", p.read_text())) for p in DOCS.rglob("*.md"))
    assert blocks == len(_examples()), "a Python block that is not self-contained"
    pages = {page for page, _, _ in _examples()}
    assert len(_examples()) >= 10, _examples()
    assert {"getting-started.md", "guide/fused-losses.md", "guide/checkpoints.md"} <= pages


@pytest.mark.parametrize(("page", "index", "code"), _examples(), ids=lambda v: str(v)[:30])
def test_page_example_runs(page: str, index: int, code: str) -> None:
    block = "import itertools\n" + code.replace(
        "for images, labels in loader:", "for images, labels in itertools.islice(loader, 3):"
    )
    try:
        exec(compile(block, f"docs/{page}:example{index}", "exec"), {})
    finally:  # an example may leave the input checks off
        tripletkit.set_input_checks(True)
        torch._dynamo.reset()


def _gen_figures():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_figures", DOCS / "gen_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_figures_are_up_to_date(tmp_path: Path) -> None:
    """Regenerate every fragment, plot and the README's headline block from
    ``benchmarks/results/*.json`` and compare with the committed files: a figure typed by
    hand, or a JSON changed without ``python docs/gen_figures.py``, fails here."""
    gen = _gen_figures()
    blocks = gen.generate(tmp_path)
    committed = DOCS / "generated"
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in committed.iterdir()) == fresh, "rerun docs/gen_figures.py"
    _, mismatch, errors = filecmp.cmpfiles(committed, tmp_path, fresh, shallow=False)
    assert not mismatch and not errors, f"out of date (rerun docs/gen_figures.py): {mismatch}"
    readme = (ROOT / "README.md").read_text()
    assert gen.with_block(readme, blocks["README"]) == readme, "README headline block"


def test_headline_reports_the_rows_chosen_on_validation_not_the_best_test_scores() -> None:
    """Under protocol 2 the README's table shows the rows the equal-time comparison chose on
    validation classes, with their test scores: the row with the highest test score among
    many is a choice on test data and must not be the headline."""
    gen = _gen_figures()

    def row(family: str, test: float) -> dict:
        stat = {"mean": test, "std": 0.01, "half_width": 0.02, "n": 5}
        return {"family": family, "aggregate": {"final": {gen.MAP: stat}}}

    at_time = {"mean": 0.7, "half_width": 0.01}
    full = {
        "config": {"steps": 750},
        "strategies": {
            "tk_val": row("tripletkit", 0.450),
            "tk_lucky": row("tripletkit", 0.470),  # highest test score, not chosen
            "peer_val": row("peer", 0.440),
            "peer_lucky": row("peer", 0.460),
            "random": row("tripletkit", 0.300),
        },
        "comparison": {
            "tripletkit": {"name": "tk_val", "at_time": at_time},
            "peer": {"name": "peer_val", "at_time": at_time},
        },
    }
    text = gen.headline(full, None)
    assert "`tk_val` | 0.450 ± 0.020" in text and "`peer_val` | 0.440 ± 0.020" in text
    assert "lucky" not in text and "chosen on validation classes" in text
    assert "`random` | 0.300 ± 0.020" in text
    del full["comparison"]["tripletkit"]["at_time"]["half_width"]  # 0.2's protocol
    assert "highest tripletkit row | `tk_lucky`" in gen.headline(full, None)


def test_headline_shows_the_cost_of_a_neighbour_refresh() -> None:
    """Issue 20: the README carries the refresh-cost table, read from the results."""
    gen = _gen_figures()
    result = {
        "n": 100_000,
        "backend": "torch",
        "embed_s": 7.0,
        "search_cpu_s": 300.0,
        "search_s": 900.0,
        "search_extra_peak_bytes": 200 * 2**20,
    }
    faiss = {**result, "backend": "faiss", "search_cpu_s": 75.0}
    text = gen.headline(None, None, None, [{"results": [result, faiss]}])
    assert "| 100,000 | torch | 7 s | 300.0 s | 900 s | 200.0 MiB |" in text
    assert "4.0× less CPU time at N = 100,000" in text
    assert "refresh" not in gen.headline(None, None)  # no results, no table


def test_benchmark_pages_include_the_generated_fragments() -> None:
    text = "".join(p.read_text() for p in (DOCS / "benchmarks").glob("*.md"))
    names = ("quality_full", "quality", "speed_cpu", "speed_cpu_full", "gpu", "reference")
    for name in (*names, "quality_full_facts"):
        assert f'--8<-- "docs/generated/{name}.md"' in text, name


def test_docstring_examples_are_sections() -> None:
    """mkdocstrings (griffe, Google style) reads ``Examples:`` as an examples section and the
    singular ``Example:`` as an admonition, which the API reference renders as a quoted
    block: every docstring of the package uses the section."""
    singular = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src" / "tripletkit").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.fullmatch(r"\s*Example:\s*", line)
    ]
    assert not singular, f"'Example:' renders as a quote, write 'Examples:': {singular}"
