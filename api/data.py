"""Verification data read in chunks, so that memory does not grow with the data set.

``--data`` is one of:

- an ``.npz`` archive with ``x`` (samples first) and optional integer labels ``y``; each member is
  read row by row from the archive (compressed or not), never inflated whole;
- an ``.npy`` file of ``x`` (no labels), memory-mapped;
- a folder of shards, taken in file-name order: ``.npz`` archives as above, and ``.npy`` pairs
  ``x<name>.npy`` with optional ``y<name>.npy`` (``x.npy`` and ``y.npy``, or ``x_000.npy`` and
  ``y_000.npy``, ...), memory-mapped. Either every shard has labels or none has.

Shapes and dtypes come from the array headers and are checked against the model input before
anything runs; values (finite numbers, labels in range) are checked chunk by chunk as they are read.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from pmsm.runtime.base import limits as run_limits
from pmsm.runtime.base.errors import BadInputError, first_line
from pmsm.npz import Declared, declared_arrays, read_npy_header

PROBE_SAMPLES = 64
PROBE_SEED = 0


@dataclass(frozen=True)
class Chunk:
    start: int  # index of the chunk's first sample in the whole data set
    x: np.ndarray  # float32 [n, ...]
    y: Optional[np.ndarray]  # int64 [n] or None

    @property
    def stop(self) -> int:
        return self.start + len(self.x)


class _Part:
    """One file's samples: ``rows`` of them, read in order by :meth:`read`."""

    label: str
    rows: int
    x: Declared
    y: Optional[Declared]

    def read(self, size: int) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
        raise NotImplementedError


class _ArrayPart(_Part):
    def __init__(self, label: str, x: np.ndarray, y: Optional[np.ndarray]):
        self.label, self._x, self._y = label, x, y
        self.rows = len(x)
        self.x = Declared(tuple(x.shape), x.dtype)
        self.y = None if y is None else Declared(tuple(y.shape), y.dtype)

    def read(self, size):
        for start in range(0, self.rows, size):
            yield self._x[start:start + size], None if self._y is None else self._y[start:start + size]


class _NpyPart(_Part):
    """Memory-mapped one chunk at a time: a map of the whole file would keep every page read
    resident in this process, so memory would grow with the data."""

    def __init__(self, x_path: str, y_path: Optional[str]):
        self.label = x_path
        self._x, self.x = _npy_layout(x_path)
        self._y, self.y = _npy_layout(y_path) if y_path else (None, None)
        self.rows = self.x.shape[0] if self.x.shape else 0

    def read(self, size):
        for start in range(0, self.rows, size):
            rows = min(size, self.rows - start)
            yield _mapped_rows(self.label, self._x, self.x, start, rows), \
                None if self._y is None else _mapped_rows(self.label, self._y, self.y, start, rows)


def _npy_layout(path: str) -> tuple[tuple[str, int], Declared]:
    """``((path, offset of the data), declared shape and dtype)`` of an .npy file."""
    try:
        with open(path, "rb") as handle:
            declared, fortran = read_npy_header(handle)
            offset = handle.tell()
    except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a bad file
        raise BadInputError(f"{path}: not a readable .npy file ({type(error).__name__}: {first_line(error)})") from None
    if declared.dtype.hasobject:
        raise BadInputError(f"{path}: holds Python objects; expected numbers")
    if fortran and len(declared.shape) > 1:
        raise BadInputError(f"{path}: stored in Fortran order; save it C-contiguous")
    needed = offset + declared.elements * declared.dtype.itemsize
    if os.path.getsize(path) < needed:
        raise BadInputError(f"{path}: the file is shorter than its header declares ({os.path.getsize(path)} of "
                            f"{needed} bytes)")
    return (path, offset), declared


def _mapped_rows(label: str, layout: tuple[str, int], declared: Declared, start: int, rows: int) -> np.ndarray:
    path, offset = layout
    row = declared.dtype.itemsize * int(np.prod(declared.shape[1:], dtype=np.int64))
    mapped = np.memmap(path, dtype=declared.dtype, mode="r", offset=offset + start * row,
                       shape=(rows,) + declared.shape[1:])
    rows_read = np.array(mapped)
    del mapped  # unmapped here: its pages leave this process
    return rows_read


