"""Errors raised inside a process model, reported to the host through a file.

Lava's own error path joins every worker after one of them fails, which waits forever for the
healthy ones. A model step that raises is instead recorded here (the first error only) and the
model keeps the step protocol going, so that the host (run.py) notices it between run chunks,
stops the network normally and raises the error itself: ``BadInputError`` stays one (exit 2),
anything else becomes ``LavaProcessError`` with the worker's traceback.
"""
from __future__ import annotations

import json
import os
import traceback

from pmsm.runtime.base.errors import BadInputError


class LavaProcessError(RuntimeError):
    """A Lava process model raised; the message carries the worker's traceback."""


class FailureGuard:
    """``with guard: ...`` records the first exception of a model step into ``path``."""

    def __init__(self, path: str, process: str):
        self.path, self.process = path, process
        self.failed = False

    def __enter__(self) -> "FailureGuard":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None or not issubclass(kind, Exception) or not self.path:
            return False
        self.failed = True
        record = {"process": self.process, "bad_input": isinstance(error, BadInputError),
                  "message": str(error), "traceback": "".join(traceback.format_exception(kind, error, tb))}
        partial = self.path + ".partial"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(partial, self.path)
        return True


def raise_recorded_failure(folder: str) -> None:
    """Raise the error a process recorded in ``folder`` (the first by name), if any."""
    if not folder or not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".error"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            record = json.load(handle)
        if record["bad_input"]:
            raise BadInputError(record["message"])
        raise LavaProcessError(f"Lava process {record['process']} failed: {record['message']}\n"
                               f"{record['traceback']}")
