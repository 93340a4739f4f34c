"""Time as an ONNX ``Loop`` over timesteps (docs/spiking-onnx.md, format ``spiking-onnx/3``).

The untimed network (the source graph with each activation quantizer's rounding core replaced by a
``MultiSpikeNeuron`` node) becomes:

- the nodes that do not depend on any neuron (the analog input's first layers, weight
  de-quantization, shape arithmetic of the input): computed once, before the loop, exactly as the
  source computes them;
- one ``Loop`` node (``pmsm_time/loop``) running ``timesteps`` iterations whose body is every other
  node of the source, at the source's own batch size: any ONNX op works, shape arithmetic and batch
  axis included. Each neuron becomes one timestep of ``MultiSpikeNeuron(z, u) -> (s, u_next)``
  with its membrane ``u`` carried from one iteration to the next (initially ``v_init``);
- the readout: the mean over timesteps of each per-step float output (``ReduceMean`` over the
  stacked scan output), or the last step's value of a non-float output.

Optionally (the default) nonlinear ops of time-varying inputs get temporal compensation
(:mod:`pmsm.exporter.compensation`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmsm.exporter.compensation import Compensation, compensate
from pmsm.exporter.linearity import FLOAT_TYPES
from pmsm.runtime.base.proto import implicit_inputs
from pmsm.runtime.schema import NEURON_DOMAIN, NEURON_OP, TIME_LOOP, TIME_PREFIX, TIMESTEPS_INPUT, is_neuron

VALUE_FREE_OPS = {"Shape", "Size"}  # their outputs do not change when their input's values do


@dataclass
class TimedModel:
    model: onnx.ModelProto
    compensated: list[tuple[str, str]] = field(default_factory=list)  # (node, op)
    uncompensated: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, why)


class Names:
    """Fresh tensor and node names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        self.taken = set(_all_names(model.graph))
        self._counter = itertools.count()

    def __call__(self, stem: str) -> str:
        name = f"{TIME_PREFIX}{stem}"
        while name in self.taken:
            name = f"{TIME_PREFIX}{stem}_{next(self._counter)}"
        self.taken.add(name)
        return name


def loop_over_time(network: onnx.ModelProto, compensation: bool = True) -> TimedModel:
    """The spiking model of ``network`` (an untimed network, see module docstring)."""
    graph = network.graph
    dtypes = element_types(network)
    names = Names(network)
    body_nodes, main_nodes, varying = _split_by_time(graph)
    output_names = [o.name for o in graph.output]

    iteration, condition = names("iteration"), names("condition")
    state: list[tuple[str, str, onnx.TensorProto]] = []  # (body input, body output, initial value)
    body: list[onnx.NodeProto] = []
    for node in body_nodes:
        if is_neuron(node):
            body.append(_neuron_step(node, names, state))
        else:
            body.append(node)
    done = Compensation(nodes=body)
    if compensation:
        done = compensate(body, varying, dtypes, iteration, names)
        body = done.nodes
        state += done.state

    # Outputs computed in the body: renamed inside, so the main graph can use the source's names.
    in_body = {name for node in body for name in node.output}
    renamed = {o: names(f"step/{o}") for o in output_names if o in in_body}
    for node in body:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    scans, last_values = [], []
    for output in graph.output:
        if output.name not in renamed:
            continue
        elem = output.type.tensor_type.elem_type
        (scans if elem in FLOAT_TYPES else last_values).append((output.name, renamed[output.name], elem))
    finals = [names(f"final/{s_out}") for _, s_out, _ in state]
    for name, step_name, elem in last_values:
        # carried, so that the loop returns the last step's value (the body never reads it)
        state.append((names(f"last/{name}"), step_name, _scalar(0, elem, names(f"zero/{name}"))))
        finals.append(name)

    body_inputs = [helper.make_tensor_value_info(iteration, TensorProto.INT64, []),
                   helper.make_tensor_value_info(condition, TensorProto.BOOL, [])]
    body_inputs += [helper.make_tensor_value_info(s_in, init.data_type, None) for s_in, _, init in state]
    condition_out = names("condition_out")
    body.append(helper.make_node("Identity", [condition], [condition_out], name=condition_out))
    body_outputs = [helper.make_tensor_value_info(condition_out, TensorProto.BOOL, [])]
    body_outputs += [helper.make_tensor_value_info(s_out, init.data_type, None) for _, s_out, init in state]
    body_outputs += [helper.make_tensor_value_info(step_name, elem, None) for _, step_name, elem in scans]
    body_graph = helper.make_graph(body, "pmsm_timestep", body_inputs, body_outputs)

    initial_nodes = []
    for _, _, init in state:
        initial_nodes.append(helper.make_node("Constant", [], [init.name], name=init.name, value=init))
    scan_names = [names(f"steps/{name}") for name, _, _ in scans]
    loop = helper.make_node("Loop", [TIMESTEPS_INPUT, ""] + [init.name for _, _, init in state],
                            finals + scan_names, name=TIME_LOOP, body=body_graph)
    readout = [_mean_over_time(steps, name, _default_opset(network)) for (name, _, _), steps in zip(scans, scan_names)]

    timed = onnx.ModelProto()
    timed.CopyFrom(network)
    del timed.graph.node[:]
    timed.graph.node.extend(main_nodes + initial_nodes + [loop] + [node for node, _ in readout])
    timed.graph.initializer.extend(tensor for _, tensors in readout for tensor in tensors)
    del timed.graph.value_info[:]
    if TIMESTEPS_INPUT not in {i.name for i in timed.graph.input}:
        timed.graph.input.append(helper.make_tensor_value_info(TIMESTEPS_INPUT, TensorProto.INT64, []))
    return TimedModel(timed, done.compensated, done.uncompensated)


