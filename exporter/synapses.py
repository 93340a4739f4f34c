"""Where a network's multiply-accumulates are: its synaptic layers, traced back to their sources.

A *synaptic layer* is a Conv, ConvTranspose, Gemm or MatMul with a constant weight. Its inputs are
found by tracing its data input back through the operations that only route, scale or merge values
(Mul/Div by constants, Add/Sub/Sum/Concat of branches, pooling, Flatten/Reshape/Transpose, ...) to
the ``MultiSpikeNeuron`` nodes whose spikes reach it, or to an analog value (the graph input, or any
other operation). :func:`mac_share` sums the MACs by where they run: synapses fed by spikes, weight
layers on analog values, products of two activations. The energy estimate (``pmsm.energy``) and
the NIR target's note on what it could deploy read them.

Shapes come from ONNX shape inference on a copy of the model with batch 1, ``timesteps`` fixed to 1,
each neuron replaced by an identity and the time-folding ``Tile`` removed; shapes it cannot resolve
are measured by running that copy once on ONNX Runtime with a zero input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.inputs import Samples, probe_batch, specs_of
from pmsm.runtime.schema import NEURON_DOMAIN, TIMESTEPS_INPUT, is_neuron

__all__ = ["ANALOG_INPUT", "SYNAPTIC_OPS", "SynapticLayer", "mac_share", "neuron_keys", "static_shapes",
           "synaptic_layers"]

ANALOG_INPUT = "analog input"  # the source name of a layer input that is not a neuron's spikes

SYNAPTIC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# One data operand (input 0) passes through; fan-out scales by output elements / input elements.
_ROUTING_OPS = frozenset({
    "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Dropout", "Tile",
    "Expand", "Pad", "Slice", "Split", "Gather", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
    "Relu", "Clip", "LeakyRelu",
})
# Pooling: each input element lies on average in (kernel size * output / input) windows.
_POOL_OPS = frozenset({"MaxPool", "AveragePool"})
_GLOBAL_POOL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"})
# Linear merges: every non-constant operand passes.
_MERGE_OPS = frozenset({"Add", "Sub", "Sum", "Mean", "Concat"})
# Scaling: passes when exactly one operand is non-constant (and, for Div, it is the numerator).
_SCALE_OPS = frozenset({"Mul", "Div"})


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass
class Source:
    """Where the values reaching a synaptic layer come from."""

    kind: str  # "neuron" | "analog"
    name: str  # neuron key (as SpikingModel names it), ANALOG_INPUT, or a description of the analog op
    multiplicity: float = 1.0  # fan-out multiplier from pooling/broadcast between the source and the layer
    time_varying: bool = False  # analog sources only: does the value change between timesteps


@dataclass
class SynapticLayer:
    name: str
    op: str
    macs: Optional[int]
    input_elements: Optional[int]
    sources: list[Source] = field(default_factory=list)

    @property
    def fan_out(self) -> Optional[float]:
        if self.macs is None or not self.input_elements:
            return None
        return self.macs / self.input_elements


# ---------------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------------


def neuron_keys(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Neuron nodes keyed as :class:`pmsm.runtime.execute.SpikingModel` keys their spikes."""
    keys: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if is_neuron(node):
            key = node.name or node.output[0]
            if key in keys:
                key = f"{key}:{node.output[0]}"
            keys[key] = node
    return keys


