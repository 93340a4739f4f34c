"""Child processes that do not outlive their parent, and a stop that does not wait on a deaf one.

Used by the Lava runtime's workers (targets/lava/shutdown.py) and by the local verification
workers (sharding.py), which in turn may run Lava.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time

GRACE_SECONDS = 2.0          # for a killed process to be reaped
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """Called first thing in a new child: the kernel kills it (SIGKILL) when its parent dies,
    whatever killed the parent (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing is asked). "Parent"
    is the thread that started the child: start children from a thread that lives as long."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:     # it died before the request took effect
        os._exit(1)


def interruption(signum: int) -> BaseException:
    """What a signal that ends the run raises: ``KeyboardInterrupt`` for SIGINT, else
    ``SystemExit(128 + signum)``, the exit status a shell reports for a process the signal killed."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


class ForkWindow:
    """Whether this process is inside ``os.fork``, its at-fork hooks included. Registered once,
    at import: before-hooks run last-registered first and after-hooks first-registered first, so
    the window spans the hooks registered earlier (logging's lock release among them). A signal
    handled inside an at-fork hook raises where Python prints the exception ("Exception ignored
    in: <function _releaseLock ...>") and drops it: the handlers here record such a signal in
    ``pending`` instead, and the code that forked raises it (:func:`raise_pending`)."""

    depth = 0
    pending: int | None = None

    @classmethod
    def enter(cls) -> None:
        cls.depth += 1

    @classmethod
    def leave(cls) -> None:
        cls.depth = max(0, cls.depth - 1)

    @classmethod
    def in_child(cls) -> None:
        cls.depth, cls.pending = 0, None


os.register_at_fork(before=ForkWindow.enter, after_in_parent=ForkWindow.leave, after_in_child=ForkWindow.in_child)


def exit_on_signal(signum, frame) -> None:
    """A handler for SIGTERM (and SIGINT) that raises :func:`interruption`, so that cleanup code
    runs (scratch and staging folders removed, workers stopped) before the process ends with the
    usual status; inside a fork it records the signal instead (:class:`ForkWindow`). Code that
    installs a handler of its own replaces this one as it would the default."""
    if ForkWindow.pending is None:
        # kept after the raise too: library code that swallows the exception (a C extension being
        # imported turns it into an ImportError that an optional import ignores; seen once in 25
        # SIGTERMs while converting) must not lose the signal, and the next checkpoint raises it again
        ForkWindow.pending = signum
    if not ForkWindow.depth and (frame is None or frame.f_code not in _FORK_HOOK_CODE):
        raise interruption(signum)


# a signal handled while a hook itself runs (ForkWindow.leave, after it lowered the depth) is inside the fork too
_FORK_HOOK_CODE = frozenset(hook.__func__.__code__ for hook in (ForkWindow.enter, ForkWindow.leave, ForkWindow.in_child))


def raise_pending() -> None:
    """Raise the signal :func:`exit_on_signal` recorded and could not raise (during a fork) or
    whose exception was swallowed, if any: a checkpoint before work that takes long."""
    if ForkWindow.pending is not None:
        raise interruption(ForkWindow.pending)


def clear_pending() -> None:
    """Forget a recorded signal: once its interruption has been handled."""
    ForkWindow.pending = None


def remove_multiprocessing_folder() -> None:
    """Remove this process's multiprocessing folder (``pymp-*`` in the temporary folder: Lava's
    manager sockets), which only an exit handler removes: for a process about to ``os._exit``."""
    import shutil

    folder = multiprocessing.process.current_process()._config.get("tempdir")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def interruption_behind(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or SystemExit (a signal's) that ``error`` was raised from, if any: a
    signal handled while a C extension initialises comes out as ``ImportError: initialization
    failed`` caused by it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return error
        error = error.__cause__ or error.__context__
    return None


def stop_processes(processes: list, wait: float = 0.0) -> None:
    """End ``processes`` (multiprocessing children): wait up to ``wait`` seconds for them to
    exit, then SIGKILL the rest and reap them."""
    deadline = time.monotonic() + wait
    for process in processes:
        _join(process, deadline - time.monotonic())
    # all killed first, then reaped: one by one, each death waited for the scheduler in turn
    # (a MobileNetV2's 68 workers on a loaded machine: 18 still alive 2 s after SIGTERM)
    left = kill_processes(processes)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in left:
        _join(process, deadline - time.monotonic())


def kill_processes(processes: list) -> list:
    """SIGKILL those of ``processes`` still alive, without waiting; returns them."""
    left = [process for process in processes if _alive(process)]
    for process in left:
        try:
            process.kill()
        except (OSError, ValueError):
            pass        # gone meanwhile
    return left


def terminate_processes(processes: list, grace: float) -> None:
    """SIGTERM ``processes`` (multiprocessing children) once a second until they exit, SIGKILL
    those left after ``grace`` seconds. Once a second, because a Python process can drop one: a
    signal handled inside an at-fork hook raises where Python discards the exception."""
    deadline = time.monotonic() + grace
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        for process in alive:
            process.terminate()
        left = deadline - time.monotonic()
        multiprocessing.connection.wait([p.sentinel for p in alive], timeout=max(0.0, min(1.0, left)))
    stop_processes(processes)


def _alive(process) -> bool:
    try:
        return process.is_alive()
    except ValueError:          # closed: its owner joined it already
        return False


def _join(process, timeout: float) -> None:
    # Lava's SystemProcess.join takes no timeout; the base class's does
    if _alive(process):
        multiprocessing.process.BaseProcess.join(process, max(0.0, timeout))


SHARED_MEMORY = "/dev/shm"


def mapped_shared_memory(pid: int) -> set[str]:
    """Names of the POSIX shared memory segments (``/dev/shm/NAME``) that process ``pid`` maps
    (Linux /proc; elsewhere none): what a killed Lava run leaves behind unless someone unlinks it."""
    try:
        with open(f"/proc/{pid}/maps") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return set()
    prefix = SHARED_MEMORY + "/"
    names = set()
    for line in lines:
        if prefix in line and not line.endswith("(deleted)"):
            name = line.split(prefix, 1)[1].strip()
            if name and "/" not in name:
                names.add(name)
    return names


def unlink_shared_memory(names) -> None:
    """Unlink the segments ``names`` (in /dev/shm) that still exist and belong to this user."""
    for name in names:
        path = os.path.join(SHARED_MEMORY, name)
        try:
            if os.stat(path).st_uid == os.getuid():
                os.unlink(path)
        except OSError:
            pass        # gone meanwhile


def release_semaphores() -> None:
    """Run the exit handlers of this process's named semaphores (multiprocessing's queues and locks,
    a process pool's among them), which unlink them and tell the resource tracker: for a process
    about to ``os._exit``. Skipped, the tracker warned on stderr as the command ended ("There
    appear to be 5 leaked semaphore objects", a Ctrl-C while ``--workers 2`` started its pool)."""
    from multiprocessing import synchronize, util

    cleanup = getattr(synchronize.SemLock, "_cleanup", None)
    registry = getattr(util, "_finalizer_registry", None)
    if cleanup is None or registry is None:
        return
    for finalizer in list(registry.values()):
        if getattr(finalizer, "_callback", None) is cleanup:
            try:
                finalizer()
            except Exception:       # noqa: BLE001 - one already unlinked: nothing more to do
                pass
