"""The hardening harness: random awkward input thrown at every public entry point.

Hypothesis draws batches (:func:`specs`) with random shapes (N in 0..12, D in 1..6), label
layouts (one class, all distinct, singletons, P x K, random), float dtypes (half included),
integer label dtypes of every width, non-contiguous views, and at most one fault: a NaN or an
Inf, the wrong number of dimensions, integer embeddings, no feature column, 2-D / float / bool
labels, or a label vector of the wrong length (:func:`build` turns a :class:`Spec` into
tensors). Every entry point of :data:`ENTRIES`, through an adapter that takes
``(embeddings, labels, ctx)``, must then (:func:`run_once`)

- either return outputs whose floating tensors are finite and whose index tensors are int64
  and in range (losses: with a finite gradient, and still in the autograd graph;
  :func:`check_output`),
- or raise the documented ValueError / TypeError, with a message naming the problem
  (:func:`check_error`);

never another exception type, never a NaN or Inf output, never a silent acceptance of bad
input, never a change to its inputs. :data:`EDGE_SPECS` are fixed awkward batches (empty, one
element, one class, all distinct, zero rows in half precision); :data:`HYPER_PARAMETERS` the
entry points of every real hyper-parameter. The tests are in ``test_hardening.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor

from tripletkit import distributed
from tripletkit.distances import paired_distance, pairwise_distance
from tripletkit.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    ContrastiveLoss,
    MarginLoss,
    SemiHardTripletLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    margin_loss,
    semi_hard_triplet_loss,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.metrics import retrieval_metrics
from tripletkit.miners import (
    BatchAllMiner,
    BatchHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    RandomTripletMiner,
    SemiHardMiner,
    TripletMarginMiner,
)
from tripletkit.samplers import PKBatchSampler
from tripletkit.stats import triplet_stats
from tripletkit.types import Pairs, Triplets, TripletStats

#: Random batches per entry point (each is run twice, for determinism).
EXAMPLES = 20
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
LAYOUTS = ("one_class", "distinct", "singletons", "pk", "random")
VALUES = ("normal", "grid", "constant", "unit")
VIEWS = ("contiguous", "transposed", "row_stride", "col_stride")
METRICS = ("euclidean", "sqeuclidean", "cosine")
BACKENDS = ("torch", "numba")
REDUCTIONS = ("mean", "sum", "mean_nonzero", "none")

#: The hyper-parameters every adapter passes (each a valid, unremarkable value): the triplet
#: margin, the margin loss's ``beta`` and ``nu``, the multi-similarity ``epsilon``, the
#: contrastive margins, the per-class ``beta`` size (above every generated label) and the
#: number of triplets of the fixed-count random miner.
MARGIN = 0.2
BETA = 1.2
NU = 0.1
EPSILON = 0.1
POS_MARGIN, NEG_MARGIN = 0.0, 1.0
PAIR_MARGINS = (0.1, 1.0)
NUM_CLASSES = 32
NUM_TRIPLETS = 7
#: Rows kept by the memory adapter (it enqueues the batch twice).
MEMORY_SIZE = 5
#: ``p`` classes of ``k`` samples per batch of the sampler adapter.
P, K = 2, 2
#: The ``k`` of the recall@k of the retrieval adapters.
RECALL_KS = (1, 3)

NONFINITE = {"nan": math.nan, "inf": math.inf, "neg_inf": -math.inf}
EMBEDDING_FAULTS = ("nan", "inf", "neg_inf", "emb_1d", "emb_3d", "emb_int", "no_features")
LABEL_FAULTS = ("labels_2d", "labels_float", "labels_bool")
LENGTH_FAULTS = ("length_short", "length_long")
FAULTS = EMBEDDING_FAULTS + LABEL_FAULTS + LENGTH_FAULTS

_NAN_OR_INF = (ValueError, (("NaN or Inf",),))
_LABELS_INTEGER = (TypeError, (("labels",), ("integer",)))
#: Non-integral float labels: a ValueError from the losses' value check, a TypeError from
#: the samplers (which take integer labels only).
_LABELS_INTEGRAL = ((TypeError, ValueError), (("labels",), ("integer",)))
_LENGTH = (ValueError, (("labels",), ("entries", "entry", "rows")))
#: What each fault must raise: the exception type and groups of words, each group satisfied
#: when the message contains one of its words.
EXPECTED: dict[
    str, tuple[type[Exception] | tuple[type[Exception], ...], tuple[tuple[str, ...], ...]]
] = {
    "nan": _NAN_OR_INF,
    "inf": _NAN_OR_INF,
    "neg_inf": _NAN_OR_INF,
    "emb_1d": (ValueError, (("2-D",),)),
    "emb_3d": (ValueError, (("2-D",),)),
    "emb_int": (TypeError, (("floating",),)),
    "no_features": (ValueError, (("feature",),)),
    "labels_2d": (ValueError, (("labels",), ("1-D",))),
    "labels_float": _LABELS_INTEGRAL,
    "labels_bool": _LABELS_INTEGER,
    "length_short": _LENGTH,
    "length_long": _LENGTH,
}


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Spec:
    """Everything that determines one generated ``(embeddings, labels)`` pair."""

    n: int
    d: int
    layout: str
    pk_k: int
    values: str
    scale: float
    dtype: torch.dtype
    label_dtype: torch.dtype
    shift: int
    view: str
    fault: str | None
    seed: int


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(0, 12), label="n")
    label_dtype = draw(st.sampled_from(LABEL_DTYPES), label="label_dtype")
    shifts = [0, 5] if label_dtype == torch.uint8 else [0, 5, -3]
    fault = draw(st.one_of(st.none(), st.sampled_from(FAULTS)), label="fault")
    if n == 0 and fault in (*NONFINITE, "labels_float"):
        fault = None  # nowhere to put the NaN or the non-integral label
    if n == 0 and fault == "length_short":
        fault = "length_long"
    return Spec(
        n=n,
        d=draw(st.integers(1, 6), label="d"),
        layout=draw(st.sampled_from(LAYOUTS), label="layout"),
        pk_k=draw(st.integers(2, 3), label="pk_k"),
        values=draw(st.sampled_from(VALUES), label="values"),
        scale=draw(st.sampled_from([1.0, 1e-3, 100.0]), label="scale"),
        dtype=draw(st.sampled_from(FLOAT_DTYPES), label="dtype"),
        label_dtype=label_dtype,
        shift=draw(st.sampled_from(shifts), label="shift"),
        view=draw(st.sampled_from(VIEWS), label="view"),
        fault=fault,
        seed=draw(st.integers(0, 2**16), label="seed"),
    )


def _label_values(spec: Spec, g: torch.Generator) -> list[int]:
    n = spec.n
    if spec.layout == "one_class":
        values = [0] * n
    elif spec.layout == "distinct":
        values = list(range(n))
    elif spec.layout == "singletons":  # a few pairs, then classes of one sample
        pairs = n // 4
        values = [i // 2 for i in range(2 * pairs)] + list(range(pairs, pairs + n - 2 * pairs))
    elif spec.layout == "pk":
        values = [i // spec.pk_k for i in range(n)]
    else:
        values = torch.randint(0, 4, (n,), generator=g).tolist()
    return [v + spec.shift for v in values]


@dataclass
class Inputs:
    x: Tensor  # what the entry point receives as embeddings
    y: Tensor  # what it receives as labels
    leaf: Tensor | None  # the tensor gradients are taken with respect to


def build(spec: Spec, requires_grad: bool) -> Inputs:
    """The inputs of ``spec``; two calls give equal, independent tensors."""
    g = torch.Generator().manual_seed(spec.seed)
    n, d = spec.n, spec.d
    f64 = torch.float64
    if spec.values == "normal":
        v = torch.randn(n, d, generator=g, dtype=f64) * spec.scale
    elif spec.values == "grid":  # small integers: exact ties, duplicates, zero rows
        v = torch.randint(-2, 3, (n, d), generator=g).to(f64) * spec.scale
    elif spec.values == "constant":  # every row the same
        v = (torch.randn(1, d, generator=g, dtype=f64) * spec.scale).expand(n, d).clone()
    else:  # unit-norm rows
        v = F.normalize(torch.randn(n, d, generator=g, dtype=f64), dim=1)
    if spec.fault in NONFINITE and n:
        i = int(torch.randint(0, n, (1,), generator=g))
        j = int(torch.randint(0, d, (1,), generator=g))
        v[i, j] = NONFINITE[spec.fault]
    labels = torch.tensor(_label_values(spec, g), dtype=torch.int64).to(spec.label_dtype)

    v = v.to(spec.dtype)
    if spec.view == "transposed":
        leaf = v.t().contiguous()
    elif spec.view == "row_stride":
        leaf = torch.zeros(2 * n, d, dtype=spec.dtype)
        leaf[::2] = v
    elif spec.view == "col_stride":
        leaf = torch.zeros(n, 2 * d, dtype=spec.dtype)
        leaf[:, ::2] = v
    else:
        leaf = v.clone()
    if requires_grad:
        leaf.requires_grad_()
    x = {
        "transposed": lambda t: t.t(),
        "row_stride": lambda t: t[::2],
        "col_stride": lambda t: t[:, ::2],
        "contiguous": lambda t: t,
    }[spec.view](leaf)
    y = labels
    if spec.view != "contiguous":
        y = torch.zeros(2 * n, dtype=spec.label_dtype)
        y[::2] = labels
        y = y[::2]

    fault = spec.fault
    if fault == "emb_1d":
        x = x[:, 0]
    elif fault == "emb_3d":
        x = x[:, :, None]
    elif fault == "emb_int":
        x, leaf = v.to(f64).round().to(torch.int64), None
    elif fault == "no_features":
        x = x[:, :0]
    elif fault == "labels_2d":
        y = y[:, None, None]  # 2-D labels are multi-hot (issue 19): 3-D is the fault
    elif fault == "labels_float":  # integral float labels are accepted: these are not
        y = y.to(torch.float32) + 0.5
    elif fault == "labels_bool":
        y = y.to(torch.bool)
    elif fault == "length_short":
        y = y[:-1]
    elif fault == "length_long":
        y = torch.cat([y, y.new_zeros(1)])
    return Inputs(x, y, leaf)


# ------------------------------------------------------------------------------ entry points

#: A small clean batch, for the tests that are not driven by generated input.
CLEAN_X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
CLEAN_Y = torch.tensor([0, 0, 1, 1, 2, 2])


@dataclass(frozen=True)
class Ctx:
    """The keyword choices of one call, drawn once per example and used by both calls."""

    d: int
    metric: str = "euclidean"
    backend: str = "torch"
    soft_margin: bool = False
    reduction: str = "mean"
    normalize: bool = False
    variant: object = None


def _anchors(c: Ctx) -> tuple[Tensor, Tensor]:
    """The fixed, clean anchors of the entry points whose generated input is the reference set."""
    x = torch.randn(2, c.d, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1])


def _is_label_vector(y: Tensor) -> bool:
    """A 1-D integer tensor whose values can be read (not on the meta device)."""
    floating = y.dtype.is_floating_point or y.dtype == torch.bool
    return y.dim() == 1 and not floating and y.device.type != "meta"


def label_triplets(x: Tensor, y: Tensor) -> Triplets:
    """Every valid triplet by label alone, for losses given explicit indices (no miner)."""
    if not _is_label_vector(y):
        return Triplets.empty()
    lab = y[: x.shape[0]].tolist()
    rows = [
        (a, p, q)
        for a in range(len(lab))
        for p in range(len(lab))
        for q in range(len(lab))
        if a != p and lab[a] == lab[p] and lab[q] != lab[a]
    ]
    if not rows:
        return Triplets.empty()
    return Triplets(*torch.tensor(rows, dtype=torch.int64).t())


def label_pairs(x: Tensor, y: Tensor) -> Pairs:
    """Every positive and negative pair by label alone."""
    if not _is_label_vector(y):
        return Pairs.empty()
    lab = y[: x.shape[0]].tolist()
    idx = range(len(lab))
    pos = [(a, p) for a in idx for p in idx if a != p and lab[a] == lab[p]]
    neg = [(a, q) for a in idx for q in idx if lab[a] != lab[q]]

    def cols(rows: list) -> tuple[Tensor, Tensor]:
        if not rows:
            return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
        t = torch.tensor(rows, dtype=torch.int64).t()
        return t[0], t[1]

    return Pairs(*cols(pos), *cols(neg))


def _fused_reduction(c: Ctx, allow_none: bool) -> str:
    return c.reduction if allow_none or c.reduction != "none" else "mean"


FUSED = {
    "batch_all": (batch_all_triplet_loss, False),
    "batch_hard": (batch_hard_triplet_loss, True),
    "semi_hard": (semi_hard_triplet_loss, True),
}


def _fused(kind: str, x: Tensor, y: Tensor, c: Ctx, **ref: Tensor) -> Tensor:
    fn, allow_none = FUSED[kind]
    return fn(
        x,
        y,
        MARGIN,
        c.metric,
        c.soft_margin,
        _fused_reduction(c, allow_none),
        normalize=c.normalize,
        backend=c.backend,
        **ref,
    )


#: The module forms of the fused losses.
FUSED_MODULES = {
    "batch_all": BatchAllTripletLoss,
    "batch_hard": BatchHardTripletLoss,
    "semi_hard": SemiHardTripletLoss,
}


def _fused_module(kind: str, x: Tensor, y: Tensor, c: Ctx, *ref: Tensor) -> Tensor:
    """``loss(embeddings, labels[, ref_embeddings, ref_labels])`` of a fused loss module."""
    _, allow_none = FUSED[kind]
    loss = FUSED_MODULES[kind](
        MARGIN,
        c.metric,
        c.soft_margin,
        _fused_reduction(c, allow_none),
        normalize=c.normalize,
        backend=c.backend,
    )
    return loss(x, y, *ref)


def _triplet_miner(kind: object, c: Ctx) -> Callable:
    common = {"normalize": c.normalize, "backend": c.backend}
    if kind == "batch_all_valid":
        return BatchAllMiner(MARGIN, c.metric, active_only=False, **common)
    if kind == "batch_all_active":
        return BatchAllMiner(MARGIN, c.metric, active_only=True, **common)
    if kind == "batch_hard":
        return BatchHardMiner(c.metric, **common)
    if kind == "semi_hard":
        return SemiHardMiner(MARGIN, c.metric, **common)
    if kind == "semi_hard_active":
        return SemiHardMiner(MARGIN, c.metric, active_only=True, **common)
    return TripletMarginMiner(MARGIN, str(kind), c.metric, **common)


TRIPLET_MINERS = (
    "batch_all_valid",
    "batch_all_active",
    "batch_hard",
    "semi_hard",
    "semi_hard_active",
    "all",
    "hard",
    "semihard",
    "easy",
)


def _sampling_miner(kind: object, c: Ctx) -> Callable:
    if kind == "distance_weighted":
        return DistanceWeightedMiner(normalize=True, seed=0)
    if kind == "random":
        return RandomTripletMiner(seed=0)
    if kind == "random_fixed":
        return RandomTripletMiner(num_triplets=NUM_TRIPLETS, seed=0)
    if kind == "multi_similarity":
        return MultiSimilarityMiner(EPSILON, c.metric, normalize=c.normalize)
    return PairMarginMiner(*PAIR_MARGINS, c.metric, normalize=c.normalize)


SAMPLING_MINERS = (
    "distance_weighted",
    "random",
    "random_fixed",
    "multi_similarity",
    "pair_margin",
)


def _triplet_margin_loss(x: Tensor, y: Tensor, c: Ctx) -> Tensor:
    if c.variant == "labels":
        triplets = label_triplets(x, y)
    elif c.variant is None:
        triplets = None
    else:
        triplets = _triplet_miner(c.variant, c)(x, y)
    reduction = c.reduction if triplets is not None else _fused_reduction(c, False)
    loss = TripletMarginLoss(
        MARGIN, c.metric, c.soft_margin, reduction, normalize=c.normalize, backend=c.backend
    )
    return loss(x, y, triplets)


def _contrastive_loss(x: Tensor, y: Tensor, c: Ctx) -> Tensor:
    if c.variant == "labels":
        pairs = label_pairs(x, y)
    elif c.variant is None:
        pairs = None
    else:
        pairs = _sampling_miner(c.variant, c)(x, y)
    reduction = c.reduction if pairs is not None else _fused_reduction(c, False)
    loss = ContrastiveLoss(POS_MARGIN, NEG_MARGIN, c.metric, reduction, normalize=c.normalize)
    return loss(x, y, pairs)


def _margin_loss(x: Tensor, y: Tensor, c: Ctx) -> Tensor:
    if c.variant == "label_triplets":
        indices: object = label_triplets(x, y)
    elif c.variant in ("label_pairs", "per_class"):
        indices = label_pairs(x, y)
    else:
        indices = DistanceWeightedMiner(normalize=True, seed=0)(x, y)
    num_classes = NUM_CLASSES if c.variant == "per_class" else None
    loss = MarginLoss(
        MARGIN,
        BETA,
        num_classes=num_classes,
        nu=NU,
        metric=c.metric,
        reduction=c.reduction,
        normalize=c.normalize,
    )
    return loss(x, y, indices)


def _memory(x: Tensor, y: Tensor, c: Ctx) -> tuple[Tensor, Tensor]:
    memory = CrossBatchMemory(size=MEMORY_SIZE, dim=c.d)
    memory.enqueue(x, y)
    memory.enqueue(x, y)
    return memory.get()


def _pk(x: Tensor, y: Tensor, c: Ctx) -> tuple[int, list[list[int]]]:
    sampler = PKBatchSampler(y, p=P, k=K, seed=0, small_classes=str(c.variant))
    return len(sampler), list(sampler)


def _sharded(x: Tensor, y: Tensor, c: Ctx) -> Tensor:
    kind = str(c.variant)
    kwargs: dict = {"metric": c.metric, "normalize": c.normalize}
    if kind != "contrastive":
        kwargs.update(margin=MARGIN, soft_margin=c.soft_margin, backend=c.backend)
    return distributed.sharded_loss(kind, x, y, reduction=_fused_reduction(c, False), **kwargs)


def _ref(fn: Callable) -> Callable:
    """Adapter whose generated ``(x, y)`` is the reference set of fixed clean anchors."""

    def call(x: Tensor, y: Tensor, c: Ctx) -> object:
        a, la = _anchors(c)
        return fn(a, la, x, y, c)

    return call


@dataclass(frozen=True)
class Entry:
    """An entry point: ``call(embeddings, labels, ctx)`` and what to expect of it.

    ``out``: the kind of output (see :func:`check_output`). ``uses``: which inputs it reads
    ("both", "emb" or "labels"; faults of the others do not apply). ``ref``: the generated
    input is the reference set of fixed clean anchors. ``domain``: the documented errors of
    valid input, as (type, substring). ``grad``: differentiable, gradients are checked.
    ``variants``: the configurations ``ctx.variant`` selects. ``uses_backend``: takes
    ``backend=`` (both kernels are exercised).
    """

    call: Callable[[Tensor, Tensor, Ctx], object]
    out: str
    uses: str = "both"
    ref: bool = False
    domain: tuple[tuple[type[Exception], str], ...] = ()
    grad: bool = False
    variants: tuple = (None,)
    uses_backend: bool = False


_RETRIEVAL_DOMAIN = (
    (ValueError, "is empty"),
    (ValueError, "no query has a reference with the same label"),
)

ENTRIES: dict[str, Entry] = {
    "pairwise_distance": Entry(
        lambda x, y, c: pairwise_distance(x, metric=c.metric), "pairwise", "emb", grad=True
    ),
    "paired_distance": Entry(
        lambda x, y, c: paired_distance(x, x.flip(0), c.metric), "paired", "emb", grad=True
    ),
    "batch_all_triplet_loss": Entry(
        lambda x, y, c: _fused("batch_all", x, y, c), "loss", grad=True, uses_backend=True
    ),
    "batch_hard_triplet_loss": Entry(
        lambda x, y, c: _fused("batch_hard", x, y, c), "loss", grad=True, uses_backend=True
    ),
    "semi_hard_triplet_loss": Entry(
        lambda x, y, c: _fused("semi_hard", x, y, c), "loss", grad=True, uses_backend=True
    ),
    "fused_loss_modules": Entry(
        lambda x, y, c: _fused_module(str(c.variant), x, y, c),
        "loss",
        grad=True,
        variants=tuple(FUSED_MODULES),
        uses_backend=True,
    ),
    "triplet_miners": Entry(
        lambda x, y, c: _triplet_miner(c.variant, c)(x, y),
        "triplets",
        variants=TRIPLET_MINERS,
        uses_backend=True,
    ),
    "sampling_miners": Entry(
        lambda x, y, c: _sampling_miner(c.variant, c)(x, y), "mined", variants=SAMPLING_MINERS
    ),
    "DistanceWeightedMiner(normalize=False)": Entry(
        lambda x, y, c: DistanceWeightedMiner(seed=0)(x, y),
        "triplets",
        domain=((ValueError, "unit-norm"),),
    ),
    "TripletMarginLoss": Entry(
        _triplet_margin_loss,
        "loss",
        grad=True,
        variants=(None, "labels", "batch_all_valid", "batch_hard", "semi_hard", "hard"),
        uses_backend=True,
    ),
    "ContrastiveLoss": Entry(
        _contrastive_loss,
        "loss",
        grad=True,
        variants=(None, "labels", "pair_margin", "multi_similarity"),
    ),
    "MarginLoss": Entry(
        _margin_loss,
        "loss",
        grad=True,
        domain=((ValueError, "per-class beta"),),
        variants=("label_triplets", "label_pairs", "per_class", "distance_weighted"),
    ),
    "triplet_stats": Entry(
        lambda x, y, c: triplet_stats(
            x, y, MARGIN, c.metric, normalize=c.normalize, backend=c.backend
        ),
        "stats",
        uses_backend=True,
    ),
    "retrieval_metrics": Entry(
        lambda x, y, c: retrieval_metrics(x, y, k=RECALL_KS, metric=c.metric),
        "metrics",
        domain=_RETRIEVAL_DOMAIN,
    ),
    "CrossBatchMemory": Entry(_memory, "memory"),
    "PKBatchSampler": Entry(
        _pk,
        "batches",
        "labels",
        domain=(
            (ValueError, f"p={P} is larger than the number of usable classes"),
            (ValueError, "labels is empty"),
        ),
        variants=("replace", "skip"),
    ),
    "distributed.gather": Entry(lambda x, y, c: distributed.gather(x, y), "gathered"),
    "distributed.sharded_loss": Entry(
        _sharded,
        "loss",
        grad=True,
        variants=("batch_all", "batch_hard", "semi_hard", "contrastive"),
        uses_backend=True,
    ),
    # The generated batch as the reference set of clean anchors.
    "ref:pairwise_distance": Entry(
        _ref(lambda a, la, x, y, c: pairwise_distance(a, x, c.metric)),
        "pairwise",
        "emb",
        ref=True,
        grad=True,
    ),
    "ref:fused_losses": Entry(
        _ref(lambda a, la, x, y, c: _fused(c.variant, a, la, c, ref_embeddings=x, ref_labels=y)),
        "loss",
        ref=True,
        grad=True,
        variants=tuple(FUSED),
        uses_backend=True,
    ),
    "ref:fused_loss_modules": Entry(
        _ref(lambda a, la, x, y, c: _fused_module(str(c.variant), a, la, c, x, y)),
        "loss",
        ref=True,
        grad=True,
        variants=tuple(FUSED_MODULES),
        uses_backend=True,
    ),
    "ref:triplet_miners": Entry(
        _ref(lambda a, la, x, y, c: _triplet_miner(c.variant, c)(a, la, x, y)),
        "triplets",
        ref=True,
        variants=TRIPLET_MINERS,
        uses_backend=True,
    ),
    "ref:sampling_miners": Entry(
        _ref(lambda a, la, x, y, c: _sampling_miner(c.variant, c)(a, la, x, y)),
        "mined",
        ref=True,
        variants=SAMPLING_MINERS,
    ),
    "ref:losses": Entry(
        _ref(
            lambda a, la, x, y, c: (
                TripletMarginLoss(MARGIN, c.metric, c.soft_margin, backend=c.backend)(
                    a, la, ref_embeddings=x, ref_labels=y
                )
                if c.variant == "triplet_margin"
                else ContrastiveLoss(metric=c.metric)(a, la, ref_embeddings=x, ref_labels=y)
            )
        ),
        "loss",
        ref=True,
        grad=True,
        variants=("triplet_margin", "contrastive"),
        uses_backend=True,
    ),
    "ref:triplet_stats": Entry(
        _ref(
            lambda a, la, x, y, c: triplet_stats(
                a, la, MARGIN, c.metric, backend=c.backend, ref_embeddings=x, ref_labels=y
            )
        ),
        "stats",
        ref=True,
        uses_backend=True,
    ),
    "ref:retrieval_metrics": Entry(
        _ref(
            lambda a, la, x, y, c: retrieval_metrics(
                a, la, ref_embeddings=x, ref_labels=y, k=2, metric=c.metric
            )
        ),
        "metrics",
        ref=True,
        domain=_RETRIEVAL_DOMAIN,
    ),
}


# ------------------------------------------------------------------------------ checks


def fault_applies(entry: Entry, fault: str | None) -> bool:
    if fault is None:
        return False
    if fault in LENGTH_FAULTS:
        return entry.uses == "both"
    if fault in LABEL_FAULTS:
        return entry.uses in ("both", "labels")
    return entry.uses in ("both", "emb")


def _finite(name: str, t: Tensor) -> None:
    assert isinstance(t, Tensor), f"{name}: expected a tensor, got {type(t).__name__}"
    if t.dtype.is_floating_point:
        assert bool(torch.isfinite(t.detach()).all()), f"{name} has NaN or Inf: {t}"


def _index(name: str, t: Tensor, bound: int) -> None:
    assert isinstance(t, Tensor), f"{name}: expected an index tensor, got {type(t).__name__}"
    assert t.dtype == torch.int64, f"{name} has dtype {t.dtype}, expected int64"
    assert t.dim() == 1, f"{name} has shape {tuple(t.shape)}, expected 1-D"
    if t.numel():
        assert 0 <= int(t.min()) and int(t.max()) < bound, f"{name} out of [0, {bound}): {t}"


@dataclass
class Problem:
    """Sizes and int64 labels of the anchors and references, for checking indices."""

    n: int
    m: int
    labels: Tensor
    ref_labels: Tensor
    same_set: bool


def _problem(entry: Entry, inputs: Inputs) -> Problem:
    y = inputs.y.to(torch.int64) if _is_label_vector(inputs.y) else torch.zeros(0)
    if entry.ref:
        return Problem(2, inputs.x.shape[0], torch.tensor([0, 1]), y, False)
    return Problem(inputs.x.shape[0], inputs.x.shape[0], y, y, True)


def _check_triplets(t: object, pb: Problem) -> None:
    assert isinstance(t, Triplets), f"expected Triplets, got {type(t).__name__}"
    _index("anchor", t.anchor, pb.n)
    _index("positive", t.positive, pb.m)
    _index("negative", t.negative, pb.m)
    assert t.anchor.shape == t.positive.shape == t.negative.shape
    la = pb.labels[t.anchor]
    assert bool((la == pb.ref_labels[t.positive]).all()), "a positive has another label"
    assert bool((la != pb.ref_labels[t.negative]).all()), "a negative has the same label"
    if pb.same_set:
        assert bool((t.anchor != t.positive).all()), "an anchor is its own positive"


def _check_pairs(t: object, pb: Problem) -> None:
    assert isinstance(t, Pairs), f"expected Pairs, got {type(t).__name__}"
    _index("anchor_pos", t.anchor_pos, pb.n)
    _index("positive", t.positive, pb.m)
    _index("anchor_neg", t.anchor_neg, pb.n)
    _index("negative", t.negative, pb.m)
    assert t.anchor_pos.shape == t.positive.shape and t.anchor_neg.shape == t.negative.shape
    assert bool((pb.labels[t.anchor_pos] == pb.ref_labels[t.positive]).all())
    assert bool((pb.labels[t.anchor_neg] != pb.ref_labels[t.negative]).all())
    if pb.same_set:
        assert bool((t.anchor_pos != t.positive).all()), "a sample paired with itself"


def check_output(entry: Entry, out: object, inputs: Inputs, c: Ctx) -> None:
    """The output is well formed: finite values, int64 in-range indices, consistent sizes."""
    pb = _problem(entry, inputs)
    kind = entry.out
    if kind == "pairwise":
        _finite("distances", out)
        assert out.shape == (pb.n, pb.m), f"distances have shape {tuple(out.shape)}"
        assert bool((out >= 0).all()), f"negative distance: {out}"
    elif kind == "paired":
        _finite("distances", out)
        assert out.shape == (pb.n,), f"distances have shape {tuple(out.shape)}"
        assert bool((out >= 0).all()), f"negative distance: {out}"
    elif kind == "loss":
        # A float16 loss beyond 65504 (float16's range) is +inf, as in torch.nn: the value
        # computed in float32 overflows the output dtype; never NaN, never -inf.
        if out.dtype == torch.float16:
            out = torch.where(torch.isposinf(out.detach()), 0.0, out.detach())
        _finite("loss", out)
        assert out.dtype.is_floating_point and out.dim() <= 1, f"loss {out}"
    elif kind == "triplets":
        _check_triplets(out, pb)
    elif kind == "mined":
        (_check_triplets if isinstance(out, Triplets) else _check_pairs)(out, pb)
    elif kind == "stats":
        assert isinstance(out, TripletStats), f"expected TripletStats, got {out!r}"
        assert all(isinstance(v, int) and v >= 0 for v in out), out
        assert out.valid == out.easy + out.semi_hard + out.hard, out
    elif kind == "metrics":
        values = [out["precision_at_1"], out["r_precision"], out["mean_average_precision_at_r"]]
        values += list(out["recall_at_k"].values())
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values), out
    elif kind == "memory":
        emb, lab = out
        _finite("memory embeddings", emb)
        rows = min(MEMORY_SIZE, 2 * inputs.x.shape[0])
        assert emb.shape == (rows, c.d) and emb.dtype == torch.float32, emb.shape
        assert lab.dtype == torch.int64 and lab.shape == (rows,), lab
    elif kind == "batches":
        length, batches = out
        labels = inputs.y.to(torch.int64).tolist()
        assert length == len(batches) >= 1, (length, len(batches))
        for batch in batches:
            assert len(batch) == P * K and all(0 <= i < len(labels) for i in batch), batch
            classes = [labels[i] for i in batch]
            assert len(set(classes)) == P, batch
            assert all(classes.count(label) == K for label in classes), batch
    elif kind == "gathered":
        emb, lab = out
        _finite("gathered embeddings", emb)
        assert emb.shape == inputs.x.shape and lab.shape == inputs.y.shape
    else:  # pragma: no cover
        raise AssertionError(kind)


def _matches(err: Exception, groups: tuple[tuple[str, ...], ...]) -> bool:
    message = str(err)
    return all(any(word in message for word in group) for group in groups)


def check_error(name: str, entry: Entry, spec: Spec, err: Exception) -> None:
    """A ValueError/TypeError is the documented one: the fault's, or a domain error."""
    if fault_applies(entry, spec.fault):
        kind, groups = EXPECTED[spec.fault]
        assert isinstance(err, kind) and _matches(err, groups), (
            f"{name} with fault {spec.fault!r} raised {type(err).__name__}({err}); expected "
            f"{getattr(kind, '__name__', kind)} mentioning {groups}"
        )
        return
    for kind, text in entry.domain:
        if isinstance(err, kind) and text in str(err):
            return
    raise AssertionError(f"{name} refused valid input: {type(err).__name__}({err})") from err


