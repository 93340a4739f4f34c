"""Energy estimate and spike statistics of a spiking ONNX model (DESIGN §9 "Energy").

:func:`energy_report` takes the spiking ONNX model and the spikes its neurons emitted on the
verification data (``{T: {neuron node name: s [T, N, ...]}}``, as
``SpikingModel(model).run(x, T, collect_spikes=True).spikes`` returns them) and returns the
``"energy"`` section of the report, JSON-serialisable::

    {"constants": {"mac_pj": 4.6, "sop_pj": 0.9},
     "convention": str,
     "samples": int, "timesteps": [int, ...],
     "layers": [{"name", "op", "macs", "inputs": [str], "input_elements", "fan_out",
                 "fan_out_by_input": {str: float},
                 "energy_ann_pj",
                 "per_T": {"<T>": {"events_binary", "events_graded", "sops_binary", "sops_graded",
                                   "mac_ops", "energy_binary_pj", "energy_graded_pj",
                                   "ratio_binary", "ratio_graded"}}}],
     "neuron_layers": [{"name", "lo", "hi", "neurons",
                        "per_T": {"<T>": {"mean_abs_spikes_per_step", "silent_fraction",
                                          "histogram": {"<level>": count} (|level| <= 64),
                                          "histogram_bins": {"<first>..<last>": count} (beyond; when any),
                                          "cap_hit_fraction_lo",
                                          "cap_hit_fraction_hi", "max_abs_spikes",
                                          "payload_bits": {"observed", "bounds"}, "entries"}}}],
     "totals": {"ann_pj": float, "snn": {"<T>": {"binary_pj", "graded_pj", "ratio_binary",
                                                 "ratio_graded"}}},
     "warnings": [str]}

Figures are per sample. A *synaptic layer* is a Conv, ConvTranspose, Gemm or MatMul with a
constant weight. Its inputs are found by tracing its data input back through the operations that
only route, scale or merge values (Mul/Div by constants, Add/Sub/Sum/Concat of branches, pooling,
Flatten/Reshape/Transpose, the Tile of the time folding, ...) to the ``MultiSpikeNeuron`` nodes
whose spikes reach it, or to an analog value (the graph input, or any other operation).

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

from pmsm.runtime.schema import NEURON_DOMAIN, NEURON_OP, TIMESTEPS_INPUT

__all__ = ["MAC_PJ", "SOP_PJ", "CONVENTION", "SpikeStats", "energy_report", "merge_spike_stats", "spike_stats",
           "synaptic_layers", "static_shapes"]

MAC_PJ = 4.6  # energy of one 32-bit float multiply-accumulate, 45 nm (Horowitz 2014), the field's usual figure
SOP_PJ = 0.9  # energy of one 32-bit float accumulate (a synaptic operation)

ANALOG_INPUT = "analog input"

CONVENTION = (
    "Per sample, summed over the T timesteps. ANN: E = MACs * 4.6 pJ. "
    "SNN: E = MACs(layers fed by analog values) * 4.6 pJ + SOPs * 0.9 pJ. "
    "The analog input is the same at every timestep, so a layer fed only by it (the first layer) "
    "computes its output once and pays its MACs once per sample; a layer fed by an analog value that "
    "varies in time (downstream of a neuron, e.g. an unquantized layer) pays its MACs at every step. "
    "A synaptic operation (SOP) is one incoming event times its fan-out. Events are counted two ways: "
    "binary, |s| events per neuron per step (spikes sent one at a time); graded, one event per neuron "
    "per step with s != 0 (one message carrying the signed count, as Loihi 2 graded spikes do). "
    "Fan-out of a layer = its MACs / the number of elements of its data input (per sample). "
    "Operations between a neuron and the layer that only route or scale values (Mul/Div by constants, "
    "Add of branches, Flatten/Reshape, pooling) are folded into the synapse: each neuron event reaches "
    "the layer's synapses through them, with its fan-out multiplied by the average number of pooling "
    "windows (or broadcast copies) an element belongs to. This is exact for average pooling and an "
    "upper bound for max pooling (only a window's maximum passes) and for Relu/Clip after a neuron. "
    "Connections without weights that end in a neuron (a residual Add or a pooling feeding a neuron "
    "directly) are counted in neither the ANN nor the SNN figure. "
    "ratio = SNN energy / ANN energy (below 1: the SNN needs less)."
)

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


def _is_neuron(node: onnx.NodeProto) -> bool:
    return node.domain == NEURON_DOMAIN and node.op_type == NEURON_OP


def neuron_keys(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Neuron nodes keyed as :class:`pmsm.runtime.execute.SpikingModel` keys their spikes."""
    keys: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if _is_neuron(node):
            key = node.name or node.output[0]
            if key in keys:
                key = f"{key}:{node.output[0]}"
            keys[key] = node
    return keys


