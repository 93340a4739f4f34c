"""Leave no Lava worker behind, however a run ends.

Lava's multiprocessing runtime forks one OS process per Lava process, plus its runtime service,
a shared-memory manager and a watchdog manager. Lava stops them only through ``stop()``, which
talks to them over its channels; when the host is interrupted mid-step (SIGINT, SIGTERM, a
timeout, an exception) that conversation cannot finish, and a killed host (SIGKILL) cannot even
start it: the workers, busy-waiting on their channels, then run on forever (measured: about 145
processes at 150 % CPU for a MobileNetV2).

``WorkerGuard`` wraps one run:

- every process forked through ``multiprocessing`` while it is active asks the kernel to be
  killed when its parent dies, whatever killed the parent (``pmsm.runtime.base.children.exit_with_parent``),
  and ignores SIGINT and SIGTERM: a terminal's Ctrl-C or ``timeout`` signals the whole process
  group, and the host ends its workers in an order that releases their shared memory;
- in the host, SIGINT (when Python's default handler is in place) raises ``KeyboardInterrupt``
  and SIGTERM (when no one else handles it) ``SystemExit(128 + SIGTERM)``, so that cleanup code
  runs before the process ends with the usual status. The signal is also recorded, because
  Python drops an exception raised where it cannot propagate: a signal that arrives while the
  host forks is handled inside an at-fork hook (logging's lock release) and its
  ``KeyboardInterrupt`` only printed ("Exception ignored in ..."), after which the run went on to
  its end (seen for 1 of 32 Ctrl-Cs during start-up). ``raise_if_interrupted`` raises a recorded
  signal; the run calls it between chunks. A worker forked a moment ago inherits the handler
  until it ignores the signals: there the handler does nothing;
- once the run is being ended (``end_runtime``, or the guard's exit on an exception), a further
  signal is recorded but raises nothing: a second Ctrl-C, or a pool stopping a worker that is
  already stopping, would otherwise break off the cleanup halfway, and Lava's ``__del__`` then
  waits forever for an answer from workers that were killed (seen in 3 of 4 tries, and in a
  ``--workers 2`` run after Ctrl-C). The cleanup is bounded: a few seconds;
- when the run ends with any exception (KeyboardInterrupt and SystemExit included), whatever
  the run started and ``abort_runtime`` did not end is killed; after a normal ``stop()`` any
  straggler is reaped the same way.

- start-up (``create_runtime``) stops at once: Lava forks its processes one after the other
  (``MessageInfrastructure.build_actor``; a CIFAR-size MobileNetV2 has 68, forked over several
  seconds). While one is being forked a signal is recorded, not raised (an exception raised
  inside ``Process.start`` would leave a forked child out of every list, and one raised inside an
  at-fork hook is printed, "Exception ignored in ... _releaseLock ... SystemExit: 143", and
  dropped); it is raised as soon as the fork is done, before the next one. Before, the host
  forked every remaining process (20 alive at SIGTERM, 71 two seconds later) and the last worker
  was gone 7 s after the signal;
- the run's scratch folder (``scratch_folder``: spike files, means, statistics) is named after
  the host's process, and a run removes the folders of runs whose host is gone (killed by
  SIGKILL, when no cleanup can run).

``abort_runtime`` ends an interrupted runtime: its workers and its shared-memory manager by
SIGKILL together (the workers are mid-step and would never answer; the manager, asked to shut
down, unlinked the segments itself while the host waited, 0.7-1.4 s under load), the run's
segments unlinked through the host's own handles, then the watchdog manager through its own
shutdown, then Lava's bookkeeping, so that ``__del__`` does not wait on the dead. Where Lava's
manager is not the one of lava-nc 0.10.0, its own shutdown is used as before.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from multiprocessing import util

from pmsm.runtime.base.children import (
    ForkWindow,
    exit_on_signal,
    exit_with_parent,
    interruption,
    kill_processes,
    stop_processes,
)
from pmsm.runtime.base.errors import BadInputError

SCRATCH_PREFIX = "pmsm-lava-"




class WorkerGuard:
    def __init__(self) -> None:
        self._before: set = set()
        self._previous: dict = {}
        self._hook = None
        self._host = os.getpid()
        self._ending = False
        self._deferring = 0
        self.received: int | None = None        # the first SIGINT or SIGTERM of the run

    def __enter__(self) -> "WorkerGuard":
        self._before = set(multiprocessing.active_children())
        self._host, self._ending, self.received = os.getpid(), False, None
        self._hook = _ForkHook()
        util.register_after_fork(self._hook, _ForkHook.in_child)
        if threading.current_thread() is threading.main_thread():
            # a SIGINT ignored at start (a background job of a shell) stays ignored
            for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(signum) in (default, exit_on_signal):
                    self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        self._ending = True
        try:
            # after Lava's own stop() the workers are exiting already; otherwise they never will
            stop_processes(self.workers(), wait=0.5 if kind is None else 0.2)
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)
            self._previous = {}
            self._hook = None      # drops the after-fork registration (a weak reference)
        if kind is None and self.received is not None:
            raise interruption(self.received)        # its first raise was dropped by Python
        return False

    def workers(self) -> list:
        """Processes started by this host since the guard was entered and still alive."""
        return [p for p in multiprocessing.active_children() if p not in self._before]

    def raise_if_interrupted(self) -> None:
        if self.received is None and ForkWindow.pending is not None:    # came before the guard's handler
            self.received = ForkWindow.pending
        if self.received is not None:
            raise interruption(self.received)

    @contextlib.contextmanager
    def deferred(self):
        """Signals are recorded, not raised, inside; a recorded one is raised on leaving."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and not self._ending:
            self.raise_if_interrupted()

    def create_runtime(self, process, run_cfg) -> None:
        """Lava's ``process.create_runtime(run_cfg)`` (lava-nc 0.10.0), with the forks of its
        processes and managers watched: a signal stops the start-up before the next fork."""
        from lava.magma.core.process.message_interface_enum import ActorType
        from lava.magma.runtime.runtime import Runtime

        self.raise_if_interrupted()
        _check_socket_room()
        # multiprocessing's folder (pymp-*: the managers' sockets) made here, before any fork: the
        # forked managers and workers inherit it instead of each making its own, which a SIGKILLed
        # child never removes (seen as a pymp-* folder left after a SIGTERM during start-up); the
        # command removes this one as it ends
        multiprocessing.util.get_temp_dir()
        executable = process.compile(run_cfg)
        self.raise_if_interrupted()
        runtime = Runtime(executable, ActorType.MultiProcessing, loglevel=process._log_config.level)
        executable.assign_runtime_to_all_processes(runtime)
        process._runtime = runtime
        for step in ("_build_watchdog_manager", "_build_message_infrastructure"):
            setattr(runtime, step, self._watched(getattr(runtime, step), runtime))
        runtime.initialize()

    def _watched(self, build, runtime):
        def watched():
            with self.deferred():
                build()
            infrastructure = getattr(runtime, "_messaging_infrastructure", None)
            if infrastructure is not None and "build_actor" not in vars(infrastructure):
                infrastructure.build_actor = self._watched_fork(infrastructure.build_actor)
        return watched

    def _watched_fork(self, build_actor):
        def watched(*args, **kwargs):
            self.raise_if_interrupted()
            with self.deferred():
                return build_actor(*args, **kwargs)
        return watched

    def end_runtime(self, process, between_runs: bool) -> None:
        """End the runtime of ``process``: through Lava's ``stop()`` when it is ``between_runs``
        (the only time that works), by ``abort_runtime`` otherwise or when ``stop()`` is itself
        interrupted."""
        if between_runs:
            try:
                process.stop()
                return
            except BaseException:
                self._ending = True
                abort_runtime(process)
                raise
        self._ending = True
        abort_runtime(process)

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._host:     # a worker between fork and its hook
            return
        if self.received is None:
            self.received = signum
        if not self._ending and not self._deferring and not ForkWindow.depth:
            raise interruption(signum)


