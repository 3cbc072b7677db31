"""The GPU path (``backend="torch"``), measured on the CPU by proxies that hold on any device:

- host synchronisations per call (:mod:`syncs` counts them), at two batch sizes (the larger
  one in several chunks), P x K and irregular labels: fused losses exactly 1 per forward +
  backward with the input checks on and none with them off; miners at most 2 (copies
  between the host and the device are counted on ``meta`` by ``tests/test_transfers.py``);
- one graph: ``torch.compile(fullgraph=True)`` captures the fused losses, forward and
  backward, and gives the eager results;
- the paths taken without a width (input checks off, no ``max_positives``) give the values
  and gradients of the checked paths;
- :func:`tripletkit.set_input_checks` as a call and as a context manager.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CASES, FUSED, GRAD_TOL, TORCH_MINERS, VALUE_TOL, Case, check_compiled
from syncs import count_syncs

import tripletkit
from tripletkit import kernels
from tripletkit.kernels import torch_backend
from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    triplet_margin_loss,
)

#: The budgets of the issue: host synchronisations per forward + backward of a fused loss
#: with the input checks on (one read gathers every check), and per miner call.
LOSS_BUDGET_CHECKED = 1
MINER_BUDGET = 2
#: Batch sizes of the audit: the larger one runs the kernels in several anchor chunks.
SIZES = (256, 1024)
#: The chunk budget of the audit: 1/16 of the CPU's 4M elements, so that 1,024 anchors take
#: the chunk loops 4,096 anchors take with the real budget (4 chunks of N x N, 16 of
#: N x 4N), at 1/16 of the work.
CHUNK_ELEMENTS = torch_backend._CPU_CHUNK_ELEMENTS // 16
DIM = 8
K = 8


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_backend, "_CPU_CHUNK_ELEMENTS", CHUNK_ELEMENTS)


def _labels(n: int, layout: str) -> torch.Tensor:
    if layout == "pk":
        return torch.arange(n) // K
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, max(2, n // 5), (n,), generator=g)


def _embeddings(n: int) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(0))


def test_the_large_size_runs_in_several_chunks(small_chunks: None) -> None:
    n = max(SIZES)
    assert len(torch_backend._chunks(n, n, torch.device("cpu"))) == 4
    assert len(torch_backend._chunks(n, 4 * n, torch.device("cpu"))) == 16
    assert len(torch_backend._chunks(min(SIZES), min(SIZES), torch.device("cpu"))) == 1


# ---------------------------------------------------------------------------------------------
# Synchronisations


@pytest.mark.parametrize("layout", ["pk", "irregular"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_fused_loss_synchronisations(
    kind: str, soft_margin: bool, n: int, layout: str, small_chunks: None
) -> None:
    y = _labels(n, layout)
    x = _embeddings(n).requires_grad_()

    def step(**kw: object) -> None:
        FUSED[kind](x, y, soft_margin=soft_margin, backend="torch", **kw).backward()

    bound = int(y.bincount().max()) - 1  # what a sampler knows (k - 1 for P x K)
    checked = count_syncs(step)
    assert checked.total == LOSS_BUDGET_CHECKED, dict(checked.counts)
    with tripletkit.set_input_checks(False):
        unchecked = count_syncs(step)
        bounded = count_syncs(lambda: step(max_positives=bound))
    assert bounded.total == 0, dict(bounded.counts)
    if kind == "batch_all" and soft_margin:  # documented: it reads the largest count itself
        assert unchecked.total == 1 and unchecked.counts["to_host"] == 1
    else:
        assert unchecked.total == 0, dict(unchecked.counts)


MINERS = TORCH_MINERS


@pytest.mark.parametrize("layout", ["pk", "irregular"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", tuple(MINERS))
def test_miner_synchronisations(name: str, n: int, layout: str, small_chunks: None) -> None:
    if name.startswith("TripletMarginMiner") and n == max(SIZES):
        assert len(torch_backend._chunks(n, n, torch.device("cpu"))) > 1
    miner, x, y = MINERS[name](), _embeddings(n), _labels(n, layout)
    checked = count_syncs(lambda: miner(x, y))
    assert checked.total <= MINER_BUDGET, dict(checked.counts)
    with tripletkit.set_input_checks(False):
        unchecked = count_syncs(lambda: miner(x, y))
    assert unchecked.total <= MINER_BUDGET - 1, dict(unchecked.counts)  # sizing the output


def test_the_counter_sees_synchronisations() -> None:
    """Guard: the counter does count what it should."""
    x = torch.arange(6.0)
    assert count_syncs(lambda: int(x.sum())).counts["_local_scalar_dense"] == 1
    assert count_syncs(lambda: x[x > 2]).total == 1
    assert count_syncs(lambda: torch.repeat_interleave(x, 2)).total == 0  # a scalar repeat
    reps = torch.tensor([1, 2, 0, 1, 1, 1])
    assert count_syncs(lambda: torch.repeat_interleave(x, reps)).total == 1
    assert count_syncs(lambda: torch.repeat_interleave(x, reps, output_size=6)).total == 0
    assert count_syncs(lambda: tripletkit._checks.to_host(x)).counts["to_host"] == 1


# ---------------------------------------------------------------------------------------------
# Paths without a width give the checked paths' results


def _value_and_grad(fn, c: Case) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, ref = c.leaves()
    leaves = [t for t in (x, ref) if t is not None]
    out = fn(x, c.labels, **c.ref_kwargs(ref))
    grads = torch.autograd.grad(out, leaves, allow_unused=True) if out.requires_grad else []
    return out.detach(), [
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=False)
    ]


@pytest.mark.parametrize("name", tuple(CASES))
@pytest.mark.parametrize("kind", tuple(FUSED))
def test_unbounded_paths_match_checked_ones(name: str, kind: str) -> None:
    """With the checks off and no bound the kernels take width-free paths (every column a
    slot; semi-hard sorts each row); with a loose bound, wider slots: same values and
    gradients as the checked path (float64)."""
    c = CASES[name]

    def fn(**kw: object):
        return lambda x, y, **refs: FUSED[kind](x, y, 0.3, backend="torch", **kw, **refs)

    want = _value_and_grad(fn(), c)
    with tripletkit.set_input_checks(False):
        variants = [_value_and_grad(fn(), c)]
        variants.append(_value_and_grad(fn(max_positives=c.x.shape[0] + 5), c))
    for value, grads in variants:
        torch.testing.assert_close(value, want[0], **VALUE_TOL)
        for g, e in zip(grads, want[1], strict=True):
            torch.testing.assert_close(g, e, **GRAD_TOL)


# ---------------------------------------------------------------------------------------------
# One graph


COMPILED_CASES = [
    (kind, soft, bounded)
    for kind in FUSED
    for soft in (False, True)
    for bounded in (True, False)
    if bounded or not (kind == "batch_all" and soft)  # the unbounded soft margin reads
]


@pytest.mark.parametrize(
    ("kind", "soft_margin", "bounded"),
    COMPILED_CASES,
    ids=[
        f"{k}-{'soft' if s else 'hinge'}-{'bounded' if b else 'free'}" for k, s, b in COMPILED_CASES
    ],
)
def test_compile_fullgraph_matches_eager(kind: str, soft_margin: bool, bounded: bool) -> None:
    """``torch.compile(fullgraph=True)`` fails on any graph break: the whole loss, forward and
    backward, is one graph with the checks off. (``aot_eager`` traces exactly what inductor
    would compile, without generating code.)"""
    n, k = 48, 4
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(n) // k
    kw = {"max_positives": k - 1} if bounded else {}

    def loss(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return FUSED[kind](x, labels, 0.3, soft_margin=soft_margin, backend="torch", **kw)

    check_compiled(loss, [x0], y, "aot_eager", VALUE_TOL, GRAD_TOL)


def test_compiled_soft_margin_without_a_bound_says_what_to_pass() -> None:
    torch._dynamo.reset()
    y = torch.arange(16) // 4

    def loss(x: torch.Tensor) -> torch.Tensor:
        return batch_all_triplet_loss(x, y, soft_margin=True, backend="torch")

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    with tripletkit.set_input_checks(False), pytest.raises(Exception, match="max_positives"):
        compiled(torch.randn(16, 3))


def test_auto_backend_is_torch_while_compiling() -> None:
    torch._dynamo.reset()
    seen: list[str] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(kernels.resolve_backend("auto", x.device))
        return x * 2

    torch.compile(probe, fullgraph=True, backend="aot_eager")(torch.ones(2))
    assert seen == ["torch"]
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "numba"


# ---------------------------------------------------------------------------------------------
# The switch


def test_set_input_checks_as_call_and_context_manager() -> None:
    assert tripletkit.input_checks_enabled()
    with tripletkit.set_input_checks(False) as switch:
        assert not tripletkit.input_checks_enabled()
        with tripletkit.set_input_checks(True):
            assert tripletkit.input_checks_enabled()
        assert not tripletkit.input_checks_enabled()
    assert tripletkit.input_checks_enabled()
    assert switch.previous is True
    tripletkit.set_input_checks(False)
    try:
        assert not tripletkit.input_checks_enabled()
    finally:
        tripletkit.set_input_checks(True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        tripletkit.set_input_checks("no")  # type: ignore[arg-type]
    assert tripletkit.input_checks_enabled()


def test_value_checks_run_when_on_and_cost_nothing_when_off() -> None:
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    y = torch.arange(8) // 2
    triplets = (torch.tensor([0]), torch.tensor([1]), torch.tensor([99]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        batch_hard_triplet_loss(x, y, backend="torch")
    with pytest.raises(ValueError, match="outside"):
        triplet_margin_loss(torch.randn(8, 3), y, triplets)
    with pytest.raises(ValueError, match="max_positives=0, but anchor"):
        batch_all_triplet_loss(torch.randn(8, 3), y, max_positives=0)
    with tripletkit.set_input_checks(False):
        assert count_syncs(lambda: batch_hard_triplet_loss(x, y, backend="torch")).total == 0
    # metadata checks always run
    with tripletkit.set_input_checks(False), pytest.raises(ValueError, match="2-D"):
        batch_hard_triplet_loss(torch.randn(8), y)