def _data_input(model: onnx.ModelProto) -> Optional[str]:
    initializers = {init.name for init in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in initializers and vi.name != TIMESTEPS_INPUT]
    return names[0] if len(names) == 1 else None


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and outputs of nodes whose inputs are all constant."""
    constant = {init.name for init in model.graph.initializer}
    constant |= {init.values.name for init in model.graph.sparse_initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" or (
            not _is_neuron(node) and node.input and all(not i or i in constant for i in node.input)
        ):
            constant.update(o for o in node.output if o)
    return constant


def _downstream_of(model: onnx.ModelProto, seeds: set[str]) -> set[str]:
    reached = set(seeds)
    for node in model.graph.node:
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _elements(shape) -> Optional[int]:
    """Elements per sample of a shape with the batch first; None when unknown."""
    if shape is None or len(shape) == 0:
        return None if shape is None else 1
    if any(not isinstance(d, int) or d < 0 for d in shape[1:]):
        return None
    return int(np.prod(shape[1:], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Shapes at batch 1
# ---------------------------------------------------------------------------------------------


def _shape_copy(model: onnx.ModelProto, data: Optional[str]) -> onnx.ModelProto:
    """A plain-ONNX copy at batch 1 and T = 1: neurons and the time-folding Tile become Identity."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    timestep_dependent = _downstream_of(model, {TIMESTEPS_INPUT})
    for vi in graph.input:
        if vi.name == data and vi.type.tensor_type.HasField("shape") and vi.type.tensor_type.shape.dim:
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
        if _is_neuron(node) or fold:
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
            value = _attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                shapes[node.output[0]] = tuple(int(d) for d in value.dims)
    return shapes


def static_shapes(model: onnx.ModelProto, wanted: Optional[set[str]] = None) -> dict[str, tuple]:
    """Shapes (batch 1, T = 1) of the model's tensors: shape inference, then ORT for ``wanted`` gaps."""
    data = _data_input(model)
    copy = _shape_copy(model, data)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is a best effort here
        inferred = copy
    shapes = _shapes_of(inferred)
    missing = sorted(n for n in (wanted or ()) if n and n not in shapes)
    if missing and data is not None:
        shapes.update(_measured_shapes(copy, data, missing))
    return shapes


def _measured_shapes(copy: onnx.ModelProto, data: str, names: list[str]) -> dict[str, tuple]:
    """Shapes of ``names`` from one ONNX Runtime run of the batch-1 copy on zeros; {} on failure."""
    try:
        import onnxruntime as ort

        vi = next(v for v in copy.graph.input if v.name == data)
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if not dims or any(d is None or d <= 0 for d in dims[1:]):
            return {}
        dims[0] = 1
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        run = onnx.ModelProto()
        run.CopyFrom(copy)
        present = {o.name for o in run.graph.output}
        for name in names:
            if name not in present:
                run.graph.output.append(helper.make_empty_tensor_value_info(name))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        session = ort.InferenceSession(run.SerializeToString(), so, providers=["CPUExecutionProvider"])
        values = session.run(names, {data: np.zeros(dims, dtype=dtype)})
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
        if x is not None and len(x) == 2 and _attr(node, "transA", 0):
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
        self.data = _data_input(model)
        self.producer = {o: node for node in model.graph.node for o in node.output if o}
        self.neuron_key = {id(node): key for key, node in neuron_keys(model).items()}
        neuron_outputs = {n.output[0] for n in model.graph.node if _is_neuron(n)}
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
        if tensor == self.data:
            return Source("analog", ANALOG_INPUT, mult, False), []
        node = self.producer.get(tensor)
        if node is None:
            return Source("analog", f"graph input '{tensor}'", mult, False), []
        if _is_neuron(node):
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
            kernel = _attr(node, "kernel_shape", None)
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


