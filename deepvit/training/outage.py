"""A tracking-store outage costs no training: writes that fail for want of the store wait in order and are sent later.

Clusters log to an ``mlflow server``. MLflow's client retries a failed request for about two minutes by default
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 with back-off factor 2) and then raises, which used to stall every rank for
the length of the outage and then end the job with a urllib3 traceback, losing the epoch in progress. Here:

- for an HTTP store the client's own retries are shortened (:func:`shorten_http_retries`: 2 retries, 30 s timeout,
  unless the user set those variables), so one failed write costs seconds, not minutes;
- a write that fails because the store is unreachable (:func:`is_outage`) is kept, in order, in a :class:`Backlog`;
  training goes on. Later writes join the queue behind it; the queue is retried at most every
  :data:`RETRY_INTERVAL_S` seconds, at the next write;
- at the end of the run the backlog is retried for up to :data:`END_WAIT_S` seconds; what still cannot be sent is
  written to the output folder (:func:`dump`) and named in one message with the command that uploads it
  (``python -m deepvit.training.upload <folder>``, which also sets the run's final status: until then it stays
  ``RUNNING`` in the store). Checkpoints and the export do not depend on the store and are complete either way.

Any other error (a refused value, a bug) is raised as before.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

RETRY_INTERVAL_S = 60.0      # the backlog is retried at most this often while the store is down
END_WAIT_S = 120.0           # how long the end of a run waits for the store to come back
_HTTP_DEFAULTS = {'MLFLOW_HTTP_REQUEST_MAX_RETRIES': '2', 'MLFLOW_HTTP_REQUEST_TIMEOUT': '30'}


def shorten_http_retries(uri: str) -> None:
    """For an ``http(s)://`` store, MLflow's client retries for seconds, not minutes (the backlog retries instead);
    variables the user set are kept."""
    if uri.startswith(('http://', 'https://')):
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)


def is_outage(exc: BaseException) -> bool:
    """True for a failure to reach the store (connection refused or reset, timeout, a 5xx or 429 answer, a SQLite
    store that is locked or gone), False for anything the store answered on purpose (e.g. an invalid value)."""
    import requests
    from mlflow.exceptions import MlflowException
    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        if str(exc.message).startswith('API request to'):     # mlflow.utils.rest_utils.http_request, after retries
            return True
        return exc.get_http_status_code() in (429, 500, 502, 503, 504)
    return False


class Backlog:
    """Writes to the tracking store, in order, that survive an outage.

    A write is a *record*: a dict with a ``kind`` (``metrics``, ``params``, ``tags``, ``dict``, ``text``, ``numpy``,
    ``figure``, ``artifact``, ``datasets``, ``model``, ``status``) and its payload; ``apply`` sends one record to the
    run (:meth:`deepvit.training.tracking.RunWriter.apply`).

    Args:
        uri: the store (for the messages). apply: sends one record. folder: where records that never reached the
            store are written at the end (``records.jsonl`` and ``files/``; see :func:`dump`), for
            ``python -m deepvit.training.upload <folder>``; None: they are only named.
        retry_interval_s: see :data:`RETRY_INTERVAL_S`. clock, sleep: injectable for tests.
    """

    def __init__(self, uri: str, apply: Callable[[dict], object], folder: Optional[Path] = None,
                 retry_interval_s: Optional[float] = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.uri, self.apply, self.folder, self.clock, self.sleep = uri, apply, folder, clock, sleep
        self.retry_interval_s = RETRY_INTERVAL_S if retry_interval_s is None else retry_interval_s
        self.pending: List[dict] = []
        self.down_since: Optional[float] = None
        self.last_try = 0.0

    def send(self, record: dict) -> None:
        """Send ``record`` now, or queue it behind earlier records while the store is unreachable."""
        if self.pending and self.clock() - self.last_try >= self.retry_interval_s:
            self._drain()
        if self.pending:
            self.pending.append(record)
            return
        try:
            self.apply(record)
        except Exception as exc:   # noqa: BLE001 - sorted by is_outage; anything else is raised unchanged
            if not is_outage(exc):
                raise
            self.pending.append(record)
            self.down_since, self.last_try = self.clock(), self.clock()
            _say(f"tracking: the store at {self.uri} cannot be reached ({_reason(exc)}); training goes on, and its "
                 f"records wait here, retried every {self.retry_interval_s:.0f} s")

    def _drain(self) -> bool:
        self.last_try = self.clock()
        while self.pending:
            try:
                self.apply(self.pending[0])
            except Exception as exc:  # noqa: BLE001
                if not is_outage(exc):
                    raise
                return False
            self.pending.pop(0)
        _say(f"tracking: the store at {self.uri} is back after {self.clock() - self.down_since:.0f} s; every "
             f"waiting record was sent")
        self.down_since = None
        return True

    def flush(self, run_id: str, wait_s: Optional[float] = None) -> bool:
        """Send what waits, retrying for up to ``wait_s`` seconds (default :data:`END_WAIT_S`). Returns True when
        nothing is left; otherwise writes the records to ``folder`` (when given), says in one message what is not
        in the store and how to upload it, and returns False."""
        if not self.pending:
            return True
        wait_s = END_WAIT_S if wait_s is None else wait_s
        deadline = self.clock() + wait_s
        while True:
            if self._drain():
                return True
            if self.clock() >= deadline:
                break
            self.sleep(min(10.0, max(0.0, deadline - self.clock())))
        counts: Dict[str, int] = {}
        for r in self.pending:
            counts[r['kind']] = counts.get(r['kind'], 0) + 1
        what = ', '.join(f'{n} {k}' for k, n in sorted(counts.items()))
        steps = [r['step'] for r in self.pending if r['kind'] == 'metrics']
        span = f'; metrics of steps {min(steps)}-{max(steps)}' if steps else ''
        where = 'and the run stays RUNNING there'
        if self.folder is not None:
            dump(self.pending, self.folder, self.uri, run_id)
            where = (f"and the run stays RUNNING there until they are uploaded: they are kept in {self.folder}; once "
                     f"the store is back, run: python -m deepvit.training.upload {self.folder}")
        _say(f"tracking: the store at {self.uri} is still unreachable after {wait_s:.0f} s more; {len(self.pending)} "
             f"records are not in it ({what}{span}), {where}. The checkpoints and the export are complete.")
        return False


def dump(records: List[dict], folder: Path, uri: str, run_id: str) -> Path:
    """Write ``records`` to ``folder/records.jsonl`` (first line: ``{"uri", "run_id"}``); in-memory artifacts (numpy
    arrays, figures) become files under ``folder/files/`` and ``artifact`` records. Returns the jsonl path."""
    folder = Path(folder)
    (folder / 'files').mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({'uri': uri, 'run_id': run_id})]
    for i, r in enumerate(records):
        if r['kind'] in ('numpy', 'figure'):
            name = Path(r['artifact_file']).name
            path = folder / 'files' / f'{i:06d}' / name
            path.parent.mkdir()
            if r['kind'] == 'numpy':
                import numpy as np
                np.save(path, r['array'])
            else:
                r['figure'].savefig(path)
            parent = str(Path(r['artifact_file']).parent)
            r = {'kind': 'artifact', 'path': str(path), 'artifact_path': None if parent == '.' else parent}
        lines.append(json.dumps(r))
    out = folder / 'records.jsonl'
    out.write_text('\n'.join(lines) + '\n')
    return out


def load(folder: Path) -> Tuple[dict, List[dict]]:
    """``(header {"uri", "run_id"}, records)`` of a folder written by :func:`dump`.

    Raises:
        FileNotFoundError: no ``records.jsonl`` in ``folder``.
    """
    lines = (Path(folder) / 'records.jsonl').read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]


def _reason(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + '...'


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
