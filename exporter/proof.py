"""Prove each derived neuron by evaluation: the source's quantizer and its replacement (pre-scaling,
neuron at T = 1, de-quantization) must agree on every probe, or the quantizer is refused.

A quantizer is recognised by what it computes, whatever idiom wrote it; the recognised parameters
(bounds, rounding, initial membrane, clamps absorbed) are then checked rather than trusted. Both
sides are cut out of their graphs between the same entry tensor and the tensor leaving the
quantizer, and run by ONNX Runtime (optimizations off, this package's kernels registered) on a
dense probe set in the entry's units: for every rounding boundary of every level from ``lo`` to
``hi + 1``, the float nearest to it and the 4 floats on either side, plus both clip edges and
beyond, zeros of both signs, and values spread over the whole range. Per-channel parameters get
their own probes per channel.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pmsm.exporter import degenerate
from pmsm.exporter.evaluation import EvaluationError, Job, evaluate_many
from pmsm.exporter.quantizers import NEURON_DOMAIN, NeuronRecord
from pmsm.runtime.neuron import NeuronParams
from pmsm.runtime.schema import NEURON_OP, TIMESTEPS_INPUT, is_neuron

Problem = tuple[str, str, str]
ULPS = 4  # floats probed on each side of a rounding boundary
SPREAD = 257  # probes spread evenly over the levels' range, per channel
MAX_PROBE_ELEMENTS = 1 << 22


def prove(source: onnx.ModelProto, rewritten: onnx.ModelProto, records: list[NeuronRecord]) -> list[Problem]:
    """Every record whose source quantizer and replacement disagree on a probe, as a problem."""
    source_view, rewritten_view = _View(source), _View(rewritten)
    # a quantizer's input may be the de-quantized output of the one before: renamed by its rewrite
    to_source = {new: old for record in records for old, new in record.exits}
    # parameters no neuron can take (a zero scale, L = 0) are refused before any proof: the
    # arithmetic around the rounding core is the source's own and the proof never sees it
    degenerate_problems = degenerate.problems(source_view, records, to_source)
    if degenerate_problems:
        raise degenerate.DegenerateQuantizerError(degenerate_problems)
    problems, cases = [], []
    for record in records:
        found = _cases(source_view, rewritten_view, record, to_source.get(record.entry, record.entry))
        if isinstance(found, str):
            problems.append((record.name, record.producer, found))
        else:
            cases += found
    if not cases:
        return problems
    ends = [Job(c.pre, c.record.entry, c.z, np.stack([np.zeros(c.tail, np.float32), np.ones(c.tail, np.float32)]))
            for c in cases]
    failed: dict[str, str] = {}
    scaled = evaluate_many(rewritten_view, [job for job in ends if job.nodes], failed)
    for case, job in zip(cases, ends):
        if case.record.name in failed:
            continue
        zs = scaled.get(id(job), job.x)
        try:
            case.probes = _probes(zs, case.record.params, case.tail)
        except EvaluationError as error:
            failed[case.record.name] = str(error)
    live = [c for c in cases if c.record.name not in failed]
    wanted = [Job(c.before, c.source_entry, c.source_exit, c.probes, c.record.name) for c in live]
    got = [Job(_one_step(c.after), c.record.entry, c.new_exit, c.probes, c.record.name) for c in live]
    want_values = evaluate_many(source_view, wanted, failed)
    got_values = evaluate_many(rewritten_view, got, failed)
    reported = set()
    for case, want_job, got_job in zip(live, wanted, got):
        name = case.record.name
        if name in failed or name in reported:
            continue
        reason = _compare(case, want_values[id(want_job)], got_values[id(got_job)])
        if reason:
            problems.append((name, case.record.producer, reason))
            reported.add(name)
    for case in cases:
        if case.record.name in failed and case.record.name not in reported:
            problems.append((case.record.name, case.record.producer,
                             f"cannot evaluate the quantizer to prove it: {failed[case.record.name]}"))
            reported.add(case.record.name)
    return problems


class _Case:
    """One (quantizer, exit) to prove: both regions, the pre-scaling, the probe layout."""

    def __init__(self, record, source_entry, source_exit, new_exit, before, after, pre, z, tail):
        self.record, self.source_entry, self.source_exit, self.new_exit = record, source_entry, source_exit, new_exit
        self.before, self.after, self.pre, self.z, self.tail = before, after, pre, z, tail
        self.probes: np.ndarray | None = None


def _cases(source: "_View", rewritten: "_View", record: NeuronRecord, source_entry: str):
    if not record.entry or not record.exits:
        return []  # nothing leaves the quantizer: no value to compare
    cases = []
    for source_exit, new_exit in record.exits:
        before = source.region(source_entry, source_exit)
        after = rewritten.region(record.entry, new_exit)
        if before is None or after is None:
            return ("the quantizer reads tensors other than its input, so it cannot be proven; "
                    "write it as an element-wise chain of its input and constants")
        neuron = next((n for n in after if is_neuron(n)), None)
        if neuron is None:
            continue
        tail = _tail_shape(source, before, source_entry)
        if tail is None:
            return "per-channel parameters whose layout against the input is unknown (run shape inference)"
        pre = rewritten.region(record.entry, neuron.input[0]) or []
        cases.append(_Case(record, source_entry, source_exit, new_exit, before, after, pre, neuron.input[0], tail))
    return cases


def _compare(case: _Case, want: np.ndarray, got: np.ndarray) -> str:
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    if np.all(same):
        return ""
    params = case.record.params
    index = np.flatnonzero(~same.reshape(-1))[0]
    x, a, b = case.probes.reshape(-1)[index], want.reshape(-1)[index], got.reshape(-1)[index]
    return (f"the derived neuron (lo={params.lo}, hi={params.hi}, {params.rounding}, v_init={params.v_init}) "
            f"differs from the source quantizer on {int((~same).sum())} of {same.size} probes, e.g. input "
            f"{float(x)!r}: source {float(a)!r}, neuron {float(b)!r}")


class _View:
    """A model's nodes indexed by output, with the constants they can read."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        self.order = {id(n): i for i, n in enumerate(model.graph.node)}  # graph order, without a scan per region
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.ranks = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
                if vi.type.tensor_type.HasField("shape"):
                    self.ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        except Exception:  # noqa: BLE001 - ranks are a help for per-channel probes only
            pass

    def region(self, entry: str, exit: str) -> list[onnx.NodeProto] | None:
        """The nodes computing ``exit`` from ``entry`` and constants, in graph order; None when
        ``exit`` also depends on another input."""
        wanted, stack, seen = {}, [exit], set()
        while stack:
            name = stack.pop()
            if not name or name in (entry, TIMESTEPS_INPUT) or name in seen or name in self.initializers:
                continue
            seen.add(name)
            node = self.producers.get(name)
            if node is None:
                return None
            wanted[id(node)] = node
            stack.extend(node.input)
        return sorted(wanted.values(), key=lambda n: self.order[id(n)])

    def constants_of(self, nodes: list[onnx.NodeProto]) -> list[onnx.TensorProto]:
        used = {name for n in nodes for name in n.input}
        return [t for name, t in self.initializers.items() if name in used]


