"""Checking every path of a run before anything is written (docs/input-checks.md §1: never overwrite an input).

Inputs (the model, its external data, ``--data``) must be readable regular files. Each output
(``-o``, ``--report`` and the pictures drawn next to it) is written by renaming a finished file
over its path, so it must be:

- no input and no other output, whether by name, through a symbolic link or as a hard link (the
  same inode under another name);
- a regular file or nothing yet: never a device (``/dev/null``: the rename would replace the device
  node by a plain file), a FIFO, a socket, a folder, nor a symbolic link (the rename would replace
  the link, not write through it, which nobody expects; in a shared folder, writing through a
  planted link is the classic attack);
- in a folder that exists and can be written (tried for real: permission bits say nothing for root
  nor for read-only mounts);
- a name the file system takes (``NAME_MAX`` bytes per name, ``PATH_MAX`` for the path, with room
  for the hidden staging folder of :mod:`pmsm.outputs`).

Empty strings are errors, not "the default".
"""
from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass

from pmsm.runtime.base.errors import BadInputError

STAGING_ROOM = 64  # bytes a path grows by inside the staging folder of pmsm.outputs


@dataclass(frozen=True)
class Role:
    """One path of the run and the flag (or argument) it came from, for the messages."""

    flag: str
    path: str


def check_paths(inputs: list[Role], outputs: list[Role]) -> dict[str, str]:
    """The path each output will be written to (its folder resolved), keyed by its given path;
    BadInputError on the first problem."""
    for role in inputs + outputs:
        _check_text(role)
    known: list[tuple[Role, str, tuple | None]] = []  # (role, real path, (device, inode) when it exists)
    for role in inputs:
        known.append((role, *_check_input(role)))
    resolved: dict[str, str] = {}
    writable_folders: set[str] = set()
    for role in outputs:
        real = _output_path(role)
        link = os.path.realpath(real) if os.path.islink(real) else None
        identity = _identity(link or real)
        for other, other_real, other_identity in known:
            same = (link or real) == other_real or (identity is not None and identity == other_identity)
            if same:
                is_input = any(other is r for r in inputs)
                if link:
                    relation = "is a symbolic link to"
                elif real != other_real:
                    relation = "is a hard link to"
                else:
                    relation = "would overwrite" if is_input else "is the same file as"
                kind = "the input" if is_input else "the output"
                raise BadInputError(f"{role.flag} {role.path}: {relation} {kind} {other.flag} {other.path}; "
                                    f"nothing was written: choose another path")
        if link:
            raise BadInputError(f"{role.flag} {role.path}: is a symbolic link (to {link}); an output replaces its "
                                "path rather than writing through a link: give the file itself or remove the link")
        _refuse_special_file(role, real)
        folder = os.path.dirname(real)
        if folder not in writable_folders:  # after the checks above: never probe /dev for -o /dev/null
            _check_writable(role, folder)
            writable_folders.add(folder)
        known.append((role, real, identity))
        resolved[role.path] = real
    return resolved


def check_output_target(path: str) -> None:
    """Right before a rename: ``path`` is still a regular file or absent."""
    if os.path.islink(path):
        raise BadInputError(f"{path}: became a symbolic link while the run worked; nothing was written")
    _refuse_special_file(Role("output", path), path)


# ---------------------------------------------------------------------------------------------


def _check_text(role: Role) -> None:
    if not isinstance(role.path, (str, os.PathLike)):
        raise BadInputError(f"{role.flag}: expected a path, got {type(role.path).__name__}")
    text = os.fspath(role.path)
    if text == "":
        raise BadInputError(f"{role.flag}: empty path; give a file name")
    if "\0" in text:
        raise BadInputError(f"{role.flag} {text!r}: a path cannot contain a NUL character")


def _check_input(role: Role) -> tuple[str, tuple]:
    path = role.path
    if not os.path.lexists(path):
        raise BadInputError(f"{path}: no such file ({role.flag})")
    try:
        info = os.stat(path)
    except OSError as error:
        raise BadInputError(f"{path}: cannot be read ({role.flag}): {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInputError(f"{path}: not a regular file but {_kind(info.st_mode)} ({role.flag})")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: not readable ({role.flag}): permission denied")
    return os.path.realpath(path), (info.st_dev, info.st_ino)


def _output_path(role: Role) -> str:
    path = os.fspath(role.path)
    if path.endswith((os.sep, "/")) or os.path.basename(path) in (".", ".."):
        raise BadInputError(f"{role.flag} {path}: names a folder; give a file name")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise BadInputError(f"{role.flag} {path}: folder {folder} does not exist")
    real = os.path.join(folder, os.path.basename(path))
    _check_name_fits(role, real, folder)
    return real


def _identity(path: str) -> tuple | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _refuse_special_file(role: Role, path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:  # a path through a file, ...
        raise BadInputError(f"{role.flag} {role.path}: cannot be used as an output: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInputError(f"{role.flag} {role.path}: is {_kind(info.st_mode)}, not a regular file; "
                            "nothing was written: give a file path")


def _check_writable(role: Role, folder: str) -> None:
    try:  # O_TMPFILE where the file system has it: no name ever appears in the folder
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise BadInputError(f"{role.flag} {role.path}: cannot write in folder {folder} ({error.strerror})") from None


def _check_name_fits(role: Role, real: str, folder: str) -> None:
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
        path_max = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    name = len(os.fsencode(os.path.basename(real)))
    if name > name_max:
        raise BadInputError(f"{role.flag}: the file name is {name} bytes long; the file system takes at most "
                            f"{name_max}")
    length = len(os.fsencode(real)) + STAGING_ROOM
    if length > path_max:
        raise BadInputError(f"{role.flag}: the path is {len(os.fsencode(real))} bytes long; the file system takes "
                            f"at most {path_max - STAGING_ROOM} here")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"
