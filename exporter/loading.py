"""Reading a source ONNX file, with errors a user can act on."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from pmsm.errors import BadInputError

MAX_IR_VERSION = 11  # onnxruntime 1.23 refuses newer files


@dataclass(frozen=True)
class SourceModel:
    path: str
    sha256: str
    model: onnx.ModelProto


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(path: str) -> SourceModel:
    """Load an ONNX file with its external data; every failure is a BadInputError naming the file."""
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: not a file")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        reason = _first_line(error) or "protobuf parse failed"
        raise BadInputError(f"{path}: not a readable ONNX model ({reason})") from None
    if not model.graph.node and not model.graph.input:
        raise BadInputError(f"{path}: not an ONNX model (empty or not an ONNX protobuf)")
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as error:
        raise BadInputError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
    if model.ir_version > MAX_IR_VERSION:
        # Down-converting the IR version is harmless for the ops we read; say nothing.
        model.ir_version = MAX_IR_VERSION
    return SourceModel(path=path, sha256=file_sha256(path), model=model)


def _load_external_data(model: onnx.ModelProto, path: str) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    base = os.path.dirname(os.path.abspath(path))
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            if not os.path.isfile(os.path.join(base, location)):
                raise BadInputError(
                    f"{path}: tensor '{tensor.name}' lives in external data file '{location}', "
                    f"which is missing next to the model; copy it to {base}"
                )
    try:
        load_external_data_for_model(model, base)
    except (OSError, ValueError) as error:
        raise BadInputError(f"{path}: cannot read external data: {_first_line(error)}") from None


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
