"""The base of every batch sampler: epochs, replicas, ``len`` and checkpoints."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Sampler

from .._checks import (
    check_choice,
    check_nonnegative_int,
    check_positive_int,
)
from .._world import resolve_replicas
from ._draw import SMALL_CLASSES

__all__: list[str] = []


class _EpochBatchSampler(Sampler[list[int]]):
    """What every batch sampler here shares: ``k`` samples per class, a numpy generator
    seeded with ``(seed, epoch)``, :meth:`set_epoch`, replicas that take disjoint shares of
    one global batch list, an exact ``len``, and :meth:`state_dict` /
    :meth:`load_state_dict` for exact resumption mid-epoch. Subclasses set ``_num_batches``
    and ``_labels_crc`` and write ``_draw_batches``."""

    _num_batches: int
    _labels_crc: int

    def __init__(
        self, k: int, seed: int, num_replicas: int | None, rank: int | None, small_classes: str
    ) -> None:
        super().__init__()
        self.k = check_positive_int(k, "k")
        self.small_classes = check_choice("small_classes", small_classes, SMALL_CLASSES)
        self.seed = int(check_nonnegative_int(seed, "seed"))  # type: ignore[arg-type]
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._batches: np.ndarray | None = None  # the epoch being iterated, [B, batch size]
        self._position = 0  # batches of it handed out so far
        self._resume: tuple[int, np.ndarray, int] | None = None  # (epoch, batches, position)

    @property
    def max_positives(self) -> int:
        """The number of positives of every anchor of a batch mined against itself, ``k - 1``:
        the ``max_positives`` bound of the fused losses (no host read to find it)."""
        return self.k - 1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with ``seed``, determines the next iteration's batches. After
        :meth:`load_state_dict`, setting the saved epoch keeps the resumption; another epoch
        drops it."""
        self.epoch = int(check_nonnegative_int(epoch, "epoch"))  # type: ignore[arg-type]
        self._batches, self._position = None, 0
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None

    def __len__(self) -> int:
        """Number of batches this replica yields per epoch (a resumed epoch yields only the
        batches that were not handed out before the checkpoint)."""
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch's batches are decided when iteration starts (not at the first batch).
        if self._resume is not None and self._resume[0] == self.epoch:
            _, batches, start = self._resume
        else:
            batches, start = self._draw_batches(), 0
        self._resume = None
        self._batches, self._position = batches, start
        return self._yield(batches, start)

    def _yield(self, batches: np.ndarray, start: int) -> Iterator[list[int]]:
        for i in range(start, batches.shape[0]):
            if self._batches is batches:  # a newer iteration has not replaced this one
                self._position = i + 1
            yield batches[i].tolist()

    def _draw_batches(self) -> np.ndarray:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        """What must agree between the sampler that saved a state and the one loading it."""
        names = ("p", "c", "k", "seed", "num_replicas", "rank", "small_classes", "num_samples")
        config: dict[str, object] = {"type": type(self).__name__}
        config.update({n: getattr(self, n) for n in names if hasattr(self, n)})
        config.update(num_batches=self._num_batches, labels_crc32=self._labels_crc)
        return config

    def state_dict(self, consumed: int | None = None) -> dict[str, object]:
        """The sampler's state, to resume exactly where it stopped (``torch.save`` it with
        the model and optimizer).

        Holds the epoch to iterate next and, mid-epoch, that epoch's batches not handed out
        yet (the rest of the epoch is then replayed exactly, whatever happened to the sampler
        in between). Once every batch of an epoch is out, the state names the next epoch.
        A training loop resumes with ``for epoch in range(sampler.epoch, epochs):
        sampler.set_epoch(epoch); ...`` after :meth:`load_state_dict`.

        Args:
            consumed: how many batches of the current epoch the training loop has *used*.
                A ``DataLoader`` with workers draws batches ahead of the loop
                (``num_workers * prefetch_factor`` of them), so pass your step count within
                the epoch there; by default, the batches the sampler has handed out.

        Returns:
            A dict of plain values and tensors: ``config`` (checked on load), ``epoch`` (to
            iterate next), ``position`` and ``batches`` (``[B, batch size]`` int64 tensor,
            or ``None`` at an epoch boundary).
        """
        batches, position = self._batches, self._position
        if self._resume is not None:  # loaded, not iterated yet
            _, batches, position = self._resume
        if consumed is not None:
            consumed = int(check_nonnegative_int(consumed, "consumed"))  # type: ignore[arg-type]
            if batches is None and consumed:
                raise ValueError(
                    f"consumed={consumed}, but no epoch is being iterated (the sampler has "
                    "handed out no batch since the epoch began)"
                )
            if batches is not None and consumed > position:
                raise ValueError(
                    f"consumed={consumed}, but the sampler has handed out only {position} "
                    "batches of this epoch"
                )
            position = consumed
        mid_epoch = batches is not None and position < batches.shape[0]
        completed = batches is not None and not mid_epoch
        return {
            "config": self._config(),
            "epoch": self.epoch + 1 if completed else self.epoch,
            "position": position if mid_epoch else 0,
            "batches": torch.from_numpy(batches.copy()) if mid_epoch else None,  # type: ignore[union-attr]
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict`: the next iteration (of the saved epoch) continues
        with the first batch that was not consumed.

        Raises:
            ValueError: a state saved by a sampler of another type, other labels, ``p``,
                ``k``, seed, replicas or rank (the fields that differ are named).
        """
        missing = {"config", "epoch", "position", "batches"} - set(state)
        if missing:
            raise ValueError(f"not a sampler state: missing {sorted(missing)}")
        saved, mine = dict(state["config"]), self._config()  # type: ignore[call-overload]
        differ = sorted(k for k in saved.keys() | mine.keys() if saved.get(k) != mine.get(k))
        if differ:
            shown = ", ".join(f"{k}: saved {saved.get(k)!r}, here {mine.get(k)!r}" for k in differ)
            raise ValueError(f"the state belongs to another sampler ({shown})")
        self.epoch = int(state["epoch"])  # type: ignore[call-overload]
        batches = state["batches"]
        self._batches, self._position = None, 0
        if batches is None:
            self._resume = None
        else:
            array = torch.as_tensor(batches).numpy().astype(np.int64, copy=True)
            self._resume = (self.epoch, array, int(state["position"]))  # type: ignore[call-overload]
