"""Verification data read in chunks, so that memory does not grow with the data set.

``--data`` is one of:

- an ``.npz`` archive with one array per model input, samples first, named as the input (a model
  with one input: ``x``, or the input's name), and optional integer labels ``y``; each member is
  read row by row from the archive (compressed or not), never inflated whole;
- an ``.npy`` file of ``x`` (no labels), memory-mapped (a model with one input);
- a folder of shards, taken in file-name order: ``.npz`` archives as above, and ``.npy`` pairs
  ``x<name>.npy`` with optional ``y<name>.npy`` (``x.npy`` and ``y.npy``, or ``x_000.npy`` and
  ``y_000.npy``, ...), memory-mapped (a model with one input). Either every shard has labels or
  none has.

Shapes and dtypes come from the array headers and are checked against each model input before
anything runs: an integer input (token ids, an attention mask) takes integer arrays only, a bool
input bool arrays, a float input any numbers. With several inputs, an array for a name the model
does not take is refused (a misspelt input); with one, other arrays are ignored. Values (finite
numbers, integers within the input's type, labels in range) are checked chunk by chunk as they
are read. A chunk's ``x`` is an array for a model with one input, and
:class:`~pmsm.runtime.inputs.Samples` (one array per input name) otherwise.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from pmsm.npz import Declared, declared_arrays, read_npy_header
from pmsm.runtime.base import limits as run_limits
from pmsm.runtime.base.errors import BadInputError, first_line
from pmsm.runtime.inputs import PROBE_SAMPLES, PROBE_SEED, InputSpec, Samples, probe_batch, specs_of, unfeedable  # noqa: F401 - re-exported

LABELS = "y"
SINGLE = "x"  # the array of a model with one input, whatever its name


@dataclass(frozen=True)
class Chunk:
    start: int  # index of the chunk's first sample in the whole data set
    x: Union[np.ndarray, Samples]  # [n, ...] in the input's dtype; one array per input name for several
    y: Optional[np.ndarray]  # int64 [n] or None

    @property
    def stop(self) -> int:
        return self.start + len(self.x)


class _Part:
    """One file's samples: ``rows`` of them, read in order by :meth:`read`. ``x``: for each model
    input, the declared shape and dtype of its array; ``members``: the array's name in the file."""

    label: str
    rows: int
    x: dict[str, Declared]
    members: dict[str, str]
    y: Optional[Declared]

    def read(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]:
        raise NotImplementedError


class _ArrayPart(_Part):
    def __init__(self, label: str, x: dict[str, np.ndarray], y: Optional[np.ndarray]):
        self.label, self._x, self._y = label, x, y
        self.x = {name: Declared(tuple(np.shape(a)), np.asarray(a).dtype) for name, a in x.items()}
        self.members = {name: name for name in x}
        self.rows = _rows(self.x)
        self.y = None if y is None else Declared(tuple(y.shape), y.dtype)

    def read(self, size):
        for start in range(0, self.rows, size):
            yield ({name: a[start:start + size] for name, a in self._x.items()},
                   None if self._y is None else self._y[start:start + size])


def _rows(declared: dict[str, Declared]) -> int:
    first = next(iter(declared.values()))
    return first.shape[0] if first.shape else 0


