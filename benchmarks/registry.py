"""What the speed benchmark measures: its methods, tripletkit's and its peers'.

Entries are told apart by ``family`` (``"tripletkit"``, ``"peer"``, and ``"baseline"`` for
the ``torch.cdist`` floor). Peers are optional dependencies: their entries import them lazily and are only
listed when :func:`installed` finds them.

**Speed** (:mod:`benchmarks.speed`): a :class:`Method` builds ``f(embeddings, labels) -> loss``
whose forward + backward is timed. :func:`build_methods` lists

- ``cdist``: ``torch.cdist(x, x)`` forward + ``.sum().backward()``, the floor every online
  miner pays;
- the fused tripletkit losses: batch-all hinge (``reduction="mean_nonzero"``) and soft margin
  (``reduction="mean"``), batch-hard and semi-hard, margin :data:`MARGIN`, once per backend;
- the peers when installed: pytorch-metric-learning (``TripletMarginMiner`` "all" and
  "semihard", ``BatchHardMiner``, each with ``TripletMarginLoss(margin=0.2)``),
  online-triplet-loss (batch-all and batch-hard) and sentence-transformers (its
  ``BatchAllTripletLoss``, ``BatchHardTripletLoss``, ``BatchSemiHardTripletLoss`` and
  ``BatchHardSoftMarginTripletLoss``, called on raw embeddings: see :func:`st_losses`). Their
  O(N^3) methods carry a time exponent and a memory estimate so that the run can skip sizes
  that cannot fit.

The quality benchmark's rows (tripletkit's strategies, the peer recipes, the memory,
large-batch and hard-class rows) and their search spaces live in :mod:`benchmarks.strategies`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tripletkit.losses import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
)

__all__ = [
    "MARGIN",
    "SPEED_STRATEGIES",
    "LossFn",
    "Method",
    "build_methods",
    "installed",
    "otl_all_memory",
    "pml_all_memory",
    "positive_pairs",
    "st_all_memory",
    "st_losses",
    "valid_triplets",
]

#: Triplet margin of the speed benchmark (every triplet loss and miner it times).
MARGIN = 0.2
#: ``f(embeddings, labels) -> 0-dim loss``: what the speed benchmark times.
LossFn = Callable[[Tensor, Tensor], Tensor]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# Speed: methods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One measured method: ``make()`` returns ``f(embeddings, labels) -> 0-dim loss``.

    Attributes:
        name: identifier used in the JSON, the table and the plot.
        family: ``"baseline"`` (cdist), ``"tripletkit"`` or ``"peer"``.
        strategy: ``"cdist"``, ``"batch_all"``, ``"batch_all_soft"``, ``"batch_hard"``,
            ``"batch_hard_soft"`` (a peer's soft-margin batch-hard), ``"semi_hard"``.
        backend: the tripletkit backend (``"torch"`` / ``"numba"``), else ``None``.
        description: what exactly runs.
        make: builds the loss function (imports happen here, outside the timings).
        time_exponent: expected growth of the time with ``N``, used to predict whether the
            next size fits in the time budget (``None``: no prediction).
        memory_estimate: estimated peak bytes for ``(n, labels)``, used to skip
            configurations that cannot fit (``None``: O(N^2), never skipped).
        cuda: whether the method runs on CUDA tensors.
    """

    name: str
    family: str
    strategy: str
    backend: str | None
    description: str
    make: Callable[[], LossFn]
    time_exponent: float | None = None
    memory_estimate: Callable[[int, Tensor], float] | None = None
    cuda: bool = True


#: The fused tripletkit losses the speed benchmark times, once per backend.
SPEED_STRATEGIES = ("batch_all", "batch_all_soft", "batch_hard", "semi_hard")


def valid_triplets(labels: Tensor) -> int:
    """Number of valid triplets ``(a, p, n)`` of a label vector (``p != a``)."""
    _, counts = torch.unique(labels, return_counts=True)
    c = counts.to(torch.float64)
    n = float(labels.numel())
    return int(((c * (c - 1)) * (n - c)).sum().item())


def pml_all_memory(n: int, labels: Tensor) -> float:
    """Estimated peak bytes of pytorch-metric-learning's all-triplets mining and loss."""
    # get_all_triplets_indices: an N^3 uint8 product while N^3 < INT_MAX (a per-anchor
    # loop beyond), then ~120 bytes per listed triplet (three int64 index vectors, the
    # gathered distances, the mask and the loss terms kept for backward).
    cube = float(n) ** 3 if float(n) ** 3 < 2**31 - 1 else 0.0
    return cube + 120.0 * valid_triplets(labels)


