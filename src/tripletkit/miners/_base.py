"""The ``nn.Module`` behind every miner: hyper-parameters in, the pure function called.

A miner holds validated hyper-parameters (see :class:`~tripletkit._module.HyperParameters`)
and is called as ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``; the
mining function beside it in the same file is the single source of truth. Random miners own
a seeded :class:`torch.Generator` (:class:`SeededMiner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_nonnegative_int, to_host
from .._module import HyperParameters
from ..distances import (
    _paired_distance_unchecked,
    _pairwise_distance_unchecked,
    normalize_embeddings,
)
from ..types import Pairs, Triplets

__all__ = ["Miner", "MinerStats", "SeededMiner", "make_generator", "miner_stats"]


@dataclass(frozen=True)
class MinerStats:
    """What a miner's last call selected, as 0-dim tensors on the embeddings' device (read
    them when you log: :meth:`as_dict` reads all of them in one host read).

    A triplet holds one positive pair ``(a, p)`` and one negative pair ``(a, n)``; the
    distances are those of the miner's metric (after ``normalize`` when the miner has it),
    computed without autograd. A mean over no pair is 0.

    Attributes:
        num_triplets: rows of the output (``Triplets``; 0 for a pair miner), int64.
        num_pos_pairs: positive pairs of the output (``num_triplets`` for a triplet
            miner), int64.
        num_neg_pairs: negative pairs of the output, int64.
        num_anchors: distinct anchors among them, int64.
        pos_distance: mean distance of the positive pairs (``d_ap`` over the triplets).
        neg_distance: mean distance of the negative pairs (``d_an`` over the triplets).

    Examples:
        >>> import torch
        >>> from tripletkit.miners import BatchHardMiner
        >>> miner = BatchHardMiner()
        >>> _ = miner(torch.tensor([[0.0], [0.5], [0.6], [5.0]]), torch.tensor([0, 0, 1, 1]))
        >>> miner.stats.num_triplets, miner.stats.num_anchors
        (tensor(4), tensor(4))
        >>> {k: round(v, 4) for k, v in miner.stats.as_dict().items()}  # one host read
        {'num_triplets': 4, 'num_pos_pairs': 4, 'num_neg_pairs': 4, 'num_anchors': 4, \
'pos_distance': 2.45, 'neg_distance': 1.325}
    """

    num_triplets: Tensor
    num_pos_pairs: Tensor
    num_neg_pairs: Tensor
    num_anchors: Tensor
    pos_distance: Tensor
    neg_distance: Tensor

    def as_dict(self) -> dict[str, int | float]:
        """Every field as a Python number, read in one host read (a synchronisation on a
        GPU): counts as ``int``, distances as ``float``; e.g. for a logger."""
        values = [getattr(self, f.name) for f in fields(self)]
        read = to_host(torch.stack([v.to(torch.float64) for v in values]))
        return {
            f.name: (int(v) if f.name.startswith("num_") else float(v))
            for f, v in zip(fields(self), read, strict=True)
        }


def _mean_distance(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor, metric: str) -> Tensor:
    """Mean of ``d(x[rows], y[cols])`` (0 when there are none), from the pairs' rows when
    they are few (O(T D)), else gathered from the ``N x M`` matrix (O(N M D + T)), so that
    the memory stays O(N M) either way."""
    count = rows.shape[0]
    if count * x.shape[1] <= x.shape[0] * y.shape[0]:
        d = _paired_distance_unchecked(x[rows], y[cols], metric)
    else:
        d = _pairwise_distance_unchecked(x, y, metric)[rows, cols]
    return d.sum(dtype=torch.float64).div(max(count, 1)).to(x.dtype)


def miner_stats(
    mined: Triplets | Pairs,
    embeddings: Tensor,
    ref_embeddings: Tensor | None = None,
    metric: str = "euclidean",
    normalize: bool = False,
) -> MinerStats:
    """:class:`MinerStats` of a miner's output ``mined`` on ``embeddings [N, D]`` (and the
    references ``[M, D]`` its positives and negatives index, when given). No host read: the
    counts are the output's lengths, known on the host, written into device tensors."""
    with torch.no_grad():
        x = embeddings.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        y = x if ref_embeddings is None else ref_embeddings.detach().to(x.dtype)
        if normalize:
            x, y = normalize_embeddings(x), normalize_embeddings(y)
        if isinstance(mined, Triplets):
            a, p, n = mined
            pos_pairs, neg_pairs, triplets = (a, p), (a, n), a.shape[0]
        else:
            pos_pairs, neg_pairs, triplets = mined[:2], mined[2:], 0
        seen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        seen.index_fill_(0, pos_pairs[0], True).index_fill_(0, neg_pairs[0], True)

        def count(value: int) -> Tensor:
            return torch.full((), value, dtype=torch.int64, device=x.device)

        return MinerStats(
            num_triplets=count(triplets),
            num_pos_pairs=count(pos_pairs[0].shape[0]),
            num_neg_pairs=count(neg_pairs[0].shape[0]),
            num_anchors=seen.sum(),
            pos_distance=_mean_distance(x, y, *pos_pairs, metric),
            neg_distance=_mean_distance(x, y, *neg_pairs, metric),
        )


