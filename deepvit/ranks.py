"""This process's place in the job: as the launcher states it (``$RANK``, ``$WORLD_SIZE``, ``$LOCAL_RANK``; torchrun's
and DeepSpeed's launcher set them), or as torch.distributed knows it once initialised. The one place training and data
read it.
"""
from __future__ import annotations

import os

__all__ = ['env_rank', 'env_world_size', 'env_local_rank', 'env_local_world_size', 'cores_per_rank', 'resolve_rank']


def env_rank() -> int:
    return int(os.environ.get('RANK', 0))


def env_world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', 1))


def env_local_rank() -> int:
    return int(os.environ.get('LOCAL_RANK', 0))


def env_local_world_size() -> int:
    """Ranks on this host: ``$LOCAL_WORLD_SIZE`` (torchrun's), else ``$LOCAL_SIZE`` (DeepSpeed's launcher), else 1."""
    return int(os.environ.get('LOCAL_WORLD_SIZE') or os.environ.get('LOCAL_SIZE') or 1)


def cores_per_rank() -> int:
    """CPU cores this process may run on (its affinity mask: what a scheduler granted, not the host's count),
    shared evenly by the host's ranks; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cores // max(1, env_local_world_size()))


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit arguments, else torch.distributed when initialised, else $RANK / $WORLD_SIZE,
    else (0, 1). Raises ``ValueError`` unless 0 <= rank < world_size."""
    if rank is None or world_size is None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            found_rank, found_world = dist.get_rank(), dist.get_world_size()
        else:
            found_rank, found_world = env_rank(), env_world_size()
        rank = found_rank if rank is None else rank
        world_size = found_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f'rank={rank} must be in [0, world_size={world_size})')
    return rank, world_size