class _NpzPart(_Part):
    """Members read sequentially from the archive: only one chunk is ever inflated."""

    def __init__(self, path: str):
        self.label = path
        declared = declared_arrays(path, ("x", "y"))
        if "x" not in declared:
            with zipfile.ZipFile(path) as archive:
                found = ", ".join(n[:-4] for n in archive.namelist() if n.endswith(".npy")) or "nothing"
            raise BadInputError(f"{path}: no array 'x' (found: {found})")
        self.x, self.y = declared["x"], declared.get("y")
        self.rows = self.x.shape[0] if self.x.shape else 0

    def read(self, size):
        try:
            with zipfile.ZipFile(self.label) as archive:
                readers = [_MemberRows(archive, "x", self.x)] + ([_MemberRows(archive, "y", self.y)] if self.y else [])
                for start in range(0, self.rows, size):
                    rows = min(size, self.rows - start)
                    arrays = [reader.take(rows) for reader in readers]
                    yield arrays[0], arrays[1] if len(arrays) > 1 else None
        except BadInputError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:  # damaged after its header
            raise BadInputError(f"{self.label}: not a readable .npz file ({type(error).__name__}: "
                                f"{first_line(error)})") from None


class _MemberRows:
    def __init__(self, archive: zipfile.ZipFile, name: str, declared: Declared):
        if declared.dtype.hasobject:
            raise ValueError(f"'{name}' holds Python objects")
        self.handle = archive.open(name + ".npy")
        _, fortran = read_npy_header(self.handle)
        if fortran and len(declared.shape) > 1:
            raise ValueError(f"'{name}' is stored in Fortran order; save it C-contiguous")
        self.declared = declared
        self.row_bytes = declared.dtype.itemsize * int(np.prod(declared.shape[1:], dtype=np.int64))

    def take(self, rows: int) -> np.ndarray:
        wanted = rows * self.row_bytes
        data = self.handle.read(wanted)
        if len(data) != wanted:
            raise EOFError(f"the archive ends inside '{self.declared}'")
        return np.frombuffer(data, dtype=self.declared.dtype).reshape((rows,) + self.declared.shape[1:])


class DataSet:
    """Samples from ``--data`` (or a seeded probe batch), read chunk by chunk."""

    def __init__(self, parts: list[_Part], path: Optional[str], kind: str):
        self.parts, self.path, self.kind = parts, path, kind
        self.samples = sum(part.rows for part in parts)
        self.sample_shape = tuple(parts[0].x.shape[1:])
        self.has_labels = parts[0].y is not None
        self.sample_values = int(np.prod(self.sample_shape, dtype=np.int64))

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Chunks of at most ``size`` samples, in order; a chunk never spans two files."""
        start = 0
        for part in self.parts:
            for x, y in part.read(size):
                yield Chunk(start, _checked_x(x, part.label), None if y is None else _checked_y(y, len(x), part.label))
                start += len(x)

    def first(self) -> np.ndarray:
        """The first sample, ``[1, ...]`` (the post-flight probe)."""
        return next(self.chunks(1)).x

    def peak(self) -> float:
        """The largest ``|x|`` over every sample (one pass over the data)."""
        return max(float(np.max(np.abs(chunk.x))) for chunk in self.chunks(1024))

    def load(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """All samples in memory (for small data and the Python API)."""
        chunks = list(self.chunks(max(1, self.samples)))
        x = np.concatenate([c.x for c in chunks])
        y = np.concatenate([c.y for c in chunks]) if self.has_labels else None
        return x, y


def open_data(path: Optional[str], input_shape) -> DataSet:
    """The data set at ``path`` checked against the model input ``[N, ...]``; without a path, a
    seeded probe batch of ``PROBE_SAMPLES`` uniform samples in [0, 1)."""
    if path is None:
        dims = list(input_shape[1:]) if input_shape else None
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise BadInputError(f"the model input has no fixed shape ({input_shape}); give --data X.npz")
        x = np.random.default_rng(PROBE_SEED).uniform(0.0, 1.0, size=[PROBE_SAMPLES] + dims).astype(np.float32)
        return DataSet([_ArrayPart("probe batch", x, None)], None, "seeded probe batch")
    if os.path.isdir(path):
        parts, kind = _folder_parts(path), "folder"
    elif not os.path.isfile(path):
        raise BadInputError(f"{path}: no such data file")
    elif path.endswith(".npy"):
        parts, kind = [_NpyPart(path, None)], "npy"
    else:
        parts, kind = [_NpzPart(path)], "file"
    _check_declared(parts, path, input_shape)
    return DataSet(parts, path, kind)


def from_arrays(x, y=None, label: str = "data") -> DataSet:
    """A data set of arrays already in memory (the Python API)."""
    x = np.asarray(x)
    part = _ArrayPart(label, x, None if y is None else np.asarray(y))
    _check_declared([part], label, None)
    return DataSet([part], None, "arrays")


def data_files(path: str) -> list[str]:
    """The files ``--data`` reads: the path itself, or a folder's shards."""
    if not os.path.isdir(path):
        return [path]
    return [f for x, y in _folder_files(path) for f in (x, y) if f]