class Miner(HyperParameters):
    """Base class: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

    Subclasses set :attr:`function` and call ``super().__init__(**options)`` with their
    validated hyper-parameters, which are passed to the function by keyword on every call.

    Every call also records :attr:`stats`, the :class:`MinerStats` of its output (how many
    triplets or pairs, their mean positive and negative distances), as device tensors: no
    host synchronisation unless they are read. It costs the distances of the mined pairs
    (O(T D), or one more distance matrix when T is large); set :attr:`collect_stats` to
    ``False`` to skip it (then :attr:`stats` stays ``None``).
    """

    function: ClassVar[Callable[..., Triplets | Pairs]]
    #: Whether calls record :attr:`stats` (a plain attribute: set it on an instance).
    collect_stats: bool = True
    #: The :class:`MinerStats` of the last call, ``None`` before the first one.
    stats: MinerStats | None = None

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets | Pairs:
        mined = type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            **self.options(),
        )
        return self._record(mined, embeddings, ref_embeddings)

    def _record(
        self, mined: Triplets | Pairs, embeddings: Tensor, ref_embeddings: Tensor | None
    ) -> Triplets | Pairs:
        """Set :attr:`stats` from the output (unless :attr:`collect_stats` is off)."""
        if self.collect_stats:
            options = self.options()
            self.stats = miner_stats(
                mined,
                embeddings,
                ref_embeddings,
                options.get("metric", "euclidean"),
                options.get("normalize", False),
            )
        return mined


def make_generator(seed: int | None = 0) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded with ``seed`` (from OS entropy only when ``None``
    is passed explicitly).

    Examples:
        >>> g1, g2 = make_generator(0), make_generator(0)
        >>> bool(torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2)))
        True
    """
    seed = check_nonnegative_int(seed, "seed", allow_none=True)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class SeededMiner(Miner):
    """A miner that owns its random streams, seeded with ``seed`` (0 by default, like every
    seeded object in tripletkit; ``None`` asks for OS entropy): successive calls draw
    different samples while a run stays reproducible.

    Draws happen on the embeddings' device, from a generator of that device seeded with
    ``seed`` (:attr:`generator` is the CPU one): the same seed reproduces a run on the same
    kind of device, not across devices. The generators' states travel in ``state_dict()``
    (as extra state), so a run resumed from a checkpoint continues the same streams.
    """

    def __init__(self, seed: int | None, **options: Any) -> None:
        super().__init__(**options)
        self.manual_seed(seed)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets | Pairs:
        device = embeddings.device if isinstance(embeddings, Tensor) else torch.device("cpu")
        mined = type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            generator=self.generator_for(device),
            **self.options(),
        )
        return self._record(mined, embeddings, ref_embeddings)

    def generator_for(self, device: torch.device) -> torch.Generator:
        """This miner's generator on ``device`` (created, seeded, at first use)."""
        if device.type in ("cpu", "meta"):
            return self.generator
        key = str(device)
        if key not in self._device_generators:
            generator = torch.Generator(device)
            if self.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.seed)
            self._device_generators[key] = generator
        return self._device_generators[key]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}".lstrip(", ")

    def manual_seed(self, seed: int | None) -> None:
        """Restart the miner's random streams from ``seed``."""
        self.generator: torch.Generator = make_generator(seed)
        self.seed = seed
        self._device_generators: dict[str, torch.Generator] = {}

    def get_extra_state(self) -> dict:
        """The generators' states travel in ``state_dict()``, so a resumed run draws on."""
        return {
            "seed": self.seed,
            "generator_state": self.generator.get_state(),
            "device_states": {k: g.get_state() for k, g in self._device_generators.items()},
        }

    def set_extra_state(self, state: dict) -> None:
        self.manual_seed(state["seed"])
        self.generator.set_state(state["generator_state"])
        for key, value in state.get("device_states", {}).items():
            self.generator_for(torch.device(key)).set_state(value)
