"""One training run of the quality benchmark: a network, a row's criterion and setting, a
seed, a task (:class:`benchmarks.data.Task`), with evaluations at checkpoints.

Every run gets a fresh network (:func:`benchmarks.nets.make_net`, initialised from
``torch.manual_seed(seed)``), Adam over the network and the criterion's parameters at the
setting's learning rate, and P x K batches seeded by ``seed``. What differs by row is the
criterion and how a step runs (:class:`benchmarks.strategies.Training`):

- ``plain`` and ``memory``: embed the batch, compute the loss, back-propagate, step (a
  memory row's criterion holds its cross-batch memory);
- ``large_batch``: ``batch_factor`` times larger batches and ``batch_factor`` times fewer
  steps (the same training images), back-propagated by
  :func:`tripletkit.gradcache.cached_backward` in chunks;
- ``hard_class``: batches from a :class:`~tripletkit.samplers.HardClassPKBatchSampler`
  updated with every batch's embeddings, redrawn every ``refresh_steps`` steps (its batches
  are drawn when an epoch starts, so the updates shape the next draw);
- ``neighbour``: batches from a :class:`~tripletkit.samplers.NeighbourPKBatchSampler`,
  refreshed (the training part re-embedded, every sample's nearest other-class neighbours
  searched exactly) inside the training step after every ``refresh_every`` optimiser steps
  of the setting: the refresh time is training time (``train_s``) and, amortised over the
  period, part of the calibrated step time.

**Time.** ``train_s`` counts the training steps only (fetching the batch, forward, loss,
backward, optimiser step, sampler update or refresh), never the evaluations: at each checkpoint the
curve records the training seconds so far, which makes MAP@R against seconds a
time-to-quality curve. A row with a time cap stops after the step at which its training
time passes the cap, and is evaluated there.

**Checkpoints.** Retrieval metrics on the task's checkpoint subset of *validation* classes,
and the easy / semi-hard / hard fractions (:func:`~tripletkit.stats.triplet_stats` at the
row's margin) of the next training batch, embedded without a gradient in training mode with
the batch-norm buffers restored afterwards (no side effect on the run). The last checkpoint
also evaluates every validation class (``validation``). A run never reads the test
classes: :func:`evaluate_test` evaluates a kept network on them, once every choice is made
(:mod:`benchmarks.quality`). Runs are deterministic for a seed (same machine and thread
count): ``torch.use_deterministic_algorithms(True)`` during training.

**Same seed, same start.** A run seeds torch with its seed, then builds the network (so its
initialisation depends on the seed and the input shape only) and draws its P x K batches
from a sampler seeded with the seed (the same batches for every row with the same P, K and
sampler): two rows with the same seed are paired, which the paired tests over seeds
(:func:`benchmarks.report.paired_t_test`) rely on. The hard-class sampler and the 4x batch
draw other batches by design.

**Calibration** (:func:`calibrate`). Before a row's runs, a throwaway run of the row times
single steps (batch fetch included; memory rows with a full memory, after as many untimed
steps as fill it), so that each row's time per step is measured in the same process under
the same load, with its spread (median, quartiles, extremes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from tripletkit.gradcache import cached_backward
from tripletkit.metrics import retrieval_metrics
from tripletkit.samplers import HardClassPKBatchSampler, NeighbourPKBatchSampler, PKBatchSampler
from tripletkit.stats import triplet_stats

from .common import load_average
from .nets import make_net
from .strategies import Setting, Strategy, Training

if TYPE_CHECKING:
    from .data import Task

__all__ = [
    "CURVE_SERIES",
    "RunPlan",
    "RunSetup",
    "calibrate",
    "checkpoint_steps",
    "deterministic",
    "evaluate",
    "evaluate_test",
    "setup_run",
    "train_run",
]

#: The series recorded at every checkpoint of a run.
CURVE_SERIES = (
    "step",
    "images",
    "train_s",
    "mean_average_precision_at_r",
    "r_precision",
    "precision_at_1",
    "easy",
    "semi_hard",
    "hard",
    "valid",
)
#: At most this many loss values are kept per run (means over equal windows of steps).
LOSS_POINTS = 250


@dataclass(frozen=True)
class RunPlan:
    """The budget of a run: ``steps`` steps of ``p x k`` images (a large-batch row scales
    both, keeping the images), ``checkpoints`` evaluations spread over the run, both ends
    included; ``step_s`` the planned seconds per plain step (for time caps)."""

    steps: int
    p: int
    k: int
    checkpoints: int
    step_s: float | None = None

    def scaled(self, training: Training) -> tuple[int, int]:
        """Steps and P of a row trained as ``training``."""
        f = training.batch_factor if training.kind == "large_batch" else 1
        return max(1, self.steps // f), self.p * f

    def time_cap_s(self, training: Training) -> float | None:
        """The row's time cap in seconds, when it has one and the plan knows its step time."""
        if training.time_cap_factor is None or self.step_s is None:
            return None
        return training.time_cap_factor * self.steps * self.step_s


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """``n`` (at least 2) checkpoints spread evenly over ``0 .. steps``, both ends included."""
    n = max(2, n)
    return sorted({round(i * steps / (n - 1)) for i in range(n)})


@contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the duration of the block.

    Needed on CPU: the backward of indexing with many repeated indices (``emb[anchor]`` over
    thousands of mined pairs) accumulates in parallel in a varying order otherwise.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def embed(model: nn.Module, x: Tensor, chunk: int = 1024) -> Tensor:
    """Embeddings of ``x`` (the caller sets the mode)."""
    return torch.cat([model(part) for part in x.split(chunk)])


def retrieval(emb: Tensor, labels: Tensor) -> dict[str, Any]:
    """MAP@R, R-precision, P@1 and recall@k, leave-one-out, euclidean distance."""
    m = retrieval_metrics(emb, labels, k=(1, 5, 10), metric="euclidean")
    return {
        "mean_average_precision_at_r": m["mean_average_precision_at_r"],
        "r_precision": m["r_precision"],
        "precision_at_1": m["precision_at_1"],
        "recall_at_k": {str(k): v for k, v in m["recall_at_k"].items()},
    }


def evaluate(model: nn.Module, task: Task, final: bool) -> tuple[dict, dict | None]:
    """Retrieval metrics on the checkpoint subset, and on the final set when ``final`` (the
    final set, which contains the subset, is then embedded once)."""
    was_training = model.training
    model.eval()
    rows = task.final if final else task.subset
    emb = embed(model, task.eval_x[rows])
    labels = task.eval_y[rows]
    full = retrieval(emb, labels) if final else None
    if final and len(task.subset) == len(rows):  # the subset is the whole final set
        sub = full
    elif final:
        pos = torch.searchsorted(rows, task.subset)  # rows is sorted, subset is inside it
        sub = retrieval(emb[pos], labels[pos])
    else:
        sub = retrieval(emb, labels)
    model.train(was_training)
    return sub, full


def difficulty(model: nn.Module, x: Tensor, labels: Tensor, margin: float) -> dict[str, Any]:
    """Easy / semi-hard / hard fractions and valid triplets of a batch, embedded without a
    gradient in training mode; the model's buffers are restored afterwards."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        emb = model(x)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(saved[k])
    stats = triplet_stats(emb, labels, margin=margin)
    return {**stats.fractions, "valid": stats.valid}


# --------------------------------------------------------------------------------------
# Batches and steps
# --------------------------------------------------------------------------------------


def _epochs(sampler: Any, refresh: int | None) -> Iterator[list[int]]:
    """The sampler's batches, epoch after epoch (``set_epoch``); with ``refresh``, each
    epoch is cut after ``refresh`` batches so that the next one is drawn anew."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for i, batch in enumerate(sampler):
            if refresh is not None and i >= refresh:
                break
            yield batch
        epoch += 1