def _signed_bits(magnitude: int) -> int:
    """Bits of a signed graded payload able to carry -magnitude..magnitude: 1 + ceil(log2(m + 1))."""
    return 1 + int(magnitude).bit_length()


EXACT_LEVELS = 64  # levels -64..64 are counted one by one; beyond, one bin per power of two


@dataclass
class SpikeStats:
    """What the report needs of one neuron layer's spikes ``[T, N, ...]``: sums and counts only,
    so that the statistics of chunks of samples merge exactly (:func:`merge_spike_stats`).

    The histogram is bounded whatever the bit width: levels ``-EXACT_LEVELS..EXACT_LEVELS`` one by
    one (``histogram``), larger magnitudes in bins ``[2^k + 1, 2^(k+1)]`` of each sign (``bins``:
    ``(first, last) -> count``), and the two extreme levels seen with their exact counts (what the
    cap-hit fractions need). A 16-bit activation layer (65,536 levels) has at most 129 + 2 x 10
    entries; one bar per level made a 32 MB report and 500 s of drawing (measured 2026-12-07).
    """

    steps: int
    samples: int
    elements: int  # neurons of the layer (per sample, per step)
    abs_sum: float
    nonzero: int
    ever: int  # (sample, neuron) pairs that spiked at some step
    histogram: dict  # level -> count, |level| <= EXACT_LEVELS
    bins: dict = field(default_factory=dict)  # (first level, last level) -> count, |level| > EXACT_LEVELS
    extremes: dict = field(default_factory=dict)  # the smallest and the largest level seen -> count

    @property
    def entries(self) -> int:
        return self.steps * self.samples * self.elements


def _wide_bin(level: int) -> tuple[int, int]:
    """The bin of a level of magnitude above EXACT_LEVELS: ``(first, last)`` in increasing order."""
    k = (abs(level) - 1).bit_length() - 1  # 65..128 -> 6, 129..256 -> 7, ...
    first, last = (1 << k) + 1, 1 << (k + 1)
    return (first, last) if level > 0 else (-last, -first)


def spike_stats(s: np.ndarray) -> SpikeStats:
    """Statistics of spikes ``[T, N, ...]``, one timestep at a time (memory)."""
    s = np.asarray(s)
    steps, samples = s.shape[0], s.shape[1]
    exact = np.zeros(2 * EXACT_LEVELS + 1, np.int64)
    bins: dict[tuple[int, int], int] = {}
    extremes: dict[int, int] = {}
    ever = None
    abs_sum, nonzero = 0.0, 0
    for step in range(steps):
        levels = np.rint(np.asarray(s[step], dtype=np.float64)).astype(np.int64).reshape(-1)
        if levels.size:
            small = np.abs(levels) <= EXACT_LEVELS
            exact += np.bincount(levels[small] + EXACT_LEVELS, minlength=exact.size)
            wide = levels[~small]
            if wide.size:
                # bin index by magnitude, vectorised: bit length of |level| - 1
                magnitude_bits = np.floor(np.log2(np.abs(wide) - 1)).astype(np.int64)
                for sign in (-1, 1):
                    chosen = magnitude_bits[(wide > 0) if sign > 0 else (wide < 0)]
                    for k, count in zip(*np.unique(chosen, return_counts=True)):
                        key = _wide_bin(sign * ((1 << int(k)) + 1))
                        bins[key] = bins.get(key, 0) + int(count)
            for level in (int(levels.min()), int(levels.max())):
                if level not in extremes:
                    extremes[level] = 0
            extremes = _keep_extremes(extremes)
            for level in extremes:
                extremes[level] += int(np.count_nonzero(levels == level))
        abs_sum += float(np.abs(s[step]).sum(dtype=np.float64))
        spiking = levels != 0
        nonzero += int(spiking.sum())
        ever = spiking if ever is None else ever | spiking
    histogram = {int(offset) - EXACT_LEVELS: int(exact[offset]) for offset in np.flatnonzero(exact)}
    return SpikeStats(steps=steps, samples=samples, elements=int(np.prod(s.shape[2:], dtype=np.int64)),
                      abs_sum=abs_sum, nonzero=nonzero, ever=int(ever.sum()) if ever is not None else 0,
                      histogram=histogram, bins=bins, extremes=extremes)


