"""Where the chunks of a verification run: this process, local worker processes, or Ray actors.

Each place builds the backends once from the same :class:`pmsm.plan.VerificationPlan` and verifies the
chunks it is sent; the caller merges what comes back (:class:`pmsm.verification.Tallies`, counts
and maxima only), so the merged result does not depend on where or in which order chunks ran.
The data are read once, by the caller, chunk by chunk; at most two chunks per worker are in flight,
so memory is bounded by the chunk size whatever the size of the data set.

Local workers are ``spawn``-ed (ONNX Runtime's threads do not survive ``fork``) and are not
daemonic, so a worker may start Lava's own processes. They end with the caller: they ignore
SIGINT (a terminal's Ctrl-C reaches the whole process group; the caller decides), they are
killed with it if it dies, and a run that does not finish (Ctrl-C, SIGTERM, an error) stops
them instead of waiting for their chunks: SIGTERM, which a Lava run inside a worker turns into
an ordered stop of its own processes (targets/lava/shutdown.py), then SIGKILL after a grace.
Ray is an optional extra
(``pmsm-export[ray]``); ``--ray`` without an address starts a local cluster for the run.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterable, Iterator, Optional

from pmsm.data import Chunk
from pmsm.local_ray import LocalCluster, actor_process_id, room_for_lava_socket, signals_held, started_actor_pids
from pmsm.runtime.base.children import (
    exit_on_signal,
    exit_with_parent,
    raise_pending,
    remove_multiprocessing_folder,
    terminate_processes,
)
from pmsm.runtime.base.errors import BadInputError, MissingExtraError, PmsmError
from pmsm.runtime.base.sessions import set_threads
from pmsm.verification import Tallies

IN_FLIGHT_PER_WORKER = 2
WAIT_SLICE_SECONDS = 0.1
STOP_GRACE_SECONDS = 5.0     # for a stopped worker to end its Lava run in order (about 1 s measured)


class WorkerError(PmsmError):
    """A worker stopped on an error; it carries the worker's message and exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _verify_chunk(verifier, chunk: Chunk):
    """``("ok", tallies)`` or ``("error", exit code, message)``: errors travel as text, since not
    every exception pickles."""
    try:
        return "ok", verifier.run_chunk(chunk.start, chunk.x, chunk.y)
    except PmsmError as error:
        return "error", error.exit_code, str(error)


def _unwrap(result) -> Tallies:
    if result[0] == "ok":
        return result[1]
    raise WorkerError(result[2], result[1])