def _tensors(obj: object) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def assert_same(a: object, b: object, where: str = "output") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.detach(), b.detach()), f"{where} differs between calls: {a} != {b}"
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, f"{where} differs between calls: {a!r} != {b!r}"


def _snapshot(inputs: Inputs) -> list[Tensor]:
    return [inputs.x.detach().clone(), inputs.y.clone()]


def _unchanged(before: list[Tensor], inputs: Inputs, name: str) -> None:
    for old, new in zip(before, (inputs.x.detach(), inputs.y), strict=True):
        same = old.shape == new.shape and bool(((old == new) | (old != old) & (new != new)).all())
        assert same, f"{name} modified its input in place"


def run_once(name: str, entry: Entry, spec: Spec, c: Ctx) -> tuple:
    """One checked call; returns what must be identical on a second call."""
    inputs = build(spec, requires_grad=entry.grad)
    before = _snapshot(inputs)
    try:
        out = entry.call(inputs.x, inputs.y, c)
    except (ValueError, TypeError) as err:
        check_error(name, entry, spec, err)
        _unchanged(before, inputs, name)
        return ("error", type(err), str(err))
    except Exception as err:
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}") from err
    _unchanged(before, inputs, name)
    if fault_applies(entry, spec.fault):
        raise AssertionError(
            f"{name} accepted input with fault {spec.fault!r} silently and returned {out!r}"
        )
    check_output(entry, out, inputs, c)
    grads: list[Tensor] = []
    if entry.grad and inputs.leaf is not None:
        loss = out
        assert loss.requires_grad, f"{name}: the output is not part of the autograd graph"
        (grad,) = torch.autograd.grad(loss.sum(), inputs.leaf)
        _finite("gradient", grad)
        grads.append(grad)
    return ("ok", out, grads)