def _folder_files(folder: str) -> list[tuple[str, Optional[str]]]:
    names = sorted(os.listdir(folder))
    present = set(names)
    files = []
    for name in names:
        full = os.path.join(folder, name)
        if name.endswith(".npz"):
            files.append((full, None))
        elif name.endswith(".npy") and name.startswith("x"):
            labels = "y" + name[1:]
            files.append((full, os.path.join(folder, labels) if labels in present else None))
        elif name.endswith(".npy") and name.startswith("y") and "x" + name[1:] not in present:
            raise BadInputError(f"{full}: labels without samples (no {'x' + name[1:]} next to it)")
    if not files:
        raise BadInputError(f"{folder}: a data folder needs .npz shards or x*.npy files; found none")
    return files


def _folder_parts(folder: str) -> list[_Part]:
    return [_NpzPart(x) if y is None and x.endswith(".npz") else _NpyPart(x, y) for x, y in _folder_files(folder)]


def _check_declared(parts: list[_Part], path: str, input_shape) -> None:
    """Dtypes, shapes and labels as the headers declare them, before any value is read; the
    declared size within ``--max-data-elements``."""
    limits = run_limits.current()
    total = 0
    for part in parts:
        for name, declared in (("x", part.x), ("y", part.y)):
            if declared is not None and declared.dtype.kind not in "fiub":
                raise BadInputError(f"{part.label}: '{name}' has dtype {declared.dtype}; expected numbers")
        if not part.x.shape or part.rows == 0:
            raise BadInputError(f"{part.label}: 'x' holds no samples")
        if part.y is not None and (len(part.y.shape) != 1 or part.y.shape[0] != part.rows
                                   or part.y.dtype.kind not in "iu"):
            raise BadInputError(f"{part.label}: 'y' must be integer labels, one per sample of 'x' ({part.rows})")
        if part.x.shape[1:] != parts[0].x.shape[1:]:
            raise BadInputError(f"{part.label}: samples of shape {list(part.x.shape[1:])}, the first shard's are "
                                f"{list(parts[0].x.shape[1:])}")
        if (part.y is None) != (parts[0].y is None):
            which = "has no labels" if part.y is None else "has labels"
            raise BadInputError(f"{part.label}: {which}, unlike {parts[0].label}; give labels ('y') for every shard "
                                "or for none")
        total += part.x.elements + (part.y.elements if part.y is not None else 0)
    if total > limits.max_data_elements:
        shape = [sum(p.rows for p in parts), *parts[0].x.shape[1:]]
        raise BadInputError(f"{path}: declares {total} values ('x' {shape}), more than the "
                            f"{limits.max_data_elements} allowed; raise the limit with "
                            f"{run_limits.flag('max_data_elements')}")
    if input_shape:
        expected = list(input_shape[1:])
        got = list(parts[0].x.shape)
        if len(got) != len(input_shape) or any(isinstance(d, int) and d > 0 and d != g
                                               for d, g in zip(expected, got[1:])):
            raise BadInputError(f"{parts[0].label}: 'x' has shape {got}, the model input expects "
                                f"[N, {', '.join(str(d) for d in expected)}]")


def _checked_x(x: np.ndarray, label: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x).astype(np.float32, copy=False)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise BadInputError(f"{label}: 'x' contains {bad} NaN or inf value(s)")
    return x


def _checked_y(y: np.ndarray, rows: int, label: str) -> np.ndarray:
    if len(y) != rows:
        raise BadInputError(f"{label}: 'y' must be integer labels, one per sample of 'x'")
    return np.asarray(y).astype(np.int64)
