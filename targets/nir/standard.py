"""The standard-only profile of a PMSM NIR graph (docs/nir.md §9): binary ``IF`` units only, which a
consumer following NIR's ``IF`` literally (one spike when ``v > v_threshold``, reset to ``v_reset``)
computes correctly at ``T = 1``.

A PMSM neuron with counts ``lo..hi`` becomes ``K = hi - lo`` binary units, one per level boundary
``j`` (``lo < j <= hi``): a positive unit fires when the count reaches ``j`` (``j >= 1``), a negative
unit when it stays below ``j`` (``j <= 0``), so ``count = sum(positive) - sum(negative)``. Each
unit's threshold is the float32 boundary of ``clip(R(v_init + z))`` itself, found by bisection over
float32 with the runtime's own neuron, so floor and half-even rounding, ties and ``v_init`` are
exact. The units of one neuron layer are one ``IF`` node, stacked along the first axis (block ``k``
holds level ``lo + 1 + k``; thresholds per element); the ``+1/-1`` recombination is folded into the
weights of whatever reads them, so each layer stays one linear node and a network without residual
sums stays a chain. A max pool becomes a sum pool of the units followed by a threshold unit (``>= 1``
for positive units, all of the window for negative ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from pmsm.runtime.base.errors import UnsupportedModelError
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.nir import dialect, ops
from pmsm.targets.nir.interpreter import topological

KEY = "pmsm_standard"  # node metadata naming the PMSM neuron and level a unit encodes (reports only)
MAX_UNITS = 16  # K = hi - lo; above, the weights between two layers grow by more than 256x


@dataclass
class Growth:
    neurons_pmsm: int
    neurons_standard: int
    weights_pmsm: int
    weights_standard: int
    max_units: int  # the largest K

    def to_json(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- unit thresholds


def _order(f: np.ndarray) -> np.ndarray:
    """float32 -> int64 that sorts like the floats."""
    i = np.asarray(f, np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _unorder(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.int64)
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _count(z: np.ndarray, p: NeuronParams) -> np.ndarray:
    return step(initial_membrane(z.shape, p), z, p)[1]


def units(p: NeuronParams) -> tuple[np.ndarray, np.ndarray]:
    """``(sign, threshold)`` per unit: a unit's input is ``sign * z`` and it fires when that input
    exceeds ``threshold``; exactly when the PMSM neuron's first-step count reaches its level."""
    levels = np.arange(p.lo + 1, p.hi + 1)
    lo_key = np.full(levels.shape, _order(np.float32(-2.0 ** 30)))
    hi_key = np.full(levels.shape, _order(np.float32(2.0 ** 30)))
    # invariant: count(unorder(hi_key)) >= level > count(unorder(lo_key))
    while np.any(hi_key - lo_key > 1):
        mid = (lo_key + hi_key) // 2
        reached = _count(_unorder(mid), p) >= levels
        hi_key = np.where(reached, mid, hi_key)
        lo_key = np.where(reached, lo_key, mid)
    first = _unorder(hi_key)  # the smallest float32 input whose count reaches the level
    below = _unorder(lo_key)  # the largest one whose count does not
    sign = np.where(levels >= 1, 1.0, -1.0)
    # positive: z > below  <=>  z >= first;  negative: -z > -first  <=>  z < first
    threshold = np.where(levels >= 1, below, -first).astype(np.float32)
    return sign.astype(np.float32), threshold


# ----------------------------------------------------------------------------- the rewrite


@dataclass
class _Value:
    """What an original node computes, as held by a node of the standard graph: ``K`` blocks stacked
    along the first axis (channels, or features), each of the original node's shape; the value is
    ``sum_k signs[k] * block_k``. A plain value is one block of sign +1."""

    node: str
    signs: np.ndarray
    unit: bool  # the blocks are binary units of one level each (a max pool can take those)


def _plain(node: str) -> _Value:
    return _Value(node, np.ones(1), False)