def otl_all_memory(n: int, labels: Tensor) -> float:
    """Estimated peak bytes of online-triplet-loss's batch-all loss."""
    # Several N^3 float32 and bool tensors (measured: ~21 bytes per N^3 element).
    return 24.0 * float(n) ** 3


def positive_pairs(labels: Tensor) -> int:
    """Number of ordered positive pairs ``(a, p)``, ``p != a``, of a label vector."""
    _, counts = torch.unique(labels, return_counts=True)
    c = counts.to(torch.float64)
    return int((c * (c - 1)).sum().item())


def st_all_memory(n: int, labels: Tensor) -> float:
    """Estimated peak bytes of sentence-transformers' ``BatchAllTripletLoss``."""
    # A [positive pairs, N] matrix of terms with its masks and gradients (measured on the
    # CPU: ~29 bytes per element), plus a few N x N matrices.
    return 32.0 * positive_pairs(labels) * n + 16.0 * float(n) ** 2


def _cdist() -> LossFn:
    def f(x: Tensor, y: Tensor) -> Tensor:
        return torch.cdist(x, x).sum()

    return f


def _tripletkit(strategy: str, backend: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        if strategy == "batch_all":
            return lambda x, y: batch_all_triplet_loss(
                x, y, MARGIN, reduction="mean_nonzero", backend=backend
            )
        if strategy == "batch_all_soft":
            return lambda x, y: batch_all_triplet_loss(
                x, y, soft_margin=True, reduction="mean", backend=backend
            )
        if strategy == "batch_hard":
            return lambda x, y: batch_hard_triplet_loss(x, y, MARGIN, backend=backend)
        if strategy == "semi_hard":
            return lambda x, y: semi_hard_triplet_loss(x, y, MARGIN, backend=backend)
        raise ValueError(f"unknown strategy {strategy!r}")

    return make


def _pml(kind: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        from pytorch_metric_learning import losses, miners

        miner: Any
        if kind == "batch_hard":
            miner = miners.BatchHardMiner()
        else:
            miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets=kind)
        loss_fn = losses.TripletMarginLoss(margin=MARGIN)

        def f(x: Tensor, y: Tensor) -> Tensor:
            return loss_fn(x, y, miner(x, y))

        return f

    return make


def _otl(kind: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        from online_triplet_loss import losses as otl

        if kind == "batch_all":

            def f(x: Tensor, y: Tensor) -> Tensor:
                loss, _fraction_positive = otl.batch_all_triplet_loss(y, x, MARGIN)
                return loss

            return f
        return lambda x, y: otl.batch_hard_triplet_loss(y, x, MARGIN)

    return make


def st_losses() -> Any:
    """sentence-transformers' losses module (``sentence_transformers.sentence_transformer.losses``
    in version 6; the older ``sentence_transformers.losses`` path otherwise).

    Its triplet losses are ``nn.Module`` s built around a ``SentenceTransformer`` model, but
    the computation is an instance method on raw embeddings, reached without any model (none
    is downloaded): ``BatchAllTripletLoss(None, margin=m).batch_all_triplet_loss(labels, x)``,
    likewise ``BatchHardTripletLoss.batch_hard_triplet_loss``,
    ``BatchSemiHardTripletLoss.batch_semi_hard_triplet_loss`` and
    ``BatchHardSoftMarginTripletLoss.batch_hard_triplet_soft_margin_loss``. Their default
    distance is ``BatchHardTripletLossDistanceFunction.euclidean_distance`` (Euclidean, from
    the Gram matrix) and their default margin 5: the benchmarks pass :data:`MARGIN`.
    """
    import importlib
    import warnings

    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.losses")
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("sentence_transformers.losses")


def _st(kind: str) -> Callable[[], LossFn]:
    def make() -> LossFn:
        st = st_losses()
        if kind == "batch_all":
            ba = st.BatchAllTripletLoss(None, margin=MARGIN)
            return lambda x, y: ba.batch_all_triplet_loss(y, x)
        if kind == "batch_hard":
            bh = st.BatchHardTripletLoss(None, margin=MARGIN)
            return lambda x, y: bh.batch_hard_triplet_loss(y, x)
        if kind == "batch_hard_soft":
            soft = st.BatchHardSoftMarginTripletLoss(None)
            return lambda x, y: soft.batch_hard_triplet_soft_margin_loss(y, x)
        if kind == "semi_hard":
            sh = st.BatchSemiHardTripletLoss(None, margin=MARGIN)
            return lambda x, y: sh.batch_semi_hard_triplet_loss(y, x)
        raise ValueError(f"unknown sentence-transformers loss {kind!r}")

    return make


def _baseline_methods() -> list[Method]:
    return [
        Method(
            "cdist",
            "baseline",
            "cdist",
            None,
            "torch.cdist(x, x) forward + .sum().backward() (the floor of any online miner)",
            _cdist,
            time_exponent=2.0,
        )
    ]


def _tripletkit_methods(backends: Sequence[str]) -> list[Method]:
    return [
        Method(
            f"{strategy}[{backend}]",
            "tripletkit",
            strategy,
            backend,
            f"tripletkit {strategy} loss, backend={backend!r}",
            _tripletkit(strategy, backend),
            cuda=backend != "numba",
        )
        for strategy in SPEED_STRATEGIES
        for backend in backends
    ]


def _pml_methods() -> list[Method]:
    doc = "pytorch-metric-learning {} + TripletMarginLoss(margin=0.2) (default LpDistance)"
    return [
        Method(
            "pml_all",
            "peer",
            "batch_all",
            None,
            doc.format("TripletMarginMiner(margin=0.2, type_of_triplets='all')"),
            _pml("all"),
            time_exponent=3.0,
            memory_estimate=pml_all_memory,
        ),
        Method(
            "pml_semihard",
            "peer",
            "semi_hard",
            None,
            doc.format("TripletMarginMiner(margin=0.2, type_of_triplets='semihard')"),
            _pml("semihard"),
            time_exponent=3.0,
            memory_estimate=pml_all_memory,
        ),
        Method(
            "pml_batch_hard",
            "peer",
            "batch_hard",
            None,
            doc.format("BatchHardMiner()"),
            _pml("batch_hard"),
            time_exponent=2.0,
        ),
    ]


def _otl_methods() -> list[Method]:
    return [
        Method(
            "otl_batch_all",
            "peer",
            "batch_all",
            None,
            "online_triplet_loss.losses.batch_all_triplet_loss(labels, x, margin=0.2)",
            _otl("batch_all"),
            time_exponent=3.0,
            memory_estimate=otl_all_memory,
        ),
        Method(
            "otl_batch_hard",
            "peer",
            "batch_hard",
            None,
            "online_triplet_loss.losses.batch_hard_triplet_loss(labels, x, margin=0.2)",
            _otl("batch_hard"),
            time_exponent=2.0,
        ),
    ]


def _st_methods() -> list[Method]:
    doc = "sentence-transformers {}: .{}(labels, x) on raw embeddings (Euclidean){}"
    margin = f", margin={MARGIN}"
    return [
        Method(
            "st_batch_all",
            "peer",
            "batch_all",
            None,
            doc.format("BatchAllTripletLoss", "batch_all_triplet_loss", margin),
            _st("batch_all"),
            time_exponent=2.0,
            memory_estimate=st_all_memory,
        ),
        Method(
            "st_batch_hard",
            "peer",
            "batch_hard",
            None,
            doc.format("BatchHardTripletLoss", "batch_hard_triplet_loss", margin),
            _st("batch_hard"),
            time_exponent=2.0,
        ),
        Method(
            "st_batch_hard_soft",
            "peer",
            "batch_hard_soft",
            None,
            doc.format("BatchHardSoftMarginTripletLoss", "batch_hard_triplet_soft_margin_loss", ""),
            _st("batch_hard_soft"),
            time_exponent=2.0,
        ),
        Method(
            "st_semi_hard",
            "peer",
            "semi_hard",
            None,
            doc.format("BatchSemiHardTripletLoss", "batch_semi_hard_triplet_loss", margin),
            _st("semi_hard"),
            time_exponent=2.0,
        ),
    ]


#: The speed benchmark's peers: import name, distribution name, their methods.
_SPEED_PEERS: tuple[tuple[str, str, Callable[[], list[Method]]], ...] = (
    ("pytorch_metric_learning", "pytorch-metric-learning", _pml_methods),
    ("online_triplet_loss", "online-triplet-loss", _otl_methods),
    ("sentence_transformers", "sentence-transformers", _st_methods),
)


def build_methods(
    peers: bool = True, backends: Sequence[str] = ("torch", "numba")
) -> tuple[list[Method], list[str]]:
    """The methods to measure, and the peers that were asked for but are not installed.

    Args:
        peers: include pytorch-metric-learning, online-triplet-loss and
            sentence-transformers when installed.
        backends: tripletkit backends to measure.

    Returns:
        The methods in run order (cdist, tripletkit strategy by strategy, then the peers),
        and the distribution names of the missing peers.
    """
    methods = [*_baseline_methods(), *_tripletkit_methods(backends)]
    missing: list[str] = []
    if not peers:
        return methods, missing
    for module, distribution, peer_methods in _SPEED_PEERS:
        if installed(module):
            methods += peer_methods()
        else:
            missing.append(distribution)
    return methods, missing
