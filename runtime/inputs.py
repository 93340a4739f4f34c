"""The data inputs of a model: what each takes, a batch of samples for all of them, and probe values.

A model may take several inputs of different element types: a Hugging Face style text model takes
``input_ids``, ``attention_mask`` and ``token_type_ids``, int64 ``[N, S]`` each. Every runner
(:mod:`pmsm.runtime.execute`) takes one array for a model with one input, or
:class:`Samples` (or a plain mapping) with one array per input name for any model; each array is
checked against its input (:meth:`InputSpec.check`) before anything runs.

:func:`unfeedable` names the inputs no data file can feed (strings, inputs without a batch axis);
:func:`probe_batch` makes the seeded probe batch ``--verify`` uses without ``--data``, valid per
input:

- float inputs: uniform in [0, 1);
- integer inputs that index a table (the indices of a ``Gather``, as token ids index an embedding):
  uniform ids below the smallest such table's row count (0 when a table's size is not known);
- other integer inputs: ones (an attention mask that attends to every token);
- bool inputs: true.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from pmsm.runtime.base import proto
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.schema import TIMESTEPS_INPUT

PROBE_SAMPLES = 64
PROBE_SEED = 0

# Element kinds a data file can hold for an input: float, signed and unsigned integer, bool.
FEEDABLE_KINDS = "fiub"
# Ops an index passes through unchanged on its way to a Gather.
_INDEX_CARRIERS = frozenset({"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Slice",
                             "Transpose", "Tile", "Concat"})
# Ops whose output has the shape of their first input (a constant table behind them keeps its rows).
_SAME_SHAPE = frozenset({"Identity", "Cast", "DequantizeLinear", "QuantizeLinear"})


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple | None  # None: rank unknown; entries: int (fixed) or str (symbolic / unknown)

    @classmethod
    def of(cls, vi: onnx.ValueInfoProto, label: str) -> "InputSpec":
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.elem_type:
            raise BadInputError(f"{label}: input '{vi.name}' is not a tensor of a known element type")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            name = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
            dtype = np.dtype(object) if name == "string" else np.dtype(np.void)
        dims = None
        if tt.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
            )
        return cls(vi.name, dtype, dims)

    @property
    def fixed_batch(self) -> int | None:
        if self.dims and isinstance(self.dims[0], int) and self.dims[0] > 0:
            return self.dims[0]
        return None

    @property
    def sample_dims(self) -> Optional[list[int]]:
        """The dimensions after the batch when all are fixed; None otherwise."""
        if not self.dims or not all(isinstance(d, int) and d > 0 for d in self.dims[1:]):
            return None
        return list(self.dims[1:])

    @property
    def type_name(self) -> str:
        return "string" if self.dtype.kind == "O" else self.dtype.name

    def describe(self) -> str:
        shape = "[?]" if self.dims is None else "[" + ", ".join(str(d) for d in self.dims) + "]"
        return f"{self.type_name} {shape}"

    def takes(self, dtype: np.dtype) -> bool:
        """Whether an array of ``dtype`` can feed this input without changing a value's meaning:
        numbers of any kind for a float input, integers for an integer input (range checked when
        converted), bool for a bool input."""
        kind, want = np.dtype(dtype).kind, self.dtype.kind
        if want == "f":
            return kind in "fiub"
        if want in "iu":
            return kind in "iu"
        return np.dtype(dtype) == self.dtype

    def check(self, x) -> np.ndarray:
        """``x`` converted to the input's dtype; ``BadInputError`` naming the input otherwise."""
        def fail(why: str) -> BadInputError:
            got = f"{arr.dtype} array of shape {tuple(arr.shape)}" if arr is not None else type(x).__name__
            return BadInputError(f"input '{self.name}' expects {self.describe()}, got {got}{why}")

        arr = None
        try:
            arr = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise fail("") from None
        if not self.takes(arr.dtype) or (self.dtype.kind == "f" and arr.dtype.kind == "b"):
            raise fail(f" (dtype {arr.dtype} cannot be used)")
        if self.dims is not None:
            if arr.ndim != len(self.dims):
                raise fail(f" (rank {arr.ndim}, expected {len(self.dims)})")
            for axis, (want_dim, got_dim) in enumerate(zip(self.dims, arr.shape)):
                if axis > 0 and isinstance(want_dim, int) and want_dim > 0 and want_dim != got_dim:
                    raise fail(f" (dimension {axis} is {got_dim}, expected {want_dim})")
        if arr.ndim == 0:
            raise fail(" (no batch dimension)")
        if arr.shape[0] == 0:
            raise fail(" (no samples)")
        want = self.dtype.kind
        if want in "iu" and arr.size:
            info = np.iinfo(self.dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise fail(f" (values outside the {self.dtype.name} range)")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
            converted = arr.astype(self.dtype, copy=False)
        if want == "f":
            bad = int(converted.size - np.count_nonzero(np.isfinite(converted)))
            if bad:
                beyond = f" or beyond the {self.dtype.name} range" if arr.dtype != self.dtype else ""
                raise fail(f" ({bad} value(s) NaN, inf{beyond})")
        return np.ascontiguousarray(converted)


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that take data: not initializers, not the spiking model's timestep count."""
    initializers = {init.name for init in model.graph.initializer}
    initializers |= {init.values.name for init in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers and vi.name != TIMESTEPS_INPUT]


def specs_of(model: onnx.ModelProto, label: str) -> list[InputSpec]:
    return [InputSpec.of(vi, label) for vi in data_inputs(model)]


def unfeedable(specs: Sequence[InputSpec]) -> list[tuple[str, str]]:
    """``(input name, why)`` for each input no sample batch can feed."""
    found = []
    for spec in specs:
        if spec.dtype.kind not in FEEDABLE_KINDS or spec.dtype.itemsize == 0:
            found.append((spec.name, f"takes {spec.type_name} values; only numbers and bool can be fed from a data "
                                     "file (export the model with the tensor computed inside it)"))
        elif spec.dims is not None and len(spec.dims) == 0:
            found.append((spec.name, "is a scalar: it has no batch axis to feed samples along (declared of rank 0; "
                                     "export it with a batch axis, or as a constant)"))
    batches = {spec.name: spec.fixed_batch for spec in specs if spec.fixed_batch}
    if len(set(batches.values())) > 1:
        listed = ", ".join(f"'{name}' {batch}" for name, batch in batches.items())
        found.append((next(iter(batches)), f"the inputs' fixed batch sizes differ ({listed})"))
    return found


class Samples:
    """A batch of samples for a model with several inputs: one array per input name, the samples
    along the first axis of each. ``len`` is the number of samples; slicing takes samples."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)
        rows = {name: (len(a) if np.ndim(a) else None) for name, a in self.arrays.items()}
        if len(set(rows.values())) > 1:
            listed = ", ".join(f"'{name}' {count}" for name, count in rows.items())
            raise BadInputError(f"the inputs hold different numbers of samples ({listed}); give each the same")
        self.rows = next(iter(rows.values()), 0) or 0

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.arrays[key]
        return Samples({name: array[key] for name, array in self.arrays.items()})

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {a.dtype} {list(a.shape)}" for name, a in self.arrays.items())
        return f"Samples({shapes})"

    @staticmethod
    def concatenate(parts: Sequence["Samples"]) -> "Samples":
        names = parts[0].names
        return Samples({name: np.concatenate([p.arrays[name] for p in parts]) for name in names})


Batch = Union[np.ndarray, Samples, Mapping[str, np.ndarray]]


def feeds_of(specs: Sequence[InputSpec], x: Batch, label: str) -> tuple[dict[str, np.ndarray], int]:
    """``({input name: checked array}, samples)`` for ``x``: one array for a model with one input,
    or one array per input name; ``BadInputError`` naming the input that is missing or wrong."""
    if isinstance(x, Samples):
        arrays = x.arrays
    elif isinstance(x, Mapping):
        arrays = dict(x)
    elif len(specs) == 1:
        arrays = {specs[0].name: x}
    else:
        raise BadInputError(f"{label}: the model takes {len(specs)} inputs ({_names(specs)}); give one array per "
                            "input name")
    wanted = [spec.name for spec in specs]
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise BadInputError(f"{label}: no array for input '{missing[0]}' (the model takes {_names(specs)})")
    extra = [name for name in arrays if name not in wanted]
    if extra:
        raise BadInputError(f"{label}: '{extra[0]}' is not an input of the model (it takes {_names(specs)})")
    feeds = {spec.name: spec.check(arrays[spec.name]) for spec in specs}
    counts = {name: a.shape[0] for name, a in feeds.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}' {count}" for name, count in counts.items())
        raise BadInputError(f"{label}: the inputs hold different numbers of samples ({listed}); give each the same")
    return feeds, next(iter(counts.values()))


def _names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(f"'{spec.name}' {spec.describe()}" for spec in specs)


# ---------------------------------------------------------------------------------------------
# The seeded probe batch
# ---------------------------------------------------------------------------------------------


def probe_batch(model: onnx.ModelProto, specs: Sequence[InputSpec], samples: int = PROBE_SAMPLES,
                seed: int = PROBE_SEED) -> Union[np.ndarray, Samples]:
    """``samples`` seeded probe samples valid for every input (module text): one array for a model
    with one input, :class:`Samples` otherwise. ``BadInputError`` when an input's shape after the
    batch is not fixed, or no values can be made for it."""
    for name, why in unfeedable(specs):
        raise BadInputError(f"input '{name}' {why}")
    rng = np.random.default_rng(seed)
    bounds = index_bounds(model, [spec.name for spec in specs if spec.dtype.kind in "iu"])
    arrays = {}
    for spec in specs:
        dims = spec.sample_dims
        if dims is None:
            raise BadInputError(f"the model input '{spec.name}' has no fixed shape ({spec.describe()}); give --data "
                                "X.npz")
        size = [samples] + dims
        if spec.dtype.kind == "f":
            arrays[spec.name] = rng.uniform(0.0, 1.0, size=size).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            arrays[spec.name] = np.ones(size, dtype=bool)
        elif spec.name in bounds:
            rows = bounds[spec.name]
            arrays[spec.name] = (rng.integers(0, rows, size=size) if rows else np.zeros(size)).astype(spec.dtype)
        else:
            arrays[spec.name] = np.ones(size, dtype=spec.dtype)
    if len(specs) == 1:
        return arrays[specs[0].name]
    return Samples(arrays)


def index_bounds(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """For each input in ``names`` that reaches the indices of a ``Gather`` (through ops that only
    move values), the smallest row count of the tables it indexes; 0 when one's size is unknown.
    Inputs that index nothing are left out. Every graph and function body is searched (the
    spiking model runs the source's nodes inside its time loop)."""
    graphs = list(proto.all_graphs(model))
    nodes = [node for graph in graphs for node in graph.node] + [n for f in model.functions for n in f.node]
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for used in dict.fromkeys(node.input):
            if used:
                readers.setdefault(used, []).append(node)
    makers = {o: node for node in nodes for o in node.output if o}
    shapes = {t.name: list(t.dims) for graph in graphs for t in graph.initializer}
    for node in nodes:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and node.output:
                    shapes[node.output[0]] = list(attribute.t.dims)
    bounds = {}
    for name in names:
        stack, seen, rows = [name], set(), []
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in readers.get(tensor, []):
                if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[1] == tensor:
                    rows.append(_table_rows(node, shapes, makers))
                elif node.op_type in _INDEX_CARRIERS and node.input and node.input[0] == tensor:
                    stack.extend(o for o in node.output[:1] if o)
        if rows:
            bounds[name] = 0 if any(r is None for r in rows) else min(rows)
    return bounds


def _table_rows(gather: onnx.NodeProto, shapes: dict, makers: dict) -> Optional[int]:
    axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    table = gather.input[0]
    for _ in range(16):  # through a dequantization or cast of the constant table
        if table in shapes:
            dims = shapes[table]
            if -len(dims) <= axis < len(dims) and dims[axis] > 0:
                return int(dims[axis])
            return None
        maker = makers.get(table)
        if maker is None or maker.op_type not in _SAME_SHAPE or not maker.input:
            return None
        table = maker.input[0]
    return None
