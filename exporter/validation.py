"""Checks of a source model's numbers and interface that neither onnx's checker nor ONNX Runtime make.

A model can pass both and still be nonsense to convert: a QDQ scale of NaN, +inf, 0 or below
zero; a zero point of 256 stored in the ``int32_data`` of a UINT8 tensor (numpy wraps it to 0
silently); weights holding NaN or inf; a QONNX bit width of 128 or 1e30; a graph output listed
twice; an input dimension of 0; a constant of 10^12 elements. Converted anyway, they gave outputs
whose NaN/inf land elsewhere than the source's, or outputs that cannot run. Each problem names the
node, so the user knows where to look.

A constant that is not a weight may be infinite: the padding mask of an attention,
``Where(mask, 0, -inf)`` added to the scores a ``Softmax`` normalises, which every Hugging Face
style export writes. Such a constant is recognised by where its values go (:func:`_masking_only`);
NaN, and an infinity that reaches a weight, a bias, a quantizer or any other arithmetic, stay
refused.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pmsm.runtime.base import proto
from pmsm.runtime.base.limits import describe_bytes
from pmsm.runtime.qonnx import QONNX_DOMAINS

MAX_QONNX_BITS = 32  # float32 arithmetic of the quantizer: levels beyond 2^24 are not even exact

_INT32_STORED_RANGES = {  # element types the ONNX format stores one per int32_data entry
    TensorProto.INT8: (-(1 << 7), (1 << 7) - 1),
    TensorProto.UINT8: (0, (1 << 8) - 1),
    TensorProto.INT16: (-(1 << 15), (1 << 15) - 1),
    TensorProto.UINT16: (0, (1 << 16) - 1),
    TensorProto.BOOL: (0, 1),
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_QONNX_QUANT_OPS = ("Quant", "IntQuant")


def problems(model: onnx.ModelProto) -> list[str]:
    """Every problem found, one sentence each, naming the node (or the graph input/output)."""
    readers = proto.readers(model)
    found = _interface_problems(model)
    weights = []
    constants = {}
    masks = _Masks(model, readers)
    for tensor, owner in proto.all_tensors(model):
        where = _where(tensor, owner, readers)
        storage = _storage_problem(tensor)
        if storage:
            weights.append(f"{where}: {storage}")
            continue
        value = _value(tensor)
        if value is None:
            continue
        if tensor.data_type in _FLOAT_TYPES and value.size and not np.all(np.isfinite(value)):
            if not masks.allows(value, owner, tensor.name):
                bad = int(value.size - np.count_nonzero(np.isfinite(value)))
                weights.append(f"{where}: tensor '{tensor.name}' holds {bad} NaN or infinite value(s); "
                               "weights must be finite")
        if owner is None or owner.op_type == "Constant":
            constants[tensor.name if owner is None else owner.output[0]] = value
    _constant_scalars(model, constants)
    found += _unknown_attribute_problems(model)
    for node in proto.all_nodes(model):
        found += _quantizer_problems(node, constants)
    return found + weights  # a bad scale is the better first message than "weights must be finite"


def tensor_size_problems(model: onnx.ModelProto, inferred: onnx.ModelProto, budget_bytes: Optional[int]) -> list[str]:
    """Tensors whose statically known size (a symbolic batch counted as 1) exceeds ``budget_bytes``."""
    if budget_bytes is None:
        return []
    makers = {output: node for node in proto.all_nodes(model) for output in node.output}
    graph = inferred.graph
    found = []
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        size = _static_bytes(value)
        if size is not None and size > budget_bytes:
            maker = makers.get(value.name)
            where = proto.node_label(maker) if maker is not None else f"graph input '{value.name}'"
            found.append(f"{where}: tensor '{value.name}' takes {describe_bytes(size)}, more than the "
                         f"{describe_bytes(budget_bytes)} of free memory")
    return found


# ---------------------------------------------------------------------------------------------


def _interface_problems(model: onnx.ModelProto) -> list[str]:
    found = []
    graph = model.graph
    seen = set()
    for value in graph.output:
        if value.name in seen:
            found.append(f"graph output '{value.name}' is listed more than once")
        seen.add(value.name)
    domains = [op.domain or "ai.onnx" for op in model.opset_import]
    for domain in sorted({d for d in domains if domains.count(d) > 1}):
        found.append(f"opset of domain '{domain}' is imported more than once")
    newest = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > newest:
            found.append(f"opset {op.version} of domain 'ai.onnx' is newer than any this onnx release defines "
                         f"({newest})")
    initializers = {tensor.name for tensor in graph.initializer}
    for value in graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 1:
                found.append(f"graph input '{value.name}': dimension {axis} is {dim.dim_value}; "
                             "every dimension must be at least 1")
    return found


def _where(tensor: TensorProto, owner, readers) -> str:
    if owner is not None:
        return proto.node_label(owner)
    users = readers.get(tensor.name, [])
    if not users:
        return f"initializer '{tensor.name}'"
    more = f" and {len(users) - 1} other node(s)" if len(users) > 1 else ""
    return proto.node_label(users[0]) + more


def _storage_problem(tensor: TensorProto) -> Optional[str]:
    """Values stored in ``int32_data`` outside the declared element type (numpy would wrap them)."""
    bounds = _INT32_STORED_RANGES.get(tensor.data_type)
    if bounds is None or not len(tensor.int32_data):
        return None
    values = np.asarray(tensor.int32_data, dtype=np.int64)
    low, high = bounds
    outside = values[(values < low) | (values > high)]
    if outside.size:
        type_name = TensorProto.DataType.Name(tensor.data_type).lower()
        return (f"tensor '{tensor.name}' stores {int(outside[0])} in int32_data, outside the {type_name} range "
                f"{low}..{high}" + (f" ({outside.size} such values)" if outside.size > 1 else ""))
    return None


def _value(tensor: TensorProto) -> Optional[np.ndarray]:
    if tensor.data_type == TensorProto.STRING or (tensor.data_location == TensorProto.EXTERNAL and not tensor.raw_data):
        return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - a tensor whose storage disagrees with its shape: the checker says so
        return None


# Ops that carry a constant's values to their output without arithmetic on them.
_CARRIERS = frozenset({"Identity", "Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose",
                       "Flatten", "Slice", "Concat", "Tile", "Trilu", "Split", "Gather", "Pad"})
# Ops after which a masked (-inf) score has done its work: it becomes 0 (or is never chosen).
_NORMALISERS = frozenset({"Softmax", "LogSoftmax", "Hardmax", "ReduceMax", "ReduceMin", "ReduceLogSumExp",
                          "ArgMax", "ArgMin", "TopK", "MaxPool", "GlobalMaxPool"})
# Ops a masked score may pass on its way to a normaliser: -inf stays -inf (scaled by a positive
# constant, shifted, moved), and the pair of a QDQ only if its scale passed its own check.
_SCORE_PATH = _CARRIERS | {"Add", "Sub", "Mul", "Div", "Where", "Min", "Max", "Clip", "Dropout",
                           "QuantizeLinear", "DequantizeLinear"}


class _Masks:
    """Which non-finite constants are masks, not weights: an infinity (never a NaN) whose every use,
    through constant computations and ops that only move values, is a value operand of ``Where``
    (``masked_fill``) or an ``Add``/``Sub`` whose result reaches a ``Softmax`` (or another
    normaliser) on every path. An infinite clip bound stays refused: a quantizer's bound must be
    a level."""

    def __init__(self, model: onnx.ModelProto, readers: dict):
        self.readers = readers
        self.graph_outputs = {value.name for graph in proto.all_graphs(model) for value in graph.output}
        self.constant = _constant_names(model)

    def allows(self, value: np.ndarray, owner, name: str) -> bool:
        if np.any(np.isnan(value)):
            return False
        if owner is not None and owner.op_type not in ("Constant", "ConstantOfShape"):
            return False
        return _masking_only(owner.output[0] if owner is not None else name, self)


def _masking_only(start: str, masks: _Masks) -> bool:
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in masks.graph_outputs:
            return False
        for node in masks.readers.get(name, []):
            positions = [i for i, used in enumerate(node.input) if used == name]
            op = node.op_type if node.domain in ("", "ai.onnx") else None
            if op in _CARRIERS or all(o in masks.constant for o in node.output if o):
                stack.extend(o for o in node.output if o)
            elif op == "Where" and 0 not in positions:
                continue
            elif op in ("Add", "Sub") and _reaches_normaliser(node.output[0], masks):
                continue
            else:
                return False
    return True


def _reaches_normaliser(start: str, masks: _Masks) -> bool:
    """Whether every path from ``start`` ends in a normaliser, through ops that keep a score a score."""
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        readers = masks.readers.get(name, [])
        if name in masks.graph_outputs or not readers:
            return False
        for node in readers:
            op = node.op_type if node.domain in ("", "ai.onnx", "com.microsoft") else None
            if op in _NORMALISERS:
                continue
            if op not in _SCORE_PATH:
                return False
            stack.extend(o for o in node.output[:1] if o)
    return True


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from constants alone: initializers, ``Constant`` outputs and the outputs of
    nodes (other than random ones) whose inputs are all such tensors, in any node order."""
    constant = {tensor.name for graph in proto.all_graphs(model) for tensor in graph.initializer}
    constant |= {sparse.values.name for graph in proto.all_graphs(model) for sparse in graph.sparse_initializer}
    waiting: dict[str, list[int]] = {}
    pending, nodes, ready = [], [], []
    for node in proto.all_nodes(model):
        if node.op_type.startswith("Random") or not node.output or (not node.input and node.op_type != "Constant"):
            continue
        needed = {name for name in node.input if name and name not in constant}
        index = len(nodes)
        nodes.append(node)
        pending.append(len(needed))
        for name in needed:
            waiting.setdefault(name, []).append(index)
        if not needed:
            ready.append(index)
    while ready:
        for name in nodes[ready.pop()].output:
            if name and name not in constant:
                constant.add(name)
                for index in waiting.get(name, ()):
                    pending[index] -= 1
                    if not pending[index]:
                        ready.append(index)
    return constant


