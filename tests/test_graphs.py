"""Graphs of constant size under ``torch.compile``, and inductor's results.

Chunking the anchors by the device's memory (``torch_backend._chunks``) and the row blocks of
the distance matrix (``distances._euclidean_matrix``) are eager features: under
``torch.compile`` each is one iteration, so the captured graph does not grow with the batch
(in 0.2.0 batch-hard's grew from 102 nodes at N = 1,024 to 3,459 at N = 16,384).

The node counts are taken by a counting backend on ``meta`` inputs with ``dynamic=False``
(every size its own trace, as a real recompile would be): tracing costs the same at
N = 16,384 as at 1,024 and nothing is computed, so the test is fast on a CPU. Nodes of the
nested graphs (the custom autograd functions' bodies) are counted too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import check_compiled

import tripletkit
from tripletkit.kernels import torch_backend
from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

SIZES = (1024, 16384)
K = 8

#: (loss, soft margin, width given): every fused loss and each of its kernel paths.
CASES = {
    "batch_all-hinge": (batch_all_triplet_loss, False, True),
    "batch_all-soft": (batch_all_triplet_loss, True, True),
    "batch_hard": (batch_hard_triplet_loss, False, False),
    "semi_hard-buckets": (semi_hard_triplet_loss, False, True),
    "semi_hard-sorted": (semi_hard_triplet_loss, False, False),
}


def _nodes(gm: torch.fx.GraphModule) -> int:
    return sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule))


def _graph_nodes(fn: Callable, soft: bool, width: bool, n: int) -> list[int]:
    """Nodes of each graph that ``torch.compile(fullgraph=True)`` captures for one call."""
    torch._dynamo.reset()
    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, _inputs: list) -> Callable:
        graphs.append(_nodes(gm))
        return gm.forward

    kw = {"max_positives": K - 1} if width else {}

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(x, y, 0.2, soft_margin=soft, backend="torch", **kw)

    x = torch.empty(n, 8, device="meta", requires_grad=True)
    y = torch.empty(n, dtype=torch.int64, device="meta")
    compiled = torch.compile(loss, backend=counting, fullgraph=True, dynamic=False)
    with tripletkit.set_input_checks(False):
        compiled(x, y)
    torch._dynamo.reset()
    return graphs


@pytest.mark.parametrize("case", tuple(CASES))
def test_graph_size_does_not_grow_with_n(case: str) -> None:
    fn, soft, width = CASES[case]
    small, large = (_graph_nodes(fn, soft, width, n) for n in SIZES)
    assert len(small) == 1 and small == large, (small, large)


def test_the_node_count_sees_a_loop_over_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard: with 0.2.0's chunking (by memory, also under compile) the count grows with N
    (chunks of 1,024 x 1,024 elements here, so that small sizes show it cheaply)."""

    def eager_chunks(n: int, per_row: int, device: torch.device) -> list[tuple[int, int]]:
        rows = max(1, (1 << 20) // max(per_row, 1))
        return [(s, min(s + rows, n)) for s in range(0, n, rows)]

    monkeypatch.setattr(torch_backend, "_chunks", eager_chunks)
    small, large = (_graph_nodes(batch_hard_triplet_loss, False, False, n) for n in (1024, 2048))
    assert large[0] > small[0], (small, large)


#: Inductor's cases: each fused loss, with a width (and batch-all's soft margin, its other
#: kernel). Small sizes: inductor's C++ build dominates the time, whatever the batch, so the
#: four losses are compiled together, one graph (each on its own leaf): one build, not four.
INDUCTOR = {
    "batch_all": batch_all_triplet_loss,
    "batch_all_soft": lambda x, y, **kw: batch_all_triplet_loss(x, y, soft_margin=True, **kw),
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": semi_hard_triplet_loss,
}


@pytest.mark.slow  # a minute on a loaded 2-core machine (inductor compiles C++)
def test_inductor_matches_eager() -> None:
    """Inductor's code for each fused loss (CPU, float32, checks off) gives eager's value and
    gradient to 1e-5."""
    n, k = 32, 4
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 4, generator=g)
    y = torch.randperm(n, generator=g) // k

    def losses(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *xs, labels = args
        return tuple(
            fn(x, labels, backend="torch", max_positives=k - 1)
            for fn, x in zip(INDUCTOR.values(), xs, strict=True)
        )

    tol = {"rtol": 1e-5, "atol": 1e-5}
    check_compiled(losses, [x0] * len(INDUCTOR), y, "inductor", tol, tol)
