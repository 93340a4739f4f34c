"""Leave no Lava worker behind, however a run ends.

Lava's multiprocessing runtime forks one OS process per Lava process, plus its runtime service,
a shared-memory manager and a watchdog manager. Lava stops them only through ``stop()``, which
talks to them over its channels; when the host is interrupted mid-step (SIGINT, SIGTERM, a
timeout, an exception) that conversation cannot finish, and a killed host (SIGKILL) cannot even
start it: the workers, busy-waiting on their channels, then run on forever.

``WorkerGuard`` wraps one run:

- every process forked through ``multiprocessing`` while it is active asks the kernel (Linux
  ``PR_SET_PDEATHSIG``) to be killed when its parent dies, whatever killed the parent, and
  ignores SIGINT: a terminal's Ctrl-C reaches the whole process group, and the host decides;
- SIGTERM in the host (when no one else handles it) becomes ``SystemExit(128 + SIGTERM)``, so
  that cleanup code runs before the process ends with the usual status;
- when the run ends with any exception (KeyboardInterrupt and SystemExit included), the workers
  it started are terminated directly (SIGTERM, then SIGKILL after a grace period), without
  Lava's ``stop()``; after a normal ``stop()`` any straggler is reaped the same way.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import util

GRACE_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1


class WorkerGuard:
    def __init__(self) -> None:
        self._before: set = set()
        self._previous_sigterm = None
        self._hook = None

    def __enter__(self) -> "WorkerGuard":
        self._before = set(multiprocessing.active_children())
        self._hook = _ForkHook(os.getpid())
        util.register_after_fork(self._hook, _ForkHook.in_child)
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        try:
            # after Lava's own stop() the workers are exiting already; otherwise they never will
            stop_workers(self.workers(), wait=0.5 if kind is None else 0.0)
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._hook = None      # drops the after-fork registration (a weak reference)
        return False

    def workers(self) -> list:
        """Processes started by this host since the guard was entered and still alive."""
        return [p for p in multiprocessing.active_children() if p not in self._before]


class _ForkHook:
    """Registered with ``multiprocessing.util.register_after_fork``; runs in each new child."""

    def __init__(self, host_pid: int) -> None:
        self.host_pid = host_pid

    @staticmethod
    def in_child(hook: "_ForkHook") -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)     # not the host's handler, inherited by fork
        if sys.platform.startswith("linux"):
            try:
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            except (OSError, AttributeError):
                pass
        if os.getppid() != hook.host_pid:     # the host died before the request took effect
            os._exit(1)


def forget_runtime(process) -> None:
    """Tell Lava that ``process``'s runtime is over, so that its ``__del__`` does not call
    ``stop()``, which would wait forever on workers the guard ended."""
    runtime = getattr(process, "runtime", None)
    if runtime is not None:
        runtime._is_started = False
        runtime._is_running = False


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def stop_workers(processes: list, wait: float = 0.0) -> None:
    """End ``processes`` (multiprocessing children): wait up to ``wait`` seconds for them to
    exit, then SIGTERM, then SIGKILL after ``GRACE_SECONDS``."""
    deadline = time.monotonic() + wait
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in alive:
        if process.is_alive():
            process.kill()
            process.join(1.0)