def _tail_shape(view: _View, nodes: list[onnx.NodeProto], entry: str) -> tuple[int, ...] | None:
    """The shape, after the batch, that the region's constants broadcast over (1 where they are scalar)."""
    rank = view.ranks.get(entry)
    shapes = []
    for node in nodes:
        for index, name in enumerate(node.input):
            tensor = view.initializers.get(name)
            if tensor is None or int(np.prod(tensor.dims)) <= 1:
                continue
            dims = list(tensor.dims)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(dims) == 1 and index > 0:
                if rank is None:
                    return None
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                axis = axis + rank if axis < 0 else axis
                dims = [1] * rank
                dims[axis] = tensor.dims[0]
            shapes.append(dims)
    if not shapes:
        return ()
    width = max(len(s) for s in shapes) if rank is None else rank
    tail = [1] * width
    for dims in shapes:
        for i, d in enumerate(dims[::-1]):
            if i < width:
                tail[width - 1 - i] = max(tail[width - 1 - i], d)
    return tuple(tail[1:]) if width else ()


def _probes(zs: np.ndarray, params: NeuronParams, tail: tuple[int, ...]) -> np.ndarray:
    """Probes ``[P, *tail]`` in the entry's units around every rounding boundary of the neuron, from
    ``zs``: the neuron's input at entry values 0 and 1 (the pre-scaling as ``z = a x + b``)."""
    b, a = zs[0].astype(np.float64), (zs[1] - zs[0]).astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(a == 0):
        raise EvaluationError("the pre-scaling is not an invertible scaling of the input")
    levels = np.arange(params.lo, params.hi + 2, dtype=np.float64)
    offset = 0.0 if params.rounding == "floor" else -0.5
    boundaries = levels + offset - params.v_init  # z where the rounded value steps to the next level
    edges = np.array([params.lo - 3.0, params.hi + 3.0])
    spread = np.linspace(params.lo - 1.5, params.hi + 1.5, SPREAD)
    targets = np.concatenate([boundaries, edges, spread])
    nearest = ((targets[:, None] - b.reshape(1, -1)) / a.reshape(1, -1)).astype(np.float32)  # [targets, elements]
    steps = [nearest]
    up, down = nearest.copy(), nearest.copy()
    for _ in range(ULPS):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        steps += [up, down]
    zeros = np.zeros((2, nearest.shape[1]), np.float32)
    zeros[1] = -0.0
    probes = np.concatenate(steps + [zeros]).astype(np.float32)
    if probes.size > MAX_PROBE_ELEMENTS:
        keep = max(1, MAX_PROBE_ELEMENTS // probes.shape[1])
        probes = probes[np.linspace(0, len(probes) - 1, keep).astype(int)]
    return np.ascontiguousarray(probes.reshape((len(probes),) + tail))


def _one_step(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The region with each neuron as its first timestep: ``MultiSpikeNeuron(z, v_init)``."""
    out = []
    for node in nodes:
        if is_neuron(node):
            v_init = next(a.f for a in node.attribute if a.name == "v_init")
            membrane = f"{node.output[0]}/membrane0"
            out.append(helper.make_node("Constant", [], [membrane], name=membrane,
                                        value=numpy_helper.from_array(np.array(np.float32(v_init)), membrane)))
            step = helper.make_node(NEURON_OP, [node.input[0], membrane], [node.output[0], f"{membrane}/next"],
                                    name=node.name, domain=NEURON_DOMAIN)
            step.attribute.extend(node.attribute)
            out.append(step)
        else:
            out.append(node)
    return out