class _NpyPart(_Part):
    """Memory-mapped one chunk at a time: a map of the whole file would keep every page read
    resident in this process, so memory would grow with the data."""

    def __init__(self, x_path: str, y_path: Optional[str], input_name: str):
        self.label = x_path
        self._x, declared = _npy_layout(x_path)
        self.x, self.members = {input_name: declared}, {input_name: SINGLE}
        self._input = input_name
        self._y, self.y = _npy_layout(y_path) if y_path else (None, None)
        self.rows = _rows(self.x)

    def read(self, size):
        for start in range(0, self.rows, size):
            rows = min(size, self.rows - start)
            yield {self._input: _mapped_rows(self.label, self._x, self.x[self._input], start, rows)}, \
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

    def __init__(self, path: str, inputs: Sequence[InputSpec]):
        self.label = path
        names = [spec.name for spec in inputs]
        labels = len(names) == 1 or LABELS not in names  # with several inputs, one named 'y' takes the array 'y'
        declared = declared_arrays(path, tuple(dict.fromkeys([SINGLE, *names, LABELS])))
        if len(names) == 1:
            self.members = {names[0]: _single_member(path, names[0], declared)}
        else:
            self.members = {name: name for name in names}
            missing = [name for name in names if name not in declared]
            stray = [name for name in _member_names(path) if name not in names and name != LABELS]
            if missing:
                spec = inputs[names.index(missing[0])]
                found = ", ".join(f"'{n}'" for n in _member_names(path)) or "nothing"
                raise BadInputError(f"{path}: no array '{missing[0]}' for the model input '{missing[0]}' "
                                    f"({spec.describe()}); the file holds {found}")
            if stray:
                raise BadInputError(f"{path}: array '{stray[0]}' is not an input of the model (it takes "
                                    f"{', '.join(repr(n) for n in names)}, and labels 'y'); rename or remove it")
        self.x = {name: declared[member] for name, member in self.members.items()}
        self.y = declared.get(LABELS) if labels else None
        self.rows = _rows(self.x)

    def read(self, size):
        try:
            with zipfile.ZipFile(self.label) as archive:
                readers = {name: _MemberRows(archive, member, self.x[name]) for name, member in self.members.items()}
                labels = _MemberRows(archive, LABELS, self.y) if self.y else None
                for start in range(0, self.rows, size):
                    rows = min(size, self.rows - start)
                    yield ({name: reader.take(rows) for name, reader in readers.items()},
                           labels.take(rows) if labels else None)
        except BadInputError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:  # damaged after its header
            raise BadInputError(f"{self.label}: not a readable .npz file ({type(error).__name__}: "
                                f"{first_line(error)})") from None


def _member_names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]


