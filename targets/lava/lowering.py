"""Lower a checked PMSM NIR graph (``GraphView``) to a ``Plan`` of Lava processes.

Choices that keep the process count (the main cost in Lava) low:

- Flatten is a virtual reshape of the Lava port; the following Dense permutes its weight
  columns to undo Lava's (W, H, C) order.
- Lava's Dense/Conv have no bias: a bias travels as a constant "pending bias" until a neuron
  (or the output) absorbs it; through Dense/Conv/pooling it is mapped by the same operation.
- A Scale right after a Dense/Conv that feeds nothing else is folded into its weights
  (``(w * s) . x`` instead of ``(w . x) * s``: a float re-association).
- Fan-in (residual adds) is free: a Lava InPort sums everything connected to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import numpy as np
from lava.proc.conv import utils as conv_utils

from pmsm.targets.lava.graph import GraphView
from pmsm.targets.lava.kernels import pool_whc
from pmsm.targets.lava.layout import conv_weight, lava_shape, layout_perm, single_to_lava, wh
from pmsm.targets.lava.plan import CONVERTERS, Plan, PlanInput, PlanOutput, Step, Term, input_key, is_input, spike_bits
from pmsm.targets.nir import dialect
from pmsm.targets.nir.dialect import normalise

ANALOG_BITS = 24    # message width assumed for the analog input and for currents


@dataclass
class _Value:
    """What one NIR node produces: the sum of ``terms`` plus a constant ``bias``."""

    terms: list
    nir_shape: tuple
    lava_shape: tuple
    perm: object            # np.ndarray | None, see layout.py
    bias: object            # np.ndarray in Lava shape | None
    bits: int               # message bits if this value is sent as graded spikes


def lower(view: GraphView, fixed_point: bool = False, synapse_latency: int = 1) -> Plan:
    """``synapse_latency``: steps a Dense/Conv adds (1: Lava's own processes; 0: synapses computed
    in the same process and step as their neuron, where the plan needs no delay steps)."""
    if synapse_latency not in (0, 1):
        raise ValueError(f"synapse_latency must be 0 or 1, got {synapse_latency!r}")
    return _Lowering(view, fixed_point, synapse_latency).run()


class _Lowering:
    def __init__(self, view: GraphView, fixed_point: bool, synapse_latency: int):
        self.view = view
        self.fixed = fixed_point
        self.hop = synapse_latency
        self.steps: list[Step] = []
        self.values: dict[str, _Value] = {}
        self._delays: dict[tuple, Term] = {}

    def run(self) -> Plan:
        view = self.view
        handlers = {nir.Input: self._input, nir.Flatten: self._flatten, nir.Affine: self._dense,
                    nir.Linear: self._dense, nir.Conv1d: self._conv, nir.Conv2d: self._conv, nir.AvgPool2d: self._pool,
                    nir.SumPool2d: self._pool, nir.Scale: self._scale, nir.IF: self._neuron}
        for name in view.order:
            node = view.nodes[name]
            if isinstance(node, nir.Output):
                continue
            self.values[name] = handlers[type(node)](name, node)
        outputs = [(name, *self._output(name)) for name in view.outputs]
        # every output port delivers sample time t at the same step (the network's depth)
        aligned = self._align([t for _, terms, _ in outputs for t in terms], view.outputs[0])
        ports, start = [], 0
        for name, terms, value in outputs:
            ports.append(PlanOutput(name, aligned[start:start + len(terms)], value.nir_shape, value.lava_shape,
                                    value.perm))
            start += len(terms)
        inputs = [PlanInput(name, view.shapes[name], lava_shape(view.shapes[name]), layout_perm(view.shapes[name]))
                  for name in view.inputs]
        return Plan(self.steps, inputs, ports)

    # ----------------------------------------------------------------- helpers
    def _add(self, step: Step) -> int:
        self.steps.append(step)
        return len(self.steps) - 1

    def _gather(self, name: str) -> _Value:
        """Fan-in: the sum of all predecessors' values (biases add up)."""
        values = [self.values[p] for p in self.view.preds[name]]
        first = values[0]
        terms, bias, bits = [], None, 0
        for value in values:
            if not _same_perm(value.perm, first.perm):
                value = self._permute(value, first.perm, name)
            terms += value.terms
            bias = _add_bias(bias, value.bias)
            bits = max(bits, value.bits)
        return _Value(terms, first.nir_shape, first.lava_shape, first.perm, bias, bits)

    def _align(self, terms: list, name: str) -> list:
        """Delay every term to the latest latency among them (one delay step per term)."""
        target = max(t.latency for t in terms)
        out = []
        for term in terms:
            if term.latency == target:
                out.append(term)
                continue
            if self._absorb_delay(term, target):
                out.append(Term(term.src, target, term.shape))
                continue
            key = (term.src, term.shape, target - term.latency)
            if key not in self._delays:
                ones = np.ones(term.shape)
                idx = self._add(Step("elementwise", name, [term], term.shape, term.shape, target,
                                     {"scale": ones, "bias": np.zeros(term.shape),
                                      "delay": target - term.latency, "role": "delay"}))
                self._delays[key] = Term(idx, target, term.shape)
            out.append(self._delays[key])
        return out

    def _absorb_delay(self, term: Term, target: int) -> bool:
        """A Scale step feeding only this consumer can do the delay itself: one process less."""
        if is_input(term.src):
            return False
        step = self.steps[term.src]
        if (step.kind != "elementwise" or step.params["role"] != "scale" or step.params["delay"]
                or len(self.view.succs[step.node]) != 1 or term.shape != step.out_shape):
            return False
        step.params["delay"] = target - step.latency
        step.latency = target
        return True

    def _elementwise(self, value: _Value, name: str, scale, bias, role: str) -> _Value:
        terms = self._align(value.terms, name)
        shape = value.lava_shape
        idx = self._add(Step("elementwise", name, terms, shape, shape, terms[0].latency,
                             {"scale": np.broadcast_to(scale, shape).astype(np.float64),
                              "bias": np.broadcast_to(bias, shape).astype(np.float64),
                              "delay": 0, "role": role}))
        return _Value([Term(idx, terms[0].latency, shape)], value.nir_shape, shape, value.perm,
                      None, ANALOG_BITS)

    def _materialize_bias(self, value: _Value, name: str) -> _Value:
        if value.bias is None:
            return value
        return self._elementwise(value, name, 1.0, value.bias, "bias")

    def _wrap_non_converters(self, terms: list, name: str) -> list:
        """Fixed point: route terms whose scale is fixed (spikes, input, pooled) through an
        identity elementwise step, so the receiving port can choose its own scale."""
        out = []
        for term in terms:
            if not is_input(term.src) and self.steps[term.src].kind in CONVERTERS:
                out.append(term)
                continue
            idx = self._add(Step("elementwise", name, [term], term.shape, term.shape, term.latency,
                                 {"scale": np.ones(term.shape), "bias": np.zeros(term.shape),
                                  "delay": 0, "role": "rescale"}))
            out.append(Term(idx, term.latency, term.shape))
        return out

    def _permute(self, value: _Value, target_perm, name: str) -> _Value:
        """Reorder a 1-D value into another element order with a permutation Dense."""
        n = int(np.prod(value.lava_shape))
        src = np.arange(n) if value.perm is None else np.asarray(value.perm)
        dst = np.arange(n) if target_perm is None else np.asarray(target_perm)
        where = np.empty(n, dtype=np.int64)
        where[src] = np.arange(n)           # NIR index -> position in value
        matrix = np.zeros((n, n))
        matrix[np.arange(n), where[dst]] = 1.0
        # the pending bias rides through the matrix like the signal
        return self._dense_value(value, matrix, None, name, (n,), target_perm)

    def _dense_value(self, value: _Value, weights, bias, name, out_nir_shape, out_perm=None) -> _Value:
        terms = self._align(value.terms, name)
        lat = terms[0].latency + self.hop
        out = (weights.shape[0],)
        idx = self._add(Step("dense", name, terms, value.lava_shape, out, lat,
                             {"weights": weights, "message_bits": value.bits}))
        if value.bias is not None:
            bias = _add_bias(bias, weights @ value.bias.reshape(-1))
        return _Value([Term(idx, lat, out)], out_nir_shape, out, out_perm, bias, ANALOG_BITS)

    # ---------------------------------------------------------------- handlers
    def _input(self, name, node) -> _Value:
        shape = self.view.shapes[name]
        lshape = lava_shape(shape)
        key = input_key(self.view.inputs.index(name))
        return _Value([Term(key, 0, lshape)], shape, lshape, layout_perm(shape), None, ANALOG_BITS)

    def _flatten(self, name, node) -> _Value:
        value = self._gather(name)
        n = int(np.prod(value.nir_shape))
        terms = [Term(t.src, t.latency, (n,)) for t in value.terms]
        bias = None if value.bias is None else value.bias.reshape(-1)
        # C-order flattening of the Lava tensor keeps the element permutation.
        return _Value(terms, (n,), (n,), value.perm, bias, value.bits)

    def _dense(self, name, node) -> _Value:
        value = self._gather(name)
        weights = np.asarray(node.weight, dtype=np.float64)
        if value.perm is not None:
            weights = weights[:, value.perm]
        bias = None
        if isinstance(node, nir.Affine) and np.any(np.asarray(node.bias) != 0):
            bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64), (weights.shape[0],)).copy()
        return self._dense_value(value, weights, bias, name, self.view.shapes[name])

    def _conv(self, name, node) -> _Value:
        pool = dialect.float32_pool(node, name)
        if pool is not None and not self.fixed:
            return self._float32_pool(name, node, pool)
        # fixed point: integers cannot round to float32, so the pool runs as its weights, the
        # real-number factor on the diagonal (a tie may round the other way, as before §5a)
        value = self._gather(name)
        geo = self.view.convs[name]
        terms = self._align(value.terms, name)
        lat = terms[0].latency + self.hop
        out_nir = self.view.shapes[name]
        out = lava_shape(out_nir)
        weight = np.asarray(node.weight, dtype=np.float64)
        if isinstance(node, nir.Conv1d):  # (C, L) runs as (C, 1, L): Lava's Conv is 2-D
            weight = weight[:, :, None, :]
        weight_oihw, groups = ungroup(weight, geo.groups)
        weight = conv_weight(weight_oihw)
        params = {"weight": weight, "padding": wh(geo.padding), "stride": wh(geo.stride),
                  "dilation": wh(geo.dilation), "groups": groups, "message_bits": value.bits}
        idx = self._add(Step("conv", name, terms, value.lava_shape, out, lat, params))
        bias = None
        if node.bias is not None and np.any(np.asarray(node.bias) != 0):
            bias = np.broadcast_to(np.asarray(node.bias, dtype=np.float64).reshape(-1), out).copy()
        if value.bias is not None:
            carried = conv_utils.conv(value.bias, weight, weight.shape[1:3], params["stride"],
                                      params["padding"], params["dilation"], groups)
            bias = _add_bias(bias, carried)
        return _Value([Term(idx, lat, out)], out_nir, out, layout_perm(out_nir), bias, ANALOG_BITS)

    def _float32_pool(self, name, node, pool) -> _Value:
        """ONNX's float32 average pool over one axis (docs/nir.md §5a): a pooling step computing in
        float32, fed by spike counts (no carried bias: the writer marks only a pool of a neuron's
        counts), feeding one neuron."""
        value = self._gather(name)
        if value.bias is not None:
            raise AssertionError(f"{name}: a float32 average pool with an offset in front of it")
        geo = self.view.convs[name]
        terms = self._align(value.terms, name)
        out_nir = self.view.shapes[name]
        out = lava_shape(out_nir)
        params = {"mode": "float32_avg", "kernel": (int(np.asarray(node.weight).shape[2]), 1),
                  "stride": wh(geo.stride), "padding": wh(geo.padding), "pool": pool}
        idx = self._add(Step("pool", name, terms, value.lava_shape, out, terms[0].latency, params))
        return _Value([Term(idx, terms[0].latency, out)], out_nir, out, layout_perm(out_nir), None, ANALOG_BITS)

    def _pool(self, name, node) -> _Value:
        value = self._gather(name)
        geo = self.view.pools[name]
        if geo.mode == "max":
            value = self._materialize_bias(value, name)   # max does not commute with a bias
        terms = self._align(value.terms, name)
        out_nir = self.view.shapes[name]
        out = lava_shape(out_nir)
        params = {"mode": geo.mode, "kernel": wh(geo.kernel), "stride": wh(geo.stride),
                  "padding": wh(geo.padding)}
        idx = self._add(Step("pool", name, terms, value.lava_shape, out, terms[0].latency, params))
        bias = None
        if value.bias is not None:
            bias = pool_whc(value.bias, params["kernel"], params["stride"], params["padding"], geo.mode)
        area = geo.kernel[0] * geo.kernel[1]
        bits = {"max": value.bits, "sum": value.bits + int(np.ceil(np.log2(area))),
                "avg": ANALOG_BITS}[geo.mode]
        return _Value([Term(idx, terms[0].latency, out)], out_nir, out, layout_perm(out_nir),
                      bias, min(bits, ANALOG_BITS))

    def _scale(self, name, node) -> _Value:
        value = self._gather(name)
        scale = np.broadcast_to(np.asarray(node.scale, dtype=np.float64), value.nir_shape)
        scale = single_to_lava(scale, value.lava_shape, value.perm)
        bias = None if value.bias is None else value.bias * scale
        if self._fold_scale(name, value, scale):
            return _Value(value.terms, value.nir_shape, value.lava_shape, value.perm, bias, value.bits)
        return self._elementwise(value, name, scale, 0.0 if bias is None else bias, "scale")

    def _fold_scale(self, name, value: _Value, scale) -> bool:
        preds = self.view.preds[name]
        if len(preds) != 1 or len(value.terms) != 1 or len(self.view.succs[preds[0]]) != 1:
            return False
        term = value.terms[0]
        if is_input(term.src):
            return False
        step = self.steps[term.src]
        if step.node != preds[0] or step.kind not in ("dense", "conv") or term.shape != step.out_shape:
            return False
        if step.kind == "dense":
            step.params["weights"] = step.params["weights"] * scale.reshape(-1, 1)
            return True
        per_channel = scale[:1, :1, :]
        if not np.all(scale == per_channel):
            return False        # a per-pixel scale cannot live in a convolution kernel
        step.params["weight"] = step.params["weight"] * per_channel.reshape(-1, 1, 1, 1)
        return True

    def _neuron(self, name, node) -> _Value:
        value = self._gather(name)
        params = self.view.neurons[name]
        terms = self._align(value.terms, name)
        if self.fixed:
            terms = self._wrap_non_converters(terms, name)
        bias = np.zeros(value.lava_shape) if value.bias is None else value.bias
        onnx_node = str(normalise(node.metadata or {}).get("pmsm", {}).get("onnx_node") or name)
        idx = self._add(Step("neuron", name, terms, value.lava_shape, value.lava_shape,
                             terms[0].latency,
                             {"lo": params.lo, "hi": params.hi, "v_init": params.v_init,
                              "rounding": params.rounding, "bias": bias, "onnx_node": onnx_node,
                              "nir_shape": value.nir_shape, "perm": value.perm}))
        return _Value([Term(idx, terms[0].latency, value.lava_shape)], value.nir_shape,
                      value.lava_shape, value.perm, None, spike_bits(params.lo, params.hi))

    def _output(self, name):
        value = self._materialize_bias(self._gather(name), name)
        terms = self._align(value.terms, name)
        if any(is_input(t.src) for t in terms):
            # A hierarchical in-port cannot feed the out-port directly.
            value = self._elementwise(_Value(terms, value.nir_shape, value.lava_shape, value.perm,
                                             None, value.bits), name, 1.0, 0.0, "rescale")
            terms = value.terms
        if self.fixed and len(terms) > 1:
            terms = self._wrap_non_converters(terms, name)
        return terms, value


def ungroup(weight: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """A grouped convolution written as a dense one (zero weights across groups, as the NIR
    writer does for nir 1.0.8) back to its groups: (kernel (O, I/groups, kh, kw), groups).
    Dropping exact zeros leaves every sum's value as it was; the work shrinks by the group
    count (a depthwise 960-channel layer: 960x)."""
    if groups != 1:
        return weight, groups
    out_channels, in_channels = weight.shape[:2]
    used = np.any(weight != 0, axis=(2, 3))
    for candidate in sorted(_divisors(math.gcd(out_channels, in_channels)), reverse=True):
        if candidate == 1:
            break
        per_out, per_in = out_channels // candidate, in_channels // candidate
        blocks = used.reshape(candidate, per_out, candidate, per_in).any(axis=(1, 3))
        if not np.any(blocks & ~np.eye(candidate, dtype=bool)):
            rows = np.arange(out_channels) // per_out
            columns = rows[:, None] * per_in + np.arange(per_in)
            return weight[np.arange(out_channels)[:, None], columns], candidate
    return weight, 1


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def _same_perm(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _add_bias(a, b):
    if a is None:
        return None if b is None else np.array(b, dtype=np.float64)
    if b is None:
        return a
    return a + b