def make_batches(
    training: Training, labels: Tensor, p: int, k: int, seed: int
) -> tuple[Any, Iterator[Tensor]]:
    """The row's sampler and an endless iterator of index tensors."""
    p = min(p, int(torch.unique(labels).numel()))
    if training.kind == "hard_class":
        sampler: Any = HardClassPKBatchSampler(
            labels, p, k, hard_fraction=training.hard_fraction, seed=seed
        )
        batches = _epochs(sampler, training.refresh_steps)
    elif training.kind == "neighbour":
        sampler = NeighbourPKBatchSampler(
            labels, p, k, hard_fraction=training.hard_fraction, seed=seed
        )
        batches = _epochs(sampler, None)  # a refresh redraws the rest of the epoch in place
    else:
        sampler = PKBatchSampler(labels, p, k, seed=seed)
        batches = _epochs(sampler, None)
    return sampler, (torch.as_tensor(b) for b in batches)


StepFn = Callable[[Tensor, Tensor], Tensor]


def make_step(
    training: Training,
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Any,
    refresh: Callable[[], None] | None = None,
    refresh_every: int | None = None,
) -> StepFn:
    """``step(images, labels) -> detached loss``: one optimiser step of the row; with
    ``refresh``, followed by ``refresh()`` after every ``refresh_every`` steps."""
    if training.kind == "large_batch":

        def large(images: Tensor, labels: Tensor) -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = cached_backward(model, images, labels, criterion, chunk_size=training.chunk_size)
            optimizer.step()
            return loss

        return large
    update = sampler.update if training.kind == "hard_class" else None
    done = [0]

    def plain(images: Tensor, labels: Tensor) -> Tensor:
        embeddings = model(images)
        loss = criterion(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if update is not None:
            update(embeddings.detach(), labels)
        done[0] += 1
        if refresh is not None and refresh_every and done[0] % refresh_every == 0:
            refresh()
        return loss.detach()

    return plain


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class _Record:
    """What a run records: the checkpoint curve, the losses, the final metrics, times."""

    curve: dict[str, list] = field(default_factory=lambda: {k: [] for k in CURVE_SERIES})
    losses: list[float] = field(default_factory=list)
    validation: dict | None = None
    eval_s: float = 0.0
    train_s: float = 0.0

    def checkpoint(self, model: nn.Module, task: Task, step: int, images: int, last: bool) -> None:
        t0 = time.perf_counter()
        sub, full = evaluate(model, task, final=last)
        self.eval_s += time.perf_counter() - t0
        self.curve["step"].append(step)
        self.curve["images"].append(images)
        self.curve["train_s"].append(self.train_s)
        for key in ("mean_average_precision_at_r", "r_precision", "precision_at_1"):
            self.curve[key].append(sub[key])
        if full is not None:
            self.validation = full

    def difficulty(self, model: nn.Module, x: Tensor, labels: Tensor, margin: float) -> None:
        t0 = time.perf_counter()
        for key, value in difficulty(model, x, labels, margin).items():
            self.curve[key].append(value)
        self.eval_s += time.perf_counter() - t0


def _loss_series(losses: list[float]) -> tuple[list[float], int]:
    """The losses, as means over windows so that at most :data:`LOSS_POINTS` remain."""
    every = max(1, -(-len(losses) // LOSS_POINTS))
    means = [
        sum(losses[i : i + every]) / len(losses[i : i + every])
        for i in range(0, len(losses), every)
    ]
    return means, every


@dataclass
class RunSetup:
    """A run ready to train: network, criterion, ``step(images, labels)``, batches, the
    run's steps and batch size, its sampler, and a neighbour-sampler row's ``refresh()``
    (which ``step`` calls every ``refresh_every`` steps)."""

    model: nn.Module
    criterion: nn.Module
    step: StepFn
    batches: Iterator[Tensor]
    steps: int
    batch_size: int
    optimizer: torch.optim.Optimizer | None = None
    sampler: Any = None
    refresh: Callable[[], None] | None = None
    refresh_every: int | None = None


def setup_run(
    strategy: Strategy, setting: Setting, seed: int, task: Task, plan: RunPlan
) -> RunSetup:
    """Seed torch with ``seed`` and build the run's network, criterion, optimiser, batches
    and step function."""
    torch.manual_seed(seed)
    model = make_net(task.input_shape, normalize=bool(setting.get("normalize", True)))
    criterion = strategy.build(setting, seed)
    steps, p = plan.scaled(strategy.training)
    if hasattr(criterion, "warmup_steps"):
        criterion.warmup_steps = round(strategy.training.warmup * steps)
    params = [*model.parameters(), *criterion.parameters()]
    optimizer = torch.optim.Adam(params, lr=float(setting["lr"]))
    sampler, batches = make_batches(strategy.training, task.train_y, p, plan.k, seed)
    refresh: Callable[[], None] | None = None
    every = None
    if strategy.training.kind == "neighbour":
        every = refresh_period(strategy, setting)
        train_set = TensorDataset(task.train_x, task.train_y)

        def refresh_sampler() -> None:
            sampler.refresh(model, train_set, batch_size=1024)
            model.train()

        refresh = refresh_sampler

    step = make_step(strategy.training, model, criterion, optimizer, sampler, refresh, every)
    model.train()
    return RunSetup(
        model,
        criterion,
        step,
        batches,
        steps,
        min(p, task.train_classes) * plan.k,
        optimizer,
        sampler,
        refresh,
        every,
    )


def refresh_period(strategy: Strategy, setting: Setting) -> int:
    """Steps between two refreshes of a neighbour-sampler row: the setting's
    ``refresh_every``, else the row's default (:attr:`Training.refresh_steps`)."""
    return max(1, round(float(setting.get("refresh_every", strategy.training.refresh_steps))))


def train_run(
    strategy: Strategy,
    setting: Setting,
    seed: int,
    task: Task,
    plan: RunPlan,
    on_step: Callable[[int], None] | None = None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one network with one row, setting and seed; evaluate at the checkpoints.

    ``on_step(n)`` is called after each step with the images of a plain step it stands for
    (``batch_factor`` for a large-batch step), for progress bars. ``keep``: a dict that
    receives the trained network's ``state`` (a CPU copy of its ``state_dict``), for the
    final evaluation on the test classes.

    Returns:
        ``seed``, ``setting``, ``curve`` (:data:`CURVE_SERIES`, one value per
        checkpoint, on validation classes), ``loss`` (means over windows of ``loss_every``
        steps), ``validation`` (metrics on every validation class at the last step),
        ``final`` (None: the test metrics, filled by the final evaluation), ``train_s``, ``eval_s``, ``wall_s``, ``steps`` (run),
        ``planned_steps``, ``time_cap_s`` (None without a cap), ``capped`` and the machine's
        ``load_average`` at the end (a busy machine slows the training time down);
        ``beta_final`` for the margin loss.
    """
    with deterministic():
        return _train(strategy, setting, seed, task, plan, on_step, keep)


def _train(
    strategy: Strategy,
    setting: Setting,
    seed: int,
    task: Task,
    plan: RunPlan,
    on_step: Callable[[int], None] | None,
    keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    run = setup_run(strategy, setting, seed, task, plan)
    record = _Record()
    checkpoints = set(checkpoint_steps(run.steps, plan.checkpoints))
    cap = plan.time_cap_s(strategy.training)
    margin = strategy.stats_margin(setting)
    stop = run.steps
    per_step = plan.steps // run.steps if run.steps else 1
    base_rows = plan.p * plan.k
    for step in range(run.steps + 1):
        t0 = time.perf_counter()
        idx = next(run.batches)
        images, labels = task.train_x[idx], task.train_y[idx]
        fetch_s = time.perf_counter() - t0  # counted once the checkpoint is recorded
        last = step == stop
        if step in checkpoints or last:
            record.checkpoint(run.model, task, step, step * run.batch_size, last)
            record.difficulty(run.model, images[:base_rows], labels[:base_rows], margin)
        if last:
            break
        record.train_s += fetch_s
        t0 = time.perf_counter()
        loss = run.step(images, labels)
        record.train_s += time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{strategy.name} seed {seed}: the loss is {loss.item()} at step {step}"
            )
        record.losses.append(float(loss))
        if on_step is not None:
            on_step(per_step)
        if cap is not None and record.train_s >= cap and stop == run.steps:
            stop = step + 1
    if keep is not None:
        keep["state"] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    return _result(run, record, seed, setting, time.perf_counter() - start, cap, stop)


def _result(
    run: RunSetup,
    record: _Record,
    seed: int,
    setting: Setting,
    wall_s: float,
    cap: float | None,
    stop: int,
) -> dict[str, Any]:
    losses, every = _loss_series(record.losses)
    extra = {}
    beta = getattr(getattr(run.criterion, "loss", None), "beta", None)
    if isinstance(beta, Tensor):
        extra["beta_final"] = beta.detach().reshape(-1).tolist()
    return {
        "seed": seed,
        "setting": dict(setting),
        "curve": record.curve,
        "loss": losses,
        "loss_every": every,
        "validation": record.validation,
        "final": None,
        "train_s": record.train_s,
        "eval_s": record.eval_s,
        "wall_s": wall_s,
        "steps": stop,
        "planned_steps": run.steps,
        "batch_size": run.batch_size,
        "time_cap_s": cap,
        "capped": stop < run.steps,
        "load_average": load_average(),
        **extra,
    }


# --------------------------------------------------------------------------------------
# Calibration and the final evaluation
# --------------------------------------------------------------------------------------


def calibrate(
    strategy: Strategy,
    setting: Setting,
    task: Task,
    plan: RunPlan,
    repeats: int = 20,
    seed: int = 10_000,
) -> dict[str, Any]:
    """Seconds of ``repeats`` single training steps of a throwaway run of the row (batch
    fetch, forward, loss, backward, optimiser step, sampler update), after one untimed
    step, and for a memory row after as many untimed steps as fill its memory, at most the
    run's steps (with the memory in use from the first step). Touches no other run (every run reseeds).
    A neighbour-sampler row also times one refresh (after the warm steps, so that the timed
    steps draw mined batches) and adds its share ``refresh_s / refresh_every`` to every timed
    step: its step time is the amortised cost of training with refreshes.

    Returns:
        ``step_s`` (every timed step), ``median_s``, ``q1_s``, ``q3_s``, ``min_s``,
        ``max_s``, ``warm_steps`` and ``repeats``; a neighbour-sampler row adds
        ``refresh_s``, ``refresh_every`` and ``step_s_without_refresh``.
    """
    with deterministic():
        run = setup_run(strategy, setting, seed, task, plan)
        if hasattr(run.criterion, "warmup_steps"):
            run.criterion.warmup_steps = 0
        warm = 1
        if strategy.training.kind == "memory":  # as full as it gets in the run
            fill = -(-strategy.training.memory_size // max(1, run.batch_size))
            warm += min(fill, run.steps)
        times = []
        extra: dict[str, Any] = {}
        step = run.step
        if run.refresh is not None and run.refresh_every:
            # the same step without its own refreshes: the refresh is timed once, below
            step = make_step(strategy.training, run.model, run.criterion, run.optimizer, None)
        for i in range(warm + repeats):
            if i == warm and run.refresh is not None and run.refresh_every:
                t0 = time.perf_counter()
                run.refresh()
                extra["refresh_s"] = time.perf_counter() - t0
                extra["refresh_every"] = run.refresh_every
            t0 = time.perf_counter()
            idx = next(run.batches)
            step(task.train_x[idx], task.train_y[idx])
            if i >= warm:
                times.append(time.perf_counter() - t0)
    if extra:
        extra["step_s_without_refresh"] = times
        times = [t + extra["refresh_s"] / extra["refresh_every"] for t in times]
    q = torch.tensor(times, dtype=torch.float64).quantile(
        torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    )
    return {
        "step_s": times,
        "median_s": float(q[1]),
        "q1_s": float(q[0]),
        "q3_s": float(q[2]),
        "min_s": min(times),
        "max_s": max(times),
        "warm_steps": warm,
        "repeats": repeats,
        **extra,
    }


def evaluate_test(
    state: dict[str, Tensor], setting: Setting, input_shape: tuple[int, ...], x: Tensor, y: Tensor
) -> dict[str, Any]:
    """Retrieval metrics (:func:`retrieval`) of the network with ``state`` on the test
    samples ``x``, ``y`` (leave-one-out), in evaluation mode."""
    model = make_net(input_shape, normalize=bool(setting.get("normalize", True)))
    model.load_state_dict(state)
    model.eval()
    return retrieval(embed(model, x), y)
