"""The untimed network (docs/spiking-onnx.md): the source graph with a ``MultiSpikeNeuron`` node in
place of each activation quantizer's rounding core, and no time. NIR has no batch and runs time
natively, so this is what the converter reads. Constant subgraphs are evaluated here so the converter
sees plain arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.schema import NEURON_DOMAIN as PMSM_DOMAIN
from pmsm.runtime.schema import TIMESTEPS_INPUT, is_neuron


def node_label(node: onnx.NodeProto) -> str:
    """The name spikes and messages use for a node (as the ONNX backend keys them)."""
    return node.name or (node.output[0] if node.output else node.op_type)


@dataclass
class NetworkView:
    nodes: list[onnx.NodeProto]
    constants: dict[str, np.ndarray]
    input_name: str  # the data input as the network nodes see it
    input_shape: tuple[int, ...] | None  # without the batch dimension
    aliases: set[str]  # tensors that stand for the data input
    outputs: list[tuple[str, str]]  # (graph output name, per-step tensor feeding it): the same name
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # inferred, without batch


def _data_input(model: onnx.ModelProto, label: str) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    data = [vi for vi in model.graph.input if vi.name != TIMESTEPS_INPUT and vi.name not in inits]
    if len(data) != 1:
        names = ", ".join(f"'{vi.name}'" for vi in data) or "none"
        raise BadInputError(f"{label}: NIR graphs take one data input; this model takes {len(data)} ({names}); "
                            "convert it with --target onnx")
    return data[0]


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """Dims after the batch, when all of them are known numbers."""
    t = vi.type.tensor_type
    if not t.HasField("shape") or len(t.shape.dim) < 1:
        return None
    dims = t.shape.dim[1:]
    if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray], opsets) -> list[np.ndarray] | None:
    """Run a node whose inputs are all constants; None when the reference evaluator cannot."""
    from onnx.reference import ReferenceEvaluator

    try:
        ins = [onnx.helper.make_tensor_value_info(f"in{i}", onnx.TensorProto.UNDEFINED, None)
               for i in range(len(inputs))]
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        del clone.input[:]
        clone.input.extend(f"in{i}" if name else "" for i, name in enumerate(node.input))
        outs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
        graph = onnx.helper.make_graph([clone], "const", ins, outs)
        model = onnx.helper.make_model(graph, opset_imports=list(opsets), ir_version=10)
        feeds = {f"in{i}": v for i, v in enumerate(inputs) if node.input[i]}
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception:  # noqa: BLE001 - anything it cannot evaluate stays a network node
        return None


def _fold_constants(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], set[int]]:
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    folded: set[int] = set()
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.op_type == "Constant":
            values = _evaluate(node, [], opsets)
        elif node.input and all(not name or name in constants for name in node.input):
            values = _evaluate(node, [constants[name] if name else None for name in node.input], opsets)
        else:
            continue
        if values is None:
            continue
        constants.update(zip([o for o in node.output if o], values))
        folded.add(index)
    return constants, folded


def network_view(model: onnx.ModelProto, label: str) -> NetworkView:
    graph = model.graph
    data = _data_input(model, label)
    constants, folded = _fold_constants(model)
    network = [n for i, n in enumerate(graph.node) if i not in folded]
    aliases = {data.name}
    outputs = [(o.name, o.name) for o in graph.output]
    view = NetworkView(nodes=network, constants=constants, input_name=data.name,
                       input_shape=_static_shape(data), aliases=aliases, outputs=outputs)
    view.shapes = _infer_shapes(model, view, data)
    return view


def _infer_shapes(model: onnx.ModelProto, view: NetworkView, data: onnx.ValueInfoProto) -> dict:
    """Shapes of the network's tensors from ONNX shape inference on the bare network.

    The neuron keeps its input's shape, so it becomes an Identity here; the time folding is
    skipped (its data-dependent Tile would hide every downstream dimension).
    """
    nodes = []
    for node in view.nodes:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        if is_neuron(node):
            clone = onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        inputs = [view.input_name if name in view.aliases else name for name in clone.input]
        del clone.input[:]
        clone.input.extend(inputs)
        nodes.append(clone)
    used = {name for n in nodes for name in n.input}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in view.constants.items() if k in used]
    outs = [onnx.helper.make_tensor_value_info(src, onnx.TensorProto.UNDEFINED, None)
            for _, src in view.outputs if src not in view.aliases]
    bare = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "network", [data], outs, initializer=inits),
        opset_imports=[o for o in model.opset_import if o.domain != PMSM_DOMAIN], ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(bare, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a help, the converter computes shapes itself
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        shape = _static_shape(vi)
        if shape is not None:
            shapes[vi.name] = shape
    return shapes