def _keep_extremes(extremes: dict) -> dict:
    """Only the smallest and the largest level (their counts as they are)."""
    if not extremes:
        return {}
    low, high = min(extremes), max(extremes)
    return {level: extremes[level] for level in {low, high}}


def merge_spike_stats(a: SpikeStats, b: SpikeStats) -> SpikeStats:
    histogram = dict(a.histogram)
    for level, count in b.histogram.items():
        histogram[level] = histogram.get(level, 0) + count
    bins = dict(a.bins)
    for key, count in b.bins.items():
        bins[key] = bins.get(key, 0) + count
    extremes = dict(a.extremes)
    for level, count in b.extremes.items():
        extremes[level] = extremes.get(level, 0) + count
    return SpikeStats(steps=a.steps, samples=a.samples + b.samples, elements=a.elements, abs_sum=a.abs_sum + b.abs_sum,
                      nonzero=a.nonzero + b.nonzero, ever=a.ever + b.ever, histogram=histogram, bins=bins,
                      extremes=_keep_extremes(extremes))


def _neuron_stats(stats: SpikeStats, lo: int, hi: int) -> dict:
    entries = stats.entries
    histogram = {level: stats.histogram[level] for level in sorted(stats.histogram) if stats.histogram[level]}
    extremes = {level: count for level, count in stats.extremes.items() if count}
    counted = {**histogram, **extremes}  # exact counts: every level of small magnitude, and the extremes
    max_abs = max((abs(level) for level in counted), default=0)
    record = {
        "entries": entries,
        "mean_abs_spikes_per_step": stats.abs_sum / entries if entries else 0.0,
        "silent_fraction": float(1.0 - stats.ever / (stats.samples * stats.elements)) if entries else 0.0,
        "histogram": {str(level): count for level, count in histogram.items()},
        "cap_hit_fraction_lo": counted.get(lo, 0) / entries if lo != 0 and entries else None,
        "cap_hit_fraction_hi": counted.get(hi, 0) / entries if hi != 0 and entries else None,
        "max_abs_spikes": int(max_abs),
        "payload_bits": {"observed": _signed_bits(max_abs), "bounds": _signed_bits(max(-lo, hi))},
    }
    if stats.bins:  # levels beyond +-EXACT_LEVELS, by power-of-two bins (the report stays small)
        record["histogram_bins"] = {f"{first}..{last}": count for (first, last), count in sorted(stats.bins.items())
                                    if count}
    return record


def _events(stats: SpikeStats) -> tuple[float, float]:
    """(binary, graded) events per sample, summed over the timesteps."""
    if stats.samples == 0:
        return 0.0, 0.0
    return stats.abs_sum / stats.samples, stats.nonzero / stats.samples


