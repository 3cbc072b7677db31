"""The public names that other code depends on: module paths, names, argument names.

These are contracts from the project's issues; a rename here breaks users' code.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (module, attribute, leading parameter names in order)
CONTRACT = [
    ("tripletkit.distances", "pairwise_distance", ["x", "y", "metric"]),
    ("tripletkit.miners", "BatchAllMiner", ["margin", "metric", "active_only"]),
    ("tripletkit.miners", "BatchHardMiner", ["metric"]),
    ("tripletkit.miners", "SemiHardMiner", ["margin", "metric"]),
    ("tripletkit.miners", "TripletMarginMiner", ["margin", "type_of_triplets", "metric"]),
    (
        "tripletkit.losses",
        "TripletMarginLoss",
        ["margin", "metric", "soft_margin", "reduction"],
    ),
    ("tripletkit.losses", "ContrastiveLoss", ["pos_margin", "neg_margin", "metric", "reduction"]),
    (
        "tripletkit.losses",
        "batch_all_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    (
        "tripletkit.losses",
        "batch_hard_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    (
        "tripletkit.losses",
        "semi_hard_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    ("tripletkit.stats", "triplet_stats", ["embeddings", "labels", "margin", "metric"]),
]

DEFAULTS = {
    ("tripletkit.losses", "batch_all_triplet_loss", "reduction"): "mean_nonzero",
    ("tripletkit.losses", "batch_hard_triplet_loss", "reduction"): "mean",
    ("tripletkit.losses", "semi_hard_triplet_loss", "reduction"): "mean",
    ("tripletkit.losses", "batch_all_triplet_loss", "margin"): 0.2,
    ("tripletkit.miners", "BatchAllMiner", "active_only"): True,
    ("tripletkit.losses", "ContrastiveLoss", "pos_margin"): 0.0,
    ("tripletkit.losses", "ContrastiveLoss", "neg_margin"): 1.0,
    ("tripletkit.losses", "TripletMarginLoss", "reduction"): "mean",
}


def _params(obj: object) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    names = [p for p in inspect.signature(target).parameters if p != "self"]
    return names


@pytest.mark.parametrize(("module", "name", "params"), CONTRACT)
def test_contract_names_and_arguments(module: str, name: str, params: list[str]) -> None:
    obj = getattr(importlib.import_module(module), name)
    assert _params(obj)[: len(params)] == params


@pytest.mark.parametrize(("key", "value"), list(DEFAULTS.items()))
def test_contract_defaults(key: tuple[str, str, str], value: object) -> None:
    module, name, param = key
    obj = getattr(importlib.import_module(module), name)
    target = obj.__init__ if inspect.isclass(obj) else obj
    assert inspect.signature(target).parameters[param].default == value


@pytest.mark.parametrize(
    ("cls", "call"),
    [
        ("BatchAllMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("BatchHardMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("SemiHardMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("TripletMarginMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
    ],
)
def test_miner_call_signature(cls: str, call: list[str]) -> None:
    miner = getattr(importlib.import_module("tripletkit.miners"), cls)
    assert list(inspect.signature(miner.forward).parameters)[1:] == call


def test_loss_call_signatures() -> None:
    from tripletkit.losses import ContrastiveLoss, TripletMarginLoss

    assert list(inspect.signature(TripletMarginLoss.forward).parameters)[1:4] == [
        "embeddings",
        "labels",
        "triplets",
    ]
    assert list(inspect.signature(ContrastiveLoss.forward).parameters)[1:4] == [
        "embeddings",
        "labels",
        "pairs",
    ]


def test_triplets_is_a_named_3_tuple() -> None:
    import torch

    from tripletkit.types import Pairs, Triplets

    t = Triplets.empty()
    a, p, n = t
    assert t._fields == ("anchor", "positive", "negative")
    assert all(x.dtype == torch.int64 for x in (a, p, n))
    assert Pairs._fields == ("anchor_pos", "positive", "anchor_neg", "negative")


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```(?:bash|sh|shell)?\n(.*?)```", section, re.S)
    assert block is not None, "the Quick start section has no shell code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_second() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^README_TEST_COMMAND='(.*)'$", ci, re.M)
    assert match is not None
    assert match.group(1) == commands[1]
