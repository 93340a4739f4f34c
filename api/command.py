"""The ``pmsm-export`` console entry point.

It imports nothing but the standard library before the command's own code, so that a Ctrl-C while
that code is still being imported (a second or more: onnx, onnxruntime, numpy) ends the command as
a Ctrl-C at any other moment does, with one line and status 130, instead of Python's traceback
(seen in a test that signals random moments of a run). A SIGTERM there ends it by the default
action, silently, as before any of its work began.

While the imports run, a Ctrl-C is only recorded, and the command ends with it once they are done
(at most the imports' second or two later), by ``os._exit``: nothing has been written then. Raised
where it arrived, it failed the initialisation of a compiled module (pybind11 turns it into
``ImportError: initialization failed``, which some packages catch for an optional part and go on),
and the interpreter then crashed (SIGSEGV) in about 1 of 20 interrupted starts.
"""
from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from pmsm.cli import main as run  # the command's code: every layer's imports
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("pmsm-export: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    return run()