def _constant_scalars(model: onnx.ModelProto, constants: dict) -> None:
    """Values of ``Constant`` nodes written with ``value_float(s)``/``value_int(s)`` attributes."""
    for node in proto.all_nodes(model):
        if node.op_type != "Constant" or not node.output:
            continue
        for attribute in node.attribute:
            if attribute.ref_attr_name:
                continue  # inside a function: the value is the caller's attribute (a spiking model's body)
            if attribute.name in ("value_float", "value_int"):
                constants[node.output[0]] = np.asarray(onnx.helper.get_attribute_value(attribute))
            elif attribute.name in ("value_floats", "value_ints"):
                constants[node.output[0]] = np.asarray(list(onnx.helper.get_attribute_value(attribute)))


def _unknown_attribute_problems(model: onnx.ModelProto) -> list[str]:
    """Attributes that a standard op's schema does not define. onnx's checker refuses them
    ("Unrecognized attribute"), except on the few schemas that skip the check: in onnx 1.x at
    opset 20, LayerNormalization alone (found by trying every schema), whose unknown attribute
    then reached the output unnoticed. The schema is the one of the model's ``ai.onnx`` opset;
    attributes inside model-local functions that refer to the caller's are the caller's."""
    opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    version = opsets.get("ai.onnx")
    if version is None:
        return []
    found = []
    for graph in proto.all_graphs(model):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                schema = onnx.defs.get_schema(node.op_type, version, "")
            except onnx.defs.SchemaError:
                continue  # an op the checker has refused already
            for attribute in node.attribute:
                if attribute.name not in schema.attributes and not attribute.ref_attr_name:
                    known = ", ".join(sorted(schema.attributes)) or "none"
                    found.append(f"node '{node.name}' ({node.op_type}): unrecognized attribute "
                                 f"'{attribute.name}'; opset {version} defines {known}")
    return found


