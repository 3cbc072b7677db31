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
        "kernels._triton_kernels",
        "kernels.triton_backend",
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
        "losses._triton",
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


# ---------------------------------------------------------------------------------------------
# benchmarks/: the same rule (floors, nothing imports upward, no cycle), and src never
# imports the benchmarks.

BENCH = SRC.parents[1] / "benchmarks"

#: The benchmarks' floors, bottom first (same rule as FLOORS): shared pieces with no benchmark
#: import, then what builds on them, the quality benchmark's protocol, the commands, the GPU
#: check (it reuses the speed benchmark's inputs), and ``python -m benchmarks``.
BENCH_FLOORS: list[list[str]] = [
    ["cli", "common", "nets", "registry", "syncs", "passes", "splits"],
    ["measure", "strategies"],
    ["report", "data"],
    ["protocol", "training"],
    [
        "speed",
        "quality",
        "budget",
        "cliffs",
        "compare_versions",
        "gradcache_memory",
        "neighbours",
        "precision",
        "streaming",
    ],
    [
        "gpu.config",
        "gpu.methods",
        "gpu.audit",
        "gpu.profile",
        "gpu.timing",
        "gpu.report",
        "gpu.command",
        "gpu",
        "gpu.__main__",
    ],
    ["__main__", ""],
]
BENCH_RANK = {
    name: (floor, i) for floor, names in enumerate(BENCH_FLOORS) for i, name in enumerate(names)
}


def _local_imports(path: Path, root: Path, package: str, known: set[str]) -> set[str]:
    """The modules of ``package`` (rooted at ``root``) that ``path`` imports anywhere in its
    text (inside functions and ``TYPE_CHECKING`` blocks too), relative imports resolved, as
    dotted names relative to the package ("" for the package itself)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    name = ".".join(parts[:-1] if is_init else parts)
    here = name if is_init else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".") if here else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *filter(None, [node.module])])
            elif node.module and (node.module + ".").startswith(package + "."):
                target = node.module.removeprefix(package).lstrip(".")
            else:
                continue
            # "from . import x" / "from .gpu import audit" name submodules too
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix(package).lstrip(".")
                for a in node.names
                if (a.name + ".").startswith(package + ".")
            )
    found.discard(name)
    return found


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    names = {}
    for p in paths:
        parts = list(p.relative_to(root).with_suffix("").parts)
        names[p] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    known = set(names.values())
    return {names[p]: _local_imports(p, root, package, known) for p in paths}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


BENCH_GRAPH = _graph(BENCH, "benchmarks")


def test_every_benchmark_module_has_a_floor() -> None:
    missing = sorted(set(BENCH_GRAPH) - set(BENCH_RANK))
    assert not missing, f"add these modules to BENCH_FLOORS: {missing}"
    gone = sorted(set(BENCH_RANK) - set(BENCH_GRAPH))
    assert not gone, f"remove these modules from BENCH_FLOORS: {gone}"


@pytest.mark.parametrize("name", sorted(BENCH_GRAPH), ids=lambda n: n or "benchmarks")
def test_benchmark_imports_only_go_down(name: str) -> None:
    if name not in BENCH_RANK:
        pytest.skip("not placed yet (see test_every_benchmark_module_has_a_floor)")
    for target in BENCH_GRAPH[name]:
        assert target in BENCH_RANK, f"benchmarks.{name} imports {target}, which has no floor"
        assert BENCH_RANK[target] < BENCH_RANK[name], (
            f"benchmarks.{name} imports benchmarks.{target} from a higher floor"
        )


def test_no_import_cycle_in_src_or_benchmarks() -> None:
    assert _cycle(_graph(SRC, "tripletkit")) is None
    assert _cycle(BENCH_GRAPH) is None


def test_the_checks_see_the_old_circle() -> None:
    """Guard: put back the old ``data -> protocol`` import (``data`` took the class splits
    from ``protocol``, which imports ``data`` for its ``Dataset`` type): the cycle finder
    names the circle and the floors reject the edge."""
    assert BENCH_GRAPH["protocol"] >= {"data"}  # still there, and seen inside TYPE_CHECKING
    graph = {k: set(v) for k, v in BENCH_GRAPH.items()}
    graph["data"].add("protocol")
    assert _cycle(graph) == ["data", "protocol", "data"]
    assert not BENCH_RANK["protocol"] < BENCH_RANK["data"]
    # The parser sees relative, nested and absolute imports of a package's modules.
    assert {"common", "measure"} <= BENCH_GRAPH["streaming"]  # "from .measure" in a function
    assert "common" in BENCH_GRAPH["precision"]  # "from benchmarks.common import ..."
    assert {"cli", "gpu.command"} == BENCH_GRAPH["gpu.__main__"]  # "..cli" and ".command"


def test_src_never_imports_the_benchmarks() -> None:
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path


#: Issue 21: no source file longer than this (split a file by concern instead).
MAX_LINES = 800


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p) or "tripletkit")
def test_no_source_file_exceeds_the_line_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines (> {MAX_LINES})"
