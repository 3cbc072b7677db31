"""The package's imports form a strict stack: every module imports only from lower floors
(the README's Development section draws them), so there is no cycle and a kernel never
knows about a loss."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tripletkit"

#: Floors, bottom first. A module may import from its own floor's *earlier* entries and from
#: any lower floor; the package ``__init__`` files re-export their own floor.
FLOORS: list[list[str]] = [
    ["_checks", "types", "_module", "_deprecation"],
    ["_masks", "_world"],
    ["distances"],
    [
        "kernels.torch_backend",
        "kernels._numba_kernels",
        "kernels.numba_backend",
        "kernels",
        "kernels.streaming",
    ],
    ["_batch"],
    [
        "miners._base",
        "miners.triplet",
        "miners.sampling",
        "miners.pairs",
        "miners",
        "mining",
    ],
    [
        "losses._reduce",
        "losses._base",
        "losses._fused",
        "losses._streaming",
        "losses._triplet_functions",
        "losses.triplet",
        "losses._pairwise_functions",
        "losses.pairwise",
        "losses.margin",
        "losses",
    ],
    [
        "stats",
        "memory",
        "metrics",
        "datasets",
        "neighbours",
        "samplers._draw",
        "samplers._base",
        "samplers.pk",
        "samplers.hard_class",
        "samplers.category",
        "samplers.neighbour",
        "samplers",
    ],
    ["distributed", "gradcache"],
    [""],  # the package itself
]
RANK = {name: (floor, i) for floor, names in enumerate(FLOORS) for i, name in enumerate(names)}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The tripletkit modules ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("tripletkit"):
                target = node.module.removeprefix("tripletkit").lstrip(".")
            else:
                continue
            # "from . import x" / "from .kernels import torch_backend" name submodules too
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                found.add(sub if sub in RANK else target)
    return {m for m in found if m != name}


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_floor() -> None:
    missing = [_module_name(p) for p in MODULES if _module_name(p) not in RANK]
    assert not missing, f"add these modules to FLOORS: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p) or "tripletkit")
def test_imports_only_go_down(path: Path) -> None:
    name = _module_name(path)
    if name not in RANK:
        pytest.skip("not placed yet (see test_every_module_has_a_floor)")
    for target in _imports(path):
        assert target in RANK, f"{name} imports {target}, which has no floor"
        assert RANK[target] < RANK[name], f"{name} imports {target} from a higher floor"


#: Issue 21: no source file longer than this (split a file by concern instead).
MAX_LINES = 800


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p) or "tripletkit")
def test_no_source_file_exceeds_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines (> {MAX_LINES})"
