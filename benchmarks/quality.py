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
fits all (triplet margin 0.2, soft margin, distance-weighted sampling with the margin loss of
Wu et al. 2017, contrastive loss over the pairs mined with the same margins): the strategies
and the reasons for each value are listed in :mod:`benchmarks.registry`.

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

This module holds the network, the data, training, evaluation, the budget and the CLI. The
strategies live in :mod:`benchmarks.registry`; aggregation over seeds, the table and the
figures in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tripletkit.datasets import omniglot
from tripletkit.metrics import retrieval_metrics
from tripletkit.samplers import PKBatchSampler
from tripletkit.stats import triplet_stats

from .common import RESULTS_DIR, ProgressBar, new_result, progress, save_json
from .registry import (
    CONTRASTIVE_NEG_MARGIN,
    CONTRASTIVE_POS_MARGIN,
    DW_CUTOFF,
    DW_NONZERO_LOSS_CUTOFF,
    MARGIN,
    MARGIN_LOSS_BETA,
    STRATEGIES,
    Strategy,
)
from .registry import FusedCriterion as FusedCriterion
from .registry import MinedCriterion as MinedCriterion
from .report import aggregate_runs as aggregate
from .report import plot_quality as plot_results
from .report import quality_table as markdown_table

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

#: Embedding dimension.
EMBEDDING_DIM = 64
#: The seed that picks the fixed subset of evaluation classes used at training checkpoints.
SUBSET_SEED = 1234
#: The wall-time target of the default run (seconds), printed next to the plan.
DEFAULT_BUDGET_S = 15 * 60


# --------------------------------------------------------------------------------------
# Network
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


#: The series recorded at every checkpoint of a run.
_CURVE_SERIES = (
    "step",
    "mean_average_precision_at_r",
    "r_precision",
    "precision_at_1",
    "easy",
    "semi_hard",
    "hard",
    "valid",
)


@dataclass
class _Run:
    """One training run in progress: the network, its criterion and optimiser, the batches,
    and what has been recorded so far."""

    model: EmbeddingNet
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[tuple[Tensor, Tensor]]
    curve: dict[str, list] = field(default_factory=lambda: {key: [] for key in _CURVE_SERIES})
    losses: list[float] = field(default_factory=list)
    final: dict | None = None
    eval_s: float = 0.0


def _start_run(strategy: Strategy, seed: int, cfg: Config, data: Data) -> _Run:
    """A fresh network (initialised from torch's global generator: seed it first), the
    strategy's criterion, Adam over both, and the run's P x K batches."""
    model = EmbeddingNet()
    criterion = strategy.build(seed)
    optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=cfg.lr)
    sampler = PKBatchSampler(data.train.labels, cfg.p, cfg.k, seed=seed)
    batches = _batches(DataLoader(data.train, batch_sampler=sampler), sampler)
    return _Run(model, criterion, optimizer, batches)


