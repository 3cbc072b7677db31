"""``tripletkit.datasets``: the Omniglot copy shipped in the package and its loader."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tripletkit.datasets import OmniglotDataset, omniglot

SHA256 = "abda530418812af51fe7c0fca79759daea5f75d6ef04f93d9996a79a701ebd25"


@pytest.fixture(scope="module")
def background() -> OmniglotDataset:
    return omniglot("background")


@pytest.fixture(scope="module")
def evaluation() -> OmniglotDataset:
    return omniglot("evaluation")


def test_shipped_file_checksum_licence_and_readme() -> None:
    data = resources.files("tripletkit").joinpath("data")
    digest = hashlib.sha256(data.joinpath("omniglot28.npz").read_bytes()).hexdigest()
    assert digest == SHA256
    assert "MIT" in data.joinpath("LICENSE").read_text()
    readme = data.joinpath("README.md").read_text()
    assert SHA256 in readme and "Lake" in readme and "Science" in readme


def test_shipped_file_needs_no_pickle() -> None:
    path = resources.files("tripletkit").joinpath("data", "omniglot28.npz")
    with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        assert all(archive[name].dtype != object for name in archive.files)


@pytest.mark.parametrize(
    ("split", "classes", "alphabets"), [("background", 964, 30), ("evaluation", 659, 20)]
)
def test_sizes_shapes_and_dtypes(
    split: str, classes: int, alphabets: int, background, evaluation
) -> None:
    data = background if split == "background" else evaluation
    assert data.split == split
    assert data.num_classes == classes
    assert len(data) == 20 * classes
    assert data.images.shape == (20 * classes, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert data.labels.shape == (20 * classes,) and data.labels.dtype == torch.int64
    assert len(data.alphabets) == len(data.characters) == classes
    assert len(set(data.alphabets)) == alphabets
    assert len(set(zip(data.alphabets, data.characters, strict=True))) == classes
    assert all(isinstance(a, str) for a in data.alphabets + data.characters)


@pytest.mark.parametrize("split", ["background", "evaluation"])
def test_values_and_labels(split: str, background, evaluation) -> None:
    data = background if split == "background" else evaluation
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    # Ink covers a minority of the pixels; every drawing has some.
    assert 0.05 < float((data.images > 0).float().mean()) < 0.5
    assert bool((data.images.flatten(1).amax(dim=1) > 0).all())
    assert torch.equal(data.labels, torch.arange(data.num_classes).repeat_interleave(20))
    assert torch.equal(torch.bincount(data.labels), torch.full((data.num_classes,), 20))


def test_splits_share_no_alphabet(background, evaluation) -> None:
    assert not set(background.alphabets) & set(evaluation.alphabets)


def test_getitem(evaluation) -> None:
    image, label = evaluation[45]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int) and label == 2
    assert torch.equal(image, evaluation.images[45])


def test_max_classes_takes_the_first_classes(background) -> None:
    small = omniglot("background", max_classes=7)
    assert small.num_classes == 7 and len(small) == 140
    assert torch.equal(small.images, background.images[:140])
    assert torch.equal(small.labels, background.labels[:140])
    assert small.alphabets == background.alphabets[:7]
    assert small.characters == background.characters[:7]
    assert omniglot("evaluation", max_classes=659).num_classes == 659


def test_works_with_a_dataloader() -> None:
    loader = DataLoader(omniglot("evaluation", max_classes=3), batch_size=16, shuffle=False)
    images, labels = next(iter(loader))
    assert images.shape == (16, 1, 28, 28) and labels.tolist() == [0] * 16
    assert "evaluation" in repr(loader.dataset)


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown split 'test'"):
        omniglot("test")
    with pytest.raises(ValueError, match="unknown split"):
        omniglot(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_classes must be >= 1"):
        omniglot(max_classes=0)
    with pytest.raises(TypeError, match="max_classes must be an int"):
        omniglot(max_classes=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only 659 classes"):
        omniglot("evaluation", max_classes=660)
