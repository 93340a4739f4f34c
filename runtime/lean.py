"""The lean form of a spiking ONNX file: what ONNX Runtime runs without the neuron's generality.

A spiking file (docs/spiking-onnx.md) writes every neuron as ``ai.pmsm::MultiSpikeNeuron`` with one
standard-op function body for all of them, generic over the attributes (``If`` on the rounding, a
run-time zero, ...), inside a ``Loop`` that carries every membrane and compensation sum even at
``T = 1``. :func:`lean_model` rewrites such a file into standard ONNX ops that compute the same
numbers, bit for bit, with each neuron written as the few ops its own attributes need:

- **each neuron step** in the loop: ``v = Add(u, z)``; for round-half-even with a range of 256
  levels (``hi - lo == 255``: every 8-bit QDQ activation) ``q = QuantizeLinear(v, 1, zp)``, ``s =
  DequantizeLinear(q, 1, zp)`` with ``zp = -lo`` as uint8 (one pass each: ONNX Runtime rounds half
  to even and saturates, so the clip is the cast's; 65,536 levels as uint16, through ONNX Runtime's
  ``com.microsoft`` Q/DQ below opset 21); otherwise ``Floor``/``Round``, ``Clip(lo, hi)``
  and ``+ 0.0`` (a run-time zero computed once per step); then ``u_next = Sub(v, s)``; the
  de-quantization ``Mul(s, c)`` of a ``qdq`` neuron's spikes by a positive scalar constant ``c``
  becomes ``DequantizeLinear(q, c, zp)`` (one byte read an element instead of four: about 9 % of
  ``T = 4`` on the QDQ ViT, DeiT and EfficientNet of ``benchmarks/lean.py``);
- **``T = 1`` without state**: ``If(timesteps == 1)`` runs the first step alone: no membranes, no
  compensation (its first-step branches inlined), nothing the readout does not read. A QDQ
  neuron whose input is ``Div(x, c)`` by a constant scalar ``c`` and whose spikes are
  de-quantized by ``Mul(s, c)`` becomes ``QuantizeLinear(x, c, zp)`` and ``DequantizeLinear(q, c,
  zp)``: the source's own quantizer, two passes where the neuron made six;
- **``T > 1``**: the same first step, now leaving every state the loop carries (the membrane of a
  neuron whose ``v_init`` is a zero is ``z - s``, a running sum starts as the value itself, without
  a copy), then the loop for the later steps only: its iteration count shifted by one and every
  ``If`` on the first step replaced by its ``else_branch``; the per-step outputs are the first
  step's followed by the loop's (``Concat``). About 7 % of ``T = 4`` on the QDQ ViT;
- **what only the loop reads** (the weights' ``DequantizeLinear``, ...) is computed inside the first
  step, both forms of it, and handed to the loop from there (:func:`_read_by_the_loop_only`).

What bounds a later step (measured on the QDQ ViT of ``benchmarks/lean.py``, batch 16, 46.6 million
activation values a run): its neurons move about 2.2 GB a step (``Div``, ``Add``,
``QuantizeLinear``, two ``DequantizeLinear``, ``Sub``: the membrane is read and written, the spikes
written as floats and read back) where the ANN's quantizers move about 0.47 GB, at 8 to 12 GB/s on
one core either way. A step after the first therefore costs about 3.5 times the whole ANN there;
networks whose time goes to convolutions (ResNet-18: 80 %) pay little more than the ANN per step.

Why it is bit-equal to the reference kernel (:func:`pmsm.runtime.neuron.step`):

- ``QuantizeLinear(v, 1, zp)`` is ``saturate(rint(v) + zp)`` and ``DequantizeLinear`` of it
  ``(q - zp) * 1``: ``clip(rint(v), lo, hi)`` exactly, for every value but NaN; a zero is ``+0.0``
  (an integer has no sign), which is the neuron's own rule since ai.pmsm version 3.
- ``Add(v_init, z)`` with ``v_init = 0`` changes ``z`` only where ``z = -0.0`` (to ``+0.0``), which
  rounds to the same zero spike, so the first step of such a neuron reads ``z`` itself.
- ONNX Runtime's ``QuantizeLinear`` divides by its scale (``x / c``, as ``Div`` does; measured on
  ONNX Runtime 1.23 with tie values and their neighbouring floats, ``tests/test_lean.py``), and
  ``DequantizeLinear`` multiplies the level by it as ``Mul(s, c)`` does; ``ReduceMean`` over one step
  is what the loop's readout computes at ``T = 1``, so it stays.

What is not equal: a NaN membrane (from a NaN or an infinite activation; inputs are checked
finite before a run) gives the neuron a NaN spike and ``QuantizeLinear`` a bound.

The lean form is for ONNX Runtime: the reference is the file itself with the kernel registered,
and the file keeps its portable body for other runtimes. ``SpikingModel(portable=True)`` (the
``onnx`` backend) runs the lean form; ``benchmarks/lean.py`` measures it.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.files import atomic_write_bytes
from pmsm.runtime.base.proto import implicit_inputs
from pmsm.runtime.neuron import NeuronParams
from pmsm.runtime.schema import NEURON_DOMAIN, SPIKING_ONNX_FORMAT, TIME_LOOP, TIMESTEPS_INPUT, is_neuron

__all__ = ["LEAN_PREFIX", "MIN_OPSET", "lean_model", "lean_neuron_form"]

LEAN_PREFIX = "pmsm_lean/"
MIN_OPSET = 11  # Clip with its bounds as inputs
_QDQ_LEVELS = 255  # hi - lo of a neuron that QuantizeLinear/DequantizeLinear to uint8 computes
_QDQ16_LEVELS = 65535  # ... to uint16
_QDQ_OPSET = 10  # QuantizeLinear/DequantizeLinear in the default domain
_QDQ16_OPSET = 21  # uint16 in the default domain's QuantizeLinear/DequantizeLinear
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's Q/DQ, uint16 at any opset
_UNSQUEEZE_AXES_INPUT_OPSET = 13


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def lean_neuron_form(node: onnx.NodeProto, opset: int) -> str:
    """``"qdq"`` where the neuron is ``QuantizeLinear``/``DequantizeLinear`` to uint8 with scale 1,
    ``"qdq16"`` to uint16 (ONNX Runtime's ``com.microsoft`` ops below opset 21), ``"floor"`` or
    ``"round"`` (``R``, ``Clip`` and ``+ 0.0``) otherwise."""
    attrs = _attributes(node)
    rounding = attrs["rounding"].decode() if isinstance(attrs["rounding"], bytes) else attrs["rounding"]
    levels = int(attrs["hi"]) - int(attrs["lo"])
    if rounding == "half_even" and levels == _QDQ_LEVELS and opset >= _QDQ_OPSET:
        return "qdq"
    if rounding == "half_even" and levels == _QDQ16_LEVELS and opset >= _QDQ_OPSET:
        return "qdq16"
    return "floor" if rounding == "floor" else "round"


class _Names:
    def __init__(self, taken: set[str]):
        self.taken, self.counter = taken, itertools.count()

    def __call__(self, stem: str) -> str:
        name = f"{LEAN_PREFIX}{stem}"
        while name in self.taken:
            name = f"{LEAN_PREFIX}{stem}_{next(self.counter)}"
        self.taken.add(name)
        return name


def _all_names(graph: onnx.GraphProto, found: set[str]) -> set[str]:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        found.add(vi.name)
    found.update(t.name for t in graph.initializer)
    for node in graph.node:
        found.add(node.name)
        found.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _all_names(sub, found)
    return found


class _Builder:
    """Nodes of one graph, with constants made as ``Constant`` nodes (ONNX Runtime makes them
    initializers: they cost nothing per run)."""

    def __init__(self, names: _Names, opset: int = 0):
        self.names, self.nodes, self.opset = names, [], opset

    def node(self, op: str, inputs: list[str], output: str | None = None, stem: str = "t", domain: str = "",
             **attrs) -> str:
        output = output or self.names(stem)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.names(f"node/{stem}"),
                                           domain=domain or None, **attrs))
        return output

    def constant(self, value: np.ndarray, stem: str) -> str:
        name = self.names(stem)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.asarray(value), name)))
        return name


_QDQ_FORMS = ("qdq", "qdq16")


def _qdq_type(form: str, opset: int) -> tuple[type, str]:
    """(zero point's numpy type, domain of the Q/DQ pair) of a ``qdq`` form."""
    if form == "qdq":
        return np.uint8, ""
    return np.uint16, "" if opset >= _QDQ16_OPSET else CONTRIB_DOMAIN


def _step(b: _Builder, node: onnx.NodeProto, form: str, z: str, u: str | None, zero: str | None,
          spikes: str) -> tuple[str, tuple[str, str, str] | None]:
    """One lean step of ``node`` writing its spikes as ``spikes``; returns ``v`` and, for a ``qdq``
    form, its levels as ``(q, zero point, domain)`` (for :func:`_dequantize_consumers`). ``u`` None: the first step of a
    neuron whose ``v_init`` is a zero, where ``v`` is ``z`` itself (module docstring)."""
    attrs = _attributes(node)
    label = node.name or node.output[0]
    v = z if u is None else b.node("Add", [u, z], stem=f"v/{label}")
    if form in _QDQ_FORMS:
        one = b.constant(np.array(1.0, np.float32), f"one/{label}")
        dtype, domain = _qdq_type(form, b.opset)
        zp = b.constant(np.array(-int(attrs["lo"]), dtype), f"zero_point/{label}")
        q = b.node("QuantizeLinear", [v, one, zp], stem=f"levels/{label}", domain=domain)
        b.node("DequantizeLinear", [q, one, zp], spikes, stem=f"spikes/{label}", domain=domain)
        return v, (q, zp, domain)
    rounded = b.node("Floor" if form == "floor" else "Round", [v], stem=f"rounded/{label}")
    lo = b.constant(np.array(float(attrs["lo"]), np.float32), f"lo/{label}")
    hi = b.constant(np.array(float(attrs["hi"]), np.float32), f"hi/{label}")
    clipped = b.node("Clip", [rounded, lo, hi], stem=f"clipped/{label}")
    b.node("Add", [clipped, zero], spikes, stem=f"spikes/{label}")
    return v, None


def _runtime_zero(b: _Builder, like: str) -> str:
    """``+0.0`` that no optimizer can fold (so that ``Add(x, zero)`` is never dropped): ``Size(like) * 0``."""
    size = b.node("Cast", [b.node("Size", [like], stem="zero/size")], stem="zero/size_float", to=TensorProto.FLOAT)
    return b.node("Mul", [size, b.constant(np.array(0.0, np.float32), "zero/factor")], stem="zero/value")


def _dequantize_consumers(nodes: list[onnx.NodeProto], spikes: str, constants: dict[str, np.ndarray]
                          ) -> list[tuple[onnx.NodeProto, str]]:
    """The ``Mul(spikes, c)`` nodes among ``nodes`` by a positive finite float32 scalar constant ``c``,
    with ``c``: ``DequantizeLinear(q, c, zp)`` computes each of them from the levels, bit for bit
    (``(q - zp) * c`` is the spike count times ``c``, a zero spike ``+0.0 * c``), reading one byte an
    element where the ``Mul`` reads four."""
    found = []
    for node in nodes:
        if node.op_type != "Mul" or len(node.input) != 2 or spikes not in node.input or node.domain not in ("", "ai.onnx"):
            continue
        other = node.input[1] if node.input[0] == spikes else node.input[0]
        c = constants.get(other)
        if c is not None and c.dtype == np.float32 and c.ndim == 0 and np.isfinite(c) and c > 0:
            found.append((node, other))
    return found


def _lean_body(body: onnx.GraphProto, opset: int, names: _Names, constants: dict[str, np.ndarray]) -> onnx.GraphProto:
    """The loop body with each neuron step written as its lean form, and the de-quantization of a
    ``qdq`` neuron's spikes by a scalar read from its levels."""
    b = _Builder(names, opset)
    zero = None
    nodes = list(body.node)
    replaced: dict[int, onnx.NodeProto] = {}  # id of a Mul -> the DequantizeLinear that computes it
    for node in nodes:
        if not is_neuron(node):
            b.nodes.append(replaced.get(id(node), node))
            continue
        z, u = node.input[0], node.input[1]
        s_out, u_out = node.output[0], node.output[1]
        form = lean_neuron_form(node, opset)
        if zero is None and form not in _QDQ_FORMS:
            zero = _runtime_zero(b, body.input[0].name)
        v, levels = _step(b, node, form, z, u, zero, s_out)
        b.nodes.append(helper.make_node("Sub", [v, s_out], [u_out], name=names(f"node/membrane/{u_out}")))
        if levels is None:
            continue
        q, zero_point, domain = levels
        for mul, c in _dequantize_consumers(nodes, s_out, constants):
            replaced[id(mul)] = helper.make_node("DequantizeLinear", [q, c, zero_point], [mul.output[0]],
                                                 name=names(f"node/dequantized/{mul.output[0]}"), domain=domain or None)
    lean = onnx.GraphProto()
    lean.CopyFrom(body)
    del lean.node[:]
    lean.node.extend(b.nodes)
    return lean


_SAME_TYPE_AS_FIRST_INPUT = frozenset({
    "Abs", "Add", "Ceil", "Clip", "Concat", "Div", "Expand", "Flatten", "Floor", "Gather", "Identity", "Mul",
    "Neg", "Pad", "Reshape", "Round", "Slice", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze"})


def _output_type(node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    """The element type of ``node``'s first output where its op and its inputs' types tell it."""
    if node.op_type == "DequantizeLinear" and len(node.input) > 1:
        return types.get(node.input[1])
    if node.op_type == "QuantizeLinear":
        return types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else TensorProto.UINT8
    if node.op_type == "Cast":
        return next((a.i for a in node.attribute if a.name == "to"), None)
    if node.op_type in ("Shape", "Size"):
        return TensorProto.INT64
    if node.op_type in _SAME_TYPE_AS_FIRST_INPUT and node.input:
        return types.get(node.input[0])
    return None


def _read_by_the_loop_only(graph: onnx.GraphProto, loop: onnx.NodeProto) -> tuple[list[onnx.NodeProto], dict[str, int]]:
    """The nodes before the time loop whose values only the loop reads (the weights' de-quantization,
    ...), with those values' element types. They move into the first step, where ONNX Runtime runs
    each just before its first use, as in the ANN (its order, measured: placing them ourselves was
    slower). Before the loop all of them were computed first and read back from memory: on the QDQ
    ResNet-18 at T = 1 the weights' ``DequantizeLinear`` took 2.5 times as long as the ANN's and its
    convolutions 7 % longer (1.15x the ANN; 1.0x with them moved)."""
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in list(graph.input) + list(graph.value_info)})
    readers: dict[str, list[int]] = {}
    for node in graph.node:
        for name in set(node.input) | implicit_inputs(node):
            readers.setdefault(name, []).append(id(node))
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
        elif len(node.output) == 1 and node.output[0] not in types:
            elem = _output_type(node, types)
            if elem:
                types[node.output[0]] = elem
    index = list(graph.node).index(loop)
    graph_outputs = {o.name for o in graph.output}
    moved: set[int] = set()
    for node in reversed(list(graph.node)[:index]):
        if node.op_type == "Constant" or len(node.output) != 1 or node.output[0] in graph_outputs:
            continue
        if node.output[0] not in types or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                              for a in node.attribute):
            continue
        found = readers.get(node.output[0], [])
        if found and all(r == id(loop) or r in moved for r in found):
            moved.add(id(node))
    nodes = [n for n in list(graph.node)[:index] if id(n) in moved]
    return nodes, {n.output[0]: types[n.output[0]] for n in nodes}


def _renamed_reads(nodes: list[onnx.NodeProto], mapping: dict[str, str]) -> list[onnx.NodeProto]:
    """Copies of ``nodes`` reading (and, for the keys among their outputs, writing) ``mapping``'s
    names, in their subgraphs too."""
    copies = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        _rename_in_place(copy, mapping)
        copies.append(copy)
    return copies


def _rename_in_place(node: onnx.NodeProto, mapping: dict[str, str]) -> None:
    node.input[:] = [mapping.get(n, n) for n in node.input]
    node.output[:] = [mapping.get(n, n) for n in node.output]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                _rename_in_place(inner, mapping)
            for out in sub.output:
                out.name = mapping.get(out.name, out.name)


def _first_step_flags(nodes, iteration: str, constants: dict[str, np.ndarray]) -> set[str]:
    """The bools ``Equal(iteration, 0)`` among ``nodes``: "this is the first step"."""
    flags = set()
    for node in nodes:
        if node.op_type == "Equal" and iteration in node.input:
            other = [n for n in node.input if n != iteration]
            if other and other[0] in constants and np.array_equal(constants[other[0]], 0):
                flags.add(node.output[0])
    return flags


def _later_steps(body: onnx.GraphProto, names: _Names, constants: dict[str, np.ndarray]) -> onnx.GraphProto:
    """The body for the steps after the first, counted from 0 by its loop: the iteration is the
    loop's count plus one, and each ``If`` on the first step is its ``else_branch`` (no branch to
    choose each step, no running sums copied at the first step)."""
    b = _Builder(names)
    iteration = body.input[0].name
    counted = names("loop_count")
    b.node("Add", [counted, b.constant(np.array(1, np.int64), "one")], iteration, stem="iteration")
    constants = {**constants, **_constants(body)}
    flags = _first_step_flags(body.node, iteration, constants)
    for node in body.node:
        if node.op_type == "If" and node.input[0] in flags:
            _inline(node, node.attribute, {}, b.nodes, names, "else_branch")
        else:
            b.nodes.append(node)
    later = onnx.GraphProto()
    later.CopyFrom(body)
    later.input[0].name = counted
    del later.node[:]
    later.node.extend(b.nodes)
    return later


def _constants(*graphs: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {}
    for graph in graphs:
        for tensor in graph.initializer:
            found[tensor.name] = numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _first_step(body: onnx.GraphProto, loop: onnx.NodeProto, wanted: list[int], opset: int, names: _Names,
                constants: dict[str, np.ndarray], outer: dict[str, onnx.NodeProto],
                final: set[int] | frozenset = frozenset()) -> onnx.GraphProto:
    """The loop's first iteration as a graph without state, whose outputs are the loop's outputs
    ``wanted`` (indices into ``loop.output``) as a run of one step gives them, in that order.

    ``final``: the states read after the loop. The membrane of any other neuron whose ``v_init`` is a
    zero is ``z - s`` (its sign of zero may differ from ``(0 + z) - s``; no spike can tell them apart:
    ``u + z`` is ``z`` for every nonzero ``z``, and a zero ``u + z`` spikes ``+0.0``)."""
    b = _Builder(names, opset)
    body_outputs = list(body.output)[1:]  # without the condition
    read_after = {body_outputs[i].name for i in final}
    renamed: dict[str, str] = {}
    iteration, condition = body.input[0].name, body.input[1].name
    renamed[iteration] = b.constant(np.array(0, np.int64), "iteration")
    renamed[condition] = b.constant(np.array(True), "condition")
    out: list[onnx.NodeProto] = b.nodes
    b.nodes = []
    states = [vi.name for vi in body.input[2:]]
    for state, initial in zip(states, loop.input[2:]):
        renamed[state] = initial
    nodes = list(body.node)
    first_step = _first_step_flags(nodes, iteration, constants)  # true at the first step
    zero = None
    producers = dict(outer)  # a Div before the loop (of the analog input) fuses as well
    for node in nodes:
        for name in node.output:
            producers[name] = node

    def emit(node: onnx.NodeProto) -> None:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(n, n) for n in copy.input]
        out.append(copy)

    # a QDQ neuron of Div(x, c) de-quantized by Mul(s, c): fused into the source's own quantizer
    fused_muls: dict[str, tuple[str, str, str]] = {}  # Mul's output -> (q, c, zp)
    skipped: set[int] = set()
    for node in nodes:
        if node.op_type == "If" and node.input[0] in first_step:
            _inline(node, node.attribute, renamed, out, names)
            continue
        if not is_neuron(node):
            if id(node) in skipped:
                continue
            emit(node)
            continue
        attrs = _attributes(node)
        form = lean_neuron_form(node, opset)
        z = renamed.get(node.input[0], node.input[0])
        s_out = node.output[0]
        v_init_is_zero = float(attrs["v_init"]) == 0.0
        divisor = _scalar_divisor(producers.get(node.input[0]), constants)
        if form in _QDQ_FORMS and v_init_is_zero and divisor is not None:
            x, c = renamed.get(divisor[0], divisor[0]), divisor[1]
            dtype, domain = _qdq_type(form, opset)
            zp = b.constant(np.array(-int(attrs["lo"]), dtype), f"zero_point/{node.name or s_out}")
            q = b.node("QuantizeLinear", [x, c, zp], stem=f"levels/{node.name or s_out}", domain=domain)
            one = b.constant(np.array(1.0, np.float32), f"one/{node.name or s_out}")
            out.extend(b.nodes)
            b.nodes = []
            out.append(helper.make_node("DequantizeLinear", [q, one, zp], [s_out], name=names(f"node/spikes/{s_out}"),
                                        domain=domain or None))
            for consumer in nodes:
                if consumer.op_type == "Mul" and s_out in consumer.input and len(consumer.input) == 2:
                    other = consumer.input[1] if consumer.input[0] == s_out else consumer.input[0]
                    if other in constants and _same_scalar(constants[other], constants[c]):
                        fused_muls[consumer.output[0]] = (q, c, zp, domain)
                        skipped.add(id(consumer))
            for mul_out, (fq, fc, fzp, fdomain) in list(fused_muls.items()):
                if fq == q:
                    out.append(helper.make_node("DequantizeLinear", [fq, fc, fzp], [mul_out],
                                                name=names(f"node/dequantized/{mul_out}"), domain=fdomain or None))
            # the membrane after the step, should anything read it (the readout does not)
            v = z if node.output[1] not in read_after else \
                b.node("Add", [renamed.get(node.input[1], node.input[1]), z], stem=f"v/{node.name or s_out}")
            b.nodes.append(helper.make_node("Sub", [v, s_out], [node.output[1]], name=names(f"node/membrane/{s_out}")))
            out.extend(b.nodes)
            b.nodes = []
            continue
        if zero is None and form not in _QDQ_FORMS:
            zero = _runtime_zero(b, z)  # of a run-time tensor: an optimizer cannot fold it and drop the Add
        u = None if v_init_is_zero else renamed.get(node.input[1], node.input[1])
        v, _ = _step(b, node, form, z, u, zero, s_out)
        if u is None and node.output[1] in read_after:  # v is z: a membrane read after the loop is v_init + z
            v = b.node("Add", [renamed.get(node.input[1], node.input[1]), z], stem=f"v/{node.name or s_out}")
        b.nodes.append(helper.make_node("Sub", [v, s_out], [node.output[1]], name=names(f"node/membrane/{s_out}")))
        out.extend(b.nodes)
        b.nodes = []

    n_states = len(states)
    graph_outputs, tail = [], []
    made_here = {o for node in out for o in node.output}
    copied_from = {node.output[0]: node.input[0] for node in out if node.op_type == "Identity"}
    for index in wanted:
        vi = body_outputs[index]
        elem = vi.type.tensor_type.elem_type
        source = renamed.get(vi.name, vi.name)
        while index < n_states and copied_from.get(source) in made_here:  # a running sum starts as the value
            source = copied_from[source]
        name = names(f"first_step/{loop.output[index]}")
        if index < n_states and source in made_here:  # a state computed in the step: no copy
            made_here.discard(source)
            graph_outputs.append(helper.make_tensor_value_info(source, elem, None))
            continue
        if index < n_states:
            tail.append(helper.make_node("Identity", [source], [name], name=name))
        elif opset >= _UNSQUEEZE_AXES_INPUT_OPSET:
            axes = names(f"axes/{name}")
            tail.append(helper.make_node("Constant", [], [axes], name=axes,
                                         value=numpy_helper.from_array(np.array([0], np.int64), axes)))
            tail.append(helper.make_node("Unsqueeze", [source, axes], [name], name=name))
        else:
            tail.append(helper.make_node("Unsqueeze", [source], [name], name=name, axes=[0]))
        graph_outputs.append(helper.make_tensor_value_info(name, elem, None))
    nodes_needed = _needed(out + tail, [o.name for o in graph_outputs])
    return helper.make_graph(nodes_needed, names("first_step"), [], graph_outputs)


def _scalar_divisor(node: onnx.NodeProto | None, constants: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """``(x, c)`` when ``node`` is ``Div(x, c)`` by a positive finite float32 scalar constant of rank
    0 (so that the quotient has the shape of ``x``)."""
    if node is None or node.op_type != "Div" or len(node.input) != 2 or node.input[1] not in constants:
        return None
    c = constants[node.input[1]]
    if c.dtype != np.float32 or c.ndim != 0 or not np.isfinite(c).all() or not (c > 0).all():
        return None
    return node.input[0], node.input[1]


def _same_scalar(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.ndim == b.ndim == 0 \
        and a.reshape(-1).view(np.uint32)[0] == b.reshape(-1).view(np.uint32)[0]


def _inline(node: onnx.NodeProto, attributes, renamed: dict[str, str], out: list, names: _Names,
            branch_name: str = "then_branch") -> None:
    """``If`` whose condition is known (true at the first step, false at every later one): the
    nodes of its ``branch_name`` in place of it."""
    branch = next(a.g for a in attributes if a.name == branch_name)
    made = {n for inner in branch.node for n in inner.output}
    local, copies = {}, []
    for produced, wanted in zip(branch.output, node.output):
        if produced.name in made and produced.name not in local:
            local[produced.name] = wanted
        else:  # an outer value, or one the branch returns twice
            copies.append((produced.name, wanted))
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.input[:] = [local.get(n, renamed.get(n, n)) for n in copy.input]
        copy.output[:] = [local.get(n, n) for n in copy.output]
        out.append(copy)
    for produced, wanted in copies:
        out.append(helper.make_node("Identity", [local.get(produced, renamed.get(produced, produced))], [wanted],
                                    name=names(f"node/branch_out/{wanted}")))


def _needed(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the ``outputs`` depend on, in their order (subgraphs' outer reads included)."""
    wanted = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output if o):
            keep.append(node)
            wanted.update(n for n in node.input if n)
            wanted.update(implicit_inputs(node))
    return list(reversed(keep))


def _default_opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _with_trips(loop: onnx.NodeProto, trips: str) -> onnx.NodeProto:
    loop.input[0] = trips
    return loop


def lean_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lean form of a spiking model (module docstring): standard ops only, the same outputs."""
    opset = _default_opset(model)
    names = _Names(_all_names(model.graph, set()))
    lean = onnx.ModelProto()
    lean.CopyFrom(model)
    graph = lean.graph
    index = next(i for i, node in enumerate(graph.node) if node.op_type == "Loop" and node.name == TIME_LOOP)
    loop = graph.node[index]
    body = next(a.g for a in loop.attribute if a.name == "body")
    read_later = {n for node in list(graph.node)[index + 1:] for n in list(node.input) + sorted(implicit_inputs(node))}
    read_later |= {o.name for o in graph.output}
    wanted = [i for i, name in enumerate(loop.output) if name and name in read_later]
    constants = _constants(graph, body)

    n_states = len(loop.input) - 2
    scans = [i for i in wanted if i >= n_states]
    final_states = {i for i in wanted if i < n_states}
    state_types = [vi.type.tensor_type.elem_type for vi in body.input[2:]]
    scan_types = [body.output[1 + i].type.tensor_type.elem_type for i in scans]
    outer = {name: node for node in list(graph.node)[:index] for name in node.output}
    moved, moved_types = _read_by_the_loop_only(graph, loop)

    # T = 1: the first step alone, without state; T > 1: the first step with every state it leaves,
    # then the loop for the later steps. The loop stays in the main graph, where the file has it
    # (ONNX Runtime picks kernels by where a node sits: a Gemm of a batch-1 MLP gave other float bits
    # inside an If's Loop), and runs no iteration at T = 1.
    alone = _first_step(body, loop, wanted, opset, names, constants, outer, final_states)
    alone_outputs = dict(zip(wanted, alone.output))
    placeholders, alone_states = [], []
    for i, elem in enumerate(state_types):
        if i in final_states:
            alone_states.append(alone_outputs[i])
            continue
        empty = names(f"no_state/{i}")  # never read: the loop runs no iteration at T = 1
        placeholders.append(helper.make_node("Constant", [], [empty], name=empty, value=numpy_helper.from_array(
            np.zeros(0, helper.tensor_dtype_to_np_dtype(elem)), empty)))
        alone_states.append(helper.make_tensor_value_info(empty, elem, None))
    alone_graph = helper.make_graph(list(alone.node) + placeholders, names("one_step"), [],
                                    alone_states + [alone_outputs[i] for i in scans])
    first = _first_step(body, loop, list(range(n_states)) + scans, opset, names, constants, outer, final_states)
    step0 = [names(f"step0/{i}") for i in range(n_states)] + [names(f"step0/{loop.output[i]}") for i in scans]
    lean_loop = onnx.NodeProto()
    lean_loop.CopyFrom(loop)
    later_body = _later_steps(_lean_body(body, opset, names, constants), names, constants)
    for attr in lean_loop.attribute:
        if attr.name == "body":
            attr.g.CopyFrom(later_body)
    later_reads = implicit_inputs(lean_loop)
    carried = [name for name in moved_types if name in later_reads]  # computed in the first step, read after

    def with_moved(step: onnx.GraphProto, stem: str, later_values: bool) -> onnx.GraphProto:
        local = {name: names(f"{stem}/{name}") for name in moved_types}
        outputs = [helper.make_tensor_value_info(local.get(o.name, o.name), o.type.tensor_type.elem_type, None)
                   for o in step.output]
        extra = []
        for name in carried:
            if later_values:
                outputs.append(helper.make_tensor_value_info(local[name], moved_types[name], None))
                continue
            empty = names(f"not_needed/{name}")  # at T = 1 the loop runs no iteration
            extra.append(helper.make_node("Constant", [], [empty], name=empty, value=numpy_helper.from_array(
                np.zeros(0, helper.tensor_dtype_to_np_dtype(moved_types[name])), empty)))
            outputs.append(helper.make_tensor_value_info(empty, moved_types[name], None))
        nodes = _renamed_reads(moved, local) + _renamed_reads(list(step.node), local) + extra
        return helper.make_graph(_needed(nodes, [o.name for o in outputs]), step.name, [], outputs)

    is_one = names("is_one_step")
    first_branch = helper.make_node("If", [is_one], step0 + carried, name=names("first_step"),
                                    then_branch=with_moved(alone_graph, "one_step", False),
                                    else_branch=with_moved(first, "first_step", True))
    looped = [loop.output[i] if i in final_states else (names(f"looped/{name}") if name else "")
              for i, name in enumerate(loop.output)]
    del lean_loop.input[2:]
    lean_loop.input.extend(step0[:n_states])
    del lean_loop.output[:]
    lean_loop.output.extend(looped)

    # the outputs read per step: the first step's, then the loop's
    then_nodes, else_nodes, then_outputs, else_outputs = [], [], [], []
    for i, first_value, elem in zip(scans, step0[n_states:], scan_types):
        alone_value, all_values = names(f"one_step/{loop.output[i]}"), names(f"all_steps/{loop.output[i]}")
        then_nodes.append(helper.make_node("Identity", [first_value], [alone_value], name=alone_value))
        else_nodes.append(helper.make_node("Concat", [first_value, looped[i]], [all_values], name=all_values, axis=0))
        then_outputs.append(helper.make_tensor_value_info(alone_value, elem, None))
        else_outputs.append(helper.make_tensor_value_info(all_values, elem, None))
    per_step = helper.make_node("If", [is_one], [loop.output[i] for i in scans], name=names("steps"),
                                then_branch=helper.make_graph(then_nodes, names("one_step_outputs"), [], then_outputs),
                                else_branch=helper.make_graph(else_nodes, names("all_step_outputs"), [], else_outputs))
    one, trips = names("one"), names("later_steps")
    moved_ids = {id(node) for node in moved}
    new_nodes = [node for node in list(graph.node)[:index] if id(node) not in moved_ids] + [
        helper.make_node("Constant", [], [one], name=one, value=numpy_helper.from_array(np.array(1, np.int64), one)),
        helper.make_node("Equal", [TIMESTEPS_INPUT, one], [is_one], name=is_one),
        helper.make_node("Sub", [TIMESTEPS_INPUT, one], [trips], name=trips),  # T >= 1, checked by the runners
        first_branch,
        _with_trips(lean_loop, trips),
    ] + ([per_step] if scans else []) + list(graph.node)[index + 1:]
    del graph.node[:]
    graph.node.extend(new_nodes)
    if CONTRIB_DOMAIN not in {o.domain for o in lean.opset_import} and _uses_domain(graph, CONTRIB_DOMAIN):
        lean.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    if not _has_neuron(graph):  # a neuron inside a subgraph of the body (none the exporter writes) keeps its body
        kept = [f for f in lean.functions if f.domain != NEURON_DOMAIN]
        del lean.functions[:]
        lean.functions.extend(kept)
    return lean


def _uses_domain(graph: onnx.GraphProto, domain: str) -> bool:
    for node in graph.node:
        if node.domain == domain:
            return True
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                if _uses_domain(sub, domain):
                    return True
    return False


def _has_neuron(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if is_neuron(node):
            return True
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                if _has_neuron(sub):
                    return True
    return False


def _spiking_file(path: str, error) -> onnx.ModelProto:
    """The spiking model at ``path``, its format, loop and neurons checked; ``error`` (one line) otherwise."""
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise many kinds
        raise error(f"{path}: cannot read as an ONNX model: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    found = {p.key: p.value for p in model.metadata_props}.get("pmsm.format")
    loops = [n for n in model.graph.node if n.op_type == "Loop" and n.name == TIME_LOOP]
    if found != SPIKING_ONNX_FORMAT or len(loops) != 1:
        raise error(f"{path}: not a {SPIKING_ONNX_FORMAT} model (format {found or 'not given'}); convert the source "
                    "again with this version of pmsm-export")
    if _default_opset(model) < MIN_OPSET:
        raise error(f"{path}: default-domain opset {_default_opset(model)} is below {MIN_OPSET}; run the file as it is")
    for node in loops[0].attribute[0].g.node:
        if is_neuron(node):
            try:
                attrs = _attributes(node)
                rounding = attrs["rounding"].decode() if isinstance(attrs["rounding"], bytes) else attrs["rounding"]
                NeuronParams(lo=attrs["lo"], hi=attrs["hi"], v_init=attrs["v_init"], rounding=rounding)
            except (KeyError, ValueError) as exc:
                raise error(f"{path}: neuron '{node.name}': {exc}") from None
    return model


def main(argv: list[str] | None = None) -> int:
    """``python -m pmsm.runtime.lean MODEL.spiking.onnx OUT.onnx``: write the lean form of a spiking
    file for plain ONNX Runtime (exit 2 with one line for a file that is not one)."""
    parser = argparse.ArgumentParser(prog="python -m pmsm.runtime.lean", description=main.__doc__)
    parser.add_argument("model", help="a spiking ONNX file written by pmsm-export")
    parser.add_argument("output", help="where to write its lean form")
    args = parser.parse_args(argv)
    try:
        model = _spiking_file(args.model, BadInputError)
        atomic_write_bytes(args.output, lean_model(model).SerializeToString())
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