class _ForkHook:
    """Registered with ``multiprocessing.util.register_after_fork``; runs in each new child."""

    @staticmethod
    def in_child(hook: "_ForkHook") -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exit_with_parent()


def abort_runtime(process) -> None:
    """End the runtime of ``process`` after an interrupted run (see the module docstring)."""
    runtime = getattr(process, "runtime", None)
    if runtime is None:
        return
    try:
        infrastructure = getattr(runtime, "_messaging_infrastructure", None)
        if infrastructure is not None:
            actors = list(infrastructure.actors)
            smm = infrastructure.smm
            manager = getattr(smm, "_manager", None)
            server = getattr(manager, "_process", None)
            handles = getattr(smm, "_shared_memory_handles", None)
            if server is not None and handles is not None:
                # The shared-memory manager killed with the workers, the segments unlinked here
                # through this process's own handles (which also tells its resource tracker): asked
                # to shut down, the manager unlinked them itself while the host waited for it, 0.8-1.1 s
                # of the 1.1-1.5 s a MobileNetV2's stop took under a load of 20 on 2 cores (measured)
                kill_processes(actors + [server])
                for handle in handles:
                    _quietly(handle.close)
                    _quietly(handle.unlink)
                handles.clear()
                stop_processes(actors + [server])
                _quietly(smm.shutdown)       # the manager is gone: this only records it
            else:
                # killed first, reaped after the manager's shutdown: a killed worker needs the CPU to
                # die (a MobileNetV2's 68 under load: 2.6 s), time the manager uses to unlink the memory
                kill_processes(actors)
                _quietly(smm.shutdown if smm is not None else None)
                stop_processes(actors)
        _quietly(getattr(getattr(runtime, "_watchdog_manager", None), "stop", None))
    finally:
        runtime._is_started = runtime._is_running = False