def _descend(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One optimiser step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _evaluate_checkpoint(run: _Run, data: Data, step: int, final: bool) -> None:
    """Record the retrieval metrics on the checkpoint subset (and the final set's metrics
    when ``final``)."""
    t0 = time.perf_counter()
    sub, full = evaluate(run.model, data, final=final)
    run.eval_s += time.perf_counter() - t0
    run.curve["step"].append(step)
    for key in ("mean_average_precision_at_r", "r_precision", "precision_at_1"):
        run.curve[key].append(sub[key])
    if full is not None:
        run.final = full


def _record_difficulty(run: _Run, embeddings: Tensor, labels: Tensor) -> None:
    """Record the easy / semi-hard / hard fractions and the valid triplets of a batch."""
    stats = triplet_stats(embeddings.detach(), labels, margin=MARGIN)
    for key, value in stats.fractions.items():
        run.curve[key].append(value)
    run.curve["valid"].append(stats.valid)


def _train(
    strategy: Strategy,
    seed: int,
    cfg: Config,
    data: Data,
    on_step: Callable[[], None] | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    run = _start_run(strategy, seed, cfg, data)
    checkpoints = set(cfg.checkpoint_steps())
    run.model.train()
    for step in range(cfg.steps + 1):
        images, labels = next(run.batches)
        last = step == cfg.steps
        if step in checkpoints:
            _evaluate_checkpoint(run, data, step, final=last)
        # After the last step, the difficulty of one more training batch, as the miners would
        # see it (train-mode BatchNorm). Its side effect on the running statistics comes after
        # the final evaluation and is never observed.
        with torch.no_grad() if last else nullcontext():
            embeddings = run.model(images)
        if step in checkpoints:
            _record_difficulty(run, embeddings, labels)
        if last:
            break
        loss = run.criterion(embeddings, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{strategy.name} seed {seed}: the loss is {loss.item()} at step {step}"
            )
        _descend(run.optimizer, loss)
        run.losses.append(loss.item())
        if on_step is not None:
            on_step()
    return _run_result(run, seed, time.perf_counter() - start)


def _run_result(run: _Run, seed: int, wall_s: float) -> dict[str, Any]:
    extra = {}
    beta = getattr(getattr(run.criterion, "loss", None), "beta", None)
    if isinstance(beta, Tensor):
        extra["beta_final"] = beta.detach().reshape(-1).tolist()
    return {
        "seed": seed,
        "curve": run.curve,
        "loss": run.losses,
        "final": run.final,
        "train_s": wall_s - run.eval_s,
        "eval_s": run.eval_s,
        "wall_s": wall_s,
        **extra,
    }


def run_strategies(cfg: Config, data: Data) -> dict[str, Any]:
    """Train every strategy of ``cfg`` with every seed, with a progress bar over all steps.

    Returns:
        Per strategy name: ``label``, ``miner``, ``loss``, ``runs`` (one per seed, see
        :func:`train_strategy`) and ``aggregate`` (see
        :func:`benchmarks.report.aggregate_runs`).
    """
    runs_total = len(cfg.strategies) * len(cfg.seeds)
    entries: dict[str, Any] = {}
    done = 0
    bar: ProgressBar[Any]
    with progress(total=runs_total * cfg.steps, desc="quality", unit="step") as bar:
        for name in cfg.strategies:
            strategy = STRATEGIES[name]
            runs = []
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                run = train_strategy(strategy, seed, cfg, data, on_step=bar.update)
                runs.append(run)
                done += 1
                f = run["final"]
                bar.write(
                    f"[{done}/{runs_total}] {name} seed {seed}: "
                    f"MAP@R {f['mean_average_precision_at_r']:.3f}  "
                    f"R-prec {f['r_precision']:.3f}  P@1 {f['precision_at_1']:.3f}  "
                    f"({run['wall_s']:.1f} s)"
                )
            entries[name] = {
                "label": strategy.label,
                "miner": strategy.miner,
                "loss": strategy.loss,
                "runs": runs,
                "aggregate": aggregate(runs),
            }
    return entries


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


def _seconds_per_step(run: _Run, repeats: int) -> float:
    """Mean time of a batch-hard training step, after one warm-up step."""

    def step() -> None:
        images, labels = next(run.batches)
        _descend(run.optimizer, run.criterion(run.model(images), labels))

    step()  # warm-up (first calls, kernel compilation)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def _seconds_per_evaluation(model: nn.Module, data: Data) -> tuple[float, float]:
    """Time to embed the checkpoint subset and to compute its metrics, after a warm-up."""
    model.eval()
    evaluate(model, data, final=False)  # warm-up
    t0 = time.perf_counter()
    emb = embed(model, data.eval_images[data.subset])
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _retrieval(emb, data.eval_labels[data.subset])
    return embed_s, time.perf_counter() - t0


def plan_budget(cfg: Config, data: Data, repeats: int = 3) -> dict[str, Any]:
    """Time a few training steps and evaluations on a throwaway network and extrapolate the
    run's wall time. Touches no run's random state (every run reseeds)."""
    started = time.perf_counter()
    warmup_s = warm_up(cfg)
    run = _start_run(STRATEGIES["batch_hard"], 0, cfg, data)
    step_s = _seconds_per_step(run, repeats)
    embed_s, metric_s = _seconds_per_evaluation(run.model, data)
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
    cfg = _config(args)
    stem = args.out / ("quality_quick" if cfg.quick else "quality")
    started = time.perf_counter()
    data = load_data(cfg)
    plan = plan_budget(cfg, data, repeats=1 if cfg.quick else 3)
    _print_plan(cfg, data, plan)
    results = new_result(
        "quality",
        config={**asdict(cfg), "batch_size": cfg.batch_size},
        hyperparameters=hyperparameters(cfg),
        plan=plan,
        strategies={},
    )
    results["strategies"] = run_strategies(cfg, data)
    json_path = stem.with_suffix(".json")
    pngs = plot_results(results, stem)
    results["wall_s"] = time.perf_counter() - started
    results["outputs"] = {"json": str(json_path), "png": [str(p) for p in pngs]}
    save_json(json_path, results)
    _print_summary(results, json_path, pngs)
    return results


def _config(args: argparse.Namespace) -> Config:
    """The :class:`Config` the command line asks for."""
    cfg = QUICK_CONFIG if args.quick else DEFAULT_CONFIG
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.strategies is not None:
        cfg = replace(cfg, strategies=args.strategies)
    return cfg


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The ``hyperparameters`` of the results: network, optimiser, metric and margins."""
    return {
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
    }


def _print_plan(cfg: Config, data: Data, plan: dict[str, Any]) -> None:
    print(
        f"Quality benchmark{' [quick]' if cfg.quick else ''}: {len(cfg.strategies)} strategies "
        f"x {len(cfg.seeds)} seeds x {cfg.steps} steps of {cfg.p}x{cfg.k} = {plan['runs']} runs; "
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


def _print_summary(results: dict[str, Any], json_path: Path, pngs: list[Path]) -> None:
    final_classes = results["config"]["final_classes"] or 659
    print(f"\n## Quality on Omniglot evaluation ({final_classes} unseen classes)\n")
    print(markdown_table(results))
    runs_s = sum(r["wall_s"] for e in results["strategies"].values() for r in e["runs"])
    print(
        f"\nMeasured wall time: {results['wall_s']:.0f} s in all, {runs_s:.0f} s in the runs "
        f"(planned ~{results['plan']['total_s_estimate']:.0f} s for the runs)."
    )
    print(f"Wrote {json_path}")
    for path in pngs:
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
