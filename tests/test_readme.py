"""The README stays short (the material lives in the documentation site), its training loop
runs as written (on a few batches), and its links into the site resolve."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 220


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; move material into docs/"


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


def test_readme_links_resolve() -> None:
    """Every relative link (into docs/, notebooks/, ...) names a file of the repository."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    relative = [link.split("#")[0] for link in links if "://" not in link]
    assert relative  # the table of what is in the box links into the site
    missing = [link for link in relative if link and not (ROOT / link).exists()]
    assert not missing, missing
