"""Hardening: random awkward input thrown at every public entry point (the harness, with the
inputs, the entry-point registry and the output and error checks, is ``hardening.py``).

Every entry point must refuse bad input with the documented ValueError / TypeError or return
finite, well-formed outputs, never change its inputs, and give identical results on a second
call (seeded miners with the same seed). Fixed edge batches meet every variant and backend
whatever Hypothesis draws. Non-finite hyper-parameters are refused, and mixed devices are
refused with a ValueError that names both devices (tested with the ``meta`` device; the CUDA
variant runs where a GPU is), except labels on another real device than the embeddings,
which are moved there (``tests/test_conventions.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hardening import (
    BACKENDS,
    CLEAN_X,
    CLEAN_Y,
    EDGE_SPECS,
    ENTRIES,
    HYPER_PARAMETERS,
    METRICS,
    NOT_FINITE,
    REDUCTIONS,
    SETTINGS,
    Ctx,
    Spec,
    assert_same,
    fault_applies,
    label_pairs,
    label_triplets,
    run_once,
    specs,
)
from hypothesis import event, given
from hypothesis import strategies as st

from tripletkit.distances import paired_distance, pairwise_distance
from tripletkit.losses import (
    BatchHardTripletLoss,
    ContrastiveLoss,
    MarginLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    contrastive_parts,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)
from tripletkit.memory import CrossBatchMemory
from tripletkit.metrics import retrieval_metrics
from tripletkit.miners import (
    BatchHardMiner,
    batch_all_triplets,
    batch_hard_triplets,
    multi_similarity_pairs,
    pair_margin_pairs,
    semi_hard_triplets,
    triplet_margin_triplets,
)
from tripletkit.stats import triplet_stats
from tripletkit.types import Pairs, Triplets


@pytest.mark.parametrize("name", list(ENTRIES))
@SETTINGS
@given(spec=specs(), data=st.data())
def test_entry_point_refuses_or_returns_finite_deterministically(
    name: str, spec: Spec, data: st.DataObject
) -> None:
    entry = ENTRIES[name]
    c = Ctx(
        d=spec.d,
        metric=data.draw(st.sampled_from(METRICS), label="metric"),
        backend=data.draw(st.sampled_from(BACKENDS), label="backend"),
        soft_margin=data.draw(st.booleans(), label="soft_margin"),
        reduction=data.draw(st.sampled_from(REDUCTIONS), label="reduction"),
        normalize=data.draw(st.booleans(), label="normalize"),
        variant=data.draw(st.sampled_from(entry.variants), label="variant"),
    )
    first = run_once(name, entry, spec, c)
    second = run_once(name, entry, spec, c)
    assert_same(first, second)
    bad = fault_applies(entry, spec.fault)
    event("returned" if first[0] == "ok" else "refused bad input" if bad else "domain error")


@pytest.mark.parametrize("name", list(ENTRIES))
def test_entry_point_on_edge_batches(name: str) -> None:
    entry = ENTRIES[name]
    backends = BACKENDS if entry.uses_backend else ("torch",)
    i = 0
    for spec, metrics in EDGE_SPECS:
        for variant in entry.variants:
            for backend in backends:
                for metric in metrics or (METRICS[i % len(METRICS)],):
                    # Cycle through the other choices so that each meets several batches.
                    c = Ctx(
                        d=spec.d,
                        metric=metric,
                        backend=backend,
                        soft_margin=bool(i // 3 % 2),
                        reduction=REDUCTIONS[i % len(REDUCTIONS)],
                        normalize=bool(i // 2 % 2) and metrics is None,
                        variant=variant,
                    )
                    i += 1
                    first = run_once(name, entry, spec, c)
                    assert_same(first, run_once(name, entry, spec, c))


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("index", range(len(HYPER_PARAMETERS)))
def test_non_finite_hyper_parameters_are_refused(index: int, value: float) -> None:
    name, call = HYPER_PARAMETERS[index]
    with pytest.raises(ValueError) as info:
        call(value)
    message = str(info.value)
    assert name in message and ("finite" in message or "NaN or Inf" in message), message


#: The public functions that take a ``metric``: ``None`` is refused like any unknown name.
METRIC_NONE = [
    pytest.param(
        lambda: batch_all_triplets(CLEAN_X, CLEAN_Y, metric=None),
        id="batch_all_triplets",
    ),
    pytest.param(
        lambda: batch_hard_triplets(CLEAN_X, CLEAN_Y, metric=None),
        id="batch_hard_triplets",
    ),
    pytest.param(
        lambda: semi_hard_triplets(CLEAN_X, CLEAN_Y, metric=None),
        id="semi_hard_triplets",
    ),
    pytest.param(
        lambda: triplet_margin_triplets(CLEAN_X, CLEAN_Y, metric=None),
        id="triplet_margin_triplets",
    ),
    pytest.param(
        lambda: multi_similarity_pairs(CLEAN_X, CLEAN_Y, metric=None),
        id="multi_similarity_pairs",
    ),
    pytest.param(
        lambda: pair_margin_pairs(CLEAN_X, CLEAN_Y, metric=None),
        id="pair_margin_pairs",
    ),
    pytest.param(
        lambda: batch_all_triplet_loss(CLEAN_X, CLEAN_Y, metric=None),
        id="batch_all_triplet_loss",
    ),
    pytest.param(
        lambda: batch_hard_triplet_loss(CLEAN_X, CLEAN_Y, metric=None),
        id="batch_hard_triplet_loss",
    ),
    pytest.param(
        lambda: semi_hard_triplet_loss(CLEAN_X, CLEAN_Y, metric=None),
        id="semi_hard_triplet_loss",
    ),
    pytest.param(
        lambda: contrastive_parts(CLEAN_X, CLEAN_Y, metric=None),
        id="contrastive_parts",
    ),
    pytest.param(
        lambda: triplet_stats(CLEAN_X, CLEAN_Y, metric=None),
        id="triplet_stats",
    ),
    pytest.param(
        lambda: triplet_margin_loss(CLEAN_X, CLEAN_Y, metric=None),
        id="triplet_margin_loss(triplets=None)",
    ),
    # These check the metric themselves.
    pytest.param(
        lambda: triplet_margin_loss(CLEAN_X, CLEAN_Y, Triplets.empty(), metric=None),
        id="triplet_margin_loss(triplets)",
    ),
    pytest.param(lambda: contrastive_loss(CLEAN_X, CLEAN_Y, metric=None), id="contrastive_loss"),
    pytest.param(lambda: retrieval_metrics(CLEAN_X, CLEAN_Y, metric=None), id="retrieval_metrics"),
    pytest.param(lambda: pairwise_distance(CLEAN_X, metric=None), id="pairwise_distance"),
    pytest.param(lambda: BatchHardMiner(None), id="BatchHardMiner"),
    pytest.param(lambda: BatchHardTripletLoss(metric=None), id="BatchHardTripletLoss"),
]


@pytest.mark.parametrize("call", METRIC_NONE)
def test_metric_none_is_refused_with_the_list_of_metrics(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "unknown metric None" in message, message
    assert all(repr(m) in message for m in METRICS), message


# ------------------------------------------------------------------------------ devices

DEVICES = [
    "meta",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


def _refused(call: Callable[[], object], device: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert device in message and "cpu" in message, f"the devices are not named: {message}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("moved", ["embeddings", "labels"])
@pytest.mark.parametrize("name", [n for n, e in ENTRIES.items() if e.uses == "both"])
def test_mixed_devices_are_refused(name: str, moved: str, device: str) -> None:
    if device != "meta":  # labels are copied to the embeddings' device (test_conventions.py)
        pytest.skip("labels on another real device than the embeddings are moved, not refused")
    entry = ENTRIES[name]
    c = Ctx(d=3, backend="torch", variant=entry.variants[0])
    x = CLEAN_X.to(device) if moved == "embeddings" else CLEAN_X
    y = CLEAN_Y.to(device) if moved == "labels" else CLEAN_Y
    _refused(lambda: entry.call(x, y, c), device)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_devices_are_refused_by_distances(device: str) -> None:
    _refused(lambda: pairwise_distance(CLEAN_X, CLEAN_X.to(device)), device)
    _refused(lambda: pairwise_distance(CLEAN_X.to(device), CLEAN_X), device)
    _refused(lambda: paired_distance(CLEAN_X, CLEAN_X.to(device)), device)


@pytest.mark.parametrize("device", DEVICES)
def test_index_tensors_on_another_device_are_refused(device: str) -> None:
    triplets = Triplets(*(t.to(device) for t in label_triplets(CLEAN_X, CLEAN_Y)))
    pairs = Pairs(*(t.to(device) for t in label_pairs(CLEAN_X, CLEAN_Y)))
    _refused(lambda: TripletMarginLoss()(CLEAN_X, CLEAN_Y, triplets), device)
    _refused(lambda: ContrastiveLoss()(CLEAN_X, CLEAN_Y, pairs), device)
    _refused(lambda: MarginLoss()(CLEAN_X, CLEAN_Y, triplets), device)
    _refused(lambda: MarginLoss()(CLEAN_X, CLEAN_Y, pairs), device)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_on_another_device_refuses_the_batch(device: str) -> None:
    memory = CrossBatchMemory(size=4, dim=3, device=device)
    _refused(lambda: memory.enqueue(CLEAN_X, CLEAN_Y), device)
