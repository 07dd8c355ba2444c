"""Atomic file writes: the one way this project writes a file that readers must never see half-written.

The data go to a hidden temporary file in the target's own directory (``.NAME.PID.tmp``: same file system, so the
rename is atomic; the pid keeps writers in different processes apart), which is flushed and fsynced, then renamed
over the target with ``os.replace``. A crash leaves at most the temporary file, never a partial target; an exception
inside the block removes the temporary file and leaves the target as it was.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ['tmp_path', 'commit', 'atomic_file', 'atomic_path', 'write_bytes', 'write_text']


def tmp_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before it is renamed to ``path``."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{os.getpid()}.tmp')


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(f, path: str | os.PathLike) -> None:
    """Flush, fsync and close ``f`` (open under :func:`tmp_path` of ``path``), then rename it to ``path``."""
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(f.name, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield the temporary path for a writer that takes a file name (``safetensors.save_file``, ``np.save``…);
    on success the file is fsynced and renamed to ``path``, on an exception removed."""
    tmp = tmp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Open ``path`` for writing (binary) under its temporary name; on success fsync and rename it into place."""
    tmp = tmp_path(path)
    try:
        with open(tmp, 'wb') as f:
            yield f
            commit(f, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``Path(path).write_bytes(data)``, atomically."""
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)`` (UTF-8), atomically."""
    write_bytes(path, text.encode())
