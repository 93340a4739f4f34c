"""Errors a user can act on. The CLI prints them as one line and exits with their code."""
from __future__ import annotations

import re

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2


class PmsmError(Exception):
    """Base class of errors reported to the user without a traceback."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(PmsmError):
    """Unreadable or unsupported model, bad arguments, bad data file (exit 2)."""


class MissingExtraError(BadInputError, ImportError):
    """An optional part of the package is not installed here; the message says how to get it.

    It is an ImportError too, so importing a module that needs the extra fails the usual way.
    """


class UnsupportedModelError(BadInputError):
    """The pre-flight check found nodes the chosen target cannot take.

    ``problems`` lists ``(node name, op type, reason)`` for every such node.
    """

    def __init__(self, path: str, target: str, problems: list[tuple[str, str, str]], note: str = ""):
        self.path = path
        self.target = target
        self.problems = list(problems)
        lines = [f"{path}: {len(self.problems)} node(s) cannot be converted for target '{target}':"]
        lines += [f"  node '{name}' ({op}): {reason}" for name, op, reason in self.problems]
        lines += [f"  {line}" for line in note.splitlines()]
        super().__init__("\n".join(lines))


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (libraries put their detail on later lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ONNX Runtime prefixes messages with the C++ source location and signature that raised them.
_ORT_SOURCE_LOCATION = re.compile(r"/\S*onnxruntime_src/\S+:\d+ .*?\) (?=[A-Z])")


def one_line(text: str, limit: int = 400) -> str:
    """A library's possibly multi-line message as one line of at most ``limit`` characters."""
    text = _ORT_SOURCE_LOCATION.sub("", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