def _single_member(path: str, name: str, declared: dict[str, Declared]) -> str:
    """The array of a model with one input: ``x``, or the input's name (not both)."""
    if SINGLE in declared and name != SINGLE and name in declared and name != LABELS:
        raise BadInputError(f"{path}: holds both 'x' and '{name}' for the model's one input; keep one")
    if SINGLE in declared:
        return SINGLE
    if name in declared and name != LABELS:
        return name
    found = ", ".join(_member_names(path)) or "nothing"
    also = f" or '{name}'" if name not in (SINGLE, LABELS) else ""
    raise BadInputError(f"{path}: no array 'x'{also} (found: {found})")


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
    """Samples from ``--data`` (or a seeded probe batch), read chunk by chunk. ``inputs``: the
    model inputs the arrays feed, in the model's order (None: arrays given as they are)."""

    def __init__(self, parts: list[_Part], path: Optional[str], kind: str,
                 inputs: Optional[Sequence[InputSpec]] = None):
        self.parts, self.path, self.kind = parts, path, kind
        self.inputs = {spec.name: spec for spec in inputs} if inputs else {}
        self.names = list(parts[0].x)
        self.samples = sum(part.rows for part in parts)
        shapes = {name: tuple(declared.shape[1:]) for name, declared in parts[0].x.items()}
        self.sample_shape = shapes[self.names[0]] if len(self.names) == 1 else shapes
        self.has_labels = parts[0].y is not None
        self.sample_values = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes.values())

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Chunks of at most ``size`` samples, in order; a chunk never spans two files."""
        start = 0
        for part in self.parts:
            for arrays, y in part.read(size):
                checked = {name: _checked_x(a, part.label, part.members[name], self.inputs.get(name))
                           for name, a in arrays.items()}
                x = checked[self.names[0]] if len(checked) == 1 else Samples(checked)
                yield Chunk(start, x, None if y is None else _checked_y(y, len(x), part.label))
                start += len(x)

    def first(self):
        """The first sample, ``[1, ...]`` (the post-flight probe); one per input name for several."""
        return next(self.chunks(1)).x

    def peak(self) -> float:
        """The largest ``|x|`` over every sample (one pass over the data), of every input."""
        def largest(x) -> float:
            arrays = x.arrays.values() if isinstance(x, Samples) else [x]
            return max(float(np.max(np.abs(a.astype(np.float64, copy=False)))) for a in arrays)

        return max(largest(chunk.x) for chunk in self.chunks(1024))

    def load(self):
        """All samples in memory (for small data and the Python API): ``(x, y)``, ``x`` an array,
        or :class:`Samples` for several inputs."""
        chunks = list(self.chunks(max(1, self.samples)))
        x = Samples.concatenate([c.x for c in chunks]) if len(self.names) > 1 else np.concatenate([c.x for c in chunks])
        y = np.concatenate([c.y for c in chunks]) if self.has_labels else None
        return x, y


def open_data(path: Optional[str], input_shape, model=None) -> DataSet:
    """The data set at ``path`` checked against the model's inputs: ``input_shape`` is the list of
    :class:`~pmsm.runtime.inputs.InputSpec` (``open_model_data``), or the shape ``[N, ...]`` of a
    model with one float input. Without a path, the seeded probe batch (``PROBE_SAMPLES``
    samples, valid for every input: :func:`pmsm.runtime.inputs.probe_batch`)."""
    inputs = _as_specs(input_shape)
    if path is None:
        if inputs is None:
            raise BadInputError(f"the model input has no fixed shape ({input_shape}); give --data X.npz")
        probe = probe_batch(model, inputs) if model is not None else _float_probe(inputs)
        arrays = probe.arrays if isinstance(probe, Samples) else {inputs[0].name: probe}
        return DataSet([_ArrayPart("probe batch", arrays, None)], None, "seeded probe batch", inputs)
    if inputs is None:
        inputs = [InputSpec(SINGLE, np.dtype(np.float32), None)]
    if os.path.isdir(path):
        parts, kind = _folder_parts(path, inputs), "folder"
    elif not os.path.isfile(path):
        raise BadInputError(f"{path}: no such data file")
    elif path.endswith(".npy"):
        parts, kind = [_NpyPart(path, None, _single_input(path, inputs))], "npy"
    else:
        parts, kind = [_NpzPart(path, inputs)], "file"
    _check_declared(parts, path, inputs)
    return DataSet(parts, path, kind, inputs)


def open_model_data(path: Optional[str], model) -> DataSet:
    """The data set at ``path`` (or the seeded probe batch) for the inputs of ``model`` (a
    ModelProto; its weights need not be loaded)."""
    label = path or "the seeded probe batch"
    inputs = specs_of(model, label)
    for name, why in unfeedable(inputs):
        raise BadInputError(f"input '{name}' {why}")
    return open_data(path, inputs, model)


def _as_specs(input_shape) -> Optional[list[InputSpec]]:
    if not input_shape:
        return None
    if all(isinstance(spec, InputSpec) for spec in input_shape):
        return list(input_shape)
    dims = tuple(d if isinstance(d, int) and d > 0 else "?" for d in input_shape)
    return [InputSpec(SINGLE, np.dtype(np.float32), dims)]


def _float_probe(inputs: list[InputSpec]) -> np.ndarray:
    """The probe of a model with one float input known only by its shape (a NIR source)."""
    dims = inputs[0].sample_dims
    if len(inputs) != 1 or dims is None:
        raise BadInputError(f"the model input has no fixed shape ({inputs[0].describe()}); give --data X.npz")
    return np.random.default_rng(PROBE_SEED).uniform(0.0, 1.0, size=[PROBE_SAMPLES] + dims).astype(np.float32)


def _single_input(path: str, inputs: Sequence[InputSpec]) -> str:
    if len(inputs) != 1:
        raise BadInputError(f"{path}: the model takes {len(inputs)} inputs ({', '.join(s.name for s in inputs)}); "
                            "give an .npz with one array per input name (.npy files hold one array)")
    return inputs[0].name


def from_arrays(x, y=None, label: str = "data") -> DataSet:
    """A data set of arrays already in memory (the Python API): ``x`` an array, or one array per
    input name (a mapping or :class:`Samples`)."""
    if isinstance(x, Samples):
        arrays = {name: np.asarray(a) for name, a in x.arrays.items()}
    elif isinstance(x, dict):
        arrays = {str(name): np.asarray(a) for name, a in x.items()}
    else:
        arrays = {SINGLE: np.asarray(x)}
    if not arrays:
        raise BadInputError(f"{label}: no arrays given")
    part = _ArrayPart(label, arrays, None if y is None else np.asarray(y))
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


def _folder_parts(folder: str, inputs: Sequence[InputSpec]) -> list[_Part]:
    return [_NpzPart(x, inputs) if y is None and x.endswith(".npz") else _NpyPart(x, y, _single_input(x, inputs))
            for x, y in _folder_files(folder)]


def _check_declared(parts: list[_Part], path: str, inputs: Optional[Sequence[InputSpec]]) -> None:
    """Dtypes, shapes and labels as the headers declare them, before any value is read; the
    declared size within ``--max-data-elements``."""
    limits = run_limits.current()
    specs = {spec.name: spec for spec in inputs or ()}
    first = parts[0]
    total = 0
    for part in parts:
        for name, declared in part.x.items():
            array = part.members[name]
            if declared.dtype.kind not in "fiub":
                raise BadInputError(f"{part.label}: '{array}' has dtype {declared.dtype}; expected numbers")
            spec = specs.get(name)
            if spec is not None and not spec.takes(declared.dtype):
                raise BadInputError(f"{part.label}: '{array}' holds {declared.dtype} values; the model input "
                                    f"'{name}' takes {spec.type_name} ({spec.describe()}): save it as {spec.type_name}")
            if not declared.shape or declared.shape[0] == 0:
                raise BadInputError(f"{part.label}: '{array}' holds no samples")
            if declared.shape[0] != part.rows:
                counts = ", ".join(f"'{part.members[n]}' {d.shape[0] if d.shape else 0}" for n, d in part.x.items())
                raise BadInputError(f"{part.label}: the arrays hold different numbers of samples ({counts}); give "
                                    "each input one row per sample")
            if declared.shape[1:] != first.x[name].shape[1:]:
                raise BadInputError(f"{part.label}: '{array}' has samples of shape {list(declared.shape[1:])}, the first "
                                    f"shard's are {list(first.x[name].shape[1:])}")
            total += declared.elements
        if part.y is not None and part.y.dtype.kind not in "fiub":
            raise BadInputError(f"{part.label}: 'y' has dtype {part.y.dtype}; expected numbers")
        if part.y is not None and (len(part.y.shape) != 1 or part.y.shape[0] != part.rows
                                   or part.y.dtype.kind not in "iu"):
            raise BadInputError(f"{part.label}: 'y' must be integer labels, one per sample of "
                                f"{_arrays_named(part)} ({part.rows})")
        if (part.y is None) != (first.y is None):
            which = "has no labels" if part.y is None else "has labels"
            raise BadInputError(f"{part.label}: {which}, unlike {first.label}; give labels ('y') for every shard "
                                "or for none")
        total += part.y.elements if part.y is not None else 0
    if total > limits.max_data_elements:
        shapes = ", ".join(f"'{first.members[n]}' {[sum(p.rows for p in parts), *d.shape[1:]]}" for n, d in first.x.items())
        raise BadInputError(f"{path}: declares {total} values ({shapes}), more than the "
                            f"{limits.max_data_elements} allowed; raise the limit with "
                            f"{run_limits.flag('max_data_elements')}")
    for name, spec in specs.items():
        if spec.dims is None or name not in first.x:
            continue
        got = list(first.x[name].shape)
        expected = list(spec.dims[1:])
        if len(got) != len(spec.dims) or any(isinstance(d, int) and d > 0 and d != g
                                             for d, g in zip(expected, got[1:])):
            what = "the model input expects" if len(specs) == 1 else f"the model input '{name}' expects"
            raise BadInputError(f"{first.label}: '{first.members[name]}' has shape {got}, {what} "
                                f"[N, {', '.join(str(d) for d in expected)}]")


def _arrays_named(part: _Part) -> str:
    return " and ".join(f"'{member}'" for member in part.members.values())


def _checked_x(x: np.ndarray, label: str, array: str = SINGLE, spec: Optional[InputSpec] = None) -> np.ndarray:
    """One input's rows: float arrays for a float input (or with no input known) as float32 (the
    input's float type), finite; integer arrays for an integer input within its type, converted
    to it; bool as bool."""
    x = np.asarray(x)
    want = spec.dtype if spec is not None else (np.dtype(np.float32) if x.dtype.kind in "fb" else x.dtype)
    if want.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(want if spec is not None else np.float32, copy=False)
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise BadInputError(f"{label}: '{array}' contains {bad} NaN or inf value(s)")
        return x
    if want.kind in "iu" and x.size and x.dtype != want:
        info = np.iinfo(want)
        low, high = x.min(), x.max()
        if low < info.min or high > info.max:
            raise BadInputError(f"{label}: '{array}' holds {low if low < info.min else high}, outside the "
                                f"{want.name} range of the model input '{spec.name if spec else array}'")
    return x.astype(want, copy=False)


def _checked_y(y: np.ndarray, rows: int, label: str) -> np.ndarray:
    if len(y) != rows:
        raise BadInputError(f"{label}: 'y' must be integer labels, one per sample")
    return np.asarray(y).astype(np.int64)
