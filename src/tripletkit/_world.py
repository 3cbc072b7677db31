"""Where this process sits among distributed replicas: the one place that asks
``torch.distributed`` for the world size and rank."""

from __future__ import annotations

import torch.distributed as dist

from ._checks import check_positive_int

__all__ = ["resolve_replicas", "world"]


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised default process group, else ``(1, 0)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def resolve_replicas(num_replicas: object, rank: object) -> tuple[int, int]:
    """Validate ``num_replicas`` and ``rank``, each defaulting (``None``) to :func:`world`'s."""
    default_replicas, default_rank = world()
    replicas = check_positive_int(
        default_replicas if num_replicas is None else num_replicas, "num_replicas"
    )
    if rank is None:
        rank = default_rank
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if not 0 <= rank < replicas:
        raise ValueError(f"rank must be in [0, {replicas}), got {rank}")
    return replicas, rank
