"""WebDataset shard I/O: glue around webdataset's own tar primitives (no tar format code of ours).

Reading is ``webdataset.tariterators``: ``url_opener`` (``webdataset.gopen``: local paths, ``https://``, ``pipe:``…)
→ ``tar_file_expander`` (tarfile in stream mode ``r|*``, so ``.tar.gz`` shards work too) → ``group_by_keys``
(samples by ``base_plus_ext``: the key is the member path up to the first dot of its basename, so keys never
contain dots). Writing is ``webdataset.TarWriter`` / ``ShardWriter``, into a temporary file that is fsynced and
renamed into place (:mod:`deepvit.atomic`). What this module adds:

* ``select_files``: only the members whose extension the caller asks for are read into memory (the loader: image
  and ``.cls``); tarfile passes over the others (``.json``, ``.pkl``, ``.pth``…) unread and nothing is decoded here.
  Members of samples before ``start`` are never read: resuming or starting mid-shard iterates over them.
* Positions: a sample's index counts every key in the shard, also one without a wanted member (yielded with an
  empty dict), so indices match ``_info.json``'s ``shard_lengths`` and the loader's plan.
* Damage: tarfile raises ``ReadError`` when a member it reads is cut short, but takes a stream that ends at or inside
  a header, or inside a member it passes over, for the end of the archive. The stream is therefore wrapped so that
  running out of bytes raises ``EOFError`` (tarfile never asks for bytes past the end-of-archive block of a complete
  tar); webdataset's ``handler=`` hook records the error and stops the shard. The complete samples before the damage
  are yielded, the one being read when it happened is dropped, then :class:`CorruptShardError` is raised.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from typing import Iterator

from webdataset import ShardWriter, TarWriter
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener

from ..atomic import atomic_file, commit, tmp_path

_logger = logging.getLogger(__name__)


class CorruptShardError(IOError):
    """A shard is truncated or its tar structure is damaged (the samples before the damage were read)."""


class _RunOutIsError:
    """File proxy: a read that gets no bytes raises ``EOFError``; tarfile only asks for more than a complete tar holds
    when the tar is cut short, which its stream reader would otherwise take for the end of the archive."""

    def __init__(self, fileobj, url: str):
        self.fileobj, self.url = fileobj, url

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(n)
        if not data and n and n > 0:
            raise EOFError('the tar ends early (truncated)')
        return data

    def __repr__(self) -> str:
        return self.url


def _keep_first(exn: Exception) -> bool:
    """group_by_keys handler: a member name repeated within a sample keeps the first payload."""
    _logger.warning('%s', exn.args[0] if exn.args else exn)
    return True


def iter_samples(url: str, exts=None, start: int = 0, stop: int | None = None
                 ) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Yield ``(index, key, {extension: payload})`` for samples ``start <= index < stop`` of one shard, in stored order.

    ``exts``: lower-case extensions whose payloads are read (``None``: all); the others are absent from the dict.
    Raises ``OSError`` when the shard cannot be opened, :class:`CorruptShardError` after the complete samples before
    the damage when it is truncated or damaged.
    """
    errors: list[Exception] = []
    seen = {'key': None, 'count': 0}     # the key being read and the number of keys so far
    pending = deque()                    # (index, key) seen by select_files and not yet yielded

    def select(fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        if key is None:                  # no extension: group_by_keys ignores it
            return False
        if key != seen['key']:
            seen['key'] = key
            seen['count'] += 1
            pending.append((seen['count'] - 1, key))
        return seen['count'] > start and (exts is None or ext.lower() in exts)

    def stop_shard(exn: Exception) -> bool:
        errors.append(exn)
        return False

    def flush(until=None):
        """Pending samples up to the key ``until`` (None: all) as (index, key); after damage, not the last one."""
        while pending:
            index, key = pending.popleft()
            if errors and index == seen['count'] - 1:
                return                   # read when the tar broke off: may be incomplete
            yield index, key
            if key == until:
                return

    for source in url_opener([{'url': url}]):
        stream = source['stream']
        with contextlib.closing(stream):
            source['stream'] = _RunOutIsError(stream, url)
            files = tar_file_expander([source], handler=stop_shard, select_files=select)
            for sample in group_by_keys(files, handler=_keep_first):
                for index, key in flush(sample['__key__']):
                    if stop is not None and index >= stop:
                        return
                    if index >= start:
                        yield index, key, ({e: v for e, v in sample.items() if e[:2] != '__'}
                                           if key == sample['__key__'] else {})
            for index, key in flush():       # trailing samples without a wanted member
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield index, key, {}
    if errors:
        e = errors[0]
        what = str(e.args[0]).rsplit(' @ ', 1)[0] if e.args else ''
        raise CorruptShardError(f'{type(e).__name__}: {what}')


def count_samples(url: str) -> tuple[int, str | None]:
    """Count the samples of a shard (reading no payload).

    Returns ``(count, damage)``: ``damage`` is the :class:`CorruptShardError` message when the shard is truncated or
    damaged (the count then covers the complete samples before the damage), else None. Raises ``OSError`` if unreadable.
    """
    count = 0
    try:
        for _ in iter_samples(url, exts=()):
            count += 1
    except CorruptShardError as e:
        return count, str(e)
    return count, None


# --- writing ---------------------------------------------------------------------------------------------------------
def _tar_writer(fileobj) -> TarWriter:
    """webdataset's TarWriter for payloads that are already bytes, reproducibly (fixed mtime, owner, mode)."""
    return TarWriter(fileobj, encoder=False, mtime=0, user='', group='', format='PAX_FORMAT')


def _sample(key: str, members: dict[str, bytes]) -> dict:
    if base_plus_ext(f'{key}.x')[0] != key:
        raise ValueError(f'sample key must not contain a dot (webdataset splits the key there): key={key!r}')
    return {'__key__': key, **members}


def write_shard(path: str | os.PathLike, samples) -> None:
    """Write ``samples`` (iterable of (key, {ext: bytes})) as one shard at ``path``, atomically (:func:`deepvit.atomic.atomic_file`).

    Members are written in sorted extension order, the payload bytes unchanged. Raises ``ValueError`` for a key
    with a dot.
    """
    with atomic_file(path) as f, _tar_writer(f) as writer:
        for key, members in samples:
            writer.write(_sample(key, members))


class AtomicShardWriter(ShardWriter):
    """webdataset's ``ShardWriter`` (``pattern % shard_number``, ``maxcount`` samples a shard), every shard written
    atomically (:func:`deepvit.atomic.atomic_file`) and reproducibly. ``write(key, members)``; ``counts``: samples per shard,
    ``filenames``: the shards' paths, both in order."""

    def __init__(self, pattern: str, maxcount: int):
        self.counts: list[int] = []
        self.filenames: list[str] = []
        self._files = {}
        super().__init__(pattern, maxcount=maxcount, verbose=0, opener=self._open, post=self._post, encoder=False,
                         mtime=0, user='', group='', format='PAX_FORMAT')

    def _open(self, fname: str):
        self._files[fname] = f = open(tmp_path(fname), 'wb')
        return f

    def _post(self, fname: str) -> None:
        commit(self._files.pop(fname), fname)
        self.filenames.append(fname)
        self.counts.append(self.count)

    def write(self, key: str, members: dict[str, bytes]) -> None:   # noqa: D102 - (key, members), not a dict
        super().write(_sample(key, members))
