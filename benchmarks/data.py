"""The quality benchmark's data: Omniglot (built in) or a user's ``.npz`` file, split by class.

A :class:`Dataset` holds every sample (inputs ``x``, class ids ``y``) and a
:class:`~benchmarks.splits.ClassSplit` of its classes into a *training part*, a
*validation part* (drawn from the training classes, for the hyper-parameter search) and the
*evaluation* classes that no run trains on. :meth:`Dataset.task` cuts it into what one phase
of the protocol trains and evaluates on:

- ``"tune"``: train on the training part, evaluate on the validation part;
- ``"final"``: train on the training part, evaluate on the validation part at the
  checkpoints (a fixed subset of its classes at the intermediate ones, all of them at the
  last), and hand out the evaluation (test) classes only through :meth:`Task.test`, which
  the final evaluation calls once every choice is made (:mod:`benchmarks.protocol`).

Omniglot (:func:`load_omniglot`): the 964 *background* characters are the training
classes, the 659 *evaluation* characters the evaluation classes; the validation part is a
set of whole background alphabets (:func:`benchmarks.splits.omniglot_split`), so that
validation, like evaluation, asks for characters of alphabets never trained on.

A user's file (:func:`load_npz`): arrays ``x`` ``[N, ...]`` and ``y`` ``[N]`` (integer
class labels); classes are split 60 / 20 / 20 (:func:`benchmarks.splits.user_split`).
``x`` of two dimensions is a set of vectors (an MLP embeds them, features standardised with
the training part's mean and standard deviation); three dimensions ``[N, H, W]`` are
one-channel images, four ``[N, C, H, W]`` images with ``C`` channels (``[N, H, W, C]`` with
``C`` in 1, 3, 4 is recognised and transposed), embedded by the conv net; integer images are
scaled by 1/255. Every problem with the file raises a :class:`ValueError` that says what is
wrong and how to fix it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tripletkit.datasets import omniglot

from .cli import UsageError
from .splits import (
    MIN_CLASSES_PER_SPLIT,
    MIN_SAMPLES_PER_CLASS,
    SUBSET_SEED,
    ClassSplit,
    omniglot_split,
    user_split,
)

__all__ = ["Dataset", "Task", "load_npz", "load_omniglot"]

#: Class-id offset of the Omniglot evaluation characters (after the 964 background ones).
OMNIGLOT_EVAL_OFFSET = 964


@dataclass
class Task:
    """What one phase trains and evaluates on.

    Attributes:
        phase: ``"tune"`` or ``"final"``.
        train_x, train_y: the training samples and their class ids (the training part).
        eval_x, eval_y: the validation samples, evaluated at the checkpoints.
        subset: indices into ``eval_x`` evaluated at the intermediate checkpoints.
        final: indices into ``eval_x`` evaluated at the last checkpoint (all of them).
        input_shape: shape of one input (``[D]`` or ``[C, H, W]``).
        test_loader: ``() -> (x, y)``, the evaluation classes' samples (None in the
            tuning phase); read through :meth:`test` only.
        test_classes: how many evaluation classes :meth:`test` returns.
    """

    phase: str
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    subset: Tensor
    final: Tensor
    input_shape: tuple[int, ...]
    test_loader: Callable[[], tuple[Tensor, Tensor]] | None = None
    test_classes: int = 0

    @property
    def train_classes(self) -> int:
        return int(torch.unique(self.train_y).numel())

    def eval_classes(self, final: bool = True) -> int:
        """Validation classes evaluated at the last (``final``) or the other checkpoints."""
        rows = self.final if final else self.subset
        return int(torch.unique(self.eval_y[rows]).numel())

    def test(self) -> tuple[Tensor, Tensor]:
        """The evaluation (test) samples and their class ids: for the final evaluation only.

        Raises:
            RuntimeError: the tuning phase has no test classes.
        """
        if self.test_loader is None:
            raise RuntimeError("the tuning phase never reads the evaluation classes")
        return self.test_loader()


@dataclass
class Dataset:
    """Every sample of a benchmark dataset and the split of its classes.

    Attributes:
        name: ``"omniglot"`` or the file's stem.
        x: ``[N, ...]`` float32 inputs.
        y: ``[N]`` int64 class ids.
        split: the :class:`~benchmarks.splits.ClassSplit` of the class ids.
        source: how the data was read and prepared (saved in the JSON).
    """

    name: str
    x: Tensor
    y: Tensor
    split: ClassSplit
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def rows(self, classes: np.ndarray) -> Tensor:
        """Indices of the samples of ``classes``."""
        keep = torch.isin(self.y, torch.as_tensor(np.asarray(classes), dtype=self.y.dtype))
        return keep.nonzero().squeeze(1)

    def task(
        self, phase: str, subset_classes: int | None = None, final_classes: int | None = None
    ) -> Task:
        """The training and evaluated samples of ``phase`` (``"tune"`` or ``"final"``).

        Both train on the training part and evaluate on the validation part. The final
        phase evaluates ``subset_classes`` validation classes (seeded choice,
        :data:`SUBSET_SEED`) at the intermediate checkpoints and all of them at the last,
        and gives :meth:`Task.test` ``final_classes`` evaluation classes (seeded choice;
        None: all), sliced only when it is called; the tuning phase evaluates every
        validation class at every checkpoint and has no test classes.
        """
        if phase not in ("tune", "final"):
            raise ValueError(f"unknown phase {phase!r}")
        rng = np.random.default_rng(SUBSET_SEED)
        val_order = rng.permutation(np.sort(self.split.validation))
        n_sub = len(val_order) if subset_classes is None or phase == "tune" else subset_classes
        train_rows = self.rows(self.split.train)
        eval_rows = self.rows(val_order)
        eval_y = self.y[eval_rows]
        keep = val_order[: min(n_sub, len(val_order))]
        subset = torch.isin(eval_y, torch.as_tensor(keep, dtype=eval_y.dtype))
        loader = None
        n_test = 0
        if phase == "final":
            test_order = np.random.default_rng(SUBSET_SEED).permutation(
                np.sort(self.split.evaluation)
            )
            n_test = len(test_order) if final_classes is None else final_classes
            test_ids = test_order[: min(n_test, len(test_order))]
            n_test = len(test_ids)

            def loader() -> tuple[Tensor, Tensor]:
                rows = self.rows(test_ids)
                return self.x[rows], self.y[rows]

        return Task(
            phase=phase,
            train_x=self.x[train_rows],
            train_y=self.y[train_rows],
            eval_x=self.x[eval_rows],
            eval_y=eval_y,
            subset=subset.nonzero().squeeze(1),
            final=torch.arange(len(eval_rows)),
            input_shape=self.input_shape,
            test_loader=loader,
            test_classes=n_test,
        )


def load_omniglot(max_train_classes: int | None = None) -> Dataset:
    """Omniglot: background characters (the first ``max_train_classes`` of them, all when
    None) as training classes, validation alphabets drawn among them, evaluation characters
    as evaluation classes (ids offset by :data:`OMNIGLOT_EVAL_OFFSET`)."""
    background = omniglot("background", max_classes=max_train_classes)
    evaluation = omniglot("evaluation")
    split = omniglot_split(
        background.alphabets,
        background.characters,
        evaluation=np.arange(evaluation.num_classes) + OMNIGLOT_EVAL_OFFSET,
    )
    return Dataset(
        name="omniglot",
        x=torch.cat([background.images, evaluation.images]),
        y=torch.cat([background.labels, evaluation.labels + OMNIGLOT_EVAL_OFFSET]),
        split=split,
        source={
            "dataset": "Omniglot 28x28 (tripletkit.datasets.omniglot), background split for "
            "training and validation, evaluation split for the unseen evaluation classes",
            "evaluation_class_ids": f"evaluation character j has id {OMNIGLOT_EVAL_OFFSET} + j",
            "images": int(len(background) + len(evaluation)),
        },
    )


# --------------------------------------------------------------------------------------
# A user's .npz file
# --------------------------------------------------------------------------------------


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of an ``.npz`` archive, or a ValueError saying what is missing."""
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(
            f"--data {path}: not a readable .npz archive ({exc}); write it with "
            "numpy.savez(path, x=inputs, y=labels)"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(
            f"--data {path}: a single array, not an .npz archive; write it with "
            "numpy.savez(path, x=inputs, y=labels)"
        )
    with archive:
        missing = [name for name in ("x", "y") if name not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise UsageError(
                f"--data {path}: no array named {' or '.join(repr(m) for m in missing)} "
                f"(arrays found: {found}); the file needs x [N, ...] (inputs) and y [N] "
                "(integer class labels): numpy.savez(path, x=inputs, y=labels)"
            )
        try:
            return archive["x"], archive["y"]
        except ValueError as exc:  # object arrays need pickle
            raise UsageError(f"--data {path}: cannot read x and y ({exc})") from None


def _check_inputs(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise UsageError(f"--data {path}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise UsageError(
            f"--data {path}: x has shape {x.shape}; expected vectors [N, D], one-channel "
            "images [N, H, W] or images [N, C, H, W]"
        )
    if y.ndim != 1:
        raise UsageError(f"--data {path}: y must be one label per sample [N], got {y.shape}")
    if len(x) != len(y):
        raise UsageError(f"--data {path}: x has {len(x)} samples but y has {len(y)} labels")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise UsageError(
            f"--data {path}: labels y must be integers, got dtype {y.dtype} "
            "(one integer class id per sample)"
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise UsageError(f"--data {path}: x holds NaN or infinite values")


def _check_classes(path: Path, y: np.ndarray) -> np.ndarray:
    """The sorted class ids, after checking the samples per class and the class count."""
    classes, counts = np.unique(y, return_counts=True)
    small = classes[counts < MIN_SAMPLES_PER_CLASS]
    if len(small):
        shown = ", ".join(str(c) for c in small[:5]) + (" ..." if len(small) > 5 else "")
        raise UsageError(
            f"--data {path}: {len(small)} classes have fewer than {MIN_SAMPLES_PER_CLASS} "
            f"samples (class ids {shown}); retrieval needs at least "
            f"{MIN_SAMPLES_PER_CLASS} samples of every class (drop those classes)"
        )
    needed = 5 * MIN_CLASSES_PER_SPLIT  # floor(0.2 * C) >= MIN_CLASSES_PER_SPLIT
    if len(classes) < needed:
        raise UsageError(
            f"--data {path}: {len(classes)} classes; the protocol splits the classes "
            f"60/20/20 into training / validation / evaluation and needs at least "
            f"{MIN_CLASSES_PER_SPLIT} in each, i.e. at least {needed} classes"
        )
    return classes


def _as_images(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` from ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``."""
    if x.ndim == 3:
        return x[:, None]
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _prepare_x(x: np.ndarray, train_rows: np.ndarray) -> tuple[Tensor, str]:
    """float32 inputs: images (integers scaled by 1/255), vectors standardised with the
    training part's statistics."""
    if x.ndim == 2:
        xf = x.astype(np.float32)
        mean = xf[train_rows].mean(axis=0)
        std = xf[train_rows].std(axis=0)
        std[std == 0] = 1.0
        return torch.from_numpy((xf - mean) / std), (
            "vectors standardised per feature with the training part's mean and std"
        )
    images = _as_images(x)
    if np.issubdtype(images.dtype, np.integer):
        return torch.from_numpy(images.astype(np.float32) / 255.0), "integer images / 255"
    return torch.from_numpy(images.astype(np.float32)), "float images as given"


def load_npz(path: str | Path) -> Dataset:
    """A user's ``.npz`` file (arrays ``x`` ``[N, ...]`` and ``y`` ``[N]``) as a
    :class:`Dataset`, classes split 60 / 20 / 20 by :func:`benchmarks.splits.user_split`.

    Raises:
        ValueError: the file is missing or unreadable, ``x`` or ``y`` is missing, of the
            wrong shape or type, their lengths differ, ``x`` is not finite, a class has
            fewer than :data:`MIN_SAMPLES_PER_CLASS` samples, or there are too few classes
            for :data:`MIN_CLASSES_PER_SPLIT` per split.
    """
    path = Path(path)
    x, y = _read_arrays(path)
    _check_inputs(path, x, y)
    classes = _check_classes(path, y)
    split = user_split(classes)
    y_t = torch.from_numpy(y.astype(np.int64))
    train_rows = np.isin(y, split.train).nonzero()[0]
    x_t, how = _prepare_x(x, train_rows)
    return Dataset(
        name=path.stem,
        x=x_t,
        y=y_t,
        split=split,
        source={
            "file": str(path),
            "samples": int(len(y)),
            "classes": int(len(classes)),
            "input_shape": list(x_t.shape[1:]),
            "preprocessing": how,
        },
    )
