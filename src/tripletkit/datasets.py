"""Built-in data: Omniglot at 28 x 28, shipped inside the package (no download).

Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept learning through
probabilistic program induction", Science 350(6266)) has 1,623 handwritten characters from
50 alphabets, drawn 20 times each. The standard split is kept: ``"background"`` (30
alphabets, 964 characters) to train on and ``"evaluation"`` (20 alphabets, 659 characters)
to test retrieval on classes never seen in training. See ``tripletkit/data/README.md``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ._checks import check_choice, check_positive_int

__all__ = ["OMNIGLOT_SPLITS", "OmniglotDataset", "omniglot"]

#: The two Omniglot splits.
OMNIGLOT_SPLITS = ("background", "evaluation")

_OMNIGLOT_FILE = "omniglot28.npz"


class OmniglotDataset(Dataset[tuple[Tensor, int]]):
    """Omniglot images with integer class labels, all held in memory.

    Build it with :func:`omniglot`. Class ``c`` is the character ``characters[c]`` of the
    alphabet ``alphabets[c]``; its 20 drawings are rows ``20 * c .. 20 * c + 19``.

    Attributes:
        images: ``[N, 1, 28, 28]`` float32 ink intensity in ``[0, 1]`` (ink = 1).
        labels: ``[N]`` int64 class labels ``0 .. num_classes - 1`` within the split.
        alphabets: alphabet name of each class, ``num_classes`` strings.
        characters: character name of each class within its alphabet.
        split: ``"background"`` or ``"evaluation"``.

    Shape:
        - ``dataset[i]``: ``(image [1, 28, 28] float32, label int)``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        alphabets: tuple[str, ...],
        characters: tuple[str, ...],
        split: str,
    ) -> None:
        self.images = images
        self.labels = labels
        self.alphabets = alphabets
        self.characters = characters
        self.split = split

    @property
    def num_classes(self) -> int:
        """Number of classes (characters) in the dataset."""
        return len(self.characters)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, num_classes={self.num_classes}, "
            f"num_images={len(self)})"
        )


def omniglot(split: str = "background", max_classes: int | None = None) -> OmniglotDataset:
    """Load an Omniglot split from the copy shipped with tripletkit (no network).

    Images are the 105 x 105 drawings area-downsampled to 28 x 28. Classes keep the order of
    the shipped file, and the 20 drawings of a class are contiguous.

    Args:
        split: ``"background"`` (964 classes, for training) or ``"evaluation"`` (659
            classes, disjoint alphabets, for testing).
        max_classes: keep only the first ``max_classes`` classes (for quick runs); all
            when None.

    Returns:
        An :class:`OmniglotDataset` with ``20 * num_classes`` images.

    Raises:
        ValueError: an unknown split, or ``max_classes`` below 1 or above the number of
            classes in the split.

    Shape:
        - images: ``[20 * C, 1, 28, 28]`` float32 in ``[0, 1]``; labels: ``[20 * C]`` int64.

    Examples:
        >>> data = omniglot("evaluation", max_classes=5)
        >>> len(data), data.num_classes, tuple(data.images.shape)
        (100, 5, (100, 1, 28, 28))
        >>> image, label = data[21]
        >>> tuple(image.shape), label
        ((1, 28, 28), 1)
    """
    check_choice("split", split, OMNIGLOT_SPLITS)
    if max_classes is not None:
        max_classes = check_positive_int(max_classes, "max_classes")
    source = resources.files("tripletkit").joinpath("data", _OMNIGLOT_FILE)
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        raw = archive[f"{split}_images"]  # uint8 [C, 20, 28, 28]
        alphabets = archive[f"{split}_alphabet"]
        characters = archive[f"{split}_character"]
    total = raw.shape[0]
    if max_classes is not None:
        if max_classes > total:
            raise ValueError(
                f"max_classes={max_classes} but the {split} split has only {total} classes"
            )
        raw = raw[:max_classes]
        alphabets = alphabets[:max_classes]
        characters = characters[:max_classes]
    num_classes, per_class = raw.shape[:2]
    images = torch.from_numpy(raw.reshape(-1, 1, *raw.shape[2:]).astype(np.float32) / 255.0)
    labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(per_class)
    return OmniglotDataset(
        images=images,
        labels=labels,
        alphabets=tuple(str(a) for a in alphabets),
        characters=tuple(str(c) for c in characters),
        split=split,
    )