def _diag(scale, shape, label: str, name: str) -> np.ndarray:
    """An elementwise factor as weights: [C, C, 1, 1] (one value per channel) or [F, F]."""
    c = np.broadcast_to(np.asarray(scale, np.float64), shape)
    if len(shape) == 3:
        per = c.reshape(shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise UnsupportedModelError(label, "nir", [(name, "Scale", "a factor that varies within a channel "
                                                        "cannot become a 1x1 convolution of units")])
        return np.diag(per[:, 0])[:, :, None, None]
    if len(shape) == 2:  # (C, L): a Conv1d of kernel 1
        per = c.reshape(shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise UnsupportedModelError(label, "nir", [(name, "Scale", "a factor that varies along the positions "
                                                        "cannot become a kernel-1 Conv1d of units")])
        return np.diag(per[:, 0])[:, :, None]
    return np.diag(c.reshape(-1))


def _stacked(w: np.ndarray, b: np.ndarray, out_signs: np.ndarray, in_signs: np.ndarray):
    """Weights ``[K_out * O, K_in * C, ...]`` of block ``(k_out, k_in)`` ``out_signs[k_out] *
    in_signs[k_in] * w``: each output unit reads the signed sum of the input blocks."""
    blocks = np.einsum("i,j,oc...->iojc...", out_signs, in_signs, w)
    shape = (len(out_signs) * w.shape[0], len(in_signs) * w.shape[1]) + w.shape[2:]
    return blocks.reshape(shape), np.outer(out_signs, b).reshape(-1)


def _ints(v) -> tuple[int, ...]:
    return tuple(int(a) for a in np.asarray(v).reshape(-1))


class _Rewrite:
    """One IF node per PMSM neuron layer, its ``K`` units stacked along the first axis (thresholds
    per element), and one linear node per (source, neuron layer): a network without residual sums
    becomes a chain, which executors that cannot sum fan-in in order (nirtorch's deprecated
    ``GraphExecutor``, used by norse and sinabs) still run."""

    def __init__(self, graph: nir.NIRGraph, label: str):
        self.g = graph
        self.label = label
        self.order = topological(graph, label)
        self.src = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
        self.dst = {n: [d for s, d in graph.edges if s == n] for n in graph.nodes}
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[str, _Value] = {}

    def refuse(self, name: str, why: str):
        raise UnsupportedModelError(self.label, "nir", [(name, type(self.g.nodes[name]).__name__, why)])

    def shape_of(self, name: str) -> tuple:
        return _ints(self.g.nodes[name].output_type["output"])

    def add(self, name: str, node: nir.NIRNode, inputs: list[str]) -> str:
        base, k = name, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        self.nodes[name] = node
        self.edges += [(i, name) for i in inputs]
        return name

    def _weights(self, name: str, in_shape: tuple):
        """``(weight, bias, build)`` of the linear node ``name`` reading one block of ``in_shape``:
        ``build(w, b)`` makes a node of stacked weights."""
        node = self.g.nodes[name]
        if isinstance(node, nir.Conv2d):
            def build(w, b):
                return nir.Conv2d(input_shape=_ints(node.input_shape), weight=w.astype(np.float32),
                                  stride=node.stride, padding=node.padding, dilation=node.dilation,
                                  groups=int(node.groups), bias=b.astype(np.float32))
            return np.asarray(node.weight, np.float64), np.asarray(node.bias, np.float64), build
        if isinstance(node, nir.Conv1d):
            if dialect.float32_pool(node, name, self.label) is not None:
                self.refuse(name, "ONNX's float32 average pool (docs/nir.md §5a) rounds every product and sum to "
                                  "float32; standard NIR has only exact linear nodes for it")

            def build(w, b):
                return nir.Conv1d(input_shape=node.input_shape, weight=w.astype(np.float32), stride=node.stride,
                                  padding=node.padding, dilation=node.dilation, groups=int(node.groups),
                                  bias=b.astype(np.float32))
            return np.asarray(node.weight, np.float64), np.asarray(node.bias, np.float64), build

        def build(w, b):
            if w.ndim == 3:
                return nir.Conv1d(input_shape=int(in_shape[1]), weight=w.astype(np.float32), stride=1, padding=0,
                                  dilation=1, groups=1, bias=b.astype(np.float32))
            if w.ndim == 4:
                return nir.Conv2d(input_shape=in_shape[1:], weight=w.astype(np.float32), stride=(1, 1),
                                  padding=(0, 0), dilation=(1, 1), groups=1, bias=b.astype(np.float32))
            return nir.Affine(weight=w.astype(np.float32), bias=b.astype(np.float32))
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = np.asarray(node.weight, np.float64)
            b = np.asarray(node.bias, np.float64) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
            return w, b, build
        if isinstance(node, nir.Scale):
            w = _diag(node.scale, in_shape, self.label, name)
            return w, np.zeros(w.shape[0]), build
        if isinstance(node, (nir.IF, nir.Input)):  # straight into a neuron: a factor of one
            w = _diag(np.ones(in_shape), in_shape, self.label, name)
            return w, np.zeros(w.shape[0]), build
        self.refuse(name, "only Conv1d, Conv2d, Affine, Linear and Scale can feed a neuron in the standard profile")

    def linear(self, name: str, reads: str, out_signs: np.ndarray, stem: str) -> str:
        """A node computing linear node ``name`` applied to the value of ``reads``, once per sign of
        ``out_signs`` (stacked)."""
        value = self.values[reads]
        w, b, build = self._weights(name, self.shape_of(reads))
        return self.add(stem, build(*_stacked(w, b, out_signs, value.signs)), [value.node])

    def run(self) -> nir.NIRGraph:
        for name in self.order:
            node = self.g.nodes[name]
            feeds_neuron = [isinstance(self.g.nodes[d], nir.IF) for d in self.dst[name]]
            if isinstance(node, nir.Input):
                # named as nir.NIRGraph.from_list names them: spyx and rockpool look the ends up by name
                self.values[name] = _plain(self.add("input", nir.Input(input_type=node.input_type,
                                                                       metadata=node.metadata or {}), []))
            elif isinstance(node, nir.IF):
                self.neuron(name, node)
            elif isinstance(node, (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
                if any(feeds_neuron) and not all(feeds_neuron):
                    self.refuse(name, "feeds a neuron and something else")
                if not any(feeds_neuron):
                    if len(self.src[name]) != 1:
                        self.refuse(name, "a linear node summing several inputs (a residual sum) that does not "
                                          "feed a neuron has no standard-profile form")
                    (src,) = self.src[name]
                    self.values[name] = _plain(self.linear(name, src, np.ones(1), name))
            elif isinstance(node, nir.Flatten):
                (src,) = self.src[name]
                value = self.values[src]
                shape = (len(value.signs) * self.shape_of(src)[0],) + self.shape_of(src)[1:]
                flat = self.add(name, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                                [value.node])
                self.values[name] = _Value(flat, value.signs, value.unit)
            elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
                self.pool(name, node)
            elif isinstance(node, nir.Output):
                inputs = [self.recombined(s) for s in self.src[name]]
                if len(inputs) > 1:  # consumers such as nirtorch return an Output's inputs unsummed
                    inputs = [self.add(f"{name}_sum", self._identity(self.shape_of(name), np.ones(1)), inputs)]
                self.add("output", nir.Output(output_type=node.output_type, metadata=node.metadata or {}), inputs)
            else:
                self.refuse(name, f"{type(node).__name__} has no standard-profile form")
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, type_check=True)

    def _identity(self, shape: tuple, in_signs: np.ndarray) -> nir.NIRNode:
        """A node summing ``in_signs[k]`` times block ``k`` of a stacked value of block ``shape``."""
        w, b = _stacked(_diag(np.ones(shape), shape, self.label, "output"), np.zeros(shape[0]), np.ones(1), in_signs)
        if w.ndim == 3:
            return nir.Conv1d(input_shape=int(shape[1]), weight=w.astype(np.float32), stride=1, padding=0,
                              dilation=1, groups=1, bias=b.astype(np.float32))
        if w.ndim == 4:
            return nir.Conv2d(input_shape=shape[1:], weight=w.astype(np.float32), stride=(1, 1), padding=(0, 0),
                              dilation=(1, 1), groups=1, bias=b.astype(np.float32))
        return nir.Affine(weight=w.astype(np.float32), bias=b.astype(np.float32))

    def recombined(self, name: str) -> str:
        """The node holding the plain value of ``name`` (a recombination of its units if stacked)."""
        value = self.values[name]
        if len(value.signs) == 1 and value.signs[0] == 1.0:
            return value.node
        return self.add(f"{value.node}_value", self._identity(self.shape_of(name), value.signs), [value.node])

    def _unit_if(self, thresholds: list[np.ndarray], meta: dict | None) -> nir.IF:
        v_threshold = np.concatenate([np.asarray(t, np.float32) for t in thresholds])
        return nir.IF(r=np.ones(v_threshold.shape, np.float32), v_threshold=v_threshold,
                      v_reset=np.zeros(v_threshold.shape, np.float32), metadata=meta or {})

    def neuron(self, name: str, node: nir.IF) -> None:
        p = dialect.neuron_params(node, name, self.label)
        shape = tuple(node.r.shape)
        meta = node.metadata.get(dialect.KEY, {}) if node.metadata else {}
        onnx_node = str(meta.get("onnx_node") or name)
        signs, thresholds = units(p)
        inputs = []
        for src in self.src[name]:
            s = self.g.nodes[src]
            reads = src if isinstance(s, (nir.IF, nir.Input)) else self.src[src][0]
            if not isinstance(s, (nir.IF, nir.Input)) and len(self.src[src]) != 1:
                self.refuse(src, "a linear node with fan-in")
            inputs.append(self.linear(src, reads, signs.astype(np.float64), f"{src}_to_{name}"))
        levels = [int(level) for level in range(p.lo + 1, p.hi + 1)]
        meta = {"onnx_node": onnx_node, "levels": levels}
        if dialect.layout(node):  # the units' blocks keep the neuron's axis order (docs/nir.md §3a)
            meta["layout"] = list(dialect.layout(node))
        unit = self.add(name, self._unit_if([np.full(shape, t, np.float32) for t in thresholds], {KEY: meta}),
                        inputs)
        self.values[name] = _Value(unit, signs.astype(np.float64), True)

    def pool(self, name: str, node) -> None:
        if len(self.src[name]) != 1:
            self.refuse(name, "a pooling node summing several inputs (a residual sum) has no standard-profile form")
        (src,) = self.src[name]
        value = self.values[src]
        geo = dict(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        if not dialect.is_max_pool(node):
            cls = nir.AvgPool2d if isinstance(node, nir.AvgPool2d) else nir.SumPool2d
            self.values[name] = _Value(self.add(name, cls(**geo), [value.node]), value.signs, False)
            return
        if not value.unit:
            self.refuse(name, "max pooling of real values has no binary form (only of neuron outputs)")
        out_shape = self.shape_of(name)
        real = ops.window_counts(self.shape_of(src)[1:], _ints(node.kernel_size), _ints(node.stride),
                                 _ints(node.padding))
        counted = self.add(f"{name}_count", nir.SumPool2d(**geo), [value.node])
        # a positive unit of the max fires when one unit of the window does, a negative one when all do
        thresholds = [np.full(out_shape, 0.5) if sign > 0 else np.broadcast_to(real - 0.5, out_shape)
                      for sign in value.signs]
        self.values[name] = _Value(self.add(name, self._unit_if(thresholds, None), [counted]), value.signs, True)


def weight_count(graph: nir.NIRGraph) -> int:
    return int(sum(np.asarray(n.weight).size for n in graph.nodes.values() if hasattr(n, "weight")))


def neuron_count(graph: nir.NIRGraph) -> int:
    return int(sum(np.asarray(n.r).size for n in graph.nodes.values() if isinstance(n, nir.IF)))


def to_standard(graph: nir.NIRGraph, label: str = "<nir graph>") -> tuple[nir.NIRGraph, Growth]:
    """The standard-profile graph of a PMSM-dialect ``graph`` and how much it grew; refuses (with the
    layers and the reason) when a neuron would need more than :data:`MAX_UNITS` units."""
    dialect.check(graph, label)
    too_many = []
    ks = [0]
    for name, node in graph.nodes.items():
        if isinstance(node, nir.IF):
            p = dialect.neuron_params(node, name, label)
            ks.append(p.hi - p.lo)
            if p.hi - p.lo > MAX_UNITS:
                too_many.append((name, "IF", f"counts {p.lo}..{p.hi} need K = {p.hi - p.lo} binary units per neuron, "
                                 f"more than the standard profile's limit of {MAX_UNITS}: neurons would grow "
                                 f"{p.hi - p.lo}x and the weights between two such layers "
                                 f"{(p.hi - p.lo) ** 2}x; use the pmsm profile, or quantize activations to 4 bits"))
    if too_many:
        raise UnsupportedModelError(label, "nir --nir-profile standard", too_many)
    std = _Rewrite(graph, label).run()
    meta = dict(dialect.normalise(graph.metadata or {}).get(dialect.KEY, {}))
    meta.update(format=dialect.STANDARD_FORMAT, exact_timesteps=1)
    std.metadata = {dialect.KEY: meta}
    growth = Growth(neuron_count(graph), neuron_count(std), weight_count(graph), weight_count(std), max(ks))
    return std, growth