def _ratio(snn: Optional[float], ann: Optional[float]) -> Optional[float]:
    if snn is None or not ann:
        return None
    return float(snn / ann)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def energy_report(spiking: onnx.ModelProto, spikes_by_t: dict, samples: int) -> dict:
    """The ``"energy"`` section of the report (see the module docstring for its schema); the
    spikes of each neuron are arrays ``[T, N, ...]`` or their :class:`SpikeStats`."""
    warnings: list[str] = []
    neurons = neuron_keys(spiking)
    timesteps = sorted(int(t) for t in spikes_by_t)

    def spikes_of(t: int, key: str) -> Optional[SpikeStats]:
        by_name = spikes_by_t.get(t, spikes_by_t.get(str(t), {})) or {}
        s = by_name.get(key)
        if s is None:
            node = neurons.get(key)
            if node is not None:
                s = by_name.get(node.name, by_name.get(node.output[0]))
        if s is None or isinstance(s, SpikeStats):
            return s if s is None or s.steps == t else None
        s = np.asarray(s)
        return spike_stats(s) if s.ndim >= 2 and s.shape[0] == t else None

    layers = synaptic_layers(spiking)
    layer_records = []
    total_ann = 0.0
    ann_known = True
    snn_totals = {t: {"binary": 0.0, "graded": 0.0, "complete": True} for t in timesteps}
    for layer in layers:
        fan_out = layer.fan_out
        ann_pj = None if layer.macs is None else layer.macs * MAC_PJ
        if ann_pj is None:
            ann_known = False
            warnings.append(f"layer '{layer.name}' ({layer.op}): MACs unknown (shapes did not resolve)")
        else:
            total_ann += ann_pj
        neuron_sources = [s for s in layer.sources if s.kind == "neuron"]
        analog_sources = [s for s in layer.sources if s.kind == "analog"]
        record = {
            "name": layer.name,
            "op": layer.op,
            "macs": layer.macs,
            "inputs": [s.name for s in layer.sources],
            "input_elements": layer.input_elements,
            "fan_out": fan_out,
            "fan_out_by_input": {s.name: (None if fan_out is None else float(fan_out * s.multiplicity))
                                 for s in layer.sources},
            "energy_ann_pj": ann_pj,
            "per_T": {},
        }
        for t in timesteps:
            events_b = events_g = sops_b = sops_g = 0.0
            complete = fan_out is not None
            for source in neuron_sources:
                s = spikes_of(t, source.name)
                if s is None:
                    complete = False
                    warnings.append(f"T={t}: no spikes of neuron '{source.name}' (input of '{layer.name}')")
                    continue
                b, g = _events(s)
                events_b += b
                events_g += g
                if fan_out is not None:
                    sops_b += b * fan_out * source.multiplicity
                    sops_g += g * fan_out * source.multiplicity
            mac_ops = 0
            if analog_sources and layer.macs is not None:
                mac_ops = layer.macs * (t if any(s.time_varying for s in analog_sources) else 1)
            elif analog_sources:
                complete = False
            entry = {
                "events_binary": events_b,
                "events_graded": events_g,
                "sops_binary": sops_b if complete else None,
                "sops_graded": sops_g if complete else None,
                "mac_ops": mac_ops,
                "energy_binary_pj": mac_ops * MAC_PJ + sops_b * SOP_PJ if complete else None,
                "energy_graded_pj": mac_ops * MAC_PJ + sops_g * SOP_PJ if complete else None,
            }
            entry["ratio_binary"] = _ratio(entry["energy_binary_pj"], ann_pj)
            entry["ratio_graded"] = _ratio(entry["energy_graded_pj"], ann_pj)
            record["per_T"][str(t)] = entry
            totals = snn_totals[t]
            if complete:
                totals["binary"] += entry["energy_binary_pj"]
                totals["graded"] += entry["energy_graded_pj"]
            else:
                totals["complete"] = False
        layer_records.append(record)

    neuron_records = []
    for key, node in neurons.items():
        lo, hi = int(_attr(node, "lo", 0)), int(_attr(node, "hi", 0))
        record = {"name": key, "lo": lo, "hi": hi, "neurons": None, "per_T": {}}
        for t in timesteps:
            s = spikes_of(t, key)
            if s is None:
                warnings.append(f"T={t}: no spikes of neuron '{key}'")
                continue
            record["neurons"] = s.elements
            record["per_T"][str(t)] = _neuron_stats(s, lo, hi)
        neuron_records.append(record)

    snn = {}
    if layers:
        for t in timesteps:
            totals = snn_totals[t]
            if not totals["complete"]:
                warnings.append(f"T={t}: the SNN total leaves out what is unknown (see above)")
            binary, graded = float(totals["binary"]), float(totals["graded"])
            snn[str(t)] = {"binary_pj": binary, "graded_pj": graded,
                           "ratio_binary": _ratio(binary, total_ann), "ratio_graded": _ratio(graded, total_ann)}
    else:
        warnings.append("no synaptic layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) found")
    if not ann_known:
        warnings.append("the ANN total leaves out layers whose MACs are unknown")
    return {
        "constants": {"mac_pj": MAC_PJ, "sop_pj": SOP_PJ},
        "convention": CONVENTION,
        "samples": int(samples),
        "timesteps": timesteps,
        "layers": layer_records,
        "neuron_layers": neuron_records,
        "totals": {"ann_pj": float(total_ann), "snn": snn},
        "warnings": list(dict.fromkeys(warnings)),
    }


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
            product_macs += _elements(y) * int(a[-1] if not _attr(node, "transA", 0) else a[-2])
    total = spiking + analog + product_macs
    return {
        "macs_per_sample": total,
        "spiking_synapses": spiking,
        "analog_synapses": analog,
        "activation_products": product_macs,
        "spiking_share": spiking / total if total else None,
    }
