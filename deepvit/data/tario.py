"""Minimal streaming tar reader and writer for WebDataset shards.

A WebDataset shard is a plain POSIX tar whose members are grouped into samples by key, the member path up to the
first dot of its basename (``n01440764_10026.jpg`` and ``n01440764_10026.cls`` form sample ``n01440764_10026``),
as in webdataset's ``tariterators.base_plus_ext`` and ``group_by_keys``.

The reader parses the 512-byte ustar headers itself (plus pax ``x`` and GNU ``L`` long-name records) instead of going
through :mod:`tarfile`: it reads only the members a caller asks for and seeks over the others, which is what makes
skipping samples, and payloads the loader never decodes (``.pkl``, ``.pth``, ``.json``), cheap. A tar that ends inside
a header or a member, or whose header checksum is wrong, raises :class:`CorruptShardError` after the complete samples
read before the damage have been yielded.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

BLOCK = 512
_REGULAR = (b'0', b'\0', b'7')   # regular file, old-style regular file, contiguous file


class CorruptShardError(IOError):
    """A shard is truncated or its tar structure is damaged (the samples before the damage were read)."""


def split_key(name: str) -> tuple[str, str]:
    """Split a member path into (sample key, extension) at the first dot of its basename.

    ``'a/b/n0001_7.seg.png'`` → ``('a/b/n0001_7', 'seg.png')``; a name without a dot gives ``(name, '')``.
    """
    slash = name.rfind('/') + 1
    dot = name.find('.', slash)
    if dot < 0:
        return name, ''
    return name[:dot], name[dot + 1:]


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:   # GNU base-256 encoding for large values
        return int.from_bytes(field[1:], 'big')
    field = field.split(b'\0', 1)[0].strip()
    return int(field, 8) if field else 0


def _cstr(field: bytes) -> str:
    return field.split(b'\0', 1)[0].decode('utf-8', 'surrogateescape')


def _pax_records(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b' ', pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b'=')
        records[key.decode()] = value.decode('utf-8', 'surrogateescape')
        pos += length
    return records


class _Stream:
    """Reads exactly n bytes or raises; skips by seeking when the file allows it."""

    def __init__(self, fileobj: BinaryIO):
        self.f = fileobj
        self.size = None                         # only plain local files are skipped by seeking
        if isinstance(fileobj, io.BufferedReader) and fileobj.seekable():
            pos = fileobj.tell()
            self.size = fileobj.seek(0, io.SEEK_END)
            fileobj.seek(pos)

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptShardError(f'tar ends inside {what} ({len(data)} of {n} bytes)')
        return data

    def skip(self, n: int, what: str) -> None:
        if self.size is not None:
            pos = self.f.tell()
            if self.size - pos < n:
                raise CorruptShardError(f'tar ends inside {what} ({self.size - pos} of {n} bytes)')
            self.f.seek(pos + n)
        else:
            while n > 0:
                chunk = self.f.read(min(n, 1 << 20))
                if not chunk:
                    raise CorruptShardError(f'tar ends inside {what}')
                n -= len(chunk)


def iter_members(fileobj: BinaryIO, want=None) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(member path, payload)`` for the regular files of a tar stream, in stored order.

    ``want(path) -> bool`` chooses the members whose payload is read; the others are yielded with payload ``None``
    and skipped by a seek where the stream allows it. ``None`` reads every member.
    Raises :class:`CorruptShardError` on a truncated stream or a header with a wrong checksum.
    """
    stream = _Stream(fileobj)
    long_name = None
    pax: dict[str, str] = {}
    while True:
        header = stream.f.read(BLOCK)
        if not header or header == b'\0' * BLOCK:
            return                                   # end of archive (a missing end marker is tolerated)
        if len(header) != BLOCK:
            raise CorruptShardError(f'tar ends inside a header ({len(header)} of {BLOCK} bytes)')
        if _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise CorruptShardError('tar header checksum mismatch')
        size = _octal(header[124:136])
        typeflag = header[156:157]
        padded = -(-size // BLOCK) * BLOCK
        if typeflag in (b'x', b'L', b'g'):
            data = stream.read(padded, 'an extended header')[:size]
            if typeflag == b'x':
                pax = _pax_records(data)
            elif typeflag == b'L':
                long_name = _cstr(data)
            continue
        name = long_name or pax.get('path')
        if name is None:
            name = _cstr(header[0:100])
            if header[257:262] == b'ustar' and header[345] != 0:
                name = _cstr(header[345:500]) + '/' + name
        size = int(pax.get('size', size))
        padded = -(-size // BLOCK) * BLOCK
        long_name, pax = None, {}
        if typeflag not in _REGULAR:
            stream.skip(padded, name)
            continue
        if want is None or want(name):
            payload = stream.read(padded, name)[:size]
            yield name, payload
        else:
            stream.skip(padded, name)
            yield name, None


def open_tar_stream(fileobj: BinaryIO, name: str = '') -> BinaryIO:
    """Wrap ``fileobj`` in a gzip reader when ``name`` ends in ``.gz`` or ``.tgz`` (compressed shards)."""
    return gzip.GzipFile(fileobj=fileobj) if name.endswith(('.gz', '.tgz')) else fileobj


def iter_samples(fileobj: BinaryIO, want=None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar stream's members into samples: yield ``(key, {extension: payload})`` in stored order.

    ``want(index, ext) -> bool`` selects by sample index (0-based, in the shard) and extension the payloads that are
    read; the others are skipped unread and absent from the dict (a sample with none read is still yielded, with an
    empty dict). Extensions are lower-cased. Members without an extension are ignored, as webdataset does.
    When the tar is damaged, the samples before the damaged one are yielded, then :class:`CorruptShardError` raises.
    """
    state = {'key': None, 'index': -1}

    def want_member(name):
        key, ext = split_key(name)
        if not ext:
            return False
        if key != state['key']:
            state['key'], state['index'] = key, state['index'] + 1
        return want is None or want(state['index'], ext.lower())

    key, members = None, {}
    for name, payload in iter_members(fileobj, want_member):
        k, ext = split_key(name)
        if not ext:
            continue
        if k != key:
            if key is not None:
                yield key, members
            key, members = k, {}
        if payload is not None:
            members[ext.lower()] = payload
    if key is not None:
        yield key, members


class TarWriter:
    """Write samples as a WebDataset tar, reproducibly (fixed mtime, owner and mode), to a binary file object.

    Usage: ``with open(path, 'wb') as f, TarWriter(f) as w: w.write('key', {'jpg': b'...', 'cls': b'3'})``.
    Raises ``ValueError`` for a key with a dot (webdataset would split the sample there).
    """

    def __init__(self, fileobj: BinaryIO, mtime: int = 0):
        self.tar = tarfile.open(fileobj=fileobj, mode='w', format=tarfile.PAX_FORMAT)
        self.mtime = mtime

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if '.' in key.rsplit('/', 1)[-1]:
            raise ValueError(f'sample key must not contain a dot: key={key!r}')
        for ext, payload in members.items():
            info = tarfile.TarInfo(f'{key}.{ext}')
            info.size, info.mtime, info.mode = len(payload), self.mtime, 0o444
            self.tar.addfile(info, io.BytesIO(payload))

    def close(self) -> None:
        self.tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_shard(path: str | os.PathLike, samples) -> None:
    """Write ``samples`` (iterable of (key, {ext: bytes})) to ``path`` atomically: temporary file, fsync, rename.

    A crash leaves at most a hidden ``.NAME.PID.tmp`` file, never a truncated shard under the final name.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        with TarWriter(f) as writer:
            for key, members in samples:
                writer.write(key, members)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def count_samples(path: str) -> tuple[int, str | None]:
    """Count the complete samples of a local tar shard, reading headers only.

    Returns ``(count, damage)``: ``damage`` is the :class:`CorruptShardError` message when the shard is truncated or
    damaged (the count then covers the samples before the damage), else None. Raises ``OSError`` if unreadable.
    """
    count = 0
    with open(path, 'rb') as f:
        try:
            for _ in iter_samples(open_tar_stream(f, path), want=lambda index, ext: False):
                count += 1
        except CorruptShardError as e:
            return count, str(e)
    return count, None