def _quantizer_problems(node: onnx.NodeProto, constants: dict) -> list[str]:
    def constant(index: int) -> Optional[np.ndarray]:
        return constants.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    where = proto.node_label(node)
    found = []
    qdq = node.op_type in _QDQ_OPS and node.domain in ("", "ai.onnx", "com.microsoft")
    qonnx = node.domain in QONNX_DOMAINS and node.op_type in _QONNX_QUANT_OPS + ("BipolarQuant",)
    if not (qdq or qonnx):
        return found
    scale = constant(1)
    if scale is not None and scale.dtype.kind == "f":
        problem = _not_finite_positive(scale)
        if problem:
            found.append(f"{where}: scale '{node.input[1]}' {problem}; scales must be finite and positive")
    if qonnx and node.op_type in _QONNX_QUANT_OPS:
        zero_point, bits = constant(2), constant(3)
        if zero_point is not None and zero_point.dtype.kind == "f" and not np.all(np.isfinite(zero_point)):
            found.append(f"{where}: zero point '{node.input[2]}' is not finite")
        if bits is not None:
            problem = _bad_bit_width(bits)
            if problem:
                found.append(f"{where}: bit width '{node.input[3]}' {problem}")
        for attribute in node.attribute:
            if attribute.name in ("signed", "narrow") and attribute.i not in (0, 1):
                found.append(f"{where}: attribute '{attribute.name}' is {attribute.i}; it must be 0 or 1")
    return found


def _not_finite_positive(values: np.ndarray) -> Optional[str]:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not flat.size:
        return "is empty"
    for bad, text in ((np.isnan(flat), "NaN"), (np.isinf(flat), "infinite"), (flat <= 0, "zero or negative")):
        if np.any(bad):
            # plain floats: numpy 2 writes np.float64(inf) where numpy 1 wrote inf
            value = float(flat[np.argmax(bad)])
            return f"holds a {text} value ({value!r})" if flat.size > 1 else f"is {text} ({value!r})"
    return None


def _bad_bit_width(bits: np.ndarray) -> Optional[str]:
    flat = np.asarray(bits, dtype=np.float64).reshape(-1)
    for value in flat:
        if not np.isfinite(value) or value != np.round(value) or not 1 <= value <= MAX_QONNX_BITS:
            return f"is {value:g}; it must be a whole number from 1 to {MAX_QONNX_BITS}"
    return None


def _static_bytes(value: onnx.ValueInfoProto) -> Optional[int]:
    if not value.type.HasField("tensor_type"):
        return None
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    elements = 1
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            elements *= max(dim.dim_value, 0)
        elif axis:
            return None  # an unknown size other than the batch's (counted as 1)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return elements * itemsize
