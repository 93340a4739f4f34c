"""Run a library call on an untrusted model in a child process, with a time limit.

ONNX Runtime holds the GIL while it builds a session (measured: a thread ticking every 0.1 s did
not tick once during a 3.9 s session creation), so no thread can time it out; and a malformed
model can crash the library outright. :func:`call_isolated` forks, runs the call in the child
and waits at most ``seconds``: a hang, a crash or an exception in the child becomes one
:class:`~pmsm.runtime.base.errors.BadInputError` in the parent, which never runs the untrusted call itself.
The child shares the parent's loaded modules through ``fork``, so the cost is the fork (about
0.1 s with torch loaded) plus the call. Where ``fork`` is missing the call runs in the process.
"""
from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import time
from typing import Callable

from pmsm.runtime.base.children import raise_pending
from pmsm.runtime.base.errors import BadInputError, one_line


def call_isolated(call: Callable[[], object], seconds: float, label: str, activity: str, too_slow: str) -> object:
    """``call()``'s JSON-able result, computed in a child process.

    Messages read ``"{label}: {the call's error}"``, ``"{label}: {activity} crashed (...)"`` or
    ``"{label}: {activity} did not finish within {seconds} s; {too_slow}"``.
    """
    if not hasattr(os, "fork"):
        return _in_process(call, label)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        os.close(read_end)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler would report it as the call's error
        try:
            _silence_output()  # library chatter on fd 1/2 would break the one-line contract
            payload = {"ok": call()}
        except BaseException as error:  # noqa: BLE001 - everything goes back as a message
            payload = {"error": one_line(error)}
        try:
            _write_all(write_end, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = None
    try:
        raise_pending()  # a signal that came during the fork
        data = _read_until(read_end, seconds)
    finally:
        os.close(read_end)
        if data is None:  # timed out, or the parent was interrupted
            _kill(pid)
    if data is None:
        raise BadInputError(f"{label}: {activity} did not finish within {seconds:g} s; {too_slow}")
    _, status = os.waitpid(pid, 0)
    if not data:
        raise BadInputError(f"{label}: {activity} crashed ({_describe_status(status)})")
    payload = json.loads(data.decode())
    if "error" in payload:
        raise BadInputError(f"{label}: {payload['error']}")
    return payload["ok"]


def _in_process(call, label):
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - the library's own failure, reported in one line
        raise BadInputError(f"{label}: {one_line(error)}") from None


def _read_until(fd: int, seconds: float):
    """Everything the child writes before it closes the pipe, or None on time out."""
    deadline = time.monotonic() + seconds
    chunks = []
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _silence_output() -> None:
    faulthandler.disable()  # a crash is reported by the parent; no traceback dump from the child
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by signal {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit status {os.WEXITSTATUS(status)} without an answer"
