"""The README's migration table, row by row, against pytorch-metric-learning (PML) itself.

Each row of the table ("Migrating from pytorch-metric-learning") has one test here, keyed by
the text of its PML cell; :func:`test_every_row_of_the_table_has_a_test` parses the README
and fails on a row without a test (or a test without a row). Each test runs the PML column
and the tripletkit column as written (PML's defaults included) on the same float64 batch of
*unnormalised* embeddings, so that a forgotten ``normalize=True`` shows, and compares the
numbers (1e-9) or the mined index sets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from reference import as_list

import tripletkit
from tripletkit import distributed, losses, metrics, miners
from tripletkit.memory import CrossBatchMemory
from tripletkit.types import Pairs

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: The migration table's home: the documentation site (the README links to it).
README = Path(__file__).resolve().parents[1] / "docs" / "migrating.md"
TOL = {"rtol": 1e-9, "atol": 1e-12}
#: Margins of the region rows: negative, zero and positive (issue 19).
MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.2)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """32 unnormalised float64 embeddings (norms around 8), 6 classes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 8, generator=g, dtype=torch.float64) * 3, torch.arange(32) % 6


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert float(want.detach()) != 0.0, "the comparison should not be vacuous"
    torch.testing.assert_close(got, want.to(got.dtype), **TOL)


def _pair_set(pairs: tuple) -> tuple[set, set]:
    a1, p, a2, n = (t.tolist() for t in pairs)
    return set(zip(a1, p, strict=True)), set(zip(a2, n, strict=True))


# ------------------------------------------------------------------------------ rows


def _triplet_margin_miner(type_of_triplets: str, margin: float) -> None:
    x, y = _batch()
    want = as_list(pml_miners.TripletMarginMiner(margin, type_of_triplets)(x, y))
    got = as_list(miners.TripletMarginMiner(margin, type_of_triplets, normalize=True)(x, y))
    empty = type_of_triplets == "semihard" and margin <= 0  # 0 < t <= margin: none
    assert bool(want) != empty, "the comparison should not be vacuous"
    assert sorted(got) == sorted(want)


def _batch_hard_miner() -> None:
    x, y = _batch()
    want = as_list(pml_miners.BatchHardMiner()(x, y))
    assert sorted(as_list(miners.BatchHardMiner(normalize=True)(x, y))) == sorted(want)


def _miner_tuple() -> None:
    x, y = _batch()
    theirs = pml_miners.BatchHardMiner()(x, y)
    ours = miners.BatchHardMiner(normalize=True)(x, y)
    a, p, n = ours  # unpacks like PML's tuple
    assert isinstance(ours, tuple) and len(ours) == len(theirs) == 3
    for mine, their in zip((a, p, n), theirs, strict=True):
        assert torch.equal(mine, their)


def _triplet_margin_loss_with_triplets() -> None:
    x, y = _batch()
    theirs = pml_miners.TripletMarginMiner(0.2, "all")(x, y)
    ours = miners.TripletMarginMiner(0.2, "all", normalize=True)(x, y)
    want = pml_losses.TripletMarginLoss(0.2)(x, y, theirs)
    got = losses.TripletMarginLoss(0.2, reduction="mean_nonzero", normalize=True)(x, y, ours)
    _close(got, want)


def _triplet_margin_loss_without_miner() -> None:
    x, y = _batch()
    for margin in (0.05, 0.2):
        want = pml_losses.TripletMarginLoss(margin)(x, y)
        _close(losses.batch_all_triplet_loss(x, y, margin, normalize=True), want)


def _batch_hard_miner_and_loss() -> None:
    x, y = _batch()
    want = pml_losses.TripletMarginLoss(0.2)(x, y, pml_miners.BatchHardMiner()(x, y))
    got = losses.batch_hard_triplet_loss(x, y, 0.2, normalize=True, reduction="mean_nonzero")
    _close(got, want)
    # The README's figure for the trap: without normalize=True, 7.9 instead of 1.0.
    raw = losses.batch_hard_triplet_loss(x, y, 0.2, reduction="mean_nonzero")
    assert round(float(want), 1) == 1.0 and round(float(raw), 1) == 7.9


def _semihard_miner_and_loss() -> None:
    x, y = _batch()
    theirs = pml_miners.TripletMarginMiner(0.2, "semihard")(x, y)
    want = pml_losses.TripletMarginLoss(0.2)(x, y, theirs)
    ours = miners.TripletMarginMiner(0.2, "semihard", normalize=True)(x, y)
    got = losses.TripletMarginLoss(0.2, reduction="mean_nonzero", normalize=True)(x, y, ours)
    _close(got, want)


def _smooth_loss() -> None:
    x, y = _batch()
    for margin in (0.05, 0.2):
        want = pml_losses.TripletMarginLoss(margin, smooth_loss=True)(x, y)
        got = losses.TripletMarginLoss(margin, smooth=True, normalize=True)(x, y)
        _close(got, want)


