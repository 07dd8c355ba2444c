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
  named in one message (the run then stays ``RUNNING`` in the store: nothing can mark it otherwise). Checkpoints and
  the export do not depend on the store and are complete either way.

Any other error (a refused value, a bug) is raised as before.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, List, Optional, Tuple

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

    Args:
        uri: the store (for the messages). retry_interval_s: see :data:`RETRY_INTERVAL_S`.
        clock, sleep: injectable for tests.
    """

    def __init__(self, uri: str, retry_interval_s: Optional[float] = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.uri, self.clock, self.sleep = uri, clock, sleep
        self.retry_interval_s = RETRY_INTERVAL_S if retry_interval_s is None else retry_interval_s
        self.pending: List[Tuple[str, Callable[[], object]]] = []
        self.down_since: Optional[float] = None
        self.last_try = 0.0

    def send(self, what: str, call: Callable[[], object]) -> None:
        """Run ``call`` (a write described by ``what``, e.g. ``'metrics at step 120'``) now, or queue it behind
        earlier writes while the store is unreachable."""
        if self.pending and self.clock() - self.last_try >= self.retry_interval_s:
            self._drain()
        if self.pending:
            self.pending.append((what, call))
            return
        try:
            call()
        except Exception as exc:   # noqa: BLE001 - sorted by is_outage; anything else is raised unchanged
            if not is_outage(exc):
                raise
            self.pending.append((what, call))
            self.down_since, self.last_try = self.clock(), self.clock()
            _say(f"tracking: the store at {self.uri} cannot be reached ({_reason(exc)}); training goes on, and its "
                 f"records wait here, retried every {self.retry_interval_s:.0f} s")

    def _drain(self) -> bool:
        self.last_try = self.clock()
        while self.pending:
            try:
                self.pending[0][1]()
            except Exception as exc:  # noqa: BLE001
                if not is_outage(exc):
                    raise
                return False
            self.pending.pop(0)
        _say(f"tracking: the store at {self.uri} is back after {self.clock() - self.down_since:.0f} s; every "
             f"waiting record was sent")
        self.down_since = None
        return True

    def flush(self, wait_s: Optional[float] = None) -> bool:
        """Send what waits, retrying for up to ``wait_s`` seconds (default :data:`END_WAIT_S`). Returns True when
        nothing is left; otherwise says in one message what was not recorded and returns False."""
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
        kinds = {}
        for what, _ in self.pending:
            kinds[what.split(' ')[0]] = kinds.get(what.split(' ')[0], 0) + 1
        _say(f"tracking: the store at {self.uri} is still unreachable after {wait_s:.0f} s more; "
             f"{len(self.pending)} records are not in it ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; "
             f"first: {self.pending[0][0]}, last: {self.pending[-1][0]}), and the run stays RUNNING there. "
             f"The checkpoints and the export are complete.")
        return False


def _reason(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + '...'


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
