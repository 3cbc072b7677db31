"""The quality benchmark's rows: tripletkit's strategies, the peer recipes, and the rows with
an add-on (cross-batch memory, 4x batch, hard-class sampler) for both, each with its declared
search space.

A :class:`Strategy` builds a criterion ``(embeddings, labels) -> loss`` from a *setting* (a
dict of hyper-parameters) and a seed, and declares the settings the protocol searches
(:mod:`benchmarks.protocol`): ``lrs`` (Adam's learning rate) crossed with ``variants`` (the
other hyper-parameters). ``normalize`` in a setting L2-normalises the network's output
(:mod:`benchmarks.nets`), for training and for retrieval alike.

**The search spaces** (declared below as data, the same for a tripletkit strategy and the
peer recipe it corresponds to; at least three values per numeric hyper-parameter, around
each paper's default):

- learning rate ``1e-3``, ``3e-3``, ``1e-2`` for every row (:data:`LRS`);
- hinge triplet losses (batch-all, batch-hard, semi-hard, random triplets and the peers'
  triplet recipes): normalisation on and off, three margins on the scale that fits each
  (:data:`TRIPLET_MARGINS`: 0.05 is pytorch-metric-learning's default, 0.2 FaceNet's and
  Hermans et al.'s; distances lie in ``[0, 2]`` on the unit sphere and are about 3.4
  between random images at initialisation without it);
- contrastive: normalisation, three negative and three positive margins
  (:data:`CONTRASTIVE_NEG_MARGINS`, :data:`CONTRASTIVE_POS_MARGINS`; Hadsell et al. use a
  positive margin of 0, pytorch-metric-learning lets it be searched);
- batch-hard with the soft margin: normalisation on and off (nothing else to search);
- distance-weighted sampling + margin loss (unit norm): ``alpha`` and the initial ``beta``
  around Wu et al.'s 0.2 and 1.2;
- multi-similarity: the threshold ``base`` and the miner's ``epsilon`` around Wang et
  al.'s 0.5 and 0.1 (``alpha = 2``, ``beta = 50``);
- SupCon: the temperature around Khosla et al.'s 0.1; circle: ``m`` and ``gamma`` around
  Sun et al.'s 0.4 and 80.

**The same budget per row.** Every searched row trains at most :data:`ROW_BUDGET` = 12
configurations. A larger grid (the triplet rows' 3 learning rates x 6 variants,
distance-weighted, contrastive, multi-similarity, circle) is searched on a seeded subset
of :data:`ROW_BUDGET` of its points that holds every value of every hyper-parameter
(:func:`budget_subset`; the subset depends only on the grid, so a tripletkit row and its
peer recipe search the same points). Rows with a smaller grid (soft margin: 6, SupCon: 9)
cannot be padded and use all of it. (The budget was 18, every triplet grid whole, until
the time plan was measured on the 2-core reference machine: :mod:`benchmarks.budget`.)

**Edges.** A chosen value at an edge of its hyper-parameter's values triggers one extension
step (:func:`extension`: one configuration with that value moved one grid step outwards,
geometric grids multiplied by their ratio, arithmetic ones by their step, never across a
bound of :data:`BOUNDS`), recorded in the search's JSON.

**Rows** (:data:`STRATEGIES`, in table order):

- tripletkit: the fused batch-all (mean over non-zero terms, and over all), batch-hard
  (hinge, soft and smooth margin), semi-hard, distance-weighted sampling + margin loss, contrastive
  loss over mined pairs, random triplets, multi-similarity miner + loss, SupCon and circle
  (fused, cosine);
- peers (``family="peer"``, when pytorch-metric-learning is installed):
  ``TripletMarginMiner(type_of_triplets="semihard")``, ``BatchHardMiner`` (each with
  ``TripletMarginLoss`` and ``LpDistance(normalize_embeddings=...)``),
  ``MultiSimilarityMiner`` + ``MultiSimilarityLoss`` (its best recipe in 0.2);
- add-ons, each for tripletkit and for the peer (:data:`COUNTERPARTS` pairs them): a
  cross-batch memory (tripletkit's :class:`~tripletkit.memory.CrossBatchMemory` on semi-hard
  and batch-hard; pytorch-metric-learning's ``CrossBatchMemory`` on semi-hard (opt-in:
  :data:`OPT_IN_ROWS`), batch-hard
  and multi-similarity; **no row is time-capped**: each memory row's measured cost per step
  is in the results' ``calibration``), a 4x batch trained with the chunked backward of
  :mod:`tripletkit.gradcache` at the same number of training images, and the
  :class:`~tripletkit.samplers.HardClassPKBatchSampler`; and, for tripletkit only, the
  :class:`~tripletkit.samplers.NeighbourPKBatchSampler` (below). An add-on row takes its base row's
  chosen setting and searches the learning rate again (:meth:`Strategy.settings_from`):
  it is validated like every row.

**Dataset-level hard negatives** (issue 20): ``neighbour_batch_hard`` and
``neighbour_semi_hard`` draw their batches from a
:class:`~tripletkit.samplers.NeighbourPKBatchSampler` (``hard_fraction`` 0.5, groups of
two classes: an anchor's and the class of its nearest mined negative), refreshed every
``refresh_every`` steps from inside the training step (:mod:`benchmarks.training`), so the
refresh (embedding the training part and the exact search) is counted in the row's training
time and in its calibrated step time. They are add-on rows of ``batch_hard`` and
``semi_hard``: they start from the base's choice and search the learning rate crossed with
the refresh period (:data:`NEIGHBOUR_REFRESH`, three values; an edge extends like any
other hyper-parameter). pytorch-metric-learning has no such sampler: no peer row.

**Smooth margin** (issue 19): ``batch_hard_smooth`` is ``batch_hard`` with ``smooth=True``
(``softplus(d_ap - d_an + m)``, pytorch-metric-learning's ``smooth_loss=True``), searched
over :data:`TRIPLET_VARIANTS` like ``batch_hard``. A row whose module is missing is skipped
(:func:`missing_requirement`).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from tripletkit.losses import (
    ContrastiveLoss,
    MarginLoss,
    MultiSimilarityLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    circle_loss,
    semi_hard_triplet_loss,
    supcon_loss,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.miners import (
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    RandomTripletMiner,
)

from .nets import EMBEDDING_DIM

__all__ = [
    "LRS",
    "PML",
    "COUNTERPARTS",
    "OPT_IN_ROWS",
    "ROW_BUDGET",
    "STRATEGIES",
    "FusedCriterion",
    "MemoryCriterion",
    "MinedCriterion",
    "PeerCriterion",
    "PeerMemoryCriterion",
    "Setting",
    "Strategy",
    "Training",
    "available",
    "budget_subset",
    "describe_setting",
    "extension",
    "setting_key",
]

#: A setting: hyper-parameter name -> value (``lr``, ``normalize`` and the row's own).
Setting = Mapping[str, Any]

#: Adam learning rates searched for every row.
LRS = (1e-3, 3e-3, 1e-2)
#: Hinge triplet margins searched, per normalisation (unit sphere: distances in [0, 2];
#: raw: ~3.4 between random images at initialisation). 0.05 is pytorch-metric-learning's
#: default, 0.2 FaceNet's and Hermans et al.'s.
TRIPLET_MARGINS = {True: (0.05, 0.1, 0.2), False: (0.2, 0.5, 1.0)}
#: Contrastive negative and positive margins searched, per normalisation.
CONTRASTIVE_NEG_MARGINS = {True: (0.6, 0.9, 1.2), False: (1.0, 2.0, 4.0)}
CONTRASTIVE_POS_MARGINS = {True: (0.0, 0.1, 0.2), False: (0.0, 0.25, 0.5)}
#: Distance-weighted sampling + margin loss (Wu et al. 2017): margins alpha, initial betas.
DW_ALPHAS = (0.1, 0.2, 0.3)
DW_BETAS = (0.6, 1.2, 1.8)
DW_CUTOFF = 0.5
DW_NONZERO_LOSS_CUTOFF = 1.4
#: Multi-similarity (Wang et al. 2019): thresholds ``base`` and miner margins ``epsilon``.
MS_BASES = (0.3, 0.5, 0.7)
MS_EPSILONS = (0.05, 0.1, 0.2)
MS_ALPHA = 2.0
MS_BETA = 50.0
#: SupCon temperatures (Khosla et al. 2020: 0.1).
SUPCON_TEMPERATURES = (0.05, 0.1, 0.2)
#: Circle loss (Sun et al. 2020: m 0.4 and gamma 80 for fine-grained retrieval).
CIRCLE_MS = (0.25, 0.4, 0.55)
CIRCLE_GAMMAS = (40.0, 80.0, 160.0)
#: Most configurations a searched row trains (a covering subset of 3 learning rates x 6
#: variants: the time budget of the 2-core reference machine, :mod:`benchmarks.budget`).
ROW_BUDGET = 12
#: Seed of the subsets of the grids larger than :data:`ROW_BUDGET`.
SUBSET_SEED = 7
#: Bounds of a hyper-parameter's extension (low, high; inclusive). Every other numeric
#: hyper-parameter must stay > 0.
BOUNDS: dict[str, tuple[float, float]] = {
    "pos_margin": (0.0, math.inf),
    "base": (0.0, 1.0),
    "m": (0.0, 1.0),
}
#: The margin of the difficulty fractions when a row has no distance margin.
STATS_MARGIN = 0.2
#: Cross-batch memory rows: rows kept, and the share of the steps before the memory is used.
MEMORY_SIZE = 4096
MEMORY_WARMUP = 0.2
#: Large-batch rows: batch multiplier and rows per forward pass of the chunked backward.
LARGE_BATCH_FACTOR = 4
CHUNK_SIZE = 128
#: Refresh periods (steps between two refreshes) searched by the neighbour-sampler rows,
#: and the period used when no search is saved (the middle one). A refresh of Omniglot's
#: training part (15,100 images, 64-d) took 14.4-16.0 CPU-s on one thread (measured on the
#: loaded 2-core machine): every 200 steps it adds ~1.3 plain steps' time per step; shorter
#: periods would not fit the search and ``--full`` budgets (6, 3 and 1 refreshes in a
#: 600-step search run).
NEIGHBOUR_REFRESH = (100, 200, 400)
#: Share of a neighbour-sampler batch's classes that come from mined groups.
NEIGHBOUR_HARD_FRACTION = 0.5
#: The peer library's import name.
PML = "pytorch_metric_learning"


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def setting_key(setting: Setting) -> str:
    """A stable text key of a setting (``lr=0.001,normalize=True,margin=0.2``)."""
    return ",".join(f"{k}={setting[k]}" for k in setting)


def describe_setting(setting: Setting) -> str:
    """A short human-readable form of a setting (``lr 1e-3, L2, margin 0.2``)."""
    parts = []
    for key, value in setting.items():
        if key == "lr":
            parts.append(f"lr {value:.0e}".replace("e-0", "e-"))
        elif key == "normalize":
            parts.append("L2" if value else "raw")
        else:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------
# How a row trains
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    """How a row's training steps run (:mod:`benchmarks.training`).

    Attributes:
        kind: ``"plain"`` (P x K batch, loss, backward), ``"memory"`` (the criterion keeps
            a cross-batch memory and uses it after ``warmup`` of the steps),
            ``"large_batch"`` (``batch_factor`` times larger batches, ``batch_factor``
            times fewer steps, :func:`tripletkit.gradcache.cached_backward` in chunks of
            ``chunk_size``) or ``"hard_class"`` (batches from a
            :class:`~tripletkit.samplers.HardClassPKBatchSampler` updated with every
            training batch's embeddings; its batches are redrawn every ``refresh_steps``).
        time_cap_factor: the row stops once its training time exceeds this multiple of a
            plain run's planned training time (None: no cap).
    """

    kind: str = "plain"
    memory_size: int = 0
    warmup: float = 0.0
    batch_factor: int = 1
    chunk_size: int = CHUNK_SIZE
    hard_fraction: float = 0.5
    refresh_steps: int = 50
    time_cap_factor: float | None = None

    def describe(self) -> str:
        """The training variant in words (saved in the JSON)."""
        cap = (
            f"; capped at {self.time_cap_factor:g} x the planned training time of a plain run"
            if self.time_cap_factor
            else ""
        )
        if self.kind == "memory":
            return (
                f"cross-batch memory of {self.memory_size} embeddings, used after the first "
                f"{self.warmup:.0%} of the steps (filled from the start){cap}"
            )
        if self.kind == "large_batch":
            return (
                f"{self.batch_factor}x larger P x K batches (P x {self.batch_factor}), "
                f"{self.batch_factor}x fewer steps (same training images), "
                f"tripletkit.gradcache.cached_backward with chunk_size={self.chunk_size}{cap}"
            )
        if self.kind == "neighbour":
            return (
                f"NeighbourPKBatchSampler(hard_fraction={self.hard_fraction}), refreshed "
                f"(training part re-embedded, exact nearest other-class neighbours) every "
                f"refresh_every steps inside the training step (default {self.refresh_steps}): "
                f"the refresh time is training time{cap}"
            )
        if self.kind == "hard_class":
            return (
                f"HardClassPKBatchSampler(hard_fraction={self.hard_fraction}), updated with "
                f"every batch's embeddings, batches redrawn every {self.refresh_steps} "
                f"steps{cap}"
            )
        return "P x K batches (PKBatchSampler), one backward per batch" + cap


PLAIN = Training()


# --------------------------------------------------------------------------------------
# Criteria
# --------------------------------------------------------------------------------------


class FusedCriterion(nn.Module):
    """``criterion(embeddings, labels, **refs)`` for a fused loss with fixed keywords."""

    def __init__(self, fn: Callable[..., Tensor], **kwargs: Any) -> None:
        super().__init__()
        self.fn = fn
        self.kwargs = kwargs

    def forward(self, embeddings: Tensor, labels: Tensor, **refs: Any) -> Tensor:
        return self.fn(embeddings, labels, **self.kwargs, **refs)


class MinedCriterion(nn.Module):
    """``criterion(embeddings, labels)``: a tripletkit miner's tuples fed to a loss module.

    The miner sees detached embeddings (mining is not differentiated); the loss module's
    parameters (the margin loss's ``beta``) are this module's parameters.
    """

    def __init__(self, miner: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings.detach(), labels))


class PeerCriterion(nn.Module):
    """``criterion(embeddings, labels)``: a pytorch-metric-learning miner and loss, called
    as that library's documentation does (``loss(emb, labels, miner(emb, labels))``)."""

    def __init__(self, miner: Any, loss: Any) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return self.loss(embeddings, labels, self.miner(embeddings, labels))


class MemoryCriterion(nn.Module):
    """A fused tripletkit loss on the batch, plus the same loss of the batch's anchors
    against a :class:`~tripletkit.memory.CrossBatchMemory` once ``warmup_steps`` steps have
    passed (the memory is read before the batch is enqueued, so anchors never meet
    themselves; it is filled from the first step)."""

    def __init__(self, base: FusedCriterion, size: int, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.base = base
        self.memory = CrossBatchMemory(size, dim)
        self.warmup_steps = 0
        self.calls = 0

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        loss = self.base(embeddings, labels)
        if self.calls >= self.warmup_steps and len(self.memory) > 0:
            mem_emb, mem_labels = self.memory.get()
            loss = loss + self.base(
                embeddings, labels, ref_embeddings=mem_emb, ref_labels=mem_labels
            )
        self.memory.enqueue(embeddings.detach(), labels)
        self.calls += 1
        return loss


class PeerMemoryCriterion(nn.Module):
    """pytorch-metric-learning's ``CrossBatchMemory(loss, dim, size, miner)``; during the
    first ``warmup_steps`` steps the plain recipe (miner + loss on the batch) is trained and
    the batch is only added to the memory."""

    def __init__(self, miner: Any, loss: Any, size: int, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        from pytorch_metric_learning.losses import CrossBatchMemory as PeerMemory

        self.plain = PeerCriterion(miner, loss)
        self.xbm = PeerMemory(loss, dim, memory_size=size, miner=miner)
        self.warmup_steps = 0
        self.calls = 0

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        self.calls += 1
        if self.calls <= self.warmup_steps:
            self.xbm.add_to_memory(embeddings.detach(), labels, len(labels))
            return self.plain(embeddings, labels)
        return self.xbm(embeddings, labels)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """One row of the quality table.

    Attributes:
        name: identifier on the command line, in the JSON, the tables and the plots.
        label: a human-readable name.
        miner, loss: what is mined and the loss, in words (saved in the JSON).
        build: ``build(setting, seed)`` returns a fresh criterion module
            ``(embeddings, labels) -> loss`` (its parameters are trained with the network;
            random miners take their seed from ``seed``).
        variants: the searched values of every hyper-parameter but the learning rate.
        lrs: the searched learning rates.
        family: ``"tripletkit"`` or ``"peer"``.
        requires: a module the row needs (skipped with a note when it is missing).
        training: how its steps run (:class:`Training`).
        base: for an add-on row, the row whose chosen setting it starts from (it searches
            the learning rate only, :meth:`settings_from`).
        margin_key: the setting's distance margin, used for the difficulty fractions
            (None: :data:`STATS_MARGIN`).
        addon_variants: for an add-on row, hyper-parameters of the add-on searched with the
            learning rate (each a dict; ``()``: the learning rate only).
    """

    name: str
    label: str
    miner: str
    loss: str
    build: Callable[[Setting, int], nn.Module]
    variants: tuple[Mapping[str, Any], ...] = ()
    lrs: tuple[float, ...] = LRS
    family: str = "tripletkit"
    requires: str | None = None
    training: Training = PLAIN
    base: str | None = None
    margin_key: str | None = "margin"
    notes: tuple[str, ...] = field(default=())
    addon_variants: tuple[Mapping[str, Any], ...] = ()

    @property
    def tuned(self) -> bool:
        """Whether the row has a search space of its own (add-on rows start from their
        base row's choice and search the learning rate)."""
        return self.base is None

    def grid(self) -> list[dict[str, Any]]:
        """Every point of the declared space (learning rates x variants), in order."""
        return [{"lr": lr, **variant} for lr in self.lrs for variant in self.variants]

    def settings(self, grid: str = "full") -> list[dict[str, Any]]:
        """The searched settings: the whole grid, or :func:`budget_subset` of it when it
        holds more than :data:`ROW_BUDGET` points; ``grid="tiny"`` keeps the first two
        (the ``--quick`` smoke run)."""
        every = self.grid()
        if grid == "tiny":
            return every[:2]
        return budget_subset(every) if len(every) > ROW_BUDGET else every

    def settings_from(self, chosen: Setting, grid: str = "full") -> list[dict[str, Any]]:
        """An add-on row's search: its base row's ``chosen`` setting at every learning
        rate of :data:`LRS` (the add-on changes the gradient's scale and the number of
        steps; the rest is the base's choice), crossed with the row's ``addon_variants``
        when it has some; ``grid="tiny"``: the first two."""
        extra = self.addon_variants or ({},)
        every = [{**dict(chosen), "lr": lr, **v} for lr in LRS for v in extra]
        return every[:2] if grid == "tiny" else every

    def default_setting(self) -> dict[str, Any]:
        """The setting used when no search result exists: the middle learning rate and the
        middle of the normalised variants in declared order (each paper's default where
        the grid is centred on it)."""
        middle = sorted(self.lrs)[len(self.lrs) // 2]
        normed = [v for v in self.variants if v.get("normalize", True)] or list(self.variants)
        return {"lr": middle, **normed[len(normed) // 2]} if normed else {"lr": middle}

    def stats_margin(self, setting: Setting) -> float:
        """Margin of the difficulty fractions of this row's runs."""
        if self.margin_key is None or self.margin_key not in setting:
            return STATS_MARGIN
        return float(setting[self.margin_key])


# --------------------------------------------------------------------------------------
# Search spaces: the budget subset and the edges
# --------------------------------------------------------------------------------------


def _covers(subset: Sequence[Mapping[str, Any]], grid: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``subset`` holds every value that every hyper-parameter takes in ``grid``."""
    keys = {k for s in grid for k in s}
    return all({s.get(k) for s in subset} == {s.get(k) for s in grid} for k in keys)


def budget_subset(
    grid: Sequence[Mapping[str, Any]], budget: int = ROW_BUDGET, seed: int = SUBSET_SEED
) -> list[dict[str, Any]]:
    """``budget`` points of ``grid`` drawn without replacement, with a seed derived from
    ``seed`` and the grid itself (the same grid always gives the same subset), redrawn
    until every value of every hyper-parameter is in it; in grid order."""
    if len(grid) <= budget:
        return [dict(s) for s in grid]
    key = "|".join(setting_key(s) for s in grid)
    rng = random.Random(f"{seed}:{key}")
    for _ in range(10_000):
        picked = sorted(rng.sample(range(len(grid)), budget))
        subset = [dict(grid[i]) for i in picked]
        if _covers(subset, grid):
            return subset
    raise ValueError(f"no subset of {budget} of these {len(grid)} settings covers every value")


def axis_values(grid: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any], key: str) -> list:
    """The sorted values of hyper-parameter ``key`` along the line of ``grid`` through
    ``chosen`` (the points equal to ``chosen`` in every other key)."""
    return sorted(
        {
            s[key]
            for s in grid
            if key in s and all(s.get(k) == v for k, v in chosen.items() if k != key)
        }
    )


def _outwards(values: Sequence[float], high: bool) -> float:
    """One grid step beyond the low or high edge of ``values`` (at least two of them):
    arithmetic grids by their step, the others (positive) by their ratio; an integer for a
    grid of integers (a step count stays a count)."""
    a, b = (values[-2], values[-1]) if high else (values[1], values[0])
    steps = [values[i + 1] - values[i] for i in range(len(values) - 1)]
    arithmetic = all(math.isclose(d, steps[0], rel_tol=1e-6) for d in steps)
    if arithmetic or a <= 0 or b <= 0:
        new = b + (b - a)
    else:
        new = b * (b / a)
    if all(isinstance(v, int) for v in values):
        return max(1, round(new))
    return float(f"{new:.3g}")


def _inside(key: str, value: float) -> bool:
    low, high = BOUNDS.get(key, (0.0, math.inf))
    if key not in BOUNDS:
        return value > 0
    return low <= value <= high


def extension(
    grid: Sequence[Mapping[str, Any]], chosen: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The hyper-parameters of ``chosen`` at an edge of their values in ``grid`` (numbers
    only, with at least two values along their line), each with the value one step
    outwards (``"to"``, None when that would cross a bound of :data:`BOUNDS`, with the
    bound in ``"why"``)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in chosen.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = axis_values(grid, chosen, key)
        if len(values) < 2 or value not in (values[0], values[-1]):
            continue
        high = value == values[-1]
        new = _outwards(values, high)
        entry: dict[str, Any] = {"from": value, "edge": "high" if high else "low", "to": new}
        if not _inside(key, new):
            entry["to"] = None
            entry["why"] = f"{new:g} is outside the bounds of {key}"
        out[key] = entry
    return out


def _margin_variants(margins: Mapping[bool, Sequence[float]], key: str = "margin") -> tuple:
    return tuple({"normalize": n, key: m} for n in (True, False) for m in margins[n])


TRIPLET_VARIANTS = _margin_variants(TRIPLET_MARGINS)
CONTRASTIVE_VARIANTS = tuple(
    {"normalize": n, "neg_margin": neg, "pos_margin": pos}
    for n in (True, False)
    for neg, pos in itertools.product(CONTRASTIVE_NEG_MARGINS[n], CONTRASTIVE_POS_MARGINS[n])
)
SOFT_VARIANTS = ({"normalize": True}, {"normalize": False})
DW_VARIANTS = tuple(
    {"normalize": True, "margin": a, "beta": b} for a in DW_ALPHAS for b in DW_BETAS
)
MS_VARIANTS = tuple(
    {"normalize": True, "base": b, "epsilon": e} for b in MS_BASES for e in MS_EPSILONS
)
SUPCON_VARIANTS = tuple({"normalize": True, "temperature": t} for t in SUPCON_TEMPERATURES)
CIRCLE_VARIANTS = tuple(
    {"normalize": True, "m": m, "gamma": g} for m in CIRCLE_MS for g in CIRCLE_GAMMAS
)


def _fused(fn: Callable[..., Tensor], **kw: Any) -> Callable[[Setting, int], nn.Module]:
    def build(setting: Setting, seed: int) -> nn.Module:
        return FusedCriterion(fn, margin=setting["margin"], **kw)

    return build


def _tripletkit_rows() -> list[Strategy]:
    return [
        Strategy(
            "batch_all_nonzero",
            "batch-all (mean > 0)",
            "all valid triplets (fused)",
            "hinge, mean over triplets with loss > 0 (Hermans et al. BA!=0)",
            _fused(batch_all_triplet_loss, reduction="mean_nonzero"),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "batch_all_mean",
            "batch-all (mean)",
            "all valid triplets (fused)",
            "hinge, mean over all valid triplets",
            _fused(batch_all_triplet_loss, reduction="mean"),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "batch_hard",
            "batch-hard",
            "hardest positive and negative per anchor (fused)",
            "hinge, mean over anchors",
            _fused(batch_hard_triplet_loss),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "batch_hard_soft",
            "batch-hard soft",
            "hardest positive and negative per anchor (fused)",
            "soft margin softplus(d_ap - d_an), mean over anchors",
            lambda s, seed: FusedCriterion(batch_hard_triplet_loss, soft_margin=True),
            SOFT_VARIANTS,
            margin_key=None,
        ),
        Strategy(
            "batch_hard_smooth",
            "batch-hard smooth",
            "hardest positive and negative per anchor (fused)",
            "smooth hinge softplus(d_ap - d_an + margin) (smooth=True; pytorch-metric-learning's "
            "smooth_loss), mean over anchors",
            _fused(batch_hard_triplet_loss, smooth=True),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "semi_hard",
            "semi-hard",
            "per positive pair the nearest negative beyond it (FaceNet, fused)",
            "hinge, mean over positive pairs",
            _fused(semi_hard_triplet_loss),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "distance_weighted",
            "distance-weighted",
            f"DistanceWeightedMiner(cutoff={DW_CUTOFF}, nonzero_loss_cutoff="
            f"{DW_NONZERO_LOSS_CUTOFF}): one negative per positive pair",
            "MarginLoss(margin=alpha, beta learnable from its initial value, nu=0) (Wu et al.)",
            lambda s, seed: MinedCriterion(
                DistanceWeightedMiner(DW_CUTOFF, DW_NONZERO_LOSS_CUTOFF, seed=seed),
                MarginLoss(margin=s["margin"], beta=s["beta"]),
            ),
            DW_VARIANTS,
        ),
        Strategy(
            "contrastive",
            "contrastive",
            "PairMarginMiner(pos_margin, neg_margin): the pairs with a non-zero loss",
            "ContrastiveLoss(pos_margin, neg_margin), mean over mined pairs",
            lambda s, seed: MinedCriterion(
                PairMarginMiner(s["pos_margin"], s["neg_margin"]),
                ContrastiveLoss(s["pos_margin"], s["neg_margin"]),
            ),
            CONTRASTIVE_VARIANTS,
            margin_key=None,
        ),
        Strategy(
            "random",
            "random triplets",
            "RandomTripletMiner: one uniform negative per positive pair",
            "hinge, mean over triplets",
            lambda s, seed: MinedCriterion(
                RandomTripletMiner(seed=seed), TripletMarginLoss(margin=s["margin"])
            ),
            TRIPLET_VARIANTS,
        ),
        Strategy(
            "multi_similarity",
            "multi-similarity",
            "MultiSimilarityMiner(epsilon) (cosine)",
            f"MultiSimilarityLoss(alpha={MS_ALPHA:g}, beta={MS_BETA:g}, base)",
            lambda s, seed: MinedCriterion(
                MultiSimilarityMiner(s["epsilon"]),
                MultiSimilarityLoss(MS_ALPHA, MS_BETA, s["base"]),
            ),
            MS_VARIANTS,
            margin_key=None,
        ),
        Strategy(
            "supcon",
            "SupCon",
            "every pair of the batch (fused, cosine)",
            "supcon_loss(temperature) (Khosla et al. 2020, L_out), mean over anchors",
            lambda s, seed: FusedCriterion(supcon_loss, temperature=s["temperature"]),
            SUPCON_VARIANTS,
            margin_key=None,
        ),
        Strategy(
            "circle",
            "circle",
            "every pair of the batch (fused, cosine)",
            "circle_loss(m, gamma) (Sun et al. 2020), mean over anchors",
            lambda s, seed: FusedCriterion(circle_loss, m=s["m"], gamma=s["gamma"]),
            CIRCLE_VARIANTS,
            margin_key=None,
        ),
    ]


def _pml_distance(setting: Setting) -> Any:
    from pytorch_metric_learning.distances import LpDistance

    return LpDistance(normalize_embeddings=bool(setting["normalize"]))


def _pml_triplet(kind: str) -> Callable[[Setting, int], nn.Module]:
    def build(setting: Setting, seed: int) -> nn.Module:
        from pytorch_metric_learning import losses, miners

        distance = _pml_distance(setting)
        if kind == "batch_hard":
            miner: Any = miners.BatchHardMiner(distance=distance)
        else:
            miner = miners.TripletMarginMiner(
                setting["margin"], type_of_triplets=kind, distance=distance
            )
        return PeerCriterion(miner, losses.TripletMarginLoss(setting["margin"], distance=distance))

    return build


def _pml_multi_similarity(setting: Setting, seed: int) -> nn.Module:
    from pytorch_metric_learning import losses, miners

    return PeerCriterion(
        miners.MultiSimilarityMiner(setting["epsilon"]),
        losses.MultiSimilarityLoss(MS_ALPHA, MS_BETA, setting["base"]),
    )


def _peer_rows() -> list[Strategy]:
    loss = "TripletMarginLoss(margin, distance=LpDistance(normalize_embeddings=normalize))"
    return [
        Strategy(
            "pml_semihard",
            "PML semi-hard",
            "pytorch-metric-learning TripletMarginMiner(margin, type_of_triplets='semihard'): "
            "every semi-hard triplet",
            loss + ", mean over non-zero terms",
            _pml_triplet("semihard"),
            TRIPLET_VARIANTS,
            family="peer",
            requires=PML,
        ),
        Strategy(
            "pml_batch_hard",
            "PML batch-hard",
            "pytorch-metric-learning BatchHardMiner(): hardest positive and negative per anchor",
            loss + ", mean over non-zero terms",
            _pml_triplet("batch_hard"),
            TRIPLET_VARIANTS,
            family="peer",
            requires=PML,
        ),
        Strategy(
            "pml_multi_similarity",
            "PML multi-similarity",
            "pytorch-metric-learning MultiSimilarityMiner(epsilon)",
            f"MultiSimilarityLoss(alpha={MS_ALPHA:g}, beta={MS_BETA:g}, base)",
            _pml_multi_similarity,
            MS_VARIANTS,
            family="peer",
            requires=PML,
            margin_key=None,
        ),
    ]


#: Declared below; :func:`_derived_rows` reads the fused strategies by name.
_FUSED = {"batch_all_nonzero", "batch_all_mean", "batch_hard", "semi_hard", "supcon", "circle"}


def _memory_row(base: Strategy) -> Strategy:
    if base.name not in _FUSED:
        raise ValueError(f"a memory row needs a fused tripletkit base, got {base.name!r}")
    training = Training("memory", memory_size=MEMORY_SIZE, warmup=MEMORY_WARMUP)
    return Strategy(
        f"xbm_{base.name}",
        f"{base.label} + XBM",
        f"{base.miner}, within the batch and against a CrossBatchMemory({MEMORY_SIZE})",
        f"{base.loss}; batch term + memory term",
        lambda s, seed: MemoryCriterion(base.build(s, seed), MEMORY_SIZE),  # type: ignore[arg-type]
        training=training,
        base=base.name,
        margin_key=base.margin_key,
    )


def _peer_memory_row(base: Strategy) -> Strategy:
    def build(setting: Setting, seed: int) -> nn.Module:
        plain = base.build(setting, seed)
        return PeerMemoryCriterion(plain.miner, plain.loss, MEMORY_SIZE)

    training = Training("memory", memory_size=MEMORY_SIZE, warmup=MEMORY_WARMUP)
    return Strategy(
        f"pml_xbm_{base.name.removeprefix('pml_')}",
        f"{base.label} + XBM",
        f"{base.miner}, against pytorch-metric-learning's CrossBatchMemory({MEMORY_SIZE})",
        f"{base.loss}; loss of the batch against the memory (which holds the batch)",
        build,
        family="peer",
        requires=PML,
        training=training,
        base=base.name,
        margin_key=base.margin_key,
        notes=(
            "not time-capped (like every memory row); its cost per step is measured in the "
            "calibration pass before the row (results: calibration)",
        ),
    )


def _large_batch_row(base: Strategy) -> Strategy:
    training = Training("large_batch", batch_factor=LARGE_BATCH_FACTOR, chunk_size=CHUNK_SIZE)
    return Strategy(
        f"large_batch_{base.name}",
        f"{base.label}, batch x{LARGE_BATCH_FACTOR}",
        base.miner,
        base.loss,
        base.build,
        family=base.family,
        requires=base.requires,
        training=training,
        base=base.name,
        margin_key=base.margin_key,
    )


def _hard_class_row(base: Strategy) -> Strategy:
    return Strategy(
        f"hard_class_{base.name}",
        f"{base.label}, hard classes",
        base.miner,
        base.loss,
        base.build,
        family=base.family,
        requires=base.requires,
        training=Training("hard_class", hard_fraction=0.5, refresh_steps=50),
        base=base.name,
        margin_key=base.margin_key,
    )


def _neighbour_row(base: Strategy) -> Strategy:
    training = Training(
        "neighbour",
        hard_fraction=NEIGHBOUR_HARD_FRACTION,
        refresh_steps=NEIGHBOUR_REFRESH[len(NEIGHBOUR_REFRESH) // 2],
    )
    return Strategy(
        f"neighbour_{base.name}",
        f"{base.label}, mined neighbours",
        f"{base.miner}, in batches around mined nearest other-class neighbours",
        base.loss,
        base.build,
        family=base.family,
        requires=base.requires,
        training=training,
        base=base.name,
        margin_key=base.margin_key,
        addon_variants=tuple({"refresh_every": r} for r in NEIGHBOUR_REFRESH),
        notes=(
            "the sampler's refresh (embedding the training part, exact search) runs inside "
            "the training step: counted in train_s and in the calibrated step time",
        ),
    )


#: Bases of the add-on rows, tripletkit's and the peer's.
MEMORY_BASES = ("semi_hard", "batch_hard")
PEER_MEMORY_BASES = ("pml_semihard", "pml_batch_hard", "pml_multi_similarity")
LARGE_BATCH_BASES = ("batch_hard", "pml_batch_hard", "pml_multi_similarity")
HARD_CLASS_BASES = ("batch_hard", "semi_hard", "pml_batch_hard", "pml_multi_similarity")
NEIGHBOUR_BASES = ("batch_hard", "semi_hard")
#: Rows that the protocol's own plans (the search, ``--full``, the default run's candidates)
#: leave out, with the reason; ``--strategies`` still runs them (with ``--tune`` too).
OPT_IN_ROWS: dict[str, str] = {
    "pml_xbm_semihard": (
        "opt-in (--strategies): pytorch-metric-learning's semi-hard miner over a cross-batch "
        "memory takes 0.33 s per step on the 2-core reference machine (interquartile "
        "0.21-0.45 s; 6x a plain step, a fifth of --full's time alone); the memory add-on's "
        "peer rows are multi-similarity and batch-hard (benchmarks/results/quality_budget.json)"
    ),
}

#: Matched (tripletkit row, peer row) pairs: the same miner and loss, or the same add-on on
#: them; the results test each pair's difference (paired over seeds).
COUNTERPARTS = (
    ("batch_hard", "pml_batch_hard"),
    ("semi_hard", "pml_semihard"),
    ("multi_similarity", "pml_multi_similarity"),
    ("xbm_batch_hard", "pml_xbm_batch_hard"),
    ("xbm_semi_hard", "pml_xbm_semihard"),
    ("large_batch_batch_hard", "large_batch_pml_batch_hard"),
    ("hard_class_batch_hard", "hard_class_pml_batch_hard"),
)


def _derived_rows(by_name: Mapping[str, Strategy]) -> list[Strategy]:
    return [
        *(_memory_row(by_name[b]) for b in MEMORY_BASES),
        *(_peer_memory_row(by_name[b]) for b in PEER_MEMORY_BASES),
        *(_large_batch_row(by_name[b]) for b in LARGE_BATCH_BASES),
        *(_hard_class_row(by_name[b]) for b in HARD_CLASS_BASES),
        *(_neighbour_row(by_name[b]) for b in NEIGHBOUR_BASES),
    ]


def _all_rows() -> dict[str, Strategy]:
    rows = {s.name: s for s in (*_tripletkit_rows(), *_peer_rows())}
    rows.update({s.name: s for s in _derived_rows(rows)})
    return rows


#: Every row of the quality benchmark, in table order.
STRATEGIES: dict[str, Strategy] = _all_rows()


def missing_requirement(strategy: Strategy) -> str | None:
    """Why ``strategy`` cannot run here (its required module is missing), or None."""
    if strategy.requires is None or available(strategy.requires):
        return None
    if strategy.requires == PML:
        return "pytorch-metric-learning is not installed (pip install -e '.[bench]')"
    return f"{strategy.requires} is not available in this tripletkit"