def _multi_similarity_miner() -> None:
    x, y = _batch()
    want = _pair_set(pml_miners.MultiSimilarityMiner(0.1)(x, y))
    got = _pair_set(miners.MultiSimilarityMiner(0.1)(x, y))
    assert want[0] and want[1] and got == want


def _pair_margin_miner() -> None:
    x, y = _batch()
    want = _pair_set(pml_miners.PairMarginMiner(0.2, 0.8)(x, y))
    got = _pair_set(miners.PairMarginMiner(0.2, 0.8, normalize=True)(x, y))
    assert want[0] and want[1] and got == want


def _contrastive() -> None:
    """The README's two-call recipe (its code block, on the test's batch)."""
    x, y = _batch()
    for pos_margin, neg_margin in ((0.0, 1.0), (0.1, 0.9)):
        want = pml_losses.ContrastiveLoss(pos_margin, neg_margin)(x, y)
        every = miners.PairMarginMiner(-1.0, 3.0, normalize=True)(x, y)  # every pair
        none = torch.empty(0, dtype=torch.long)
        contrastive = losses.ContrastiveLoss(
            pos_margin, neg_margin, reduction="mean_nonzero", normalize=True
        )
        got = contrastive(x, y, every._replace(anchor_neg=none, negative=none)) + contrastive(
            x, y, every._replace(anchor_pos=none, positive=none)
        )
        _close(got, want)
        assert every.num_positive + every.num_negative == 32 * 31


def _margin_loss() -> None:
    x, y = _batch()
    theirs = pml_miners.BatchHardMiner()(x, y)
    ours = miners.BatchHardMiner(normalize=True)(x, y)
    want = pml_losses.MarginLoss(0.2, beta=1.2)(x, y, theirs)
    got = losses.MarginLoss(0.2, 1.2, learn_beta=False, normalize=True)(x, y, ours)
    _close(got, want)


def _multi_similarity_loss() -> None:
    x, y = _batch()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = pml_losses.MultiSimilarityLoss(2.0, 40.0, 0.5)(x1, y)
    got = losses.MultiSimilarityLoss(2.0, 40.0, 0.5)(x2, y)
    _close(got, want)
    (g1,), (g2,) = torch.autograd.grad(want, x1), torch.autograd.grad(got, x2)
    torch.testing.assert_close(g2, g1, rtol=1e-7, atol=1e-10)


def _ms_miner_and_loss() -> None:
    x, y = _batch()
    want = pml_losses.MultiSimilarityLoss()(x, y, pml_miners.MultiSimilarityMiner(0.1)(x, y))
    got = losses.MultiSimilarityLoss()(x, y, miners.MultiSimilarityMiner(0.1)(x, y))
    _close(got, want)


def _circle_loss() -> None:
    x, y = _batch()
    want = pml_losses.CircleLoss(0.4, 80)(x, y)
    _close(losses.CircleLoss(0.4, 80, reduction="mean_nonzero")(x, y), want)


def _supcon_loss() -> None:
    x, y = _batch()
    want = pml_losses.SupConLoss(0.1)(x, y)
    _close(losses.SupConLoss(0.1, reduction="mean_nonzero")(x, y), want)


def _reference_set() -> None:
    x, y = _batch()
    ref, ref_labels = _batch(1)
    kw = {"ref_embeddings": ref, "ref_labels": ref_labels}
    want = pml_losses.MultiSimilarityLoss()(x, y, ref_emb=ref, ref_labels=ref_labels)
    _close(losses.MultiSimilarityLoss()(x, y, **kw), want)
    want = pml_losses.TripletMarginLoss(0.2)(x, y, ref_emb=ref, ref_labels=ref_labels)
    got = losses.TripletMarginLoss(0.2, reduction="mean_nonzero", normalize=True)(x, y, **kw)
    _close(got, want)


