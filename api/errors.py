"""Errors a user can act on. The CLI prints them as one line and exits with their code."""
from __future__ import annotations

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

    def __init__(self, path: str, target: str, problems: list[tuple[str, str, str]]):
        self.path = path
        self.target = target
        self.problems = list(problems)
        lines = [f"{path}: {len(self.problems)} node(s) cannot be converted for target '{target}':"]
        lines += [f"  node '{name}' ({op}): {reason}" for name, op, reason in self.problems]
        super().__init__("\n".join(lines))