def _edge(n: int, d: int, layout: str, values: str, dtype: torch.dtype, **kw: object) -> Spec:
    fields = {"pk_k": 3, "scale": 1.0, "label_dtype": torch.int64, "shift": 0}
    fields.update(view="contiguous", fault=None, seed=n)
    fields.update(kw)
    return Spec(n=n, d=d, layout=layout, values=values, dtype=dtype, **fields)  # type: ignore[arg-type]


#: Fixed awkward batches that every entry point meets with every variant and backend, so
#: that empty, one-element and degenerate batches are covered at any number of examples;
#: with the metrics each batch meets.
EDGE_SPECS: tuple[tuple[Spec, tuple[str, ...] | None], ...] = (
    (_edge(0, 3, "random", "normal", torch.float32), None),
    (
        _edge(
            1,
            2,
            "one_class",
            "normal",
            torch.float16,
            label_dtype=torch.uint8,
            shift=5,
            view="row_stride",
        ),
        None,
    ),
    (
        _edge(
            2,
            4,
            "one_class",
            "grid",
            torch.bfloat16,
            label_dtype=torch.int8,
            shift=-3,
            view="transposed",
        ),
        None,
    ),
    (
        _edge(4, 3, "distinct", "unit", torch.float64, label_dtype=torch.int32, view="col_stride"),
        None,
    ),
    (_edge(7, 2, "singletons", "constant", torch.float32, scale=1e-3), None),
    # d = 1 on the grid: zero rows, exact duplicates and ties, in half precision.
    (_edge(6, 1, "pk", "grid", torch.float16, label_dtype=torch.int16), METRICS),
)


