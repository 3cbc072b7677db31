"""``tripletkit._deprecation``: every call form and module path of tripletkit 0.1 that still
works in 0.2 does, with a :class:`DeprecationWarning` that says what to write instead, and
gives what the new form gives.

Everywhere else the suite uses the new forms only: ``pyproject.toml`` turns a tripletkit
deprecation warning into an error (see ``filterwarnings``), so a test that used an old form
by accident would fail. Here each old form is called inside ``pytest.warns``.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import tripletkit
from tripletkit import losses, miners, mining
from tripletkit.metrics import retrieval_metrics

#: Every deprecation message ends with this (the error filter of ``pyproject.toml`` matches it).
MARK = "(deprecated in tripletkit 0.2, removed in 0.3)"

X = torch.nn.functional.normalize(
    torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1
)
Y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
REF = torch.nn.functional.normalize(
    torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1
)
REF_Y = torch.tensor([0, 1, 2, 3, 0, 1])


def _same(a: tuple, b: tuple) -> None:
    assert type(a) is type(b) and len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def _seeded() -> dict:
    return {"generator": torch.Generator().manual_seed(3)}


#: Every mining function with hyper-parameters of its own, and keyword arguments that are
#: not the defaults (passed by keyword in both forms, as 0.1 required).
MINING = [
    (miners.batch_all_triplets, lambda: {"margin": 0.5, "active_only": False}),
    (miners.batch_hard_triplets, lambda: {"metric": "sqeuclidean"}),
    (miners.semi_hard_triplets, lambda: {"margin": 0.5, "active_only": True}),
    (miners.triplet_margin_triplets, lambda: {"margin": 0.5, "type_of_triplets": "hard"}),
    (miners.distance_weighted_triplets, lambda: {"cutoff": 0.3, **_seeded()}),
    (miners.random_triplets, lambda: {"num_triplets": 9, **_seeded()}),
    (miners.multi_similarity_pairs, lambda: {"epsilon": 0.3}),
    (miners.pair_margin_pairs, lambda: {"pos_margin": 0.1, "neg_margin": 1.5}),
]


@pytest.mark.parametrize(("fn", "options"), MINING, ids=[f.__name__ for f, _ in MINING])
def test_positional_references_of_mining_functions(fn, options) -> None:
    """``fn(x, y, ref, ref_labels, ...)`` (0.1) is ``fn(x, y, ref_embeddings=ref,
    ref_labels=ref_labels, ...)`` (0.2), with a warning that points at the caller."""
    want = fn(X, Y, ref_embeddings=REF, ref_labels=REF_Y, **options())
    with pytest.warns(DeprecationWarning) as record:
        got = fn(X, Y, REF, REF_Y, **options())
    _same(got, want)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"{fn.__name__}(embeddings, labels, ref_embeddings, ref_labels)")
    assert "ref_embeddings=..., ref_labels=..." in message and message.endswith(MARK)
    assert record[0].filename == __file__  # attributed to the caller
    # The same function through tripletkit.mining, which re-exports it.
    with pytest.warns(DeprecationWarning, match="pass the reference set by keyword"):
        again = getattr(mining, fn.__name__)(X, Y, REF, REF_Y, **options())
    _same(again, want)


@pytest.mark.parametrize(("fn", "options"), MINING, ids=[f.__name__ for f, _ in MINING])
def test_positional_reference_embeddings_alone_are_refused_as_before(fn, options) -> None:
    """``fn(x, y, ref)`` without labels: the warning, then the same error as by keyword."""
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="together"):
        fn(X, Y, REF, **options())


@pytest.mark.parametrize(("fn", "options"), MINING, ids=[f.__name__ for f, _ in MINING])
def test_new_forms_do_not_warn(fn, options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(X, Y, **options())
        fn(X, Y, ref_embeddings=REF, ref_labels=REF_Y, **options())


@pytest.mark.parametrize(("fn", "options"), MINING, ids=[f.__name__ for f, _ in MINING])
def test_positional_none_references_of_mining_functions(fn, options) -> None:
    want = fn(X, Y, **options())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = fn(X, Y, None, None, **options())
    assert any(issubclass(w.category, DeprecationWarning) for w in record)
    _same(got, want)


# ------------------------------------------------------------------ moved module paths

#: Old module path -> {name: where it lives now}.
MOVED = {
    "tripletkit.sampling_miners": {
        "distance_weighted_triplets": "tripletkit.miners",
        "random_triplets": "tripletkit.miners",
        "multi_similarity_pairs": "tripletkit.miners",
        "pair_margin_pairs": "tripletkit.miners",
        "make_generator": "tripletkit.miners",
        "check_cutoffs": "tripletkit.miners.sampling",
    },
    "tripletkit.losses.fused": {
        name: "tripletkit.losses"
        for name in (
            "batch_all_parts",
            "batch_all_triplet_loss",
            "batch_hard_parts",
            "batch_hard_triplet_loss",
            "reduce_parts",
            "semi_hard_parts",
            "semi_hard_triplet_loss",
            "triplet_terms",
            "Parts",
        )
    },
    "tripletkit.losses.modules": {
        name: "tripletkit.losses"
        for name in (
            "ContrastiveLoss",
            "TripletMarginLoss",
            "contrastive_loss",
            "contrastive_parts",
            "triplet_margin_loss",
        )
    },
}
MOVED_NAMES = [(old, name, new) for old, names in MOVED.items() for name, new in names.items()]


@pytest.mark.parametrize(
    ("old", "name", "new"), MOVED_NAMES, ids=[f"{o}.{n}" for o, n, _ in MOVED_NAMES]
)
def test_moved_names_warn_and_are_the_new_objects(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning) as record:
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), name)
    assert len(record) == 1
    message = str(record[0].message)
    assert message == f"{old}.{name} has moved: import it from {new} {MARK}"
    assert record[0].filename == __file__


@pytest.mark.parametrize("old", list(MOVED))
def test_from_import_of_a_moved_name_warns(old: str) -> None:
    name = next(iter(MOVED[old]))
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} has moved"):
        exec(f"from {old} import {name}", {})


@pytest.mark.parametrize("old", list(MOVED))
def test_old_module_imports_silently_and_knows_only_its_names(old: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.reload(importlib.import_module(old))
        with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'nothing'"):
            module.nothing  # noqa: B018


def test_moved_functions_give_the_same_results() -> None:
    """Through the old paths, the objects are the new ones: so are their results."""
    with pytest.warns(DeprecationWarning):
        from tripletkit.losses.fused import batch_hard_triplet_loss
    with pytest.warns(DeprecationWarning):
        from tripletkit.losses.modules import contrastive_loss
    with pytest.warns(DeprecationWarning):
        from tripletkit.sampling_miners import random_triplets
    assert torch.equal(batch_hard_triplet_loss(X, Y), losses.batch_hard_triplet_loss(X, Y))
    assert torch.equal(contrastive_loss(X, Y), losses.contrastive_loss(X, Y))
    _same(random_triplets(X, Y, **_seeded()), miners.random_triplets(X, Y, **_seeded()))


# ------------------------------------------------------------------ retrieval_metrics


def test_retrieval_metrics_positional_form() -> None:
    """``retrieval_metrics(query, query_labels, ref, ref_labels, k, metric, chunk_size)``."""
    want = retrieval_metrics(
        X, Y, ref_embeddings=REF, ref_labels=REF_Y, k=(1, 2), metric="cosine", chunk_size=3
    )
    with pytest.warns(DeprecationWarning) as record:
        got = retrieval_metrics(X, Y, REF, REF_Y, (1, 2), "cosine", 3)
    assert got == want and isinstance(got, tripletkit.RetrievalMetrics)
    assert len(record) == 1 and record[0].filename == __file__
    message = str(record[0].message)
    assert "pass everything after query_labels by keyword" in message and message.endswith(MARK)
    with pytest.warns(DeprecationWarning):  # the references alone, the rest by keyword
        assert retrieval_metrics(X, Y, REF, REF_Y, k=(1, 2), metric="cosine") == want
    with pytest.warns(DeprecationWarning):  # leave-one-out, written the 0.1 way
        assert retrieval_metrics(X, Y, None, None, 2) == retrieval_metrics(X, Y, k=2)


def test_retrieval_metrics_ref_keyword() -> None:
    want = retrieval_metrics(X, Y, ref_embeddings=REF, ref_labels=REF_Y)
    with pytest.warns(DeprecationWarning) as record:
        got = retrieval_metrics(X, Y, ref=REF, ref_labels=REF_Y)
    assert got == want
    assert len(record) == 1 and record[0].filename == __file__
    message = str(record[0].message)
    assert (
        message == f"retrieval_metrics(ref=...) is now retrieval_metrics(ref_embeddings=...) {MARK}"
    )
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="together"):
        retrieval_metrics(X, Y, ref=REF)
    with pytest.raises(TypeError, match="both ref= and ref_embeddings="):
        retrieval_metrics(X, Y, ref=REF, ref_embeddings=REF, ref_labels=REF_Y)


def test_retrieval_metrics_refuses_too_many_positional_arguments() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError):
        retrieval_metrics(X, Y, REF, REF_Y, 1, "euclidean", 16, "one too many")
