"""Embedding quality of every mining strategy on Omniglot, trained the same way.

A small convolutional network (four blocks conv 3x3 - BatchNorm - ReLU - max-pool 2, channels
1 -> 32 -> 64 -> 64 -> 64, then a linear layer to 64 dimensions, output L2-normalised) is
trained on the 964 *background* characters with each strategy of :data:`STRATEGIES`, and
evaluated by nearest-neighbour retrieval on the 659 *evaluation* characters, which no
strategy ever sees (the zero-shot protocol of metric learning): MAP@R, R-precision and
precision@1, leave-one-out (every image queries the other 13,179; ``R = 19``).

Every strategy gets the same network, the same initialisation (``torch.manual_seed(seed)``),
the same Adam optimiser (learning rate 3e-3, which beat 1e-3 for batch-hard, contrastive and
distance-weighted in 150-step pilots: with so few steps, the speed of learning matters), the
same P x K batches (32 x 4, a :class:`~tripletkit.samplers.PKBatchSampler` with the run's
seed) and the same number of steps. Only the miner and the loss differ. Embeddings are
L2-normalised for every strategy, so all distances lie in ``[0, 2]`` and one set of margins
fits all:

- triplet margin ``0.2`` for batch-all, batch-hard, semi-hard and random triplets (the usual
  value on unit-norm embeddings; FaceNet used 0.2);
- soft margin (``softplus(d_ap - d_an)``, no margin) for batch-hard soft margin;
- distance-weighted sampling (cutoff 0.5, no weight at ``d >= 1.4``, as in Wu et al. 2017)
  with their margin loss: ``alpha = 0.2``, learnable ``beta`` starting at ``1.2`` (trained by
  the same Adam optimiser, same learning rate), ``nu = 0``;
- contrastive loss with ``pos_margin = 0`` and ``neg_margin = 0.8`` (negatives pushed beyond
  cosine similarity 0.68) over the pairs mined by ``PairMarginMiner`` with the same margins,
  i.e. exactly the pairs with a non-zero loss.

During training, MAP@R, R-precision and P@1 are measured at a few checkpoints on a fixed
subset of the evaluation classes (for speed; the same subset for every run), together with
the fractions of easy / semi-hard / hard triplets (:func:`~tripletkit.stats.triplet_stats`,
margin 0.2) in the training batch of that step. The last checkpoint is evaluated on the
whole evaluation split. Seeds fix the initialisation, the sampler and the random miners, so a
run is deterministic for a given seed (on a given machine and thread count; training runs
with ``torch.use_deterministic_algorithms(True)``).

Usage::

    python -m benchmarks.quality                    # 8 strategies x 3 seeds, <= 15 min on 2 cores
    python -m benchmarks.quality --quick            # CI smoke run, < 60 s
    python -m benchmarks.quality --strategies batch_hard,semi_hard --seeds 5 --steps 500

Budget: the default run (8 strategies x 3 seeds x 250 steps of 128 images, checkpoints at
steps 0, 50, 100, 150, 200, 250) is sized for at most 15 minutes on 2 CPU cores. Measured on
a 2-core AMD EPYC (Zen 3) VM with 2 torch threads: about 70 ms per training step (the same
for every strategy, within noise), 0.65 s per checkpoint on 100 classes and 5-6.5 s for the
final evaluation on all 13,180 images, i.e. about 27 s per run and 11 minutes in all, which
leaves a quarter of the budget as margin. Before training, a few steps and evaluations are
timed on a throwaway network and the plan is printed (with the number of steps that would fit
15 minutes on this machine); the measured wall time is printed at the end. The number of
steps never depends on the machine, so results stay comparable.

``--seeds N`` runs seeds ``0 .. N-1``; ``--seeds 3,7`` runs exactly those. Writes
``quality.json`` (``quality_quick.json`` with ``--quick``, which never overwrites the full
run's files) and three plots to ``--out`` (default ``benchmarks/results/``):
``quality_map_at_r.png`` (MAP@R vs step, mean and a +-1 std band),
``quality_final.png`` (final MAP@R / R-precision / P@1, std error bars) and
``quality_difficulty.png`` (easy / semi-hard / hard fractions vs step, one panel per
strategy); the quick run's plots are ``quality_quick_*.png``. Standard deviations are over
seeds (``ddof = 1``; 0 for a single seed).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tripletkit.datasets import omniglot
from tripletkit.losses import (
    ContrastiveLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)
from tripletkit.losses.margin import MarginLoss
from tripletkit.metrics import retrieval_metrics
from tripletkit.miners.sampling import DistanceWeightedMiner, PairMarginMiner, RandomTripletMiner
from tripletkit.samplers import PKBatchSampler
from tripletkit.stats import triplet_stats

from .common import RESULTS_DIR, machine_info, progress, save_json

__all__ = [
    "DEFAULT_CONFIG",
    "QUICK_CONFIG",
    "STRATEGIES",
    "Config",
    "EmbeddingNet",
    "Strategy",
    "main",
    "markdown_table",
    "plot_results",
    "train_strategy",
]

#: Triplet margin on unit-norm embeddings (all triplet strategies, triplet_stats, margin loss).
MARGIN = 0.2
#: Contrastive margins on unit-norm embeddings (loss and PairMarginMiner alike).
CONTRASTIVE_POS_MARGIN = 0.0
CONTRASTIVE_NEG_MARGIN = 0.8
#: Distance-weighted sampling and margin loss (Wu et al. 2017).
DW_CUTOFF = 0.5
DW_NONZERO_LOSS_CUTOFF = 1.4
MARGIN_LOSS_BETA = 1.2
#: Embedding dimension.
EMBEDDING_DIM = 64
#: The seed that picks the fixed subset of evaluation classes used at training checkpoints.
SUBSET_SEED = 1234
#: The wall-time target of the default run (seconds), printed next to the plan.
DEFAULT_BUDGET_S = 15 * 60


# --------------------------------------------------------------------------------------
# Network and strategies
# --------------------------------------------------------------------------------------


class EmbeddingNet(nn.Module):
    """Four conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool; 1 -> 32 -> 64 -> 64 -> 64
    channels, 28 -> 14 -> 7 -> 3 -> 1 pixels), a linear layer to ``dim``, L2-normalised.

    Shape:
        - input: ``[B, 1, 28, 28]``; output: ``[B, dim]`` with unit rows.
    """

    def __init__(self, dim: int = EMBEDDING_DIM, channels: Sequence[int] = (32, 64, 64, 64)):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Linear(c_in, dim)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        # channels_last: oneDNN's convolutions run about twice as fast on CPU in this layout.
        x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self.head(self.features(x)), dim=1)


class FusedCriterion(nn.Module):
    """``criterion(embeddings, labels)`` for a fused loss function with fixed keywords."""

    def __init__(self, fn: Callable[..., Tensor], **kwargs: Any) -> None:
        super().__init__()
        self.fn = fn
        self.kwargs = kwargs

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.fn(embeddings, labels, **self.kwargs)


class MinedCriterion(nn.Module):
    """``criterion(embeddings, labels)``: a miner's triplets or pairs fed to a loss module.

    The miner sees detached embeddings (mining is not differentiated); the loss module's own
    parameters (the margin loss's ``beta``) are this module's parameters.
    """

    def __init__(self, miner: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings.detach(), labels))


@dataclass(frozen=True)
class Strategy:
    """One row of the strategy table: how a batch of embeddings becomes a loss.

    ``build(seed)`` returns a fresh criterion ``(embeddings, labels) -> loss`` (an
    ``nn.Module``; its parameters, if any, are trained with the network); random miners take
    their seed from it.
    """

    name: str
    label: str
    miner: str
    loss: str
    build: Callable[[int], nn.Module]


def _strategies() -> dict[str, Strategy]:
    table = [
        Strategy(
            "batch_all_nonzero",
            "batch-all (mean > 0)",
            "all valid triplets (fused)",
            f"hinge, margin {MARGIN}, mean over triplets with loss > 0 (Hermans et al. BA!=0)",
            lambda seed: FusedCriterion(
                batch_all_triplet_loss, margin=MARGIN, reduction="mean_nonzero"
            ),
        ),
        Strategy(
            "batch_all_mean",
            "batch-all (mean)",
            "all valid triplets (fused)",
            f"hinge, margin {MARGIN}, mean over all valid triplets",
            lambda seed: FusedCriterion(batch_all_triplet_loss, margin=MARGIN, reduction="mean"),
        ),
        Strategy(
            "batch_hard",
            "batch-hard",
            "hardest positive and negative per anchor (fused)",
            f"hinge, margin {MARGIN}, mean over anchors",
            lambda seed: FusedCriterion(batch_hard_triplet_loss, margin=MARGIN),
        ),
        Strategy(
            "batch_hard_soft",
            "batch-hard soft",
            "hardest positive and negative per anchor (fused)",
            "soft margin softplus(d_ap - d_an), mean over anchors",
            lambda seed: FusedCriterion(batch_hard_triplet_loss, soft_margin=True),
        ),
        Strategy(
            "semi_hard",
            "semi-hard",
            "per positive pair the nearest negative beyond it (FaceNet, fused)",
            f"hinge, margin {MARGIN}, mean over positive pairs",
            lambda seed: FusedCriterion(semi_hard_triplet_loss, margin=MARGIN),
        ),
        Strategy(
            "distance_weighted",
            "distance-weighted",
            f"DistanceWeightedMiner(cutoff={DW_CUTOFF}, "
            f"nonzero_loss_cutoff={DW_NONZERO_LOSS_CUTOFF}), one negative per positive pair",
            f"MarginLoss(margin={MARGIN}, beta={MARGIN_LOSS_BETA} learnable, nu=0) (Wu et al.)",
            lambda seed: MinedCriterion(
                DistanceWeightedMiner(DW_CUTOFF, DW_NONZERO_LOSS_CUTOFF, seed=seed),
                MarginLoss(margin=MARGIN, beta=MARGIN_LOSS_BETA),
            ),
        ),
        Strategy(
            "contrastive",
            "contrastive",
            f"PairMarginMiner(pos_margin={CONTRASTIVE_POS_MARGIN}, "
            f"neg_margin={CONTRASTIVE_NEG_MARGIN}): the pairs with a non-zero loss",
            f"ContrastiveLoss(pos_margin={CONTRASTIVE_POS_MARGIN}, "
            f"neg_margin={CONTRASTIVE_NEG_MARGIN}), mean over mined pairs",
            lambda seed: MinedCriterion(
                PairMarginMiner(CONTRASTIVE_POS_MARGIN, CONTRASTIVE_NEG_MARGIN),
                ContrastiveLoss(CONTRASTIVE_POS_MARGIN, CONTRASTIVE_NEG_MARGIN),
            ),
        ),
        Strategy(
            "random",
            "random triplets",
            "RandomTripletMiner: one uniform negative per positive pair",
            f"hinge, margin {MARGIN}, mean over triplets",
            lambda seed: MinedCriterion(
                RandomTripletMiner(seed=seed), TripletMarginLoss(margin=MARGIN)
            ),
        ),
    ]
    return {s.name: s for s in table}


#: The strategies, in the order they are run, tabulated and plotted.
STRATEGIES: dict[str, Strategy] = _strategies()


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (saved in the JSON).

    ``checkpoints`` evaluations are spread evenly over ``0 .. steps`` (both ends included);
    ``subset_classes`` evaluation classes are used at the intermediate checkpoints and
    ``final_classes`` (None: all 659) at the last one.
    """

    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    p: int
    k: int
    lr: float
    checkpoints: int
    subset_classes: int
    final_classes: int | None
    train_classes: int | None
    quick: bool = False

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def checkpoint_steps(self) -> list[int]:
        n = max(2, self.checkpoints)
        return sorted({round(i * self.steps / (n - 1)) for i in range(n)})


#: The default run: 8 strategies x 3 seeds, sized for <= 15 minutes on 2 CPU cores.
DEFAULT_CONFIG = Config(
    strategies=tuple(STRATEGIES),
    seeds=(0, 1, 2),
    steps=250,
    p=32,
    k=4,
    lr=3e-3,
    checkpoints=6,
    subset_classes=100,
    final_classes=None,
    train_classes=None,
)
#: ``--quick``: every strategy once, a handful of steps, few classes (CI smoke run).
QUICK_CONFIG = Config(
    strategies=tuple(STRATEGIES),
    seeds=(0,),
    steps=6,
    p=8,
    k=4,
    lr=3e-3,
    checkpoints=3,
    subset_classes=10,
    final_classes=20,
    train_classes=100,
    quick=True,
)


# --------------------------------------------------------------------------------------
# Data and evaluation
# --------------------------------------------------------------------------------------


@dataclass
class Data:
    """The training split and the evaluation images (whole split, fixed subset, final set)."""

    train: Any
    eval_images: Tensor
    eval_labels: Tensor
    subset: Tensor  # indices into the evaluation images, the training checkpoints' subset
    final: Tensor  # indices into the evaluation images, the final evaluation


def _class_rows(labels: Tensor, classes: np.ndarray) -> Tensor:
    keep = torch.isin(labels, torch.as_tensor(classes, dtype=labels.dtype))
    return keep.nonzero().squeeze(1)


def load_data(cfg: Config) -> Data:
    """Load Omniglot and pick the evaluation subsets (seeded, independent of the run seed)."""
    train = omniglot("background", max_classes=cfg.train_classes)
    evaluation = omniglot("evaluation")
    n_eval = evaluation.num_classes
    rng = np.random.default_rng(SUBSET_SEED)
    order = rng.permutation(n_eval)  # one permutation: the subset is inside the final set
    subset_classes = np.sort(order[: min(cfg.subset_classes, n_eval)])
    final_n = n_eval if cfg.final_classes is None else min(cfg.final_classes, n_eval)
    final_classes = np.sort(order[: max(final_n, len(subset_classes))])
    return Data(
        train=train,
        eval_images=evaluation.images,
        eval_labels=evaluation.labels,
        subset=_class_rows(evaluation.labels, subset_classes),
        final=_class_rows(evaluation.labels, final_classes),
    )


@torch.no_grad()
def embed(model: nn.Module, images: Tensor, chunk: int = 1024) -> Tensor:
    """Embeddings of ``images`` in eval mode (the caller sets the mode)."""
    return torch.cat([model(part) for part in images.split(chunk)])


def _retrieval(emb: Tensor, labels: Tensor) -> dict[str, Any]:
    m = retrieval_metrics(emb, labels, k=(1, 5, 10), metric="euclidean")
    return {
        "mean_average_precision_at_r": m["mean_average_precision_at_r"],
        "r_precision": m["r_precision"],
        "precision_at_1": m["precision_at_1"],
        "recall_at_k": {str(k): v for k, v in m["recall_at_k"].items()},
    }


def evaluate(model: nn.Module, data: Data, final: bool) -> tuple[dict, dict | None]:
    """Retrieval metrics on the checkpoint subset, and on the final set when ``final``.

    With ``final``, the final set (which contains the subset) is embedded once and the subset
    metrics are computed from the same embeddings.
    """
    was_training = model.training
    model.eval()
    rows = data.final if final else data.subset
    emb = embed(model, data.eval_images[rows])
    labels = data.eval_labels[rows]
    full = _retrieval(emb, labels) if final else None
    if final:
        pos = torch.searchsorted(rows, data.subset)  # rows is sorted, subset is inside it
        sub = _retrieval(emb[pos], labels[pos])
    else:
        sub = _retrieval(emb, labels)
    model.train(was_training)
    return sub, full


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def _batches(loader: DataLoader, sampler: PKBatchSampler) -> Iterator[tuple[Tensor, Tensor]]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


@contextmanager
def _deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the duration of the block.

    Needed on CPU: the backward of indexing with many repeated indices (``emb[anchor]`` over
    thousands of mined pairs) accumulates in parallel in a varying order otherwise, which
    made the contrastive runs differ in the last bits from one run to the next.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train_strategy(
    strategy: Strategy,
    seed: int,
    cfg: Config,
    data: Data,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train one network with one strategy and seed; evaluate at the checkpoints.

    Deterministic for a given seed (same machine, same thread count): the seed fixes the
    initialisation, the batches and the random miners, and deterministic algorithms are on.

    Returns a dict with ``seed``, ``curve`` (``step``, the three retrieval metrics on the
    checkpoint subset, ``easy`` / ``semi_hard`` / ``hard`` fractions and ``valid`` triplet
    counts of the training batch), ``loss`` (every step), ``final`` (metrics on the final
    set) and the times ``train_s``, ``eval_s``, ``wall_s``; ``beta_final`` for the margin
    loss.
    """
    with _deterministic():
        return _train(strategy, seed, cfg, data, on_step)


def _train(
    strategy: Strategy,
    seed: int,
    cfg: Config,
    data: Data,
    on_step: Callable[[], None] | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = EmbeddingNet()
    criterion = strategy.build(seed)
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=cfg.lr)
    sampler = PKBatchSampler(data.train.labels, cfg.p, cfg.k, seed=seed)
    batches = _batches(DataLoader(data.train, batch_sampler=sampler), sampler)
    checkpoints = set(cfg.checkpoint_steps())
    curve: dict[str, list] = {
        key: []
        for key in (
            "step",
            "mean_average_precision_at_r",
            "r_precision",
            "precision_at_1",
            "easy",
            "semi_hard",
            "hard",
            "valid",
        )
    }
    losses: list[float] = []
    final: dict | None = None
    eval_s = 0.0
    model.train()
    for step in range(cfg.steps + 1):
        images, labels = next(batches)
        last = step == cfg.steps
        if step in checkpoints:
            t0 = time.perf_counter()
            sub, full = evaluate(model, data, final=last)
            eval_s += time.perf_counter() - t0
            curve["step"].append(step)
            for key in ("mean_average_precision_at_r", "r_precision", "precision_at_1"):
                curve[key].append(sub[key])
            if full is not None:
                final = full
        if last:
            # Difficulty of one more training batch, as the miners would see it (train-mode
            # BatchNorm). Its side effect on the running statistics comes after the final
            # evaluation and is never observed.
            with torch.no_grad():
                embeddings = model(images)
        else:
            embeddings = model(images)
        if step in checkpoints:
            stats = triplet_stats(embeddings.detach(), labels, margin=MARGIN)
            for key, value in stats.fractions.items():
                curve[key].append(value)
            curve["valid"].append(stats.valid)
        if last:
            break
        loss = criterion(embeddings, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{strategy.name} seed {seed}: the loss is {loss.item()} at step {step}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step()
    wall_s = time.perf_counter() - start
    extra = {}
    beta = getattr(getattr(criterion, "loss", None), "beta", None)
    if isinstance(beta, Tensor):
        extra["beta_final"] = beta.detach().reshape(-1).tolist()
    return {
        "seed": seed,
        "curve": curve,
        "loss": losses,
        "final": final,
        "train_s": wall_s - eval_s,
        "eval_s": eval_s,
        "wall_s": wall_s,
        **extra,
    }


# --------------------------------------------------------------------------------------
# Aggregation, table, plots
# --------------------------------------------------------------------------------------

_FINAL_KEYS = ("mean_average_precision_at_r", "r_precision", "precision_at_1")
_CURVE_KEYS = (*_FINAL_KEYS, "easy", "semi_hard", "hard")


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of the final metrics, the times and every curve point."""
    final = {key: _mean_std([r["final"][key] for r in runs]) for key in _FINAL_KEYS}
    for k in runs[0]["final"]["recall_at_k"]:
        final[f"recall_at_{k}"] = _mean_std([r["final"]["recall_at_k"][k] for r in runs])
    curves: dict[str, Any] = {"step": runs[0]["curve"]["step"]}
    for key in _CURVE_KEYS:
        columns = list(zip(*(r["curve"][key] for r in runs), strict=True))
        stats = [_mean_std(c) for c in columns]
        curves[key] = {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}
    return {
        "final": final,
        "wall_s": _mean_std([r["wall_s"] for r in runs]),
        "train_s": _mean_std([r["train_s"] for r in runs]),
        "curves": curves,
    }


def _pm(stat: dict[str, Any], digits: int = 3) -> str:
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """``| strategy | MAP@R | R-prec | P@1 | wall s |`` with mean ± std over seeds, in the
    order of the strategy table. ``results`` is what :func:`main` returns."""
    lines = [
        "| strategy | MAP@R | R-prec | P@1 | wall s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in results["strategies"].items():
        agg = entry["aggregate"]
        f = agg["final"]
        cells = [
            _pm(f["mean_average_precision_at_r"]),
            _pm(f["r_precision"]),
            _pm(f["precision_at_1"]),
            _pm(agg["wall_s"], 1),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], stem: Path) -> list[Path]:
    """Write ``<stem>_map_at_r.png``, ``<stem>_final.png`` and ``<stem>_difficulty.png``.

    Returns the paths written (none when matplotlib is not installed).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    entries = results["strategies"]
    names = list(entries)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    color = {name: colors[i % len(colors)] for i, name in enumerate(names)}
    cfg = results["config"]
    seeds = len(cfg["seeds"])
    where = f"Omniglot, {cfg['p']}x{cfg['k']} batches, {seeds} seed{'s' * (seeds > 1)}" + (
        " [quick]" if cfg["quick"] else ""
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    # MAP@R vs step, mean over seeds with a +-1 std band.
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        curves = entries[name]["aggregate"]["curves"]
        steps = np.asarray(curves["step"])
        mean = np.asarray(curves["mean_average_precision_at_r"]["mean"])
        std = np.asarray(curves["mean_average_precision_at_r"]["std"])
        ax.plot(steps, mean, marker="o", markersize=3, color=color[name], label=name)
        ax.fill_between(steps, mean - std, mean + std, color=color[name], alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"MAP@R ({cfg['subset_classes']} evaluation classes)")
    ax.set_title(f"MAP@R on unseen classes during training ({where})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "_map_at_r.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Final metrics, grouped bars with std error bars.
    metrics = (
        ("mean_average_precision_at_r", "MAP@R"),
        ("r_precision", "R-precision"),
        ("precision_at_1", "P@1"),
    )
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(names) + 2), 5))
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        means = [entries[n]["aggregate"]["final"][key]["mean"] for n in names]
        stds = [entries[n]["aggregate"]["final"][key]["std"] for n in names]
        ax.bar(x + (j - 1) * width, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylim(0, 1)
    final_classes = cfg["final_classes"] or "all 659"
    ax.set_ylabel(f"final retrieval score ({final_classes} evaluation classes)")
    ax.set_title(f"Final retrieval on unseen classes, mean ± std ({where})", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "_final.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # Difficulty fractions vs step, small multiples.
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.7 * rows), sharex=True, sharey=True, squeeze=False
    )
    kinds = (("easy", "tab:green"), ("semi_hard", "tab:orange"), ("hard", "tab:red"))
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        curves = entries[name]["aggregate"]["curves"]
        steps = np.asarray(curves["step"])
        for kind, c in kinds:
            mean = np.asarray(curves[kind]["mean"])
            std = np.asarray(curves[kind]["std"])
            ax.plot(steps, mean, marker="o", markersize=2.5, color=c, label=kind)
            ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.15)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    for row in axes:
        row[0].set_ylabel("fraction of valid triplets", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"Easy / semi-hard / hard triplets in the training batch, margin {MARGIN} ({where})",
        fontsize=10,
    )
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "_difficulty.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------


def warm_up(cfg: Config) -> float:
    """Call every strategy's criterion and :func:`triplet_stats` once on random unit-norm
    embeddings, so that one-off costs (numba compilation, first calls) are not charged to
    whichever strategy happens to run first. Returns the seconds it took."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(cfg.batch_size) // cfg.k
    x = F.normalize(torch.randn(cfg.batch_size, EMBEDDING_DIM, generator=gen), dim=1)
    for name in cfg.strategies:
        leaf = x.clone().requires_grad_()
        STRATEGIES[name].build(0)(leaf, labels).backward()
    triplet_stats(x, labels, margin=MARGIN)
    return time.perf_counter() - start


def plan_budget(cfg: Config, data: Data, repeats: int = 3) -> dict[str, Any]:
    """Time a few training steps and evaluations on a throwaway network and extrapolate the
    run's wall time. Touches no run's random state (every run reseeds)."""
    started = time.perf_counter()
    warmup_s = warm_up(cfg)
    model = EmbeddingNet()
    criterion = STRATEGIES["batch_hard"].build(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PKBatchSampler(data.train.labels, cfg.p, cfg.k, seed=0)
    batches = _batches(DataLoader(data.train, batch_sampler=sampler), sampler)

    def step() -> None:
        images, labels = next(batches)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (first calls, kernel compilation)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    step_s = (time.perf_counter() - t0) / repeats
    model.eval()
    evaluate(model, data, final=False)  # warm-up
    t0 = time.perf_counter()
    emb = embed(model, data.eval_images[data.subset])
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _retrieval(emb, data.eval_labels[data.subset])
    metric_s = time.perf_counter() - t0
    n_sub, n_fin = len(data.subset), len(data.final)
    subset_eval_s = embed_s + metric_s
    final_eval_s = embed_s * n_fin / n_sub + metric_s * (n_fin / n_sub) ** 2 + subset_eval_s
    runs = len(cfg.strategies) * len(cfg.seeds)
    n_ckpt = len(cfg.checkpoint_steps())
    per_run_fixed = (n_ckpt - 1) * subset_eval_s + final_eval_s
    per_run = cfg.steps * step_s + per_run_fixed
    # The most steps that would fit the default budget (after what was spent so far).
    left = DEFAULT_BUDGET_S - (time.perf_counter() - started)
    fits = math.floor((left / runs - per_run_fixed) / step_s) if runs else 0
    return {
        "runs": runs,
        "warmup_s": warmup_s,
        "step_s": step_s,
        "subset_eval_s": subset_eval_s,
        "final_eval_s_estimate": final_eval_s,
        "per_run_s_estimate": per_run,
        "total_s_estimate": runs * per_run,
        "steps_that_fit_budget": max(fits, 0),
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes a count (3) or a comma-separated list (0,5,7), got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct seeds >= 0, got {text!r}")
    return seeds


def _parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown strategies {unknown or text!r}; choose from {', '.join(STRATEGIES)}"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Train a small embedding net on Omniglot with every mining strategy and "
        "compare retrieval on the unseen evaluation characters.",
    )
    p.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 seed, a few steps, few classes"
    )
    p.add_argument(
        "--seeds",
        type=_parse_seeds,
        help="number of seeds (3 -> 0,1,2) or a comma-separated list (default 3; quick 1)",
    )
    p.add_argument("--steps", type=_positive_int, help="training steps per run")
    p.add_argument(
        "--strategies",
        type=_parse_strategies,
        help=f"comma-separated subset of: {', '.join(STRATEGIES)} (default: all)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the results as saved to JSON.

    The dict holds ``benchmark``, ``machine`` (:func:`~benchmarks.common.machine_info`),
    ``config``, ``hyperparameters``, ``plan`` (the calibrated estimate), ``strategies``
    (name -> ``miner``, ``loss``, ``runs`` (one per seed, see :func:`train_strategy`) and
    ``aggregate`` (see :func:`aggregate`)), ``wall_s`` and ``outputs`` (JSON and PNG paths).
    """
    args = _parser().parse_args(None if argv is None else list(argv))
    cfg = QUICK_CONFIG if args.quick else DEFAULT_CONFIG
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.strategies is not None:
        cfg = replace(cfg, strategies=args.strategies)
    out_dir: Path = args.out
    stem = out_dir / ("quality_quick" if cfg.quick else "quality")

    started = time.perf_counter()
    data = load_data(cfg)
    plan = plan_budget(cfg, data, repeats=1 if cfg.quick else 3)
    runs_total = plan["runs"]
    print(
        f"Quality benchmark{' [quick]' if cfg.quick else ''}: {len(cfg.strategies)} strategies "
        f"x {len(cfg.seeds)} seeds x {cfg.steps} steps of {cfg.p}x{cfg.k} = {runs_total} runs; "
        f"{len(data.train.labels)} training images, checkpoints at {cfg.checkpoint_steps()} "
        f"on {cfg.subset_classes} evaluation classes, final on "
        f"{cfg.final_classes or 'all 659'} classes."
    )
    budget_note = ""
    if not cfg.quick:
        budget_note = f" (target {DEFAULT_BUDGET_S / 60:.0f} min on 2 cores)"
    print(
        f"Planned (warm-up {plan['warmup_s']:.1f} s): {1e3 * plan['step_s']:.0f} ms/step, "
        f"{plan['subset_eval_s']:.2f} s per "
        f"checkpoint, ~{plan['final_eval_s_estimate']:.1f} s final evaluation -> "
        f"~{plan['per_run_s_estimate']:.0f} s per run, ~{plan['total_s_estimate'] / 60:.1f} min "
        f"in all{budget_note}.",
        flush=True,
    )
    if not cfg.quick and plan["total_s_estimate"] > DEFAULT_BUDGET_S:
        print(
            f"Note: the estimate exceeds the {DEFAULT_BUDGET_S / 60:.0f} min target on this "
            f"machine; --steps {plan['steps_that_fit_budget']} would fit it.",
            flush=True,
        )

    results: dict[str, Any] = {
        "benchmark": "quality",
        "machine": machine_info(),
        "config": {**asdict(cfg), "batch_size": cfg.batch_size},
        "hyperparameters": {
            "network": "4 x [conv3x3 (no bias), BatchNorm, ReLU, maxpool2], channels "
            f"1-32-64-64-64, linear 64 -> {EMBEDDING_DIM}, L2-normalised",
            "optimizer": f"Adam(lr={cfg.lr}), network and loss parameters together",
            "metric": "euclidean on unit-norm embeddings",
            "margin": MARGIN,
            "contrastive_margins": [CONTRASTIVE_POS_MARGIN, CONTRASTIVE_NEG_MARGIN],
            "distance_weighted": {
                "cutoff": DW_CUTOFF,
                "nonzero_loss_cutoff": DW_NONZERO_LOSS_CUTOFF,
                "margin_loss_beta_init": MARGIN_LOSS_BETA,
            },
            "triplet_stats_margin": MARGIN,
            "subset_seed": SUBSET_SEED,
            "std": "sample standard deviation over seeds (ddof=1), 0 for one seed",
        },
        "plan": plan,
        "strategies": {},
    }

    total_steps = runs_total * cfg.steps
    bar = progress(range(total_steps), total=total_steps, desc="quality", unit="step")
    update = getattr(bar, "update", None)
    write = getattr(bar, "write", print)
    set_postfix = getattr(bar, "set_postfix_str", None)
    done = 0
    for name in cfg.strategies:
        strategy = STRATEGIES[name]
        runs = []
        for seed in cfg.seeds:
            if set_postfix is not None:
                set_postfix(f"{name} seed {seed}")
            run = train_strategy(
                strategy, seed, cfg, data, on_step=(lambda: update(1)) if update else None
            )
            runs.append(run)
            done += 1
            f = run["final"]
            write(
                f"[{done}/{runs_total}] {name} seed {seed}: "
                f"MAP@R {f['mean_average_precision_at_r']:.3f}  "
                f"R-prec {f['r_precision']:.3f}  P@1 {f['precision_at_1']:.3f}  "
                f"({run['wall_s']:.1f} s)"
            )
        results["strategies"][name] = {
            "label": strategy.label,
            "miner": strategy.miner,
            "loss": strategy.loss,
            "runs": runs,
            "aggregate": aggregate(runs),
        }
    close = getattr(bar, "close", None)
    if close is not None:
        close()

    json_path = stem.with_suffix(".json")
    pngs = plot_results(results, stem)
    results["wall_s"] = time.perf_counter() - started
    results["outputs"] = {"json": str(json_path), "png": [str(p) for p in pngs]}
    save_json(json_path, results)

    print(f"\n## Quality on Omniglot evaluation ({cfg.final_classes or 659} unseen classes)\n")
    print(markdown_table(results))
    runs_s = sum(r["wall_s"] for e in results["strategies"].values() for r in e["runs"])
    print(
        f"\nMeasured wall time: {results['wall_s']:.0f} s in all, {runs_s:.0f} s in the runs "
        f"(planned ~{plan['total_s_estimate']:.0f} s for the runs)."
    )
    print(f"Wrote {json_path}")
    for path in pngs:
        print(f"Wrote {path}")
    return results


if __name__ == "__main__":
    main()