def _quietly(action) -> None:
    try:
        if action is not None:
            action()
    except Exception:       # a manager that died with the run: the guard kills what remains
        pass


# Lava's shared-memory manager listens on a Unix socket <temp folder>/pymp-XXXXXXXX/listener-XXXXXXXX,
# and a socket's path holds at most 107 bytes on Linux: beyond, the manager's process died with a
# traceback ("OSError: AF_UNIX path too long") and the run with another.
SOCKET_PATH_BYTES = 107
SOCKET_NAME_BYTES = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _check_socket_room() -> None:
    folder = tempfile.gettempdir()
    if sys.platform.startswith("linux") and len(os.fsencode(folder)) + SOCKET_NAME_BYTES > SOCKET_PATH_BYTES:
        raise BadInputError(f"the temporary folder {folder} is too long a path for the Unix socket of Lava's "
                            f"shared-memory manager (at most {SOCKET_PATH_BYTES - SOCKET_NAME_BYTES} bytes); "
                            "set TMPDIR to a shorter folder")


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A scratch folder for one run, named after this process and its PID namespace
    (``pmsm-lava-<namespace>-<pid>-...``), after removing the folders of runs whose process is gone
    (a host killed by SIGKILL cannot remove its own). It is made and removed with SIGINT and
    SIGTERM held: a signal during the removal of a large folder (a hybrid deployment's: one
    folder per region and host stage, spike recordings) left it half removed (seen once in a test
    of random moments); the held signal is raised once the folder is gone."""
    namespace = _pid_namespace()
    _remove_orphaned_scratch(namespace)
    with _signals_held():
        return _ScratchFolder(prefix=f"{SCRATCH_PREFIX}{namespace}-{os.getpid()}-")


class _ScratchFolder(tempfile.TemporaryDirectory):
    def cleanup(self) -> None:
        with _signals_held():
            super().cleanup()


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM recorded inside, and handed to the handlers they had on leaving. (Blocking
    them in this thread is not enough: the kernel may deliver them to another thread, an ONNX
    Runtime pool thread, and Python then runs the handler in this one at once.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list = []
    previous = {signum: signal.signal(signum, lambda number, frame: received.append(number))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:     # None: a handler installed from C, which Python cannot put back
                signal.signal(signum, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _remove_orphaned_scratch(namespace: int) -> None:
    pattern = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-(\d+)-\w+")
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) != namespace:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(match.group(2)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue        # alive (another user's), or vanished meanwhile
