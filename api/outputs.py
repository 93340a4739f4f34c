"""Outputs that appear only when the run has decided to keep them.

Every output of a run (the conversion output, the report, its pictures) is first written into a
hidden staging folder next to its final path (same file system, so the final move is a rename).
:meth:`Staging.commit` moves them all into place at the end; leaving the ``with`` block in any
other way (bad input found late, an exception, Ctrl-C) removes the staging folders and leaves
nothing behind. Verification reads the staged files, so what it checks is what gets committed.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from pmsm.paths import check_output_target
from pmsm.runtime.base.errors import BadInputError

STAGING_PREFIX = ".pmsm-staging-"


class Staging:
    def __init__(self, finals: list[str]):
        """``finals``: the resolved paths (:func:`pmsm.paths.check_paths`) this run may write."""
        self.finals = list(dict.fromkeys(finals))
        self._folders: dict[str, str] = {}  # final folder -> its staging folder

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def folder_for(self, final: str) -> str:
        """The staging folder beside ``final`` (created on first use)."""
        if final not in self.finals:
            raise ValueError(f"{final} was not checked as an output of this run")
        folder = os.path.dirname(final)
        if folder not in self._folders:
            try:
                self._folders[folder] = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)
            except OSError as error:
                raise BadInputError(f"{final}: cannot write in folder {folder} ({error.strerror})") from None
        return self._folders[folder]

    def path(self, final: str) -> str:
        """Where to write ``final`` now."""
        return os.path.join(self.folder_for(final), os.path.basename(final))

    def commit(self) -> list[str]:
        """Move every staged file to its final path; returns the final paths written."""
        staged = [(self.path(final), final) for final in self.finals
                  if os.path.dirname(final) in self._folders and os.path.exists(self.path(final))]
        for _, final in staged:
            check_output_target(final)  # nothing became a device or a folder while the run worked
        written = []
        try:
            for source, final in staged:
                os.replace(source, final)
                written.append(final)
        except OSError as error:
            done = f"; written before the failure: {', '.join(written)}" if written else ""
            raise BadInputError(f"{final}: cannot move the output into place ({error.strerror}){done}") from None
        finally:
            self.discard()
        return written

    def discard(self) -> None:
        for folder in self._folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()
