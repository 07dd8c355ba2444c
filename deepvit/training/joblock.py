"""One job per output folder: an exclusive lock that global rank 0 holds for the job's life (issue 22.2).

The lock is ``filelock``'s (an OS ``flock`` on ``<output_dir>/.job.lock``, the same library the MLflow store lock
uses): the kernel releases it when the holding process dies, so a crashed or killed job never blocks its own
``--resume``. Beside it, ``.job.json`` names the holder (host, pid, start time, MLflow run id once known) for the
refusal message. Taken in preflight before the "already holds a run" check, so two jobs started together cannot both
pass it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from .. import atomic
from .config import ConfigError
from .layout import RunDir

__all__ = ['JobLock', 'acquire']


class JobLock:
    """A held output-folder lock; :meth:`note` adds facts (the MLflow run id) to the holder file."""

    def __init__(self, out_dir: Path, lock: FileLock):
        self.out_dir, self._lock = out_dir, lock
        self.holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                       'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
        self._write()

    def _write(self) -> None:
        atomic.write_text(RunDir(self.out_dir).holder_file, json.dumps(self.holder) + '\n')

    def note(self, **facts) -> None:
        self.holder.update(facts)
        self._write()

    def release(self) -> None:
        self._lock.release()


def _holder(out_dir: Path) -> str:
    try:
        h = json.loads(RunDir(out_dir).holder_file.read_text())
    except (OSError, ValueError):
        return 'a job that has not named itself yet'
    run = f", MLflow run {h['run_id']}" if h.get('run_id') else ''
    return f"host {h.get('host')}, pid {h.get('pid')}, started {h.get('started')}{run}"


def acquire(out_dir: Path) -> JobLock:
    """Take ``out_dir``'s job lock (``out_dir`` must exist), without waiting.

    Raises:
        ConfigError: another live job holds it (the message names the holder).
    """
    lock = FileLock(str(RunDir(out_dir).lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"output_dir {str(out_dir)!r} is in use by another job ({_holder(out_dir)}); wait for it "
                          f"to end, or choose another --output-dir") from None
    return JobLock(out_dir, lock)


def holder_of(out_dir: Path) -> Optional[dict]:
    """The holder file's facts, or None (for tools and tests)."""
    try:
        return json.loads(RunDir(out_dir).holder_file.read_text())
    except (OSError, ValueError):
        return None