# ------------------------------------------------------------------------------ hyper-parameters

#: The values that no real hyper-parameter accepts.
NOT_FINITE = [math.nan, math.inf, -math.inf]
#: Every real hyper-parameter of an entry point: its name and a call that passes it ``v``.
HYPER_PARAMETERS: list[tuple[str, Callable[[float], object]]] = [
    ("margin", lambda v: BatchAllMiner(margin=v)),
    ("margin", lambda v: SemiHardMiner(margin=v)),
    ("margin", lambda v: TripletMarginMiner(margin=v)),
    ("margin", lambda v: TripletMarginLoss(margin=v)),
    ("margin", lambda v: BatchAllTripletLoss(margin=v)),
    ("margin", lambda v: BatchHardTripletLoss(margin=v)),
    ("margin", lambda v: SemiHardTripletLoss(margin=v)),
    ("pos_margin", lambda v: ContrastiveLoss(pos_margin=v)),
    ("neg_margin", lambda v: ContrastiveLoss(neg_margin=v)),
    ("margin", lambda v: MarginLoss(margin=v)),
    ("beta", lambda v: MarginLoss(beta=v)),
    ("nu", lambda v: MarginLoss(nu=v)),
    ("epsilon", lambda v: MultiSimilarityMiner(epsilon=v)),
    ("pos_margin", lambda v: PairMarginMiner(pos_margin=v)),
    ("neg_margin", lambda v: PairMarginMiner(neg_margin=v)),
    ("cutoff", lambda v: DistanceWeightedMiner(cutoff=v)),
    ("nonzero_loss_cutoff", lambda v: DistanceWeightedMiner(nonzero_loss_cutoff=v)),
    ("margin", lambda v: batch_all_triplet_loss(CLEAN_X, CLEAN_Y, margin=v)),
    ("margin", lambda v: batch_hard_triplet_loss(CLEAN_X, CLEAN_Y, margin=v)),
    ("margin", lambda v: semi_hard_triplet_loss(CLEAN_X, CLEAN_Y, margin=v)),
    ("margin", lambda v: triplet_stats(CLEAN_X, CLEAN_Y, margin=v)),
    ("margin", lambda v: distributed.sharded_loss("batch_hard", CLEAN_X, CLEAN_Y, margin=v)),
    (
        "beta",
        lambda v: margin_loss(
            CLEAN_X, CLEAN_Y, label_pairs(CLEAN_X, CLEAN_Y), beta=torch.tensor([v])
        ),
    ),
]
