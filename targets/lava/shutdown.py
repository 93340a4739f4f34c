"""Leave no Lava worker behind, however a run ends.

Lava's multiprocessing runtime forks one OS process per Lava process, plus its runtime service,
a shared-memory manager and a watchdog manager. Lava stops them only through ``stop()``, which
talks to them over its channels; when the host is interrupted mid-step (SIGINT, SIGTERM, a
timeout, an exception) that conversation cannot finish, and a killed host (SIGKILL) cannot even
start it: the workers, busy-waiting on their channels, then run on forever (measured: about 145
processes at 150 % CPU for a MobileNetV2).

``WorkerGuard`` wraps one run:

- every process forked through ``multiprocessing`` while it is active asks the kernel (Linux
  ``PR_SET_PDEATHSIG``) to be killed when its parent dies, whatever killed the parent, and
  ignores SIGINT and SIGTERM: a terminal's Ctrl-C or ``timeout`` signals the whole process
  group, and the host ends its workers in an order that releases their shared memory;
- SIGTERM in the host (when no one else handles it) becomes ``SystemExit(128 + SIGTERM)``, so
  that cleanup code runs before the process ends with the usual status;
- when the run ends with any exception (KeyboardInterrupt and SystemExit included), whatever
  the run started and ``abort_runtime`` did not end is killed; after a normal ``stop()`` any
  straggler is reaped the same way.

``abort_runtime`` ends an interrupted runtime: its workers by SIGKILL (they are mid-step and
would never answer), then its shared-memory and watchdog managers through their own shutdown
(idle, they still answer), then Lava's bookkeeping, so that ``__del__`` does not wait on the dead.
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

GRACE_SECONDS = 2.0          # for a killed process to be reaped
_PR_SET_PDEATHSIG = 1


class WorkerGuard:
    def __init__(self) -> None:
        self._before: set = set()
        self._previous_sigterm = None
        self._hook = None

    def __enter__(self) -> "WorkerGuard":
        self._before = set(multiprocessing.active_children())
        self._hook = _ForkHook()
        util.register_after_fork(self._hook, _ForkHook.in_child)
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        try:
            # after Lava's own stop() the workers are exiting already; otherwise they never will
            stop_workers(self.workers(), wait=0.5 if kind is None else 0.2)
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

    @staticmethod
    def in_child(hook: "_ForkHook") -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.platform.startswith("linux"):
            try:
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            except (OSError, AttributeError):
                pass
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:     # it died before the request took effect
            os._exit(1)


def abort_runtime(process) -> None:
    """End the runtime of ``process`` after an interrupted run (see the module docstring)."""
    runtime = getattr(process, "runtime", None)
    if runtime is None:
        return
    infrastructure = getattr(runtime, "_messaging_infrastructure", None)
    if infrastructure is not None:
        stop_workers(list(infrastructure.actors))
        _quietly(infrastructure.smm.shutdown if infrastructure.smm is not None else None)
    _quietly(getattr(getattr(runtime, "_watchdog_manager", None), "stop", None))
    runtime._is_started = runtime._is_running = False


def _quietly(action) -> None:
    try:
        if action is not None:
            action()
    except Exception:       # a manager that died with the run: the guard kills what remains
        pass


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def stop_workers(processes: list, wait: float = 0.0) -> None:
    """End ``processes`` (multiprocessing children): wait up to ``wait`` seconds for them to
    exit, then SIGKILL the rest (they ignore SIGTERM, see above)."""
    deadline = time.monotonic() + wait
    for process in processes:
        _join(process, deadline - time.monotonic())
    for process in processes:
        if _alive(process):
            process.kill()
            _join(process, GRACE_SECONDS)


def _alive(process) -> bool:
    try:
        return process.is_alive()
    except ValueError:          # closed: Lava's own error path joined it already
        return False


def _join(process, timeout: float) -> None:
    # Lava's SystemProcess.join takes no timeout; the base class's does
    if _alive(process):
        multiprocessing.process.BaseProcess.join(process, max(0.0, timeout))
