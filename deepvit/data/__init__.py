"""Data: ImageFolder → WebDataset shards, built-in ``digits``, and a multi-rank streaming loader.

Imports nothing else from the project but two one-job modules, :mod:`deepvit.atomic` (atomic file writes) and
:mod:`deepvit.ranks` (``$RANK`` / ``$WORLD_SIZE``). Main entry points:
  * :func:`create_loader` → :class:`ShardLoader` yielding ``(images float (B, C, H, W), labels int64 (B,))``;
  * :func:`convert_image_folder` (CLI: ``python -m deepvit.data.convert``);
  * :func:`digits_dir` (the built-in ``digits`` shards; ``source='digits'`` in :func:`create_loader`);
  * :func:`create_mixup` (timm's Mixup/CutMix);
  * :func:`read_info` / :func:`write_info` (``_info.json``), :func:`resolve_shards` (source → shards).
"""
from .builtin import digits_dir
from .info import DatasetInfo, SplitInfo, read_info, write_info
from .loader import ShardLoader, create_loader
from .transforms import create_transform
from .mixup import create_mixup
from .sample import REASONS, SAMPLE_REASONS, make_sample
from .sources import ShardSet, resolve_shards

__all__ = [
    'DatasetInfo', 'REASONS', 'SAMPLE_REASONS', 'ShardLoader', 'ShardSet', 'SplitInfo', 'convert_image_folder',
    'create_loader', 'create_mixup', 'create_transform', 'digits_dir', 'make_sample', 'read_info',
    'resolve_shards', 'write_info',
]


def __getattr__(name):
    # lazy, so that `python -m deepvit.data.convert` does not import its own module twice
    if name == 'convert_image_folder':
        from .convert import convert_image_folder
        return convert_image_folder
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
