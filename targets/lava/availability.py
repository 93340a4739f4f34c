"""Whether this Python can run the Lava target, and what to tell the user when it cannot.

lava-nc 0.10.0, the last release, declares Python 3.10 only and fails to import on 3.11 and later
(a dataclass with a mutable default), so a newer Python is refused without trying the import.
"""
from __future__ import annotations

import sys

from pmsm.runtime.base.errors import MissingExtraError

LAVA_PYTHON = (3, 10)


def require_lava() -> None:
    """Raise :class:`MissingExtraError` (exit 2) unless lava-nc can be imported here."""
    here = ".".join(map(str, sys.version_info[:2]))
    if sys.version_info[:2] != LAVA_PYTHON:
        raise MissingExtraError(
            f"the lava target needs lava-nc, which runs only on Python 3.10 (this is Python {here}): "
            "in a Python 3.10 environment, pip install 'pmsm-export[lava]'", name="lava")
    try:
        import lava.magma.core  # noqa: F401
    except ImportError as error:
        raise MissingExtraError(
            f"the lava target needs lava-nc, which is not installed ({error}): "
            "pip install 'pmsm-export[lava]'", name="lava") from error
