"""The loader's worker processes: a ``forkserver`` start method (:func:`worker_context`), and workers that ignore the
job's stop signals and exit with the process that started them (:func:`init_worker`).
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time

_CONTEXT = None


def worker_context():
    """The multiprocessing context of the loader's workers: ``forkserver``, its server started once per process with
    SIGTERM and SIGINT ignored (an ignored disposition survives the server's exec, and its forked workers inherit it).

    Why not ``fork`` (DataLoader's default on Linux): forking a process that runs other threads can deadlock the
    child for good. Seen here: a rank's validation worker stuck in CPython 3.11's after-fork cleanup
    (``PyOS_AfterFork_Child`` → ``_PyThreadState_DeleteExcept``, waiting on a lock another thread held at the
    fork — the training loader's ending queue-feeder thread, MLflow's system-metrics monitor, the launcher
    watchdog), its rank waiting on it and the other rank in an all-reduce: the job hung without a message. The
    forkserver is a fresh single-threaded interpreter (``deepvit.data.loader`` preloaded), so its forks are safe; it
    exits with the process that started it. PyTorch's docs on DataLoader worker start methods name the same hazard."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing
        ctx = multiprocessing.get_context('forkserver')
        ctx.set_forkserver_preload(['deepvit.data.loader'])
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            from multiprocessing import forkserver
            forkserver.ensure_running()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        _CONTEXT = ctx
    return _CONTEXT


def init_worker(main_pid: int, worker_id: int) -> None:
    """Workers ignore SIGTERM and SIGINT: a cluster preemption (or Ctrl-C) signals every process of a job, and the
    main process (which checkpoints, then shuts its workers down) must not see them die first. Each worker exits
    when the loader's process ``main_pid`` is gone (:func:`_exit_with`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(main_pid,), name='deepvit-exit-with-loader', daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit this worker once process ``pid`` has exited, however it died (SIGKILL included).

    A worker forked from the forkserver has the server as its parent, so DataLoader's own check (the parent pid
    changing) never fires, and the worker keeps the server alive: a rank killed with SIGKILL left its worker, the
    server and its resource tracker running for good. Waits on a pidfd (Linux >= 5.3), else polls once a second."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])   # readable once the process has exited
    os._exit(0)
