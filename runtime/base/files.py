"""Atomic output: write to a temporary file in the target folder, then rename over the target."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from contextlib import contextmanager

from pmsm.runtime.base.errors import BadInputError


@contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadInputError(f"{path}: folder {folder} does not exist")
    _refuse_to_replace_special(path)
    handle, temporary = tempfile.mkstemp(prefix=".pmsm-", suffix=suffix or ".tmp", dir=folder)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _refuse_to_replace_special(path: str) -> None:
    """The last line of defence of README "Exit codes" (no run overwrites anything that is not a
    regular file): a rename over a device node, a FIFO, a folder or a
    link replaces it by a plain file (as root, ``-o /dev/null`` would break the machine)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{path}: exists and is not a regular file; refusing to replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)


def atomic_write_json(path: str, document) -> None:
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=False) + "\n").encode())
