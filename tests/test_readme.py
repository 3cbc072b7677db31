"""The README's DataLoader tour runs as written (on a few batches)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tripletkit

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_loop_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    tour = blocks[0]
    assert "for images, labels in loader:" in tour
    # same code, cut to one epoch of three batches
    tour = tour.replace("for epoch in range(2):", "for epoch in range(1):")
    tour = tour.replace(
        "for images, labels in loader:", "for images, labels in itertools.islice(loader, 3):"
    )
    scope: dict[str, object] = {}
    exec(compile("import itertools\n" + tour, str(README), "exec"), scope)
    loss = scope["loss"]
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)


def _self_contained_blocks() -> list[str]:
    """The README's other Python examples that stand alone: those that start with
    ``import`` (fragments that assume earlier context start otherwise)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks[1:] if b.startswith("import ")]


def test_readme_has_self_contained_examples() -> None:
    assert len(_self_contained_blocks()) >= 6


def _shortened(block: str) -> str:
    """The same code with every DataLoader loop cut to three batches."""
    return "import itertools\n" + block.replace(
        "for images, labels in loader:", "for images, labels in itertools.islice(loader, 3):"
    )


@pytest.mark.parametrize("index", range(len(_self_contained_blocks())))
def test_readme_example_runs(index: int) -> None:
    block = _shortened(_self_contained_blocks()[index])
    try:
        exec(compile(block, f"{README}:example{index}", "exec"), {})
    finally:  # an example may leave the input checks off
        tripletkit.set_input_checks(True)
        torch._dynamo.reset()