def _cross_batch_memory() -> None:
    """Four batches through a memory of 40 rows (it fills and wraps), float32 as the
    README's memory stores (PML's memory takes the batch's dtype)."""
    g = torch.Generator().manual_seed(3)
    theirs = pml_losses.CrossBatchMemory(pml_losses.MultiSimilarityLoss(), 8, memory_size=40)
    memory = CrossBatchMemory(40, 8)
    loss = losses.MultiSimilarityLoss()
    for _ in range(4):
        emb, labels = torch.randn(16, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
        want = theirs(emb, labels)
        memory.enqueue(emb, labels)
        ref, ref_labels = memory.get()
        got = loss(
            emb,
            labels,
            ref_embeddings=ref,
            ref_labels=ref_labels,
            anchor_offset=len(memory) - len(emb),
        )
        assert float(want) > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # float32


def _distributed_wrapper() -> None:
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    x, y = _batch()
    want = DistributedLossWrapper(pml_losses.TripletMarginLoss())(x, y)
    got = distributed.sharded_loss("batch_all", x, y, margin=0.05, normalize=True)
    _close(got, want)


def _accuracy_calculator() -> None:
    """PML's default k-NN is faiss's exact L2 search (``FaissKNN``); faiss is not a test
    dependency, so the same exact search runs through PML's ``CustomKNN`` on ``LpDistance``
    without normalisation (what ``IndexFlatL2`` computes)."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, y = _batch()
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
    )
    want = calculator.get_accuracy(x, y)
    got = metrics.retrieval_metrics(x, y)
    assert want["precision_at_1"] > 0
    for name in want:  # PML computes in float32
        assert getattr(got, name) == pytest.approx(want[name], rel=1e-6), name


#: The tests of the rows, by the text of the row's PML cell.
#: The first row's test is parametrised over the regions and margins (below).
ROWS: dict[str, Callable[[], None] | None] = {
    "`miners.TripletMarginMiner(margin, type_of_triplets)`": None,
    "`miners.BatchHardMiner()`": _batch_hard_miner,
    "`miner(emb, labels)` → `(a, p, n)` tuple": _miner_tuple,
    "`losses.TripletMarginLoss(margin)(emb, labels, indices_tuple)`": (
        _triplet_margin_loss_with_triplets
    ),
    "`losses.TripletMarginLoss(margin)(emb, labels)`": _triplet_margin_loss_without_miner,
    "`miners.BatchHardMiner()` + `losses.TripletMarginLoss(margin)`": _batch_hard_miner_and_loss,
    '`miners.TripletMarginMiner(margin, "semihard")` + `losses.TripletMarginLoss(margin)`': (
        _semihard_miner_and_loss
    ),
    "`losses.TripletMarginLoss(margin, smooth_loss=True)`": _smooth_loss,
    "`miners.MultiSimilarityMiner(epsilon)`": _multi_similarity_miner,
    "`miners.PairMarginMiner(pos_margin, neg_margin)`": _pair_margin_miner,
    "`losses.ContrastiveLoss(pos_margin, neg_margin)`": _contrastive,
    "`losses.MarginLoss(margin, beta=beta)(emb, labels, indices_tuple)`": _margin_loss,
    "`losses.MultiSimilarityLoss(alpha, beta, base)`": _multi_similarity_loss,
    "`miners.MultiSimilarityMiner(epsilon)` + `losses.MultiSimilarityLoss()`": _ms_miner_and_loss,
    "`losses.CircleLoss(m, gamma)`": _circle_loss,
    "`losses.SupConLoss(temperature)`": _supcon_loss,
    "`loss(emb, labels, ref_emb=ref, ref_labels=ref_labels)`": _reference_set,
    "`losses.CrossBatchMemory(loss, embedding_size, memory_size)(emb, labels)`": (
        _cross_batch_memory
    ),
    "`utils.distributed.DistributedLossWrapper(losses.TripletMarginLoss())(emb, labels)`": (
        _distributed_wrapper
    ),
    "`utils.accuracy_calculator.AccuracyCalculator().get_accuracy(emb, labels)`": (
        _accuracy_calculator
    ),
}
TRIPLET_MARGIN_MINER_ROW = "`miners.TripletMarginMiner(margin, type_of_triplets)`"


def _table_rows() -> list[str]:
    """The PML cell of every row of the README's migration table."""
    text = README.read_text()
    section = text[text.index("# Migrating from pytorch-metric-learning") :]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [re.split(r" \| ", row.strip("| "))[0] for row in rows]
    assert cells[0] == "pytorch-metric-learning", cells[0]  # the header
    return [c for c in cells[1:] if not set(c) <= set("- ")]


def test_every_row_of_the_table_has_a_test() -> None:
    rows = _table_rows()
    assert len(rows) == len(set(rows)) >= 15
    assert set(rows) == set(ROWS), set(rows) ^ set(ROWS)


@pytest.mark.parametrize("row", [r for r in ROWS if r != TRIPLET_MARGIN_MINER_ROW])
def test_row(row: str) -> None:
    test = ROWS[row]
    assert test is not None
    test()


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("type_of_triplets", ["all", "semihard", "easy"])
def test_row_triplet_margin_miner(type_of_triplets: str, margin: float) -> None:
    _triplet_margin_miner(type_of_triplets, margin)


@pytest.mark.parametrize("margin", MARGINS)
def test_row_triplet_margin_miner_hard(margin: float) -> None:
    _triplet_margin_miner("hard", margin)


def test_tripletkit_is_imported_from_this_tree() -> None:
    assert Path(tripletkit.__file__).resolve().parents[1].name == "src"
    assert isinstance(miners.BatchHardMiner(normalize=True)(*_batch()), tuple)
    assert Pairs._fields == ("anchor_pos", "positive", "anchor_neg", "negative")
