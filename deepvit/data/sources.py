"""Resolve a ``source`` argument to a list of shards with, where known, their sample counts and class names.

Accepted sources:
  * ``'digits'``: the built-in sample data (materialised on first use, see :mod:`deepvit.data.builtin`);
  * a directory (local path or URL) holding ``_info.json``: the shards the split lists there;
  * a brace pattern or glob of local shards (``/data/imagenet1k-train-{0000..1023}.tar``, ``/data/*-train-*.tar``),
    or a list of paths; an ``_info.json`` in the shards' directory supplies their lengths and classes, otherwise
    local shards are counted (iterated over with webdataset, no payload read);
  * a URL or URL pattern webdataset's ``gopen`` opens (``https://…/imagenet1k-train-{0000..1023}.tar``,
    ``pipe:aws s3 cp s3://… -``); lengths come from ``_info.json`` next to the shards when it can be read.
All checks run here, before any image is decoded; errors name the argument and its value.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import dataclass, replace

import braceexpand

from . import shards as shardio
from .builtin import digits_dir
from .info import INFO_NAME, DatasetInfo, read_info

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSet:
    """Shards of one split. ``lengths[i]`` is the sample count of ``urls[i]``; ``lengths`` is None when unknown.

    ``offsets[i]`` (None: all 0) is the first sample of ``urls[i]`` that belongs to this set: a view of part of each
    shard, as :meth:`split_holdout` makes."""
    urls: tuple[str, ...]
    lengths: tuple[int, ...] | None
    classes: tuple[str, ...]
    split: str
    channels: int | None = None   # image channels recorded at conversion (1 gray, 3 colour); None: not recorded
    offsets: tuple[int, ...] | None = None

    @property
    def num_samples(self) -> int | None:
        return None if self.lengths is None else sum(self.lengths)

    def offset(self, shard: int) -> int:
        """First sample of shard ``shard`` in this set (0 unless the set is a view)."""
        return 0 if self.offsets is None else self.offsets[shard]

    def _allocate(self, samples: int, field: str) -> list[int]:
        """``samples`` spread over the shards in proportion to their lengths (largest remainders first, ties to the
        earlier shard). Raises ValueError naming ``field`` when lengths are unknown or ``samples`` is out of range."""
        if self.lengths is None:
            raise ValueError(f"{field}={samples}: needs shard lengths (an _info.json next to the shards of split "
                             f"{self.split!r})")
        total = sum(self.lengths)
        if not 1 <= samples < total:
            raise ValueError(f"{field}={samples}: must be in [1, {total - 1}], fewer than the {total} samples of "
                             f"split {self.split!r}")
        exact = [samples * n / total for n in self.lengths]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))[:samples - sum(counts)]:
            counts[i] += 1
        return counts

    def split_holdout(self, samples: int) -> tuple['ShardSet', 'ShardSet']:
        """``(train, holdout)`` views: the holdout is the last h_i samples of every shard, h_i proportional to its
        length (largest remainders first, ties to the earlier shard), ``samples`` in all.

        The rule reads only the shard lengths: it is the same for every seed, rank, worker and run (a study's runs
        share one holdout), costs nothing, and is a uniform sample of the split when the shards were written from
        a shuffled list, as :mod:`deepvit.data.convert` and the built-in data do (other shards: shuffle them first).

        Raises:
            ValueError: ``samples`` not in [1, samples of the split), or shard lengths unknown.
        """
        held = self._allocate(samples, 'data.holdout')
        base = self.offsets or (0,) * len(self.urls)
        train = replace(self, lengths=tuple(n - h for n, h in zip(self.lengths, held)))
        holdout = replace(self, lengths=tuple(held), offsets=tuple(o + n - h for o, n, h in
                                                                    zip(base, self.lengths, held)),
                          split=f'{self.split}:holdout')
        return train, holdout

    def head(self, samples: int, field: str = 'data.train_eval') -> 'ShardSet':
        """A view of the first samples of every shard, ``samples`` in all, spread as in :meth:`split_holdout`: a fixed
        subset of the set (the train-accuracy subset is the head of the train view, samples trained on). ``samples``
        not below the set's size returns the set itself.

        Raises:
            ValueError: ``samples`` < 1 or shard lengths unknown (the message names ``field``).
        """
        if self.lengths is not None and samples >= sum(self.lengths) >= 1:
            return self
        counts = self._allocate(samples, field)
        return replace(self, lengths=tuple(counts), split=f'{self.split}:head{samples}')

    def digest(self) -> str:
        """BLAKE2b hex digest (16 bytes) of (shard file name, first sample, count) of every shard: names the set's
        samples exactly, given the shards."""
        parts = [f'{u.rsplit("/", 1)[-1]}:{self.offset(i)}:{n}' for i, (u, n) in enumerate(zip(self.urls,
                                                                                            self.lengths or ()))]
        return hashlib.blake2b('\n'.join(parts).encode(), digest_size=16).hexdigest()


def is_url(s: str) -> bool:
    return '://' in s and not s.startswith('file://') or s.startswith('pipe:')


def _local(s: str) -> str:
    return s[len('file://'):] if s.startswith('file://') else s


def _try_info(location: str) -> DatasetInfo | None:
    try:
        return read_info(location)
    except (OSError, ValueError, RuntimeError):
        return None


def _from_info(info: DatasetInfo, location: str, split: str, arg: str) -> ShardSet:
    if split not in info.splits:
        raise ValueError(f'split={split!r} not in {arg}/{INFO_NAME} (splits: {sorted(info.splits)})')
    s = info.splits[split]
    urls = tuple(f'{location.rstrip("/")}/{f}' for f in s.filenames)
    return ShardSet(urls, s.shard_lengths, info.classes, split, info.channels)


def _lengths_from_info(urls: list[str], info: DatasetInfo | None, directory: str):
    """Lengths of ``urls`` looked up in an ``_info.json`` of their directory; None if any is not listed."""
    if info is None:
        return None, ()
    known = {}
    for s in info.splits.values():
        known.update({f'{directory.rstrip("/")}/{f}': n for f, n in zip(s.filenames, s.shard_lengths)})
    if all(u in known for u in urls):
        return tuple(known[u] for u in urls), info.classes
    return None, info.classes


def _count(path: str) -> int:
    count, damage = shardio.count_samples(path)
    if damage:
        _logger.warning('shard %s is damaged (%s): counting its %d complete samples', path, damage, count)
    return count


def _expand_local(pattern: str, arg: str) -> list[str]:
    paths = []
    for p in braceexpand.braceexpand(pattern):
        if glob.has_magic(p):
            matched = sorted(glob.glob(p))
            if not matched:
                raise FileNotFoundError(f'{arg}={pattern!r}: pattern {p!r} matches no shard')
            paths += matched
        elif not os.path.isfile(p):
            raise FileNotFoundError(f'{arg}={pattern!r}: shard {p!r} does not exist')
        else:
            paths.append(p)
    return paths


def resolve_shards(source, split: str = 'train', *, arg: str = 'source', count_local: bool = True) -> ShardSet:
    """Resolve ``source`` (see the module docstring) to the shards of ``split``.

    Raises ``FileNotFoundError`` for a missing path or a pattern matching no shard, ``ValueError`` for an unknown
    split, an empty split or an unusable argument; the message names ``arg`` and the value.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str) and source == 'digits':
        source = str(digits_dir())
    if isinstance(source, str) and not is_url(source) and os.path.isdir(_local(source)):
        location = _local(source)
        if not os.path.isfile(os.path.join(location, INFO_NAME)):
            raise FileNotFoundError(f'{arg}={source!r} is a directory without {INFO_NAME}; '
                                    'pass shard paths or a brace pattern instead')
        shards = _from_info(read_info(location), location, split, arg)
    elif isinstance(source, str) and is_url(source) and not source.rstrip('/').endswith(('.tar', '.tgz', '.tar.gz')) \
            and '{' not in source:
        shards = _from_info(read_info(source), source, split, arg)     # a remote dataset directory
    elif isinstance(source, (str, list, tuple)):
        items = [source] if isinstance(source, str) else [os.fspath(s) for s in source]
        if not items:
            raise ValueError(f'{arg}=[] lists no shard')
        urls = []
        for item in items:
            urls += list(braceexpand.braceexpand(item)) if is_url(item) else _expand_local(_local(item), arg)
        directory = urls[0].rsplit('/', 1)[0] if '/' in urls[0] else '.'
        lengths, classes = _lengths_from_info(urls, _try_info(directory), directory)
        if lengths is None and count_local and not any(is_url(u) for u in urls):
            lengths = tuple(_count(u) for u in urls)
        shards = ShardSet(tuple(urls), lengths, classes, split)
    else:
        raise ValueError(f'{arg}={source!r}: expected "digits", a directory, a shard path, pattern, URL or list')
    if not shards.urls or shards.num_samples == 0:
        raise ValueError(f'{arg}={source!r}: split {split!r} is empty')
    return shards