def _data_inputs(model: onnx.ModelProto) -> list[str]:
    """The model's data inputs (several for a text model: token ids, attention mask, ...)."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in initializers and vi.name != TIMESTEPS_INPUT]


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and outputs of nodes whose inputs are all constant."""
    constant = {init.name for init in model.graph.initializer}
    constant |= {init.values.name for init in model.graph.sparse_initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or (
            not is_neuron(node) and node.input and all(not i or i in constant for i in node.input)
        ):
            constant.update(o for o in node.output if o)
    return constant


def _downstream_of(model: onnx.ModelProto, seeds: set[str]) -> set[str]:
    reached = set(seeds)
    for node in model.graph.node:
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _elements(shape) -> Optional[int]:
    """Elements per sample of a shape at batch 1 (:func:`static_shapes`); None when unknown.

    At batch 1 every element belongs to the one sample, whatever axis holds the batch: attention in
    sequence-first layout (``[tokens, batch, features]``) has the tokens first, and counting from
    the second axis would drop them (the input projection of torchvision's ViT counted 1/17 of its
    MACs)."""
    if shape is None or len(shape) == 0:
        return None if shape is None else 1
    if any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Shapes at batch 1
# ---------------------------------------------------------------------------------------------


def _shape_copy(model: onnx.ModelProto, data: list[str]) -> onnx.ModelProto:
    """A plain-ONNX copy at batch 1 and T = 1: neurons and the time-folding Tile become Identity."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    timestep_dependent = _downstream_of(model, {TIMESTEPS_INPUT})
    for vi in graph.input:
        if vi.name in data and vi.type.tensor_type.HasField("shape") and vi.type.tensor_type.shape.dim:
            dim = vi.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 1
    kept_inputs = [vi for vi in graph.input if vi.name != TIMESTEPS_INPUT]
    if len(kept_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(kept_inputs)
        graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), TIMESTEPS_INPUT))
    for node in graph.node:
        fold = node.op_type == "Tile" and len(node.input) > 1 and node.input[1] in timestep_dependent
        if is_neuron(node) or fold:
            keep_input, keep_output = node.input[0], node.output[0]
            del node.input[:], node.output[:], node.attribute[:]
            node.input.append(keep_input)
            node.output.append(keep_output)
            node.op_type, node.domain = "Identity", ""
    del graph.value_info[:]
    for vi in graph.output:  # recorded at the export batch size; let inference redo them
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    kept_opsets = [o for o in copy.opset_import if o.domain != NEURON_DOMAIN]
    del copy.opset_import[:]
    copy.opset_import.extend(kept_opsets)
    return copy


def _shapes_of(model: onnx.ModelProto) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        if all(d is not None for d in dims):
            shapes.setdefault(vi.name, dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = node_attribute(node, "value")
            if isinstance(value, onnx.TensorProto):
                shapes[node.output[0]] = tuple(int(d) for d in value.dims)
    return shapes


def static_shapes(model: onnx.ModelProto, wanted: Optional[set[str]] = None) -> dict[str, tuple]:
    """Shapes (batch 1, T = 1) of the model's tensors: shape inference, then ORT for ``wanted`` gaps."""
    data = _data_inputs(model)
    copy = _shape_copy(model, data)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is a best effort here
        inferred = copy
    shapes = _shapes_of(inferred)
    missing = sorted(n for n in (wanted or ()) if n and n not in shapes)
    if missing and data:
        shapes.update(_measured_shapes(copy, data, missing))
    return shapes


def _measured_shapes(copy: onnx.ModelProto, data: list[str], names: list[str]) -> dict[str, tuple]:
    """Shapes of ``names`` from one ONNX Runtime run of the batch-1 copy on one probe sample
    (:func:`pmsm.runtime.inputs.probe_batch`: valid token ids, masks of ones); {} on failure."""
    try:
        specs = [spec for spec in specs_of(copy, "energy") if spec.name in data]
        if any(spec.sample_dims is None for spec in specs):
            return {}
        probe = probe_batch(copy, specs, samples=1)
        feeds = probe.arrays if isinstance(probe, Samples) else {specs[0].name: probe}
        run = onnx.ModelProto()
        run.CopyFrom(copy)
        present = {o.name for o in run.graph.output}
        for name in names:
            if name not in present:
                run.graph.output.append(helper.make_empty_tensor_value_info(name))
        session = inference_session(run)
        values = session.run(names, feeds)
        return {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(names, values)}
    except Exception:  # noqa: BLE001 - a best effort; the caller reports what stays unknown
        return {}


# ---------------------------------------------------------------------------------------------
# Synaptic layers: MACs and the sources of their input
# ---------------------------------------------------------------------------------------------


def _weight_operand(node: onnx.NodeProto, constant: set[str]) -> Optional[int]:
    """Index of the constant weight operand of a synaptic node, or None when it has none."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1 if len(node.input) > 1 and node.input[1] in constant and node.input[0] not in constant else None
    if node.op_type == "Gemm":
        return 1 if node.input[1] in constant and node.input[0] not in constant else None
    if node.op_type == "MatMul":
        a, b = (i in constant for i in node.input[:2])
        if b and not a:
            return 1
        if a and not b:
            return 0
    return None


def _macs(node: onnx.NodeProto, w_index: int, shapes: dict[str, tuple]) -> Optional[int]:
    """Multiply-accumulates per sample (batch 1)."""
    w = shapes.get(node.input[w_index])
    x = shapes.get(node.input[1 - w_index] if node.op_type == "MatMul" else node.input[0])
    y = shapes.get(node.output[0])
    if w is None:
        return None
    op = node.op_type
    if op == "Conv":  # Cout*Hout*Wout * Cin/groups*kh*kw
        return None if y is None else _elements(y) * int(np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":  # each input element scatters to Cout/groups*kh*kw outputs
        return None if x is None else _elements(x) * int(np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        if len(w) != 2:
            return None
        rows = 1
        if x is not None and len(x) == 2 and node_attribute(node, "transA", 0):
            rows = x[1]  # unusual: A transposed, the batch is not the leading axis
        return int(w[0] * w[1] * rows)
    if op == "MatMul":
        if len(w) == 0:
            return None
        if w_index == 1:  # x [.., K] @ W [K, M]
            contraction = w[-2] if len(w) >= 2 else w[0]
        else:  # W [.., M, K] @ x [.., K, F]
            contraction = w[-1]
        if y is not None:
            return _elements(y) * int(contraction)
        if x is not None and w_index == 1 and len(w) == 2:
            return _elements(x) * int(w[1])
    return None


class _Tracer:
    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple], constant: set[str]):
        self.shapes = shapes
        self.constant = constant
        self.data = set(_data_inputs(model))
        self.producer = {o: node for node in model.graph.node for o in node.output if o}
        self.neuron_key = {id(node): key for key, node in neuron_keys(model).items()}
        neuron_outputs = {n.output[0] for n in model.graph.node if is_neuron(n)}
        self.spiking = _downstream_of(model, neuron_outputs)

    def _ratio(self, out: str, inp: str) -> float:
        a, b = _elements(self.shapes.get(out)), _elements(self.shapes.get(inp))
        return a / b if a and b else 1.0

    def sources(self, tensor: str) -> list[Source]:
        """Neurons and analog values whose values reach ``tensor``, with their fan-out multipliers."""
        found: dict[tuple[str, str], Source] = {}
        best: dict[str, float] = {}  # each tensor is expanded again only with a larger multiplier
        stack = [(tensor, 1.0)]
        while stack:
            name, mult = stack.pop()
            if not name or name in self.constant or best.get(name, -1.0) >= mult:
                continue
            best[name] = mult
            source, upstream = self._step(name, mult)
            if source is not None:
                key = (source.kind, source.name)
                if key not in found or found[key].multiplicity < source.multiplicity:
                    found[key] = source
            stack.extend(reversed(upstream))  # operands in their order
        return list(found.values())

    def _step(self, tensor: str, mult: float) -> tuple[Optional[Source], list[tuple[str, float]]]:
        """Either the source ``tensor`` is, or the tensors (with multipliers) to trace further."""
        if tensor in self.data:
            return Source("analog", ANALOG_INPUT, mult, False), []
        node = self.producer.get(tensor)
        if node is None:
            return Source("analog", f"graph input '{tensor}'", mult, False), []
        if is_neuron(node):
            return Source("neuron", self.neuron_key[id(node)], mult), []
        op = node.op_type
        live = [i for i in node.input if i and i not in self.constant]
        if op in _ROUTING_OPS and node.input[0] not in self.constant:
            if op == "Tile" and len(node.input) > 1 and node.input[1] not in self.constant:
                ratio = 1.0  # the time folding: every row is one timestep of one sample
            else:
                ratio = self._ratio(tensor, node.input[0])
            return None, [(node.input[0], mult * ratio)]
        if op in _POOL_OPS:
            kernel = node_attribute(node, "kernel_shape", None)
            k = int(np.prod(kernel)) if kernel else 1
            return None, [(node.input[0], mult * k * self._ratio(tensor, node.input[0]))]
        if op in _GLOBAL_POOL_OPS:
            return None, [(node.input[0], mult)]
        if op in _MERGE_OPS and live:
            return None, [(i, mult * (1.0 if op == "Concat" else self._ratio(tensor, i))) for i in live]
        if op in _SCALE_OPS and len(live) == 1 and (op == "Mul" or node.input[0] == live[0]):
            return None, [(live[0], mult * self._ratio(tensor, live[0]))]
        label = f"analog output of '{node.name or tensor}' ({op})"
        return Source("analog", label, mult, tensor in self.spiking), []


def synaptic_layers(model: onnx.ModelProto, shapes: Optional[dict[str, tuple]] = None) -> list[SynapticLayer]:
    """The synaptic layers of a spiking ONNX model in graph order, with MACs and input sources."""
    constant = _constant_tensors(model)
    candidates = [(n, _weight_operand(n, constant)) for n in model.graph.node if n.op_type in SYNAPTIC_OPS]
    candidates = [(n, w) for n, w in candidates if w is not None]
    if shapes is None:
        wanted = set()
        for node in model.graph.node:
            if node.op_type in SYNAPTIC_OPS or node.op_type in _POOL_OPS or node.op_type in _ROUTING_OPS \
                    or node.op_type in _MERGE_OPS or node.op_type in _SCALE_OPS:
                wanted.update(i for i in node.input if i and i not in constant)
                wanted.update(o for o in node.output if o)
        for node, w in candidates:
            wanted.add(node.input[w])
        shapes = static_shapes(model, wanted)
    tracer = _Tracer(model, shapes, constant)
    layers = []
    for node, w in candidates:
        data_in = node.input[1 - w] if node.op_type == "MatMul" else node.input[0]
        layers.append(SynapticLayer(
            name=node.name or node.output[0],
            op=node.op_type,
            macs=_macs(node, w, shapes),
            input_elements=_elements(shapes.get(data_in)),
            sources=tracer.sources(data_in),
        ))
    return layers


# ---------------------------------------------------------------------------------------------
# Spike statistics
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# Where the multiply-accumulates run: spiking synapses or non-spiking ops
# ---------------------------------------------------------------------------------------------


def mac_share(model: onnx.ModelProto) -> dict:
    """MACs per sample of the untimed network by where they run: synapses fed by neurons only
    (``spiking``), weight layers reading analog values (the input, or a non-spiking op such as a
    layer norm: ``analog``), and products of two activations (attention: ``activation_products``)."""
    layers = synaptic_layers(model)
    spiking = sum(layer.macs or 0 for layer in layers if layer.sources and all(s.kind == "neuron" for s in layer.sources))
    analog = sum(layer.macs or 0 for layer in layers) - spiking
    constant = _constant_tensors(model)
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Einsum")
                and sum(1 for name in n.input[:2] if name and name not in constant) == 2]
    shapes = static_shapes(model, {o for n in products for o in list(n.input[:2]) + list(n.output)})
    product_macs = 0
    for node in products:
        a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if a is not None and y is not None and len(a):
            product_macs += _elements(y) * int(a[-1] if not node_attribute(node, "transA", 0) else a[-2])
    total = spiking + analog + product_macs
    return {
        "macs_per_sample": total,
        "spiking_synapses": spiking,
        "analog_synapses": analog,
        "activation_products": product_macs,
        "spiking_share": spiking / total if total else None,
    }
