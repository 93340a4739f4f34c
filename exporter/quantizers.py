"""Recognise activation quantizers and replace each rounding core with a PMSM neuron.

Only the rounding core (shift, rounding, clip) becomes ``ai.pmsm::MultiSpikeNeuron``; the source's
own pre-scaling and de-quantization stay as the standard ops it used, so that at T = 1 the spiking
graph performs exactly the source's float arithmetic.

Each pattern is a rule (:mod:`pmsm.exporter.rules`: match an anchor node, check the pattern with a
reason when it cannot be a neuron, rewrite it), and :func:`rules` lists them in the order they run:

=============================  ======================================================================
rule                           pattern
=============================  ======================================================================
``QdqRule``                    ``QuantizeLinear -> [Clip] -> DequantizeLinear`` (standard domain)
``ContribQdqRule``             the same with ``com.microsoft`` Q/DQ (onnxruntime below opset 21 for
                               16- and 4-bit types, AMD Quark)
``QonnxRule``                  QONNX ``Quant``/``IntQuant``
``BipolarRule``                QONNX ``BipolarQuant``
``ClampedRoundingRule``        ``clamp -> [scalings] -> [Add(phi)] -> Floor|Round`` whose clamp
                               before the rounding supplies a bound the chain after it lacks
``RoundingChainRule``          ``[Add(phi)] -> Floor|Round -> (Clip | scalar Mul/Div)*``
``ClampBeforeNeuronRule``      a clamp in front of a neuron narrows its bounds (runs after the
                               others, over the neurons they made: :func:`absorb_clamps`)
=============================  ======================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

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
from pmsm.exporter.rules import PatternError, Refusal, Rule, run_rules
from pmsm.runtime.neuron import NeuronParams, round_levels
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
INT4_BY_NAME = {"int4": (-8, 7), "uint4": (0, 15)}  # ml_dtypes' 4-bit numpy types of INT4/UINT4 tensors
STANDARD_DOMAINS = (None, "", "ai.onnx")
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops


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


class QuantizerError(PatternError):
    """A quantizer was recognised but cannot be expressed as PMSM neurons exactly."""


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


def recognise(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """Every quantizer rule (:func:`rules`) over ``graph``, then the clamps in front of the neurons
    they made: the neuron records, in the order they were made."""
    return absorb_clamps(graph, _run(graph, rules(), problems))


def rules() -> tuple[Rule, ...]:
    """The quantizer rules in the order they run (the module's table)."""
    return (QdqRule(), ContribQdqRule(), QonnxRule(), BipolarRule(), ClampedRoundingRule(), RoundingChainRule())


def _run(graph: gs.Graph, chosen, problems: list | None) -> list[NeuronRecord]:
    return run_rules(graph, chosen, problems, error=QuantizerError)


def _is_activation(tensor: gs.Tensor) -> bool:
    """Not a constant nor computed from constants only: a weight quantizer is not a neuron."""
    return not computed_from_constants(tensor)


# --- PyTorch PMSM / QCFS layers and hand-written clip(floor(...)) quantizers -----------------


def rewrite_rounding_chains(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """``[Add(z, phi)] -> Floor|Round -> (Clip | scalar Mul/Div)*`` on activations, bounded by the
    clips after the rounding or, where they lack a bound, by a clamp before it (the two rounding
    rules, :class:`ClampedRoundingRule` then :class:`RoundingChainRule`)."""
    return _run(graph, (ClampedRoundingRule(), RoundingChainRule()), problems)


@dataclass
class _RoundingFinding:
    """A rounding chain: its shift, its bounds in levels, the clips after and the clamps before."""

    rounding_node: gs.Node
    rounding: str
    z: gs.Tensor  # the neuron's input: the rounding's input less its shift
    v_init: float
    shift_node: gs.Node | None
    lo: float
    hi: float
    clips: list[gs.Node]
    end: gs.Tensor
    clamps_before: tuple[gs.Node, ...] = ()
    entry: gs.Tensor | None = None  # where the quantizer starts in the rewritten graph (default: z)


class RoundingChainRule(Rule):
    """PyTorch PMSM / QCFS layers and hand-written ``clip(floor(...))`` quantizers:
    ``[Add(z, phi)] -> Floor|Round -> (Clip | scalar Mul/Div)*`` on an activation.

    The clips may sit before or after the de-quantizing scalar ``Div``/``Mul``; their bounds are
    converted to level units and must land exactly on integer levels.
    """

    name = "rounding chains"
    producer = "floor-chain"

    def matches(self, node: gs.Node) -> bool:
        return node.op in ("Floor", "Round")

    def check(self, graph: gs.Graph, rounding_node: gs.Node):
        if not _is_activation(rounding_node.inputs[0]):
            return None
        rounding = "floor" if rounding_node.op == "Floor" else "half_even"
        z, v_init, shift_node = _split_shift(rounding_node.inputs[0], rounding)
        lo, hi, clips, end = _walk_level_bounds(graph, rounding_node)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            side = "lower" if not math.isfinite(lo) else "upper"
            return Refusal(rounding_node, f"quantizer has no {side} clip bound: a neuron needs a finite spike "
                           "count per step; add a Clip after the rounding (or a clamp before it)")
        if not lo <= 0 <= hi:
            return Refusal(rounding_node, f"clip bounds [{lo}, {hi}] in levels exclude 0; "
                           "PMSM neurons need lo <= 0 <= hi")
        return _RoundingFinding(rounding_node, rounding, z, v_init, shift_node, lo, hi, clips, end)

    def rewrite(self, graph: gs.Graph, found: _RoundingFinding) -> list[NeuronRecord]:
        rounding_node = found.rounding_node
        leaving = _Exit(graph, found.end)
        params = NeuronParams(lo=int(found.lo), hi=int(found.hi), v_init=found.v_init, rounding=found.rounding)
        name = neuron_name(graph, rounding_node)
        spikes = insert_neuron(graph, found.z, params, name)
        for clamp in found.clamps_before:  # exact: see ClampedRoundingRule; the neuron now reads past them
            replace_uses(graph, clamp.outputs[0], clamp.inputs[0])
            clamp.outputs.clear()
            clamp.inputs.clear()
        replace_uses(graph, rounding_node.outputs[0], spikes)
        for clip in found.clips:
            replace_uses(graph, clip.outputs[0], clip.inputs[0])
            clip.outputs.clear()
        rounding_node.outputs.clear()
        sources = [n.name for n in (*found.clamps_before, found.shift_node, rounding_node, *found.clips)
                   if n is not None]
        entry = found.entry if found.entry is not None else found.z
        return [NeuronRecord(name=name, producer=self.producer, params=params, source_nodes=tuple(sources),
                             entry=entry.name, exits=_exits(leaving))]


class ClampedRoundingRule(RoundingChainRule):
    """A rounding whose chain after it lacks a bound that a clamp before it supplies:
    ``clamp (Relu, Clip, Max/Min with a scalar constant; several, in any order) -> (positive scalar
    Mul/Div)* -> [Add(phi)] -> Floor|Round -> [the chain after]``, as in ``x = clamp(x, 0, 3);
    x = x + (floor(x + 0.5) - x).detach()`` or ``relu`` then a straight-through floor then
    ``min(., 3)``.

    Exact for any clamp bounds, whole levels or not: the chain ``P`` from the clamp to the rounding
    is monotone and so is the rounding ``R``, hence ``R(v + P(clip(a, b, c))) = clip(R(v + P(a)),
    R(v + P(b)), R(v + P(c)))``: the neuron reads ``P(a)`` and its bounds are ``R(v + P(b))`` and
    ``R(v + P(c))`` computed in float32 with the chain's own operations (``clamp(x, 0, 2.7)``
    then ``floor(x + 0.5)`` gives ``hi = floor(3.2) = 3``), intersected with the bounds after.
    """

    name = "roundings bounded by a clamp before them"
    producer = "clamped-rounding"

    def check(self, graph: gs.Graph, rounding_node: gs.Node):
        if not _is_activation(rounding_node.inputs[0]):
            return None
        rounding = "floor" if rounding_node.op == "Floor" else "half_even"
        z, v_init, shift_node = _split_shift(rounding_node.inputs[0], rounding)
        try:
            lo, hi, clips, end = _walk_level_bounds(graph, rounding_node)
        except QuantizerError:
            return None  # the plain rule names the off-grid clip
        if math.isfinite(lo) and math.isfinite(hi):
            return None  # bounded after the rounding: the plain rule's, with any clamp before absorbed later
        clamps = _clamps_before(graph, z, v_init, rounding, (shift_node, rounding_node))
        if not clamps.nodes:
            return None
        low = max(lo, clamps.lo)
        high = min(hi, clamps.hi)
        if not (math.isfinite(low) and math.isfinite(high)):
            return None  # still unbounded on a side: the plain rule refuses it
        if not low <= 0 <= high:
            return Refusal(rounding_node, f"the clamp before the rounding ({', '.join(n.name or n.op for n in clamps.nodes)}) "
                           f"and the clips after it bound it to [{low:g}, {high:g}] levels, which excludes 0; "
                           "PMSM neurons need lo <= 0 <= hi")
        return _RoundingFinding(rounding_node, rounding, z, v_init, shift_node, low, high, clips, end,
                                tuple(clamps.nodes), clamps.entry)


@dataclass
class _ClampsBefore:
    nodes: list[gs.Node]
    lo: float
    hi: float
    entry: gs.Tensor  # the tensor the first clamp reads: the neuron's input once they are absorbed


def _clamps_before(graph: gs.Graph, z: gs.Tensor, v_init: float, rounding: str, quantizer: tuple) -> _ClampsBefore:
    """The clamps (and positive scalar scalings) in front of ``z``, walked back while each tensor
    has one reader: their bounds in levels, ``R(v_init + P(bound))`` (see ClampedRoundingRule).

    The scalings stay in the graph; only the clamps are taken. ``quantizer``: the nodes of the
    rounding that read ``z`` (its shift, the rounding), which the rewrite replaces."""
    tensor, scalings, nodes, entry = z, [], [], z
    lo, hi = -math.inf, math.inf
    while True:
        readers = [n for n in tensor.outputs if tensor is not z or not any(n is q for q in quantizer)]
        node = producer(tensor)
        if node is None or len(readers) != (0 if tensor is z else 1) or tensor in graph.outputs:
            break
        bounds = _clip_bounds(node)
        if bounds is not None:
            if bounds[0] is not None:
                lo = max(lo, _level_of_bound(bounds[0], scalings, v_init, rounding))
            if bounds[1] is not None:
                hi = min(hi, _level_of_bound(bounds[1], scalings, v_init, rounding))
            nodes.append(node)
            tensor = entry = node.inputs[0]
            continue
        tensor = _scaled_input(node, scalings)
        if tensor is None:
            break
    return _ClampsBefore(nodes, lo, hi, entry)


def _scaled_input(node: gs.Node, scalings: list) -> Optional[gs.Tensor]:
    """The input of ``node`` when it scales it by a positive scalar (``Mul`` either way round, or
    ``Div`` by the constant), the scaling put first in ``scalings``; None for any other node."""
    split = split_constant_operand(node) if node.op in ("Mul", "Div") else None
    if split is None or np.asarray(split[1]).size != 1 or not float(np.asarray(split[1]).reshape(())) > 0:
        return None
    if node.op == "Div" and split[2] != 1:
        return None
    scalings.insert(0, (node.op, np.float32(np.asarray(split[1]).reshape(()))))
    return split[0]


def _level_of_bound(bound: float, scalings, v_init: float, rounding: str) -> float:
    """``R(v_init + P(bound))`` in float32 (``P``: the scalings from the clamp to the rounding, ``R``
    the neuron's own rounding), kept within the int32 range the neuron's bounds are written in."""
    value = np.float32(bound)
    for op, factor in scalings:
        value = np.float32(value * factor) if op == "Mul" else np.float32(value / factor)
    level = round_levels(np.float32(np.float32(v_init) + value), rounding)
    if not np.isfinite(level):
        return float(level)  # a clamp at infinity bounds nothing
    return float(np.clip(level, -(2**31), 2**31 - 1))


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
    ``Div(x, s) -> neuron(half_even, lo=qmin-zp, hi=qmax-zp) -> Mul(s)``: the standard-domain
    pairs, then ONNX Runtime's ``com.microsoft`` ones (:class:`QdqRule`, :class:`ContribQdqRule`)."""
    return _run(graph, (QdqRule(), ContribQdqRule()), problems)


@dataclass
class _QdqFinding:
    quantize: gs.Node
    scale: np.ndarray
    zero_point: int
    branches: list  # (lo, hi, clip or None, dequantize) per DequantizeLinear reading the quantizer
    scale_operand: gs.Tensor  # the scale as the pre-scaling Div reads it


class QdqRule(Rule):
    """``QuantizeLinear(x, s, zp) -> [Clip] -> DequantizeLinear`` on an activation becomes
    ``Div(x, s) -> neuron(half_even, lo=qmin-zp, hi=qmax-zp) -> Mul(s)`` (onnxruntime
    ``quantize_static``, torch ``FakeQuantize``, Brevitas QCDQ).

    ``QuantizeLinear`` computes ``saturate(round(x / s) + zp)`` and ``DequantizeLinear``
    ``(q - zp) * s``; the neuron's output is ``q - zp`` itself, so the de-quantization is exact.
    """

    name = "QDQ/QCDQ quantizers"
    domains = STANDARD_DOMAINS
    producers = ("qdq", "qcdq")  # without and with a Clip between the pair

    def matches(self, node: gs.Node) -> bool:
        return node.op == "QuantizeLinear" and node.domain in self.domains

    def check(self, graph: gs.Graph, quantize: gs.Node):
        if not _is_activation(quantize.inputs[0]):
            return None
        scale, zero_point, qmin, qmax = _qdq_parameters(quantize)
        if quantize.outputs[0] in graph.outputs:
            return Refusal(quantize, "its integer output is a graph output; a spiking network outputs "
                           "de-quantized values")
        branches = []
        for consumer in list(quantize.outputs[0].outputs):
            low, high, dequantize, clip = qmin, qmax, consumer, None
            if consumer.op == "Clip":
                bounds = _clip_bounds(consumer)
                following = sole_consumer(consumer.outputs[0], graph)
                if bounds is None or following is None or following.op != "DequantizeLinear":
                    return Refusal(consumer, "Clip between QuantizeLinear and DequantizeLinear must have "
                                   "constant bounds and feed one DequantizeLinear")
                low = max(qmin, bounds[0]) if bounds[0] is not None else qmin
                high = min(qmax, bounds[1]) if bounds[1] is not None else qmax
                clip, dequantize = consumer, following
            if dequantize.op != "DequantizeLinear":
                return Refusal(dequantize, f"reads the output of QuantizeLinear '{quantize.name}': {QDQ_HINT}")
            _check_same_quantization(quantize, dequantize, scale, zero_point)
            lo, hi = int(low) - zero_point, int(high) - zero_point
            if not lo <= 0 <= hi:
                return Refusal(quantize, f"zero point {zero_point} lies outside the integer range "
                               f"[{low}, {high}]: the quantizer cannot output 0")
            branches.append((lo, hi, clip, dequantize))
        if not branches:
            return None
        return _QdqFinding(quantize, scale, zero_point, branches,
                           _broadcastable_scale(quantize, quantize.inputs[0], scale))

    def rewrite(self, graph: gs.Graph, found: _QdqFinding) -> list[NeuronRecord]:
        records = []
        quantize = found.quantize
        x, scale_operand = quantize.inputs[0], found.scale_operand
        z = add_node(graph, "Div", [x, scale_operand], f"{neuron_name(graph, quantize)}/pre_scale")
        neurons: dict[tuple[int, int], tuple[gs.Variable, int]] = {}  # bounds -> (spikes, index of the record)
        for lo, hi, clip, dequantize in found.branches:
            if (lo, hi) not in neurons:
                params = NeuronParams(lo=lo, hi=hi, v_init=0.0, rounding="half_even")
                name = neuron_name(graph, quantize, "" if not neurons else f"/{lo}_{hi}")
                neurons[(lo, hi)] = insert_neuron(graph, z, params, name), len(records)
                records.append(NeuronRecord(name=name, producer=self.producers[clip is not None],
                                            params=params, source_nodes=(quantize.name, dequantize.name),
                                            entry=x.name))
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


class ContribQdqRule(QdqRule):
    """``com.microsoft::QuantizeLinear -> [Clip] -> com.microsoft::DequantizeLinear``: ONNX
    Runtime's contrib Q/DQ, which ``quantize_static`` writes below opset 21 for 16-bit and 4-bit
    types (``activation_type=QuantType.QInt16``, ``QUInt16``, ``QUInt4``, ...) or when asked to
    (``UseQDQContribOps``), and AMD Quark writes at 8 bits too.

    They compute what the standard ops compute (``saturate(round(x / s) + zp)`` with round half to
    even, and ``(q - zp) * s``), over int8, uint8, int16, uint16, int4 and uint4 (the zero point's
    type says which), so the neuron and its arithmetic are the standard pair's: the activation's
    pre-scaling and de-quantization become the standard ``Div`` and ``Mul``. A contrib
    ``DequantizeLinear`` on weights stays as written (see docs/spiking-onnx.md).
    """

    name = "contrib QDQ quantizers (com.microsoft)"
    domains = (CONTRIB_DOMAIN,)
    producers = ("contrib-qdq", "contrib-qcdq")


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
        qrange = INTEGER_RANGES.get(np.dtype(values.dtype)) or INT4_BY_NAME.get(np.dtype(values.dtype).name)
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
    """QONNX ``Quant``/``IntQuant`` on activations (:class:`QonnxRule`)."""
    return _run(graph, (QonnxRule(),), problems)


@dataclass
class _QonnxFinding:
    node: gs.Node
    params: NeuronParams
    shifted: bool  # a zero point other than 0 somewhere


class QonnxRule(Rule):
    """``Quant(x, scale, zeropt, bitwidth)`` on an activation (Brevitas ``export_qonnx``, FINN):
    ``Div(x, scale) [-> Add(zeropt)] -> neuron -> [Sub(zeropt) ->] Mul(scale)``."""

    name = "QONNX quantizers"

    def matches(self, node: gs.Node) -> bool:
        return node.domain in QONNX_DOMAINS and node.op in ("Quant", "IntQuant")

    def check(self, graph: gs.Graph, node: gs.Node):
        if not _is_activation(node.inputs[0]):
            return None
        scale, zeropt, bitwidth = (constant_value(t) for t in node.inputs[1:4])
        if scale is None or zeropt is None or bitwidth is None:
            return Refusal(node, "scale, zero point and bit width must be constants")
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0) or not np.all(np.isfinite(zeropt)):
            return Refusal(node, "scale must be positive and finite, the zero point finite")
        mode = str(node.attrs.get("rounding_mode", "ROUND")).upper()
        if mode not in ("ROUND", "HALF_EVEN", "FLOOR"):
            return Refusal(node, f"rounding_mode {mode} has no PMSM neuron (ROUND and FLOOR do)")
        if bitwidth.size != 1:
            return Refusal(node, "bit width must be one constant")
        try:
            low, high = qonnx_int_range(bitwidth.reshape(()), bool(node.attrs.get("signed", 1)),
                                        bool(node.attrs.get("narrow", 0)))
        except ValueError as error:
            return Refusal(node, str(error))
        qmin, qmax = int(low), int(high)
        if not qmin <= 0 <= qmax:
            return Refusal(node, f"integer range [{qmin}, {qmax}] excludes 0")
        params = NeuronParams(lo=qmin, hi=qmax, v_init=0.0, rounding="floor" if mode == "FLOOR" else "half_even")
        return _QonnxFinding(node, params, bool(np.any(zeropt != 0)))

    def rewrite(self, graph: gs.Graph, found: _QonnxFinding) -> list[NeuronRecord]:
        node, shifted = found.node, found.shifted
        x = node.inputs[0]
        name = neuron_name(graph, node)
        leaving = _Exit(graph, node.outputs[0])
        z = add_node(graph, "Div", [x, node.inputs[1]], f"{name}/pre_scale")
        if shifted:  # QONNX adds the zero point before rounding (per channel too): keep that arithmetic
            z = add_node(graph, "Add", [z, node.inputs[2]], f"{name}/zero_point")
        spikes = insert_neuron(graph, z, found.params, name)
        if shifted:
            spikes = add_node(graph, "Sub", [spikes, node.inputs[2]], f"{name}/zero_point_back")
        restored = add_node(graph, "Mul", [spikes, node.inputs[1]], f"{name}/dequant")
        replace_uses(graph, node.outputs[0], restored)
        node.outputs.clear()
        return [NeuronRecord(name=name, producer="qonnx", params=found.params, source_nodes=(node.name,),
                             entry=x.name, exits=_exits(leaving))]


def rewrite_qonnx_bipolar(graph: gs.Graph, problems: list | None = None) -> list[NeuronRecord]:
    """QONNX ``BipolarQuant`` on activations (:class:`BipolarRule`)."""
    return _run(graph, (BipolarRule(),), problems)


class BipolarRule(Rule):
    """``BipolarQuant(x, scale)`` (``+scale`` where ``x / scale >= 0``, else ``-scale``) on an activation:
    ``Div(x, scale) -> neuron(floor, lo=-1, hi=0) -> 2 s + 1 -> Mul(scale)``.

    The neuron's ``floor(0 + x / scale)`` clipped to ``[-1, 0]`` is ``-1`` exactly where
    ``x / scale < 0`` (``-0.0`` included on the source's side, as ``0.0 + -0.0 = +0.0``), so
    ``2 s + 1`` is the source's sign. At T > 1 the ±1 outputs average to a rate.
    """

    name = "QONNX bipolar quantizers"

    def matches(self, node: gs.Node) -> bool:
        return node.domain in QONNX_DOMAINS and node.op == "BipolarQuant"

    def check(self, graph: gs.Graph, node: gs.Node):
        if not _is_activation(node.inputs[0]):
            return None
        scale = constant_value(node.inputs[1])
        if scale is None or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            return Refusal(node, "scale must be constant, positive and finite")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> list[NeuronRecord]:
        x, scale_tensor = node.inputs[:2]
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
    """Clamps in front of the neurons of ``records`` become their bounds (:class:`ClampBeforeNeuronRule`)."""
    updated = {r.name: r for r in _run(graph, (ClampBeforeNeuronRule(records),), None)}
    return [updated.get(r.name, r) for r in records]


@dataclass
class _AbsorbedClamps:
    neuron: gs.Node
    record: NeuronRecord  # with the narrower bounds, the clamps among its sources, the new entry
    clamps: list[gs.Node]


class ClampBeforeNeuronRule(Rule):
    """``clamp -> (positive scalar Mul/Div)* -> neuron`` becomes the neuron with narrower bounds:
    ``Relu``, ``Clip`` with constant bounds (ReLU6), ``Max``/``Min`` with a scalar constant.

    Exact: the chain ``P`` from the clamp to the neuron's input is monotone, so for the monotone
    rounding ``R``, ``R(v + P(clip(a, b, c))) = clip(R(v + P(a)), R(v + P(b)), R(v + P(c)))``; the
    bounds ``R(v + P(b))`` are computed in float32 with the chain's own operations. A clamp whose
    bounds would exclude 0 stays a standard op, and so does everything in front of it.
    """

    name = "clamps before neurons"

    def __init__(self, records: list[NeuronRecord]):
        self.records = {r.name: r for r in records}

    def matches(self, node: gs.Node) -> bool:
        return node.op == NEURON_OP and node.domain == NEURON_DOMAIN

    def check(self, graph: gs.Graph, neuron: gs.Node):
        record = self.records.get(neuron.name)
        if record is None:
            return None
        tensor, scalings, clamps = neuron.inputs[0], [], []
        while True:
            node = producer(tensor)
            if node is None or len(tensor.outputs) != 1 or tensor in graph.outputs:
                break
            bounds = _clip_bounds(node)
            if bounds is not None:
                params = record.params
                low = params.lo if bounds[0] is None else max(params.lo, _int32_level(bounds[0], scalings, params))
                high = params.hi if bounds[1] is None else min(params.hi, _int32_level(bounds[1], scalings, params))
                if not low <= 0 <= high:
                    break
                clamped = node.inputs[0]
                record = replace(
                    record, params=NeuronParams(lo=low, hi=high, v_init=params.v_init, rounding=params.rounding),
                    source_nodes=record.source_nodes + (node.name,), entry=clamped.name)
                clamps.append(node)
                tensor = clamped  # a clamp may follow another (Min of a Max)
                continue
            tensor = _scaled_input(node, scalings)
            if tensor is None:
                break
        return _AbsorbedClamps(neuron, record, clamps) if clamps else None

    def rewrite(self, graph: gs.Graph, found: _AbsorbedClamps) -> list[NeuronRecord]:
        for clamp in found.clamps:
            replace_uses(graph, clamp.outputs[0], clamp.inputs[0])
            clamp.outputs.clear()
            clamp.inputs.clear()
        found.neuron.attrs["lo"], found.neuron.attrs["hi"] = found.record.params.lo, found.record.params.hi
        self.records[found.record.name] = found.record
        return [found.record]


def _int32_level(bound: float, scalings, params: NeuronParams) -> int:
    """``R(v_init + P(bound))`` as a neuron bound: an infinite one at the end of the int32 range."""
    return int(np.clip(_level_of_bound(bound, scalings, params.v_init, params.rounding), -(2**31), 2**31 - 1))


def _rounds_zero_to_zero(v_init: float, rounding: str) -> bool:
    """``R(v_init + 0) == 0``: the initial membrane is a rounding offset, not a bias."""
    return 0 <= v_init < 1 if rounding == "floor" else -0.5 <= v_init <= 0.5
