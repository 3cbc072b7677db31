"""No cliffs on the torch path (issue 17, item 3):

- the module forms of batch-all and semi-hard remember their batches' width
  (:class:`tripletkit._batch.WidthMemory`): with the checks off, one host read on the first
  call, none after, the values and gradients of the exact width, and a clear error when a
  batch exceeds what was remembered;
- semi-hard's bucketed path reaches width 128 (:data:`SEMI_HARD_BUCKETS_MAX`) and selects what
  the numba kernel selects, with ties;
- the benchmark (:mod:`benchmarks.cliffs`) runs in its quick mode and its targets can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from syncs import count_syncs

import tripletkit
from benchmarks import cliffs
from tripletkit import kernels
from tripletkit._batch import WidthMemory
from tripletkit.kernels import torch_backend
from tripletkit.losses import (
    BatchAllTripletLoss,
    SemiHardTripletLoss,
    batch_all_triplet_loss,
    semi_hard_triplet_loss,
)

MODULES = {
    "batch_all": (BatchAllTripletLoss, batch_all_triplet_loss),
    "semi_hard": (SemiHardTripletLoss, semi_hard_triplet_loss),
}


def _batch(n: int = 48, k: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, 5, dtype=torch.float64, generator=gen).requires_grad_()
    return x, (torch.arange(n) // k)[torch.randperm(n, generator=gen)]


def _value_and_grad(out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (g,) = torch.autograd.grad(out, x)
    return out.detach(), g


@pytest.mark.parametrize("soft_margin", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("kind", tuple(MODULES))
def test_module_remembers_the_width(kind: str, soft_margin: bool) -> None:
    cls, fn = MODULES[kind]
    x, y = _batch()
    want = _value_and_grad(fn(x, y, 0.3, soft_margin=soft_margin, backend="torch"), x)
    module = cls(0.3, soft_margin=soft_margin, backend="torch")
    with tripletkit.set_input_checks(False):
        first = count_syncs(lambda: module(x, y).backward())
        assert first.total == 1 and first.counts["to_host"] == 1  # the first batch's width
        assert module._widths.width == 8  # 5 positives, rounded up to a power of two
        later = count_syncs(lambda: module(x, y).backward())
        assert later.total == 0, dict(later.counts)
        got = _value_and_grad(module(x, y), x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", tuple(MODULES))
def test_a_batch_beyond_the_remembered_width_fails_clearly(kind: str) -> None:
    module = MODULES[kind][0](backend="torch")
    x, y = _batch()
    with tripletkit.set_input_checks(False):
        module(x, y)
        wide = y.clone()
        wide[:12] = wide[0]  # an anchor with more than 8 positives
        with pytest.raises(RuntimeError, match="max_positives"):
            module(x, wide)
    module(x, wide)  # with the checks on the width is read: no error, and remembered
    assert module._widths.width == 16


def test_the_module_keeps_a_given_bound_and_skips_reference_sets() -> None:
    x, y = _batch()
    bounded = SemiHardTripletLoss(max_positives=5, backend="torch")
    free = SemiHardTripletLoss(backend="torch")
    with tripletkit.set_input_checks(False):
        assert count_syncs(lambda: bounded(x, y)).total == 0
        assert bounded._widths.width is None
        free(x, y, ref_embeddings=x.detach() + 1, ref_labels=y)  # a memory bank: not kept
        assert free._widths.width is None


def test_width_memory_rounds_up_and_never_shrinks() -> None:
    memory = WidthMemory()
    assert [memory.remember(c) for c in (0, 1, 7, 3, 9)] == [1, 1, 8, 8, 16]


def test_semi_hard_buckets_reach_width_128() -> None:
    assert torch_backend.SEMI_HARD_BUCKETS_MAX == 128


@pytest.mark.parametrize("width", [40, 99, 128])
def test_wide_bucketed_semi_hard_matches_numba(width: int) -> None:
    """Classes of ``width + 1`` (and a smaller last one): bucketed up to width 128, the numba
    kernel's selection, integer embeddings so that many distances tie."""
    gen = torch.Generator().manual_seed(width)
    n = 300
    x = torch.randint(0, 3, (n, 4), generator=gen).double()
    labels = (torch.arange(n) // (width + 1))[torch.randperm(n, generator=gen)]
    case = (torch.cdist(x, x), labels, labels, torch.arange(n))
    assert int(((labels[:, None] == labels[None, :]).sum(dim=1) - 1).max()) == width
    sel = kernels.semi_hard(*case, backend="torch", width=width)
    assert sel.positive.shape == (n, min(width, n))  # bucketed: one slot per positive
    valid = sel.valid.nonzero(as_tuple=True)
    got = torch.stack([sel.anchor.expand_as(sel.positive)[valid], sel.positive[valid]])
    got = torch.cat([got, sel.negative[valid][None]])
    want = kernels.semi_hard(*case, backend="numba")
    expected = torch.stack([want.anchor, want.positive, want.negative])
    assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------
# The benchmark


def test_cliffs_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "cliffs.json"
    result = cliffs.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    keys = {(r["k"], r["loss"], r["variant"]) for r in rows}
    for k in (4, 8):
        assert (k, "cdist", "-") in keys
        for loss in cliffs.LOSSES:
            assert (k, loss, "width") in keys and (k, loss, "module") in keys
    assert {r["variant"] for r in rows if r["m"] > r["n"]} == {"bank/width", "bank/function"}
    assert all(r["min_s"] <= r["median_s"] <= r["max_s"] for r in rows)
    assert result["config"]["threads"] == 1 and not result["config"]["input_checks"]


def test_cliffs_targets_can_fail() -> None:
    """The targets read the rows they name: a slow module or bank fails them."""
    rows = []
    for k in (8, 64):
        rows.append({"n": 64, "m": 64, "k": k, "loss": "cdist", "variant": "-"})
        for loss in cliffs.LOSSES:
            rows.append({"n": 64, "m": 64, "k": k, "loss": loss, "variant": "width"})
            rows.append({"n": 64, "m": 64, "k": k, "loss": loss, "variant": "module"})
    for r in rows:
        r["median_s"] = 1.0
        r["ratio_to_cdist"] = 1.0
    rows.append({"n": 64, "m": 256, "k": 64, "loss": "semi_hard", "variant": "bank/width"})
    rows[-1]["median_s"] = 4.0
    assert all(t["ok"] for t in cliffs._targets(rows, 64))
    slow = next(r for r in rows if r["loss"] == "semi_hard" and r["variant"] == "module")
    slow["median_s"] = 1.5
    rows[-1]["median_s"] = 8.0
    failed = [t["name"] for t in cliffs._targets(rows, 64) if not t["ok"]]
    assert len(failed) == 2 and "semi_hard K=8" in failed[0] and "bank" in failed[1]