def threads_per_worker(workers: int) -> int:
    """ONNX Runtime threads per worker: the CPUs this process may use, shared out."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


class InProcess:
    """Every chunk in this process, one after the other."""

    workers = 1
    kind = "in-process"

    def __init__(self, plan, timesteps: list[int]):
        self.verifier = plan.verifier(timesteps)

    def verify(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Tallies]]:
        for chunk in chunks:
            yield chunk, _unwrap(_verify_chunk(self.verifier, chunk))

    def close(self) -> None:
        pass


_WORKER_VERIFIER = None


def _start_worker(plan, timesteps: list[int], threads: int, folder: Optional[str] = None) -> None:
    global _WORKER_VERIFIER
    if folder:
        # everything the worker writes in the temporary folder (Lava's scratch and multiprocessing
        # folders) goes in the caller's folder for this pool, which the caller removes whatever
        # killed the worker (a pymp-* folder was seen left after a Ctrl-C during Lava's start-up)
        os.environ["TMPDIR"] = folder
        tempfile.tempdir = folder
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()

    # A spawned child starts with its start method set; lava-nc sets "fork" when imported and
    # fails if one is set already, so the choice is left open again, as in a fresh interpreter.
    multiprocessing.set_start_method(None, force=True)

    set_threads(threads)
    try:
        _WORKER_VERIFIER = plan.verifier(timesteps)
    except PmsmError as error:
        _WORKER_VERIFIER = error


def _worker_chunk(chunk: Chunk):
    if isinstance(_WORKER_VERIFIER, PmsmError):
        return "error", _WORKER_VERIFIER.exit_code, str(_WORKER_VERIFIER)
    try:
        return _verify_chunk(_WORKER_VERIFIER, chunk)
    except SystemExit as stop:
        # the caller's SIGTERM, raised once a Lava run has stopped its processes; the pool
        # would catch it and go on with the next chunk
        remove_multiprocessing_folder()
        os._exit(stop.code if isinstance(stop.code, int) else 1)


class WorkerProcesses:
    """Chunks shared out over ``workers`` local processes."""

    kind = "processes"

    def __init__(self, plan, timesteps: list[int], workers: int):
        self.workers = workers
        self.finished = False
        self._before = set(multiprocessing.active_children())
        # workers die with the thread that starts them (exit_with_parent): this one, at the first chunk
        self.folder = tempfile.mkdtemp(prefix="pmsm-w-")
        if not room_for_lava_socket(self.folder):       # a long TMPDIR: the workers keep it as it is
            os.rmdir(self.folder)
            self.folder = None
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker,
                                        initargs=(plan, list(timesteps), threads_per_worker(workers), self.folder))
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, exit_on_signal):
            # close() then runs and stops the workers in order; killed with the caller, their Lava
            # runs would leave shared memory and scratch folders behind
            self._previous_sigterm = signal.signal(signal.SIGTERM, exit_on_signal)

    def verify(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Tallies]]:
        pending: dict = {}
        source = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < IN_FLIGHT_PER_WORKER * self.workers:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                # the first submit spawns the workers: a signal raised while the pool writes a
                # worker's start-up data left it reading truncated data, and its traceback ("pickle
                # data was truncated") on the command's stderr (seen); raised once the submit is done
                with signals_held():
                    future = self.pool.submit(_worker_chunk, chunk)
                pending[future] = chunk
            if not pending:
                self.finished = True
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                chunk = pending.pop(future)
                yield chunk, _unwrap(future.result())

    def close(self) -> None:
        """After a finished run, let the workers exit; otherwise stop them now (module docstring)."""
        try:
            if not self.finished:
                self._stop_workers()
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    def _stop_workers(self) -> None:
        call_queue = getattr(self.pool, "_call_queue", None)       # shutdown() drops it
        self.pool.shutdown(wait=False, cancel_futures=True)
        terminate_processes([p for p in multiprocessing.active_children() if p not in self._before], STOP_GRACE_SECONDS)
        # The pool's feeder thread may be stuck writing a chunk that no worker will read: Python
        # 3.10's pool then waits for it forever (seen), later ones close the reading end
        # themselves (CPython gh-94777); closing it here makes the write fail and the pool end.
        reader = getattr(call_queue, "_reader", None)
        if reader is not None:
            reader.close()


class RayWorkers:
    """Chunks shared out over ``workers`` Ray actors, on the cluster at ``address`` (None: a local
    cluster started for this run and ended with it, :class:`pmsm.local_ray.LocalCluster`).

    A run that does not finish (a signal, an error) ends a local cluster at once, Lava's processes
    in the actors included, and removes its folder. On a cluster at ``address`` the actors are
    killed through Ray; a Lava scratch folder one of them leaves is removed by the next Lava run
    on that node (``pmsm.targets.lava.shutdown.scratch_folder``)."""

    kind = "ray"

    def __init__(self, plan, timesteps: list[int], workers: Optional[int], address: Optional[str]):
        try:
            import ray
        except ImportError:
            raise MissingExtraError("--ray needs Ray: pip install 'pmsm-export[ray]'") from None
        self.ray = ray
        self.finished = False
        self.actors: list = []
        self._pids: list = []
        self.cluster: Optional[LocalCluster] = None
        self.started_here = not ray.is_initialized()
        self._previous_sigint = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            # a Ctrl-C while ray.init forks its processes is handled inside an at-fork hook, where
            # Python's KeyboardInterrupt was printed ("Exception ignored in ... _releaseLock") and
            # dropped, and the run went on to its end; this handler records it for raise_pending
            self._previous_sigint = signal.signal(signal.SIGINT, exit_on_signal)
        try:
            with _signal_behind_ray_exit():
                if self.started_here:
                    self._start(ray, address, workers)
                self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
                actor = ray.remote(num_cpus=1)(_RayVerifier)
                plan_ref = ray.put(plan)
                self.actors = [actor.remote(plan_ref, list(timesteps)) for _ in range(self.workers)]
                # first in each actor's queue: known before any chunk, so an interrupted run can kill
                # the processes Lava forked in it
                self._pids = [a.process_id.remote() for a in self.actors]
        except BaseException:
            self.close()
            raise

    def _start(self, ray, address: Optional[str], workers: Optional[int]) -> None:
        main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            with _ray_keeps_our_sigterm_handler():
                if address:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
                else:
                    self.cluster = LocalCluster()
                    self.cluster.start(ray, workers or threads_per_worker(1))
            raise_pending()         # a signal that came while ray.init forked
        except Exception as error:
            raise_pending()         # killed on a signal (LocalCluster.start), the cluster fails its own way
            if isinstance(error, (ConnectionError, RuntimeError, ValueError)):
                raise BadInputError(f"--ray {address or ''}: cannot start or reach a Ray cluster: {error}") from None
            raise
        finally:
            # ray.init installs its own SIGTERM handler (sys.exit(15)), which knows nothing of
            # forks: seen dropped inside an at-fork hook, the command then ran to its end
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)

    def verify(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Tallies]]:
        ray = self.ray
        idle = deque(self.actors * IN_FLIGHT_PER_WORKER)
        pending: dict = {}
        source = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and idle:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                actor = idle.popleft()
                pending[actor.run_chunk.remote(chunk)] = (chunk, actor)
            if not pending:
                self.finished = True
                return
            with _signal_behind_ray_exit():
                # short waits: Ray's C++ wait looks for signals only every 0.6-0.7 s (measured)
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SLICE_SECONDS)
            for ref in done:
                chunk, actor = pending.pop(ref)
                idle.append(actor)
                try:
                    with _signal_behind_ray_exit():
                        result = ray.get(ref)
                except ray.exceptions.RayError as error:
                    raise BadInputError(f"a Ray worker failed: {str(error).strip().splitlines()[0]}") from None
                yield chunk, _unwrap(result)

    def close(self) -> None:
        """End the actors (and a local cluster), at once when the run did not finish; a signal that
        comes meanwhile is raised once they are ended (:func:`pmsm.local_ray.signals_held`)."""
        ray, at_once = self.ray, not self.finished
        with self._sigint_restored(), signals_held():
            if self.cluster is not None:
                if at_once:
                    with contextlib.suppress(Exception):
                        self.cluster.actor_pids = started_actor_pids(ray, self._pids)
                self.cluster.stop(ray, self.actors, at_once)
                self.cluster = None
            else:
                for actor in self.actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                if self.started_here and ray.is_initialized():
                    ray.shutdown()
            self.actors = []

    @contextlib.contextmanager
    def _sigint_restored(self):
        try:
            yield
        finally:
            if self._previous_sigint is not None:
                signal.signal(signal.SIGINT, self._previous_sigint)
                self._previous_sigint = None


@contextlib.contextmanager
def _signal_behind_ray_exit():
    """Ray's C++ waits (``ray.wait``, ``ray.get``, starting the cluster) poll for signals and turn
    the exception the handler raised into ``SystemExit(1)`` (measured, Ray 2.60: a SIGTERM during a
    ``--ray`` run ended the command with status 1 and no line). The signal, recorded by
    :func:`pmsm.runtime.base.children.exit_on_signal`, is raised instead."""
    try:
        yield
    except SystemExit:
        raise_pending()
        raise


@contextlib.contextmanager
def _ray_keeps_our_sigterm_handler():
    """ray.init installs its own SIGTERM handler (``sys.exit(15)``) first thing, which knows
    nothing of forks: a SIGTERM while Ray started its processes was seen dropped inside an at-fork
    hook ("Exception ignored in ... SystemExit: 15"), and the command ran on to its end. Its C++
    core worker installs another, a crash reporter: a SIGTERM while ``ray.init`` connected printed
    "*** SIGTERM received at time=... PC: ... __recv" and a stack on stderr (Ray 2.60). The
    command's handler (``exit_on_signal``) stays in place instead."""
    try:
        from ray._private import ray_constants
        from ray._private import utils as ray_utils
    except ImportError:
        yield
        return
    original = getattr(ray_utils, "set_sigterm_handler", None)
    crash_handler_off = getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    if original is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True      # read as the driver's core worker starts
    try:
        yield
    finally:
        if original is not None:
            ray_utils.set_sigterm_handler = original
        if crash_handler_off is None:
            del ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
        else:
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = crash_handler_off


class _RayVerifier:
    def __init__(self, plan, timesteps: list[int]):
        set_threads(1)
        try:
            self.verifier = plan.verifier(timesteps)
        except PmsmError as error:
            self.verifier = error

    def process_id(self) -> int:
        return actor_process_id()

    def run_chunk(self, chunk: Chunk):
        if isinstance(self.verifier, PmsmError):
            return "error", self.verifier.exit_code, str(self.verifier)
        return _verify_chunk(self.verifier, chunk)


def executor_for(plan, timesteps: list[int], workers: Optional[int] = None, ray_address: Optional[str] = None,
                 use_ray: bool = False):
    if use_ray:
        return RayWorkers(plan, timesteps, workers, ray_address)
    if workers and workers > 1:
        return WorkerProcesses(plan, timesteps, workers)
    return InProcess(plan, timesteps)