def _split_by_time(graph: onnx.GraphProto) -> tuple[list, list, set[str]]:
    """(nodes in the loop body, nodes before the loop, names of the tensors that vary over time)."""
    in_body: set[str] = set()
    varying: set[str] = set()
    body, main = [], []
    for node in graph.node:
        reads = [n for n in node.input if n] + sorted(implicit_inputs(node))
        if is_neuron(node) or any(n in in_body for n in reads):
            moved = onnx.NodeProto()
            moved.CopyFrom(node)  # edited below; the untimed network stays as it is
            body.append(moved)
            in_body.update(o for o in node.output if o)
            if is_neuron(node) or node.op_type not in VALUE_FREE_OPS and any(n in varying for n in reads):
                varying.update(o for o in node.output if o)
        else:
            main.append(node)
    return body, main, varying


def _neuron_step(node: onnx.NodeProto, names: Names, state: list) -> onnx.NodeProto:
    """``MultiSpikeNeuron(z, timesteps) -> s`` of the untimed network as one timestep with its membrane."""
    label = node.name or node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    u_in, u_out = names(f"membrane/{label}"), names(f"membrane_next/{label}")
    initial = numpy_helper.from_array(np.array(np.float32(attrs["v_init"])), names(f"v_init/{label}"))
    state.append((u_in, u_out, initial))
    step = helper.make_node(NEURON_OP, [node.input[0], u_in], [node.output[0], u_out], name=node.name,
                            domain=NEURON_DOMAIN)
    step.attribute.extend(node.attribute)
    return step


def _mean_over_time(steps: str, name: str, opset: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """``ReduceMean`` over the stacked steps (axis 0), and the initializer holding its axes (opset >= 18)."""
    node_name = f"{TIME_PREFIX}mean/{name}"
    if opset >= 18:
        axes = numpy_helper.from_array(np.array([0], np.int64), f"{TIME_PREFIX}mean_axes/{name}")
        return helper.make_node("ReduceMean", [steps, axes.name], [name], name=node_name, keepdims=0), [axes]
    return helper.make_node("ReduceMean", [steps], [name], name=node_name, axes=[0], keepdims=0), []


def _scalar(value, elem: int, name: str) -> onnx.TensorProto:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _all_names(graph: onnx.GraphProto):
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        yield vi.name
    for tensor in graph.initializer:
        yield tensor.name
    for node in graph.node:
        yield node.name
        yield from node.output
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_names(sub)


def element_types(network: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the untimed network that ONNX type inference can tell.

    Neurons are typed as what they are (float32 spike counts of their input's shape): inference
    runs on a copy where each is an ``Identity``.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(network)
    for index, node in enumerate(copy.graph.node):
        if is_neuron(node):
            copy.graph.node[index].CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                                             name=node.name))
    del copy.opset_import[:]
    copy.opset_import.extend(o for o in network.opset_import if o.domain != NEURON_DOMAIN)
    try:
        copy = onnx.shape_inference.infer_shapes(copy, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help; unknown types are handled by the callers
        pass
    types: dict[str, int] = {}
    for vi in list(copy.graph.input) + list(copy.graph.value_info) + list(copy.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for tensor in copy.graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in network.graph.node:
        if is_neuron(node):
            types[node.output[0]] = TensorProto.FLOAT
    return types
