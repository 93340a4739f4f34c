"""Recognise activation quantizers and replace each rounding core with a PMSM neuron.

Only the rounding core (shift, rounding, clip) becomes ``ai.pmsm::MultiSpikeNeuron``; the source's
own pre-scaling and de-quantization stay as the standard ops it used, so that at T = 1 the spiking
graph performs exactly the source's float arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm.runtime.base.errors import BadInputError
from pmsm.exporter.graph import (
    add_node,
    computed_from_constants,
    constant_value,
    producer,
    replace_uses,
    scalar_value,
    sole_consumer,
    split_constant_operand,
)
from pmsm.runtime.neuron import NeuronParams
from pmsm.runtime.qonnx import QONNX_DOMAINS, qonnx_int_range
from pmsm.runtime.schema import NEURON_DOMAIN, NEURON_OP, TIMESTEPS_INPUT


INTEGER_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-(2**15), 2**15 - 1),
    np.dtype(np.uint16): (0, 2**16 - 1),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}
ONNX_INT4 = {onnx.TensorProto.INT4: (-8, 7), onnx.TensorProto.UINT4: (0, 15)}


QDQ_HINT = ("integer operators (QOperator format) requantize inside their kernels, where no neuron can take the "
            "rounding; quantize with onnxruntime's quant_format=QuantFormat.QDQ instead")


@dataclass(frozen=True)
class NeuronRecord:
    """One activation quantizer that became a neuron layer."""

    name: str
    producer: str  # which quantizer pattern it was: "floor-chain", "qdq", "qcdq", "qonnx", "bipolar"
    params: NeuronParams
    source_nodes: tuple[str, ...] = field(default=())
    entry: str = ""  # the tensor entering the quantizer in the rewritten graph
    exits: tuple[tuple[str, str], ...] = ()  # (tensor leaving it in the source, the one taking its place)


class QuantizerError(BadInputError):
    """A quantizer was recognised but cannot be expressed as PMSM neurons exactly."""

    def __init__(self, node: gs.Node, reason: str):
        self.node_name, self.op, self.reason = node.name, node.op, reason
        super().__init__(f"node '{node.name}' ({node.op}): {reason}")


def timesteps_input(graph: gs.Graph) -> gs.Variable:
    for tensor in graph.inputs:
        if tensor.name == TIMESTEPS_INPUT:
            return tensor
    variable = gs.Variable(TIMESTEPS_INPUT, dtype=np.int64, shape=[])
    graph.inputs.append(variable)
    return variable


def neuron_name(graph: gs.Graph, node: gs.Node, suffix: str = "") -> str:
    """A name for the neuron replacing ``node``: its name (its output's when unnamed), unique among
    the neurons, since records and spike recordings are keyed by it."""
    stem = (node.name or node.outputs[0].name) + suffix
    taken = {n.name for n in graph.nodes if n.op == NEURON_OP and n.domain == NEURON_DOMAIN}
    name, count = stem, 1
    while name in taken:
        count += 1
        name = f"{stem}_{count}"
    return name


def insert_neuron(graph: gs.Graph, z: gs.Tensor, params: NeuronParams, name: str) -> gs.Variable:
    return add_node(
        graph, NEURON_OP, [z, timesteps_input(graph)], name,
        attrs={"lo": params.lo, "hi": params.hi, "v_init": float(params.v_init), "rounding": params.rounding},
        domain=NEURON_DOMAIN,
    )


class _Exit:
    """A tensor leaving a quantizer, remembered before the rewrite so that the tensor taking its
    place can be found after it (readers are rewired; a graph output keeps its name)."""

    def __init__(self, graph: gs.Graph, tensor: gs.Tensor):
        self.name = tensor.name
        self.keeps_name = tensor in graph.outputs
        self.reader = next(((node, i) for node in tensor.outputs for i, t in enumerate(node.inputs) if t is tensor),
                            None)

    def pair(self) -> tuple[str, str] | None:
        if self.keeps_name:
            return self.name, self.name
        if self.reader is None:
            return None
        node, index = self.reader
        return self.name, node.inputs[index].name


def _exits(*exits: _Exit) -> tuple[tuple[str, str], ...]:
    return tuple(p for p in (e.pair() for e in exits) if p is not None)


def _collect(problems: list | None, records: list, rewrite, graph: gs.Graph, node: gs.Node) -> None:
    """Run one quantizer's rewrite; with a ``problems`` list, record a refusal and go on."""
    try:
        records.extend(rewrite(graph, node))
    except QuantizerError as error:
        if problems is None:
            raise
        problems.append((error.node_name, error.op, error.reason))


# --- PyTorch PMSM / QCFS layers and hand-written clip(floor(...)) quantizers -----------------


def rewrite_rounding_chains(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """``[Add(z, phi)] -> Floor|Round -> (Clip | scalar Mul/Div)*`` on activations.

    The clips may sit before or after the de-quantizing scalar ``Div``/``Mul``; their bounds are
    converted to level units and must land exactly on integer levels.
    """
    records = []
    for rounding_node in [n for n in graph.nodes if n.op in ("Floor", "Round")]:
        if not computed_from_constants(rounding_node.inputs[0]):
            _collect(problems, records, _rewrite_rounding_chain, graph, rounding_node)
    graph.cleanup()
    return records


def _rewrite_rounding_chain(graph: gs.Graph, rounding_node: gs.Node) -> list[NeuronRecord]:
    rounding = "floor" if rounding_node.op == "Floor" else "half_even"
    z, v_init, shift_node = _split_shift(rounding_node.inputs[0], rounding)
    lo, hi, clips, end = _walk_level_bounds(graph, rounding_node)
    leaving = _Exit(graph, end)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        side = "lower" if not math.isfinite(lo) else "upper"
        raise QuantizerError(rounding_node, f"quantizer has no {side} clip bound: a neuron needs a finite spike "
                             "count per step; add a Clip after the rounding")
    if not lo <= 0 <= hi:
        raise QuantizerError(rounding_node, f"clip bounds [{lo}, {hi}] in levels exclude 0; "
                             "PMSM neurons need lo <= 0 <= hi")
    params = NeuronParams(lo=int(lo), hi=int(hi), v_init=v_init, rounding=rounding)
    name = neuron_name(graph, rounding_node)
    spikes = insert_neuron(graph, z, params, name)
    replace_uses(graph, rounding_node.outputs[0], spikes)
    for clip in clips:
        replace_uses(graph, clip.outputs[0], clip.inputs[0])
        clip.outputs.clear()
    rounding_node.outputs.clear()
    sources = [n.name for n in (shift_node, rounding_node, *clips) if n is not None]
    return [NeuronRecord(name=name, producer="floor-chain", params=params, source_nodes=tuple(sources),
                         entry=z.name, exits=_exits(leaving))]


def _split_shift(u: gs.Tensor, rounding: str):
    """``u = z + phi`` (or ``z - c``) with a scalar constant: the neuron's initial membrane.

    Only a rounding offset is taken (``0 <= phi < 1`` before a floor, ``|phi| <= 0.5`` before a
    round): it belongs to the first timestep alone. Any other constant is a bias, added at every
    timestep, so its Add stays in ``z``. Either way T = 1 computes ``R(z + phi)`` exactly.
    """
    node = producer(u)
    if node is not None and node.op in ("Add", "Sub") and len(u.outputs) == 1:
        split = split_constant_operand(node)
        if split is not None and np.asarray(split[1]).size == 1:
            z, constant, index = split
            value = float(np.float32(np.asarray(constant).reshape(())))
            if node.op == "Sub":
                if index != 1:
                    return u, 0.0, None
                value = -value  # z - c == z + (-c) exactly in IEEE arithmetic
            if _rounds_zero_to_zero(value, rounding):
                return z, value, node
    return u, 0.0, None


def _walk_level_bounds(graph: gs.Graph, rounding_node: gs.Node):
    """Follow the rounding output through clips and scalar scalings; return the bounds in levels,
    the clips, and the tensor at the end of the walk."""
    lo, hi = -math.inf, math.inf
    clips: list[gs.Node] = []
    scalings: list[tuple[str, np.float32]] = []  # ops that map a level to the value at this point
    tensor = rounding_node.outputs[0]
    while True:
        node = sole_consumer(tensor, graph)
        if node is None:
            break
        bounds = _clip_bounds(node)
        if bounds is not None:
            low, high = bounds
            try:
                low_level = _to_levels(low, scalings, node, "lower") if low is not None else -math.inf
                high_level = _to_levels(high, scalings, node, "upper") if high is not None else math.inf
            except QuantizerError:
                if math.isfinite(lo) and math.isfinite(hi):
                    break  # a later clip off the level grid (a ReLU6 of the next layer): a standard op
                raise
            lo, hi = max(lo, low_level), min(hi, high_level)
            clips.append(node)
        elif node.op in ("Mul", "Div") and len(scalings) < 2:
            split = split_constant_operand(node)
            if split is None or np.asarray(split[1]).size != 1 or (node.op == "Div" and split[2] != 1):
                break
            factor = np.float32(np.asarray(split[1]).reshape(()))
            if not factor > 0:
                break
            scalings.append((node.op, factor))
        else:
            break
        tensor = node.outputs[0]
    return lo, hi, clips, tensor


def _clip_bounds(node: gs.Node):
    """(low, high) of a clipping node with constant bounds (None = unbounded side), else None."""
    if node.op == "Relu":
        return 0.0, None
    if node.op == "Clip":
        if "min" in node.attrs or "max" in node.attrs:  # opset < 11
            return node.attrs.get("min"), node.attrs.get("max")
        low = scalar_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
        high = scalar_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        for index, value in ((1, low), (2, high)):
            if len(node.inputs) > index and node.inputs[index].name and value is None:
                return None  # a bound computed at run time
        return low, high
    if node.op in ("Max", "Min") and len(node.inputs) == 2:
        split = split_constant_operand(node)
        if split is None or np.asarray(split[1]).size != 1:
            return None
        value = float(np.asarray(split[1]).reshape(()))
        return (value, None) if node.op == "Max" else (None, value)
    return None


def _to_levels(bound: float, scalings, node: gs.Node, side: str) -> float:
    """The integer level whose de-quantized value is exactly ``bound`` after ``scalings``."""
    scale = 1.0
    for op, factor in scalings:
        scale = scale * float(factor) if op == "Mul" else scale / float(factor)
    level = bound / scale
    nearest = round(level)
    value = np.float32(nearest)
    for op, factor in scalings:
        value = np.float32(value * factor) if op == "Mul" else np.float32(value / factor)
    if abs(level - nearest) > 1e-4 or value != np.float32(bound):
        raise QuantizerError(node, f"{side} clip bound {bound} is not an exact quantization level "
                             f"(it is {level:g} levels); a neuron can only clip at whole levels")
    return float(nearest)


# --- QDQ / QCDQ (onnxruntime quantize_static, torch, Brevitas QCDQ) ---------------------------


def rewrite_qdq(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """``QuantizeLinear(x, s, zp) -> [Clip] -> DequantizeLinear`` on an activation becomes
    ``Div(x, s) -> neuron(half_even, lo=qmin-zp, hi=qmax-zp) -> Mul(s)``.

    ``QuantizeLinear`` computes ``saturate(round(x / s) + zp)`` and ``DequantizeLinear``
    ``(q - zp) * s``; the neuron's output is ``q - zp`` itself, so the de-quantization is exact.
    """
    records = []
    for quantize in [n for n in graph.nodes if n.op == "QuantizeLinear"]:
        if not computed_from_constants(quantize.inputs[0]):
            _collect(problems, records, _rewrite_qdq_pair, graph, quantize)
    graph.cleanup()
    return records


def _rewrite_qdq_pair(graph: gs.Graph, quantize: gs.Node) -> list[NeuronRecord]:
    records = []
    x = quantize.inputs[0]
    scale, zero_point, qmin, qmax = _qdq_parameters(quantize)
    if quantize.outputs[0] in graph.outputs:
        raise QuantizerError(quantize, "its integer output is a graph output; a spiking network outputs "
                             "de-quantized values")
    branches = []
    for consumer in list(quantize.outputs[0].outputs):
        low, high, dequantize, clip = qmin, qmax, consumer, None
        if consumer.op == "Clip":
            bounds = _clip_bounds(consumer)
            following = sole_consumer(consumer.outputs[0], graph)
            if bounds is None or following is None or following.op != "DequantizeLinear":
                raise QuantizerError(consumer, "Clip between QuantizeLinear and DequantizeLinear must have "
                                     "constant bounds and feed one DequantizeLinear")
            low = max(qmin, bounds[0]) if bounds[0] is not None else qmin
            high = min(qmax, bounds[1]) if bounds[1] is not None else qmax
            clip, dequantize = consumer, following
        if dequantize.op != "DequantizeLinear":
            raise QuantizerError(dequantize, f"reads the output of QuantizeLinear '{quantize.name}': {QDQ_HINT}")
        _check_same_quantization(quantize, dequantize, scale, zero_point)
        lo, hi = int(low) - zero_point, int(high) - zero_point
        if not lo <= 0 <= hi:
            raise QuantizerError(quantize, f"zero point {zero_point} lies outside the integer range "
                                 f"[{low}, {high}]: the quantizer cannot output 0")
        branches.append((lo, hi, clip, dequantize))
    if not branches:
        return []
    scale_operand = _broadcastable_scale(quantize, x, scale)
    z = add_node(graph, "Div", [x, scale_operand], f"{neuron_name(graph, quantize)}/pre_scale")
    neurons: dict[tuple[int, int], tuple[gs.Variable, int]] = {}  # bounds -> (spikes, index of the record)
    for lo, hi, clip, dequantize in branches:
        if (lo, hi) not in neurons:
            params = NeuronParams(lo=lo, hi=hi, v_init=0.0, rounding="half_even")
            name = neuron_name(graph, quantize, "" if not neurons else f"/{lo}_{hi}")
            neurons[(lo, hi)] = insert_neuron(graph, z, params, name), len(records)
            records.append(NeuronRecord(name=name, producer="qcdq" if clip is not None else "qdq",
                                        params=params, source_nodes=(quantize.name, dequantize.name), entry=x.name))
        label = dequantize.name or dequantize.outputs[0].name
        leaving = _Exit(graph, dequantize.outputs[0])
        dequant_scale = scale_operand if scale_operand is not quantize.inputs[1] else dequantize.inputs[1]
        spikes, index = neurons[(lo, hi)]
        restored = add_node(graph, "Mul", [spikes, dequant_scale], f"{label}/dequant")
        replace_uses(graph, dequantize.outputs[0], restored)
        dequantize.outputs.clear()
        records[index] = replace(records[index], exits=records[index].exits + _exits(leaving))
    quantize.outputs.clear()
    return records


def _broadcastable_scale(quantize: gs.Node, x: gs.Tensor, scale: np.ndarray) -> gs.Tensor:
    """The scale operand for ``Div(x, scale)``: QuantizeLinear's own for one scale per tensor; for
    one scale per channel along ``axis``, the same values shaped to broadcast against ``x``."""
    if scale.size == 1:
        return quantize.inputs[1]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None:
        raise QuantizerError(quantize, "one scale per channel, but the rank of its input is unknown "
                             "(run ONNX shape inference on the model)")
    axis = int(quantize.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    shape = [1] * rank
    shape[axis] = scale.size
    return gs.Constant(f"{quantize.name or x.name}/scale_per_channel", np.asarray(scale, np.float32).reshape(shape))


def _qdq_parameters(quantize: gs.Node):
    scale = constant_value(quantize.inputs[1])
    if scale is None:
        raise QuantizerError(quantize, "scale is computed at run time; only constant scales are supported")
    if scale.ndim > 1 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise QuantizerError(quantize, "scale must be positive and finite, one per tensor or one per channel")
    if "block_size" in quantize.attrs and int(quantize.attrs["block_size"]):
        raise QuantizerError(quantize, "blocked quantization (block_size) of activations is not supported")
    zero_point_tensor = quantize.inputs[2] if len(quantize.inputs) > 2 and quantize.inputs[2].name else None
    if zero_point_tensor is None:
        dtype = quantize.attrs.get("output_dtype", onnx.TensorProto.UINT8) or onnx.TensorProto.UINT8
        zero_point, qrange = 0, _range_of_onnx_type(quantize, dtype)
    else:
        values = constant_value(zero_point_tensor)
        if values is None or values.size not in (1, scale.size) or np.unique(values).size != 1:
            raise QuantizerError(quantize, "zero point must be constant and the same for every channel "
                                 "(a neuron has one spike range)")
        zero_point = int(values.reshape(-1)[0])
        qrange = INTEGER_RANGES.get(np.dtype(values.dtype))
        if qrange is None:
            qrange = _range_of_onnx_type(quantize, getattr(zero_point_tensor, "export_dtype", None))
    return scale, zero_point, qrange[0], qrange[1]


def _range_of_onnx_type(node: gs.Node, dtype):
    if dtype in ONNX_INT4:
        return ONNX_INT4[dtype]
    try:
        return INTEGER_RANGES[np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))]
    except (KeyError, TypeError, ValueError):
        raise QuantizerError(node, f"unsupported quantized type {dtype}") from None


def _check_same_quantization(quantize: gs.Node, dequantize: gs.Node, scale, zero_point: int) -> None:
    other_scale = constant_value(dequantize.inputs[1])
    other_zp = constant_value(dequantize.inputs[2]) if len(dequantize.inputs) > 2 and dequantize.inputs[2].name else 0
    if other_scale is None or not np.array_equal(np.asarray(other_scale, np.float32).reshape(-1),
                                                 np.asarray(scale, np.float32).reshape(-1)):
        raise QuantizerError(dequantize, f"scale differs from its QuantizeLinear '{quantize.name}'")
    if int(dequantize.attrs.get("axis", 1)) != int(quantize.attrs.get("axis", 1)) and np.size(scale) > 1:
        raise QuantizerError(dequantize, f"channel axis differs from its QuantizeLinear '{quantize.name}'")
    if other_zp is None or np.unique(np.asarray(other_zp)).size != 1 or int(np.asarray(other_zp).reshape(-1)[0]) != zero_point:
        raise QuantizerError(dequantize, f"zero point differs from its QuantizeLinear '{quantize.name}'")


# --- QONNX Quant (Brevitas export_qonnx, FINN) -------------------------------------------------


def rewrite_qonnx(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """``Quant(x, scale, zeropt, bitwidth)`` on an activation:
    ``Div(x, scale) [-> Add(zeropt)] -> neuron -> [Sub(zeropt) ->] Mul(scale)``."""
    records = []
    for node in [n for n in graph.nodes if n.domain in QONNX_DOMAINS and n.op in ("Quant", "IntQuant")]:
        if not computed_from_constants(node.inputs[0]):
            _collect(problems, records, _rewrite_qonnx_quant, graph, node)
    graph.cleanup()
    return records


def _rewrite_qonnx_quant(graph: gs.Graph, node: gs.Node) -> list[NeuronRecord]:
    x = node.inputs[0]
    scale, zeropt, bitwidth = (constant_value(t) for t in node.inputs[1:4])
    if scale is None or zeropt is None or bitwidth is None:
        raise QuantizerError(node, "scale, zero point and bit width must be constants")
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0) or not np.all(np.isfinite(zeropt)):
        raise QuantizerError(node, "scale must be positive and finite, the zero point finite")
    mode = str(node.attrs.get("rounding_mode", "ROUND")).upper()
    if mode not in ("ROUND", "HALF_EVEN", "FLOOR"):
        raise QuantizerError(node, f"rounding_mode {mode} has no PMSM neuron (ROUND and FLOOR do)")
    if bitwidth.size != 1:
        raise QuantizerError(node, "bit width must be one constant")
    try:
        low, high = qonnx_int_range(bitwidth.reshape(()), bool(node.attrs.get("signed", 1)),
                                    bool(node.attrs.get("narrow", 0)))
    except ValueError as error:
        raise QuantizerError(node, str(error)) from None
    qmin, qmax = int(low), int(high)
    if not qmin <= 0 <= qmax:
        raise QuantizerError(node, f"integer range [{qmin}, {qmax}] excludes 0")
    shifted = bool(np.any(zeropt != 0))
    name = neuron_name(graph, node)
    leaving = _Exit(graph, node.outputs[0])
    z = add_node(graph, "Div", [x, node.inputs[1]], f"{name}/pre_scale")
    if shifted:  # QONNX adds the zero point before rounding (per channel too): keep that arithmetic
        z = add_node(graph, "Add", [z, node.inputs[2]], f"{name}/zero_point")
    params = NeuronParams(lo=qmin, hi=qmax, v_init=0.0, rounding="floor" if mode == "FLOOR" else "half_even")
    spikes = insert_neuron(graph, z, params, name)
    if shifted:
        spikes = add_node(graph, "Sub", [spikes, node.inputs[2]], f"{name}/zero_point_back")
    restored = add_node(graph, "Mul", [spikes, node.inputs[1]], f"{name}/dequant")
    replace_uses(graph, node.outputs[0], restored)
    node.outputs.clear()
    return [NeuronRecord(name=name, producer="qonnx", params=params, source_nodes=(node.name,), entry=x.name,
                         exits=_exits(leaving))]


def rewrite_qonnx_bipolar(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """``BipolarQuant(x, scale)`` (``+scale`` where ``x / scale >= 0``, else ``-scale``) on an activation:
    ``Div(x, scale) -> neuron(floor, lo=-1, hi=0) -> 2 s + 1 -> Mul(scale)``.

    The neuron's ``floor(0 + x / scale)`` clipped to ``[-1, 0]`` is ``-1`` exactly where
    ``x / scale < 0`` (``-0.0`` included on the source's side, as ``0.0 + -0.0 = +0.0``), so
    ``2 s + 1`` is the source's sign. At T > 1 the ±1 outputs average to a rate.
    """
    records = []
    for node in [n for n in graph.nodes if n.domain in QONNX_DOMAINS and n.op == "BipolarQuant"]:
        if not computed_from_constants(node.inputs[0]):
            _collect(problems, records, _rewrite_bipolar, graph, node)
    graph.cleanup()
    return records


def _rewrite_bipolar(graph: gs.Graph, node: gs.Node) -> list[NeuronRecord]:
    x, scale_tensor = node.inputs[:2]
    scale = constant_value(scale_tensor)
    if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise QuantizerError(node, "scale must be constant, positive and finite")
    name = neuron_name(graph, node)
    leaving = _Exit(graph, node.outputs[0])
    params = NeuronParams(lo=-1, hi=0, v_init=0.0, rounding="floor")
    spikes = insert_neuron(graph, add_node(graph, "Div", [x, scale_tensor], f"{name}/pre_scale"), params, name)
    doubled = add_node(graph, "Mul", [spikes, gs.Constant(f"{name}/two", np.array(2, np.float32))], f"{name}/double")
    sign = add_node(graph, "Add", [doubled, gs.Constant(f"{name}/one", np.array(1, np.float32))], f"{name}/sign")
    restored = add_node(graph, "Mul", [sign, scale_tensor], f"{name}/dequant")
    replace_uses(graph, node.outputs[0], restored)
    node.outputs.clear()
    return [NeuronRecord(name=name, producer="bipolar", params=params, source_nodes=(node.name,), entry=x.name,
                         exits=_exits(leaving))]


# --- after the rewrite -------------------------------------------------------------------------


def absorb_clamps(graph: gs.Graph, records: list[NeuronRecord]) -> list[NeuronRecord]:
    """``clamp -> (positive scalar Mul/Div)* -> neuron`` becomes the neuron with narrower bounds:
    ``Relu``, ``Clip`` with constant bounds (ReLU6), ``Max``/``Min`` with a scalar constant.

    Exact: the chain ``P`` from the clamp to the neuron's input is monotone, so for the monotone
    rounding ``R``, ``R(v + P(clip(a, b, c))) = clip(R(v + P(a)), R(v + P(b)), R(v + P(c)))``; the
    bounds ``R(v + P(b))`` are computed in float32 with the chain's own operations.
    """
    updated = {r.name: r for r in records}
    for neuron in [n for n in graph.nodes if n.op == NEURON_OP and n.domain == NEURON_DOMAIN]:
        record = updated.get(neuron.name)
        if record is None:
            continue
        tensor, scalings = neuron.inputs[0], []
        while True:
            node = producer(tensor)
            if node is None or len(tensor.outputs) != 1 or tensor in graph.outputs:
                break
            bounds = _clip_bounds(node)
            if bounds is not None:
                params = record.params
                low = params.lo if bounds[0] is None else max(params.lo, _level_of(bounds[0], scalings, params))
                high = params.hi if bounds[1] is None else min(params.hi, _level_of(bounds[1], scalings, params))
                if not low <= 0 <= high:
                    break
                clamped = node.inputs[0]
                replace_uses(graph, node.outputs[0], clamped)
                node.outputs.clear()
                node.inputs.clear()
                neuron.attrs["lo"], neuron.attrs["hi"] = low, high
                record = replace(
                    record, params=NeuronParams(lo=low, hi=high, v_init=params.v_init, rounding=params.rounding),
                    source_nodes=record.source_nodes + (node.name,), entry=clamped.name)
                updated[neuron.name] = record
                tensor = clamped  # a clamp may follow another (Min of a Max)
                continue
            split = split_constant_operand(node) if node.op in ("Mul", "Div") else None
            if split is None or np.asarray(split[1]).size != 1 or not float(np.asarray(split[1]).reshape(())) > 0:
                break
            if node.op == "Div" and split[2] != 1:
                break
            scalings.insert(0, (node.op, np.float32(np.asarray(split[1]).reshape(()))))
            tensor = split[0]
    graph.cleanup()
    return [updated[r.name] for r in records]


def _level_of(bound: float, scalings, params: NeuronParams) -> int:
    """``R(v_init + P(bound))`` in float32, ``P`` the scalings from the clamp to the neuron."""
    value = np.float32(bound)
    for op, factor in scalings:
        value = np.float32(value * factor) if op == "Mul" else np.float32(value / factor)
    u = np.float32(np.float32(params.v_init) + value)
    level = np.floor(u) if params.rounding == "floor" else np.rint(u)
    return int(np.clip(level, -(2**31), 2**31 - 1))


def _rounds_zero_to_zero(v_init: float, rounding: str) -> bool:
    """``R(v_init + 0) == 0``: the initial membrane is a rounding offset, not a bias."""
    return 0 <= v_init < 1 if rounding == "floor" else -0.5 <= v_init <= 0.5
