"""The stop request of a rank: SIGTERM, SIGINT, or the loss of the command that started the job (all ranks agree on
it through :class:`~deepvit.training.engine.StopRule`)."""
import os
import signal
import sys
import threading
import time

from ..ranks import env_rank


class Preemption:
    """The stop request of this rank: SIGTERM or SIGINT (cluster preemption, Ctrl-C), or the loss of the command
    that started the job. The loop polls it at log steps, where all ranks agree through one all-reduce, so every
    rank checkpoints at the same optimizer step and exits with 143.

    DeepSpeed's launcher does not pass a signal sent to the ``deepspeed`` command on (its ranks would keep training as
    orphans): under DeepSpeed's per-node launcher a watchdog thread checks once a second that the launcher's parent
    (the ``deepspeed`` command, or the SSH session of a remote node) is still there, and requests the stop when it
    is not. A signal to the per-node launcher reaches one rank's process tree first; the next log step's all-reduce
    carries that rank's request to all of them.
    """

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        threading.Thread(target=self._watch_launcher, name='deepvit-launcher-watchdog', daemon=True).start()

    def _handler(self, signum, frame) -> None:
        if not self.requested and env_rank() == 0:
            name = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"{name}: every rank stops at the next log step and writes a checkpoint; --resume continues from "
                  f"it. (DeepSpeed's launcher also kills the ranks 30 s after the signal: a longer checkpoint "
                  f"is cut short, and the resume then falls back to the previous intact one.)",
                  file=sys.stderr, flush=True)
        self.requested = True

    def _watch_launcher(self) -> None:
        import psutil
        try:
            launcher = psutil.Process(os.getppid())
            if 'deepspeed.launcher.launch' not in ' '.join(launcher.cmdline()):
                return  # started some other way: nothing to watch
            starter = launcher.ppid()
        except psutil.Error:
            return
        while not self.requested:
            time.sleep(1.0)
            try:
                gone = not launcher.is_running() or launcher.ppid() != starter  # re-parented: its starter died
            except psutil.Error:
                gone = True
            if gone:
                self.requested = True

    def __call__(self) -> bool:
        return self.requested

