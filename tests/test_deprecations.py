"""``tripletkit._deprecation``: the machinery for deprecations (a warning that names what to
write instead and the releases that deprecate and remove it), and the 0.2 deprecations
removed in 0.3, each of which now fails with an error that points at the new form (for one
release: see CHANGELOG.md) instead of Python's bare one.

Everywhere else the suite uses the new forms only: ``pyproject.toml`` turns a tripletkit
deprecation warning of any version into an error (see ``filterwarnings``), so a test that used
an old form by accident would fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
import types
import warnings

import pytest
import torch

from tripletkit import _deprecation, losses, miners, mining
from tripletkit._deprecation import REMOVED_MODULES, moved_module, warn
from tripletkit.metrics import retrieval_metrics

X = torch.nn.functional.normalize(
    torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1
)
Y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
REF = torch.nn.functional.normalize(
    torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=1
)
REF_Y = torch.tensor([0, 1, 2, 3, 0, 1])


# ------------------------------------------------------------------ the machinery


def _deprecated_function() -> None:
    warn("old() is now new()")


def test_warn_names_this_release_and_the_next_and_points_at_the_caller() -> None:
    with pytest.warns(DeprecationWarning) as record:
        _deprecated_function()
    assert len(record) == 1
    assert str(record[0].message) == (
        "old() is now new() (deprecated in tripletkit 0.3, removed in 0.4)"
    )
    assert record[0].filename == __file__
    assert (_deprecation.DEPRECATED_IN, _deprecation.REMOVED_IN) == ("0.3", "0.4")


def test_warn_takes_other_versions() -> None:
    with pytest.warns(DeprecationWarning) as record:
        warn("x", stacklevel=2, deprecated_in="0.4", removed_in="0.6")
    assert str(record[0].message) == "x (deprecated in tripletkit 0.4, removed in 0.6)"


@pytest.mark.parametrize("versions", [{}, {"deprecated_in": "0.9", "removed_in": "1.0"}])
def test_the_suite_turns_a_tripletkit_deprecation_of_any_version_into_an_error(
    versions: dict,
) -> None:
    """pyproject's ``filterwarnings`` (in force here, outside ``pytest.warns``) matches every
    message ``warn`` writes, whatever its versions."""
    with pytest.raises(DeprecationWarning, match="deprecated in tripletkit"):
        warn("old", stacklevel=2, **versions)


def test_moved_module_warns_and_gives_the_new_object() -> None:
    old = types.ModuleType("tripletkit.old_place")
    old.__getattr__ = moved_module(  # type: ignore[method-assign]
        "tripletkit.old_place", {"triplet_margin_loss": "tripletkit.losses"}
    )
    with pytest.warns(DeprecationWarning) as record:
        obj = old.triplet_margin_loss
    assert obj is losses.triplet_margin_loss
    assert str(record[0].message) == (
        "tripletkit.old_place.triplet_margin_loss has moved: import it from tripletkit.losses "
        "(deprecated in tripletkit 0.3, removed in 0.4)"
    )
    with pytest.raises(AttributeError, match="module 'tripletkit.old_place' has no attribute"):
        old.nothing  # noqa: B018


# ------------------------------------------------------------------ removed module paths


@pytest.mark.parametrize("old", list(REMOVED_MODULES))
def test_removed_module_paths_raise_with_their_new_home(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.raises(ModuleNotFoundError) as error:
        importlib.import_module(old)
    new = "tripletkit.miners" if old == "tripletkit.sampling_miners" else "tripletkit.losses"
    assert str(error.value) == (
        f"{old} was removed in tripletkit 0.3 (deprecated in 0.2): import its names from "
        f"{REMOVED_MODULES[old]}"
    )
    assert str(error.value).split("import its names from ")[1].startswith(new)
    # Every way of writing the import fails the same way, again and again.
    parent, _, leaf = old.rpartition(".")
    for statement in (f"import {old}", f"from {parent} import {leaf}", f"from {old} import x"):
        with pytest.raises(ModuleNotFoundError, match="was removed in tripletkit 0.3"):
            exec(statement, {})
    assert old not in sys.modules


def test_removed_modules_are_gone_from_the_package() -> None:
    """No file serves them: the error comes from the finder, not from a module body."""
    for old in REMOVED_MODULES:
        parent, _, leaf = old.rpartition(".")
        assert importlib.util.find_spec(parent) is not None
        assert leaf not in dir(importlib.import_module(parent))
    with pytest.raises(ModuleNotFoundError, match="No module named 'tripletkit.nothing'"):
        importlib.import_module("tripletkit.nothing")  # other names: Python's usual error


def test_the_finder_is_installed_once_by_importing_tripletkit() -> None:
    """In a fresh interpreter, ``import tripletkit`` alone installs it (a reload does not
    add a second one)."""
    code = (
        "import importlib, sys, tripletkit\n"
        "importlib.reload(tripletkit)\n"
        "n = sum(type(f).__name__ == 'RemovedModules' for f in sys.meta_path)\n"
        "assert n == 1, n\n"
        "try:\n"
        "    import tripletkit.losses.fused\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "tripletkit.losses.fused was removed in tripletkit 0.3" in done.stdout


# ------------------------------------------------------------------ positional reference sets

#: Every mining function with hyper-parameters of its own, and keyword arguments that are
#: not the defaults.
MINING = [
    (miners.batch_all_triplets, "margin", {"margin": 0.5, "active_only": False}),
    (miners.batch_hard_triplets, "metric", {"metric": "sqeuclidean"}),
    (miners.semi_hard_triplets, "margin", {"margin": 0.5, "active_only": True}),
    (miners.triplet_margin_triplets, "margin", {"margin": 0.5, "type_of_triplets": "hard"}),
    (miners.distance_weighted_triplets, "cutoff", {"cutoff": 0.3}),
    (miners.random_triplets, "num_triplets", {"num_triplets": 9}),
    (miners.multi_similarity_pairs, "epsilon", {"epsilon": 0.3}),
    (miners.pair_margin_pairs, "pos_margin", {"pos_margin": 0.1, "neg_margin": 1.5}),
]
IDS = [f.__name__ for f, _, _ in MINING]


def _message(fn, third: str) -> str:
    return (
        f"{fn.__name__}(embeddings, labels, ref_embeddings, ref_labels) was removed in "
        "tripletkit 0.3: pass the reference set by keyword, ref_embeddings=..., "
        f"ref_labels=... (the third positional parameter is {third})"
    )


@pytest.mark.parametrize(("fn", "third", "options"), MINING, ids=IDS)
def test_positional_references_raise_with_the_keyword_form(fn, third, options) -> None:
    """``fn(x, y, ref, ref_labels)``, ``fn(x, y, ref)`` and ``fn(x, y, None, None)`` (0.1's
    forms) raise one TypeError naming the keywords, through ``tripletkit.mining`` too; the
    keyword form works."""
    assert list(inspect.signature(fn).parameters)[2] == third
    for args in ((REF, REF_Y), (REF,), (None, None)):
        for function in (fn, getattr(mining, fn.__name__)):
            with pytest.raises(TypeError) as error:
                function(X, Y, *args)
            assert str(error.value) == _message(fn, third)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(X, Y, **options)
        fn(X, Y, ref_embeddings=REF, ref_labels=REF_Y, **options)


@pytest.mark.parametrize(("fn", "third", "options"), MINING, ids=IDS)
def test_a_hyper_parameter_given_positionally_still_works(fn, third, options) -> None:
    """The refusal looks only for 0.1's shape (a matrix or None in third place): the third
    hyper-parameter passed positionally is accepted, and gives the keyword form's result."""
    value = options[third]
    rest = {k: v for k, v in options.items() if k != third}
    random = "generator" in inspect.signature(fn).parameters

    def seeded() -> dict:
        return {"generator": torch.Generator().manual_seed(3)} if random else {}

    got = fn(X, Y, value, **rest, **seeded())
    want = fn(X, Y, **options, **seeded())
    assert type(got) is type(want)
    for u, v in zip(got, want, strict=True):
        assert torch.equal(u, v)


