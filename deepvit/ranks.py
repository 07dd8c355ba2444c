"""This process's place in the job as the launcher states it (``$RANK``, ``$WORLD_SIZE``, ``$LOCAL_RANK``; torchrun's
and DeepSpeed's launcher set them): one reading for training and data, which may both import this module.
"""
import os

__all__ = ['env_rank', 'env_world_size', 'env_local_rank']


def env_rank() -> int:
    return int(os.environ.get('RANK', 0))


def env_world_size() -> int:
    return int(os.environ.get('WORLD_SIZE', 1))


def env_local_rank() -> int:
    return int(os.environ.get('LOCAL_RANK', 0))
