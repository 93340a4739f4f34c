"""The ``pmsm-export`` console entry point.

It imports nothing but the standard library before the command's own code, so that a Ctrl-C while
that code is still being imported (a second or more: onnx, onnxruntime, numpy) ends the command as
a Ctrl-C at any other moment does, with one line and status 130, instead of Python's traceback
(seen in a test that signals random moments of a run). A SIGTERM there ends it by the default
action, silently, as before any of its work began.
"""
from __future__ import annotations

import sys


def main() -> int:
    try:
        # the command's code: every layer's imports, which a Ctrl-C may interrupt
        from pmsm.cli import main as run
    except KeyboardInterrupt:
        print("pmsm-export: interrupted", file=sys.stderr)
        return 130
    return run()