def test_random_triplets_none_in_third_place_is_its_default() -> None:
    """``random_triplets``'s third parameter defaults to None: ``(x, y, None)`` is the new
    form (all triplets, one negative each), not 0.1's."""
    a = miners.random_triplets(X, Y, None, generator=torch.Generator().manual_seed(0))
    b = miners.random_triplets(X, Y, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# ------------------------------------------------------------------ retrieval_metrics


@pytest.mark.parametrize("args", [(REF, REF_Y), (REF, REF_Y, (1, 2), "cosine", 3), (None, None, 2)])
def test_retrieval_metrics_positional_form_raises(args: tuple) -> None:
    with pytest.raises(TypeError) as error:
        retrieval_metrics(X, Y, *args)
    assert str(error.value) == (
        "retrieval_metrics(query, query_labels, ref, ...) was removed in tripletkit 0.3: pass "
        "everything after query_labels by keyword (ref_embeddings=, ref_labels=, k=, "
        "metric=, chunk_size=)"
    )


def test_retrieval_metrics_ref_keyword_raises() -> None:
    with pytest.raises(TypeError) as error:
        retrieval_metrics(X, Y, ref=REF, ref_labels=REF_Y)
    assert str(error.value) == (
        "retrieval_metrics(ref=...) was removed in tripletkit 0.3: write "
        "retrieval_metrics(ref_embeddings=...)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = retrieval_metrics(X, Y, ref_embeddings=REF, ref_labels=REF_Y, k=(1, 2))
    assert set(got) >= {"precision_at_1", "mean_average_precision_at_r"}
