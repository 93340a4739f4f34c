"""A Ray cluster started on this machine for one verification run, and ended with it, leaving
nothing behind however the run ends.

``ray.init()`` without an address starts Ray's processes (GCS server, raylet, monitors, agents)
as children of this process; the raylet starts the actors, and an actor verifying a Lava target
forks Lava's processes. Measured with Ray 2.60 on the digits CNN (``--ray --workers 2``), before
this module, a SIGTERM to the command:

- came out of ``ray.wait`` as ``SystemExit(1)``: Ray's C++ wait polls for signals and turns the
  handler's exception into its own exit, so the command ended with status 1 and no line;
- left every actor's Lava scratch folder (``pmsm-lava-*``) and multiprocessing folder
  (``pymp-*``), and Ray's session folder (``ray/session_*``, its logs and sockets), in the
  temporary folder: the actors were killed mid-run, which no code in them survives;
- ``ray.shutdown()`` kills Ray's processes one after the other, each given a second to exit
  after SIGTERM: 1.4-1.9 s on an idle machine (the autoscaler's monitor alone took the full
  second), and 5.1 s when the cluster was already dead (the driver waits on its RPCs).

So the cluster gets a folder of its own (:attr:`LocalCluster.folder`, ``pmsm-r-*`` in the
temporary folder): Ray's session lives in it (``_temp_dir``) and every process of the cluster has
it as ``TMPDIR`` (inherited from this process while ``ray.init`` starts them), so the actors'
Lava scratch and multiprocessing folders land in it too, and removing it removes everything the
run wrote, even after a SIGKILL (a temporary folder too long for Lava's socket path keeps the
actors on the inherited one). The cluster's processes are those this process started since
``ray.init`` and their descendants, the actors' trees, and any whose initial environment
(``/proc/PID/environ``) holds that ``TMPDIR`` (Ray's workers overwrite theirs with their process
title, so the tree is what finds them); each is remembered with its start time, so that a reused
pid is never killed.

An interrupted run ends the cluster at once (:meth:`LocalCluster.stop` with ``at_once``): the
actors are killed through Ray (20 ms measured; so that the raylet does not report their deaths as
failures), their process trees by SIGKILL, the other processes of the cluster by SIGKILL once the
driver has disconnected (``ray.shutdown`` with its serial one-second waits replaced); the shared
memory the killed processes mapped (Lava's channels; 20 of 40 segments were left in /dev/shm
otherwise) is unlinked and the folder removed. Measured on the digits CNN with 2 actors under a
load of 10-24 on 2 cores: every process gone 0.1-1.4 s after the signal (30 random moments,
``tests/test_lava_shutdown.py``), the driver's disconnect taking 0.3-1.6 s of it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from typing import Optional

from pmsm.runtime.base.children import exit_on_signal, interruption, mapped_shared_memory, unlink_shared_memory

GONE_SECONDS = 2.0           # for killed processes to be gone
RAYLET_REGISTRATION_SECONDS = 30.0   # Ray's own bound on the wait (raylet_start_wait_time_s)
ACTOR_KILL_SECONDS = 0.3     # for Ray to kill the actors it was asked to (20 ms measured)


class LocalCluster:
    """A local Ray cluster for one run: ``start``, then ``stop`` (see the module docstring)."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="pmsm-r-")
        # the actors' temporary folder too, where Lava's manager socket fits (else they keep TMPDIR)
        self._actors_folder = self.folder if room_for_lava_socket(self.folder) else None
        self._marker = b"\0TMPDIR=" + os.fsencode(self.folder) + b"\0"
        self._children_before: set = set()
        self.members: set[tuple[int, int]] = set()       # (pid, start time) of the cluster's processes seen
        self.actor_pids: set[int] = set()
        self.shared_memory: set[str] = set()         # names in /dev/shm that the killed processes mapped

    def start(self, ray, cpus: int) -> None:
        previous = os.environ.get("TMPDIR")
        self._children_before = {pid for pid, _, parent, _ in _processes() if parent == os.getpid()}
        if self._actors_folder:
            os.environ["TMPDIR"] = self._actors_folder   # the cluster's processes inherit it, this one keeps its own
        try:
            with _quiet_token_notice(), _interruptible_wait_for_the_raylet(ray):
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, num_cpus=cpus,
                         _temp_dir=self.folder)
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
            self.members |= self._find()

    def stop(self, ray, actors: list, at_once: bool) -> None:
        """End the cluster and remove its folder. ``at_once``: kill everything (an interrupted or
        failed run); otherwise Ray's own ``shutdown``."""
        try:
            self.members |= self._find()
            table = _processes()
            actor_trees = {(pid, started) for pid, _, _, started in table if pid in _tree(table, self.actor_pids)}
            if at_once:         # before Ray kills the actors: Lava's shared memory, which no one will unlink
                for pid in self._alive_members(self.members):
                    self.shared_memory |= mapped_shared_memory(pid)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            if at_once:
                # Ray's kill first (20 ms measured), so that the raylet does not report the actors'
                # deaths as failures ("A worker died or was killed ..."); their trees, Lava's
                # processes included, by SIGKILL after it
                deadline = time.monotonic() + ACTOR_KILL_SECONDS
                while self._alive(self.actor_pids) and time.monotonic() < deadline:
                    time.sleep(0.01)
                self._kill(self._alive_members(actor_trees))
                node = getattr(ray._private.worker, "_global_node", None)   # the cluster this process started
                if node is not None:
                    # after the driver's disconnect (fast while the raylet and GCS live), all at once
                    node.kill_all_processes = lambda *args, **kwargs: self._kill_node_processes(node)
            if ray.is_initialized():
                ray.shutdown()
        finally:
            self._kill(self.processes())
            self._wait_gone()
            self._unlink_shared_memory()
            shutil.rmtree(self.folder, ignore_errors=True)

    def processes(self) -> list[int]:
        """Processes of the cluster still alive."""
        self.members |= self._find()
        return self._alive_members(self.members)

    @staticmethod
    def _alive_members(members) -> list[int]:
        table = {pid: started for pid, state, _, started in _processes() if state != "Z"}
        return sorted(pid for pid, started in members if table.get(pid) == started)

    @staticmethod
    def _alive(pids) -> bool:
        return any(pid in pids and state != "Z" for pid, state, _, _ in _processes())

    def _find(self) -> set[tuple[int, int]]:
        """The cluster's processes now: those this process started since ``start`` (Ray's GCS, raylet,
        monitors) and their descendants (agents, actors, Lava's processes), the actors' trees, and
        any whose initial environment holds the cluster's TMPDIR (reparented ones; Ray's workers
        overwrite theirs with their process title)."""
        table = _processes()
        roots = {pid for pid, _, parent, _ in table if parent == os.getpid() and pid not in self._children_before}
        pids = set(_tree(table, roots | self.actor_pids))
        pids |= {pid for pid, _, _, _ in table if pid != os.getpid() and self._marker in _environment(pid)}
        return {(pid, started) for pid, state, _, started in table if pid in pids and state != "Z"}

    def _kill(self, pids) -> None:
        """SIGKILL ``pids``, noting the shared memory each maps first (Lava's channels: a killed run
        cannot unlink it, and the actors' resource trackers did not
        either: 20 of 40 segments were left in /dev/shm after one SIGTERM)."""
        for pid in pids:
            if pid != os.getpid():
                self.shared_memory |= mapped_shared_memory(pid)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _unlink_shared_memory(self) -> None:
        unlink_shared_memory(self.shared_memory)
        self.shared_memory = set()

    def _kill_node_processes(self, node) -> None:
        infos = [info for infos in node.all_processes.values() for info in infos]
        for info in infos:
            with contextlib.suppress(OSError):
                info.process.kill()
        deadline = time.monotonic() + GONE_SECONDS
        for info in infos:
            with contextlib.suppress(Exception):
                info.process.wait(max(0.0, deadline - time.monotonic()))
        node.all_processes.clear()

    def _wait_gone(self) -> None:
        deadline = time.monotonic() + GONE_SECONDS
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._kill(left)


