"""Reading a source ONNX file, with errors a user can act on.

Nothing is converted unless the source is a model ONNX Runtime itself loads and runs: the file
fits the size limits (:mod:`pmsm.runtime.base.limits`), its external data stays inside the model's folder,
onnx's full checker (with strict shape inference) accepts it, its numbers are sane
(:mod:`pmsm.exporter.validation`), and an ONNX Runtime session of it, built in a child process
within ``--max-load-seconds``, runs one sample. Every failure is one ``BadInputError`` line
naming the file and, where there is one, the node.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Optional

import onnx
from google.protobuf.message import DecodeError

from pmsm.exporter import validation
from pmsm.runtime.base import limits as run_limits
from pmsm.runtime.base import proto
from pmsm.runtime.base.errors import BadInputError, first_line, one_line
from pmsm.runtime.base.isolation import call_isolated
from pmsm.runtime.base.memory import available_bytes
from pmsm.runtime.execute import AnnRunner as Runner
from pmsm.runtime.inputs import probe_batch, specs_of, unfeedable

MAX_IR_VERSION = 11  # onnxruntime 1.23 refuses newer files
PROTOBUF_LIMIT = (1 << 31) - 1  # a ModelProto larger than this cannot be serialized in memory


@dataclass(frozen=True)
class ValidatedSource:
    path: str
    sha256: str
    model: onnx.ModelProto
    notes: tuple[str, ...] = field(default=())  # what was repaired on the way in, for the user to read


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(path: str) -> ValidatedSource:
    """Load and validate an ONNX file with its external data (see the module's text)."""
    limits = run_limits.current()
    model = read_model(path)
    run_limits.check_model_size(model, path, limits)
    _load_external_data(model, path)
    notes: list[str] = []
    inferred = _check_structure(model, path, notes)
    _check_values(model, inferred, path)
    _check_inputs(model, path)
    if model.ir_version > MAX_IR_VERSION:
        # Down-converting the IR version is harmless for the ops we read; say nothing.
        model.ir_version = MAX_IR_VERSION
    _check_data_input_shape(model, path)
    _check_runs_on_onnxruntime(model, path, limits)
    return ValidatedSource(path=path, sha256=file_sha256(path), model=model, notes=tuple(notes))


def read_model(path: str) -> onnx.ModelProto:
    """The ModelProto of ``path`` without its external data; BadInputError when it is not one."""
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: not a file")
    run_limits.check_file_size(path, os.path.getsize(path))
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        reason = first_line(error) or "protobuf parse failed"
        raise BadInputError(f"{path}: not a readable ONNX model ({reason})") from None
    if not model.graph.node and not model.graph.input:
        raise BadInputError(f"{path}: not an ONNX model (empty or not an ONNX protobuf)")
    return model


def external_data_files(model: onnx.ModelProto, path: str) -> list[str]:
    """The files (real paths) ``model``'s tensors keep their data in, checked to lie inside the
    model's folder; BadInputError for a location that escapes it or is not a readable file."""
    from onnx.external_data_helper import uses_external_data

    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    files = []
    for tensor, _owner in proto.all_tensors(model):
        if uses_external_data(tensor):
            files.append(_confined_location(tensor, path, folder))
    return sorted(set(files))


def _confined_location(tensor: onnx.TensorProto, path: str, folder: str) -> str:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: tensor '{tensor.name}' keeps its data in external file '{location}'"
    rule = f"external data must be a regular file inside the model's folder {folder}"
    if not location:
        raise BadInputError(f"{path}: tensor '{tensor.name}' declares external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or os.path.splitdrive(location)[0]:
        raise BadInputError(f"{where}, an absolute path; {rule}")
    if ".." in location.replace("\\", "/").split("/"):
        raise BadInputError(f"{where}, which climbs out with '..'; {rule}")
    full = os.path.join(folder, location)
    if os.path.islink(full) or os.path.realpath(full) != os.path.normpath(full):
        raise BadInputError(f"{where}, reached through a symbolic link; {rule}")
    if not os.path.lexists(full):
        raise BadInputError(f"{where}, which is missing next to the model; copy it to {folder}")
    if not os.path.isfile(full):
        raise BadInputError(f"{where}, which is not a regular file; {rule}")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise BadInputError(f"{where}: offset or length is not a whole number") from None
    size = os.path.getsize(full)
    needed = proto.declared_bytes(tensor)
    stored = (size - offset) if length is None else length
    if offset < 0 or stored < 0 or offset + stored > size:
        raise BadInputError(f"{where}: bytes {offset}..{offset + stored} asked for, the file has {size}")
    if stored < needed:
        raise BadInputError(f"{where}: {stored} bytes stored, its shape and type need {needed}")
    return full


def _load_external_data(model: onnx.ModelProto, path: str) -> None:
    from onnx.external_data_helper import load_external_data_for_model

    if not external_data_files(model, path):
        return
    try:
        load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as error:  # noqa: BLE001 - onnx raises OSError, ValueError or its ValidationError
        raise BadInputError(f"{path}: cannot read external data: {one_line(error)}") from None


UNSORTED = "topologically sorted"  # in onnx's checker message for nodes out of order


def _check_structure(model: onnx.ModelProto, path: str, notes: Optional[list] = None) -> Optional[onnx.ModelProto]:
    """onnx's full check (the checker, then strict shape and type inference); the inferred model,
    or None for a model too large to infer in memory (then the file is checked in place).

    Nodes out of topological order, which ONNX Runtime runs as they are (AMD Quark writes such
    graphs), are sorted in ``model`` and the check runs again; ``notes`` says so. Anything else
    the checker finds, before or after the sort, is refused."""
    try:
        return _full_check(model, path)
    except BadInputError as error:
        if UNSORTED not in str(error) or model.ByteSize() > PROTOBUF_LIMIT:
            raise
        if not proto.sort_topologically(model.graph):
            raise
    inferred = _full_check(model, path)
    if notes is not None:
        notes.append(f"{path}: its nodes were not in topological order (ONNX Runtime runs them as written, "
                     "onnx's checker refuses them); sorted before converting")
    return inferred


def _full_check(model: onnx.ModelProto, path: str) -> Optional[onnx.ModelProto]:
    try:
        if model.ByteSize() > PROTOBUF_LIMIT:
            onnx.checker.check_model(path, full_check=True)
            return None
        onnx.checker.check_model(model, full_check=False)
        return onnx.shape_inference.infer_shapes(_without_weight_data(model), check_type=True, strict_mode=True)
    except Exception as error:  # noqa: BLE001 - ValidationError, InferenceError and friends
        raise BadInputError(f"{path}: invalid ONNX model: {one_line(error)}") from None


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their type and shape but not their bytes: shape
    inference reads the values of small tensors only (shapes, axes), and copying the weights into
    onnx's C++ side and back cost half a second for a 60 MB VGG-16 (the checker has seen them)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        if proto.declared_elements(tensor) > 4096:
            data_type, dims, name = tensor.data_type, list(tensor.dims), tensor.name
            tensor.Clear()
            tensor.data_type, tensor.name = data_type, name
            tensor.dims.extend(dims)
    return skeleton


def _check_values(model: onnx.ModelProto, inferred: Optional[onnx.ModelProto], path: str) -> None:
    found = validation.problems(model)
    if inferred is not None:
        found += validation.tensor_size_problems(model, inferred, available_bytes())
    if found:
        more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
        raise BadInputError(f"{path}: {found[0]}{more}")


def _check_inputs(model: onnx.ModelProto, path: str) -> None:
    """Every data input is one samples can be fed to (numbers or bool, with a batch axis)."""
    specs = specs_of(model, path)
    if not specs:
        raise BadInputError(f"{path}: the model has no data input")
    for name, why in unfeedable(specs):
        raise BadInputError(f"{path}: input '{name}' {why}")


def _check_data_input_shape(model: onnx.ModelProto, path: str) -> None:
    """The data input must declare a shape a real sample can take: a batch axis first (fixed or
    symbolic), then fixed sizes. A rank-0 input has no batch axis, and a symbolic size after the
    batch leaves the sample's shape unknown: no probe can be built to run the source before
    converting it, and the targets (neurons per layer, NIR, Lava) need the sizes. Both converted
    before into models that ONNX Runtime could not run on the source's documented input. Integer
    inputs (token ids, attention masks) may keep a symbolic sequence axis: a text model takes
    sequences of any length, and ``--verify --data`` supplies them."""
    weights = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        if value.name in weights or not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        shown = "[" + ", ".join(map(str, dims)) + "]"
        if not dims:
            raise BadInputError(f"{path}: data input '{value.name}' is declared of rank 0 (a scalar): no sample "
                                "of a network can take it; declare its shape with the batch axis first, e.g. "
                                "[N, 1, 8, 8]")
        integer = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).kind in "iub" if tensor.elem_type else False
        unknown = [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]
        if unknown and not integer:  # token ids and masks may keep a symbolic sequence axis: --data gives it
            raise BadInputError(f"{path}: data input '{value.name}' declares its shape {shown} with dimension "
                                f"{unknown[0]} of unknown size: only the batch (the first) may be symbolic; "
                                "export with a fixed sample shape (dynamic axes for the batch only)")


def _check_runs_on_onnxruntime(model: onnx.ModelProto, path: str, limits: run_limits.Limits) -> None:
    def load_and_run_one_sample() -> None:
        runner = Runner(model)
        if all(spec.sample_dims is not None for spec in runner.inputs):
            runner.run(probe_batch(model, runner.inputs, samples=1))

    call_isolated(load_and_run_one_sample, limits.max_load_seconds, path,
                  "ONNX Runtime loading and running the model",
                  f"raise the limit with {run_limits.flag('max_load_seconds')}")