def _tree(table, roots) -> list[int]:
    """``roots`` that are alive and all their descendants."""
    children: dict[int, list[int]] = {}
    alive = set()
    for pid, state, parent, _ in table:
        children.setdefault(parent, []).append(pid)
        if state != "Z":
            alive.add(pid)
    found, stack = [], [pid for pid in roots if pid in alive]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


@contextlib.contextmanager
def signals_held():
    """Inside, SIGINT and SIGTERM are recorded instead of handled (so that a second Ctrl-C does not
    break off a teardown halfway); on leaving, the first one recorded is raised as
    :func:`pmsm.runtime.base.children.interruption`. Outside the main thread, nothing changes."""
    received: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler not in (signal.SIG_IGN, None):
                previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    except ValueError:          # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        if previous.get(received[0]) in (exit_on_signal, signal.default_int_handler, signal.SIG_DFL):
            raise interruption(received[0])
        signal.raise_signal(received[0])        # whoever handles it outside this run


@contextlib.contextmanager
def _interruptible_wait_for_the_raylet(ray):
    """``ray.init`` waits for its raylet to register in one C++ call (``services.get_node``) that
    checks no signal: under a load of 15-20 on 2 cores a Ctrl-C there was handled 2.6-7.4 s late
    (and 30 s late once the cluster had been killed meanwhile). Here the wait is a Python loop of
    short calls and sleeps, so a signal raises within a tenth of a second; once the node is
    registered Ray's own call returns at once."""
    services = getattr(getattr(ray, "_private", None), "services", None)
    original = getattr(services, "get_node", None)
    state = getattr(ray._private, "state", None)
    if original is None or not hasattr(state, "GlobalState") or not hasattr(services, "_get_gcs_client_options"):
        yield
        return

    def get_node(gcs_address, node_id, *args, **kwargs):
        deadline = time.monotonic() + RAYLET_REGISTRATION_SECONDS
        try:
            table = state.GlobalState()
            table._initialize_global_state(services._get_gcs_client_options(gcs_address))
            while time.monotonic() < deadline and not any(
                    node.get("NodeID") == node_id for node in table.node_table()):
                time.sleep(0.05)
        except Exception:       # noqa: BLE001 - whatever this Ray does differently: its own wait decides
            pass
        return original(gcs_address, node_id, *args, **kwargs)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


@contextlib.contextmanager
def _quiet_token_notice():
    """Ray 2.60 enables token authentication for a new local cluster and says so on stderr
    ("Token authentication is enabled for this Ray cluster ..."), a line in every run; the
    cluster keeps it, the notice is dropped."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")

    def keep(record) -> bool:
        return "Token authentication is enabled" not in record.getMessage()

    notice.addFilter(keep)
    try:
        yield
    finally:
        notice.removeFilter(keep)


def _processes() -> list[tuple[int, str, int, int]]:
    """``(pid, state, parent, start time)`` of every process (Linux /proc; elsewhere none). The start
    time tells a process from a later one given the same pid."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(entry), fields[0], int(fields[1]), int(fields[19])))
    return found


def _environment(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return b"\0" + handle.read()
    except OSError:
        return b""


# Lava's shared-memory manager listens on <temporary folder>/pymp-XXXXXXXX/listener-XXXXXXXX, at most
# 107 bytes on Linux (targets/lava/shutdown.py refuses a longer temporary folder)
LAVA_SOCKET_FOLDER_BYTES = 107 - len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def room_for_lava_socket(folder: str) -> bool:
    """Whether ``folder`` as a temporary folder leaves room for Lava's manager socket."""
    return len(os.fsencode(folder)) <= LAVA_SOCKET_FOLDER_BYTES


def actor_process_id() -> int:
    return os.getpid()


def started_actor_pids(ray, references: list, wait: Optional[float] = 0.0) -> set[int]:
    """The process ids the actors reported (those that have started)."""
    if not references:
        return set()
    ready, _ = ray.wait(list(references), num_returns=len(references), timeout=wait)
    pids = set()
    for reference in ready:
        with contextlib.suppress(Exception):
            pids.add(int(ray.get(reference)))
    return pids
