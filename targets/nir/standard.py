"""The standard-only profile of a PMSM NIR graph (docs/nir.md §9): binary ``IF`` units only, which a
consumer following NIR's ``IF`` literally (one spike when ``v > v_threshold``, reset to ``v_reset``)
computes correctly at ``T = 1``.

A PMSM neuron with counts ``lo..hi`` becomes ``K = hi - lo`` binary units, one per level boundary
``j`` (``lo < j <= hi``): a positive unit fires when the count reaches ``j`` (``j >= 1``), a negative
unit when it stays below ``j`` (``j <= 0``), so ``count = sum(positive) - sum(negative)``. Each
unit's threshold is the float32 boundary of ``clip(R(v_init + z))`` itself, found by bisection over
float32 with the runtime's own neuron, so floor and half-even rounding, ties and ``v_init`` are
exact. The ``+1/-1`` recombination is folded into the weights of whatever reads the neuron; a max
pool becomes a sum pool of each unit followed by a threshold unit (``>= 1`` for positive units, all of
the window for negative ones). Units are stacked on the channel axis, unit-major.
"""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from pmsm.errors import UnsupportedModelError
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.nir import dialect, ops

FORMAT = "pmsm-nir-standard/1"
KEY = "pmsm_standard"  # node metadata naming the PMSM neuron a unit group encodes (reports only)
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
class _Coded:
    """How a PMSM node's value lives in the standard graph: ``node``'s output, either the value
    itself (``sign is None``) or unit-coded: ``value = sum_u sign[u] * unit_u`` over ``K`` stacked copies."""

    node: str
    shape: tuple
    sign: np.ndarray | None = None

    @property
    def k(self) -> int:
        return 1 if self.sign is None else len(self.sign)


def _expand_columns(w: np.ndarray, code: _Coded) -> np.ndarray:
    """Weights ``[O, C, ...]`` reading ``code``'s value, as weights reading its units."""
    if code.sign is None:
        return w
    return np.concatenate([s * w for s in code.sign], axis=1)


def _expand_rows(w: np.ndarray, b: np.ndarray | None, sign: np.ndarray | None):
    if sign is None:
        return w, b
    return (np.concatenate([s * w for s in sign], axis=0),
            None if b is None else np.concatenate([s * b for s in sign]))


def _thresholds(sign_threshold, shape) -> np.ndarray:
    _, th = sign_threshold
    return np.concatenate([np.full(shape, t, np.float32) for t in th], axis=0)


def _diag(scale: np.ndarray, shape, code: _Coded, out_sign: np.ndarray | None, label: str, name: str):
    """A Scale (elementwise factor) from ``code`` to ``out_sign`` units, as an Affine or 1x1 Conv2d."""
    c = np.broadcast_to(np.asarray(scale, np.float64), shape)
    if len(shape) == 3:
        per = c.reshape(shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise UnsupportedModelError(label, "nir", [(name, "Scale", "a factor that varies within a channel "
                                                        "cannot become a 1x1 convolution of units")])
        w = np.diag(per[:, 0])[:, :, None, None]
    else:
        w = np.diag(c.reshape(-1))
    w = _expand_columns(w, code)
    w, _ = _expand_rows(w, None, out_sign)
    return w


class _Rewrite:
    def __init__(self, graph: nir.NIRGraph, label: str):
        self.g = graph
        self.label = label
        from pmsm.targets.nir.interpreter import topological

        self.order = topological(graph, label)
        self.src = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
        self.dst = {n: [d for s, d in graph.edges if s == n] for n in graph.nodes}
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.codes: dict[str, _Coded] = {}
        self.shapes: dict[str, tuple] = {}

    def refuse(self, name: str, why: str):
        raise UnsupportedModelError(self.label, "nir", [(name, type(self.g.nodes[name]).__name__, why)])

    def shape_of(self, name: str) -> tuple:
        node = self.g.nodes[name]
        t = node.output_type.get("output") if node.output_type else None
        return tuple(int(d) for d in np.asarray(t).reshape(-1))

    def add(self, name: str, node: nir.NIRNode, inputs: list[str]) -> str:
        self.nodes[name] = node
        self.edges += [(i, name) for i in inputs]
        return name

    def linear(self, name: str, out_sign: np.ndarray | None, suffix: str = "") -> str:
        """Build the linear node ``name`` reading its input's code, with rows for ``out_sign`` units."""
        node = self.g.nodes[name]
        (src,) = self.src[name] if len(self.src[name]) == 1 else self.refuse(name, "a linear node with fan-in")
        code = self.codes[src]
        std = name + suffix if name + suffix not in self.nodes else f"{name}{suffix}_{len(self.nodes)}"
        if isinstance(node, nir.Conv2d):
            w, b = _expand_rows(_expand_columns(np.asarray(node.weight, np.float32), code),
                                np.asarray(node.bias, np.float32), out_sign)
            new = nir.Conv2d(input_shape=tuple(int(v) for v in node.input_shape), weight=w.astype(np.float32),
                             stride=node.stride, padding=node.padding, dilation=node.dilation, groups=1,
                             bias=b.astype(np.float32))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            bias = np.asarray(node.bias, np.float32) if isinstance(node, nir.Affine) else np.zeros(node.weight.shape[0], np.float32)
            w, b = _expand_rows(_expand_columns(np.asarray(node.weight, np.float32), code), bias, out_sign)
            new = nir.Affine(weight=w.astype(np.float32), bias=b.astype(np.float32))
        elif isinstance(node, nir.Scale):
            if code.sign is None and out_sign is None:
                new = nir.Scale(scale=np.asarray(node.scale, np.float32))
            else:
                new = self._diag_node(_diag(node.scale, code.shape, code, out_sign, self.label, name), code)
        else:
            self.refuse(name, "only Conv2d, Affine, Linear and Scale can feed a neuron in the standard profile")
        return self.add(std, new, [code.node])

    def _diag_node(self, w: np.ndarray, code: _Coded) -> nir.NIRNode:
        if w.ndim == 4:
            return nir.Conv2d(input_shape=tuple(code.shape[1:]), weight=w.astype(np.float32), stride=(1, 1),
                              padding=(0, 0), dilation=(1, 1), groups=1, bias=np.zeros(w.shape[0], np.float32))
        return nir.Affine(weight=w.astype(np.float32), bias=np.zeros(w.shape[0], np.float32))

    def run(self) -> nir.NIRGraph:
        for name in self.order:
            node = self.g.nodes[name]
            consumers = [self.g.nodes[d] for d in self.dst[name]]
            feeds_neuron = [isinstance(c, nir.IF) for c in consumers]
            if isinstance(node, nir.Input):
                self.codes[name] = _Coded(self.add(name, nir.Input(input_type=node.input_type), []), self.shape_of(name))
            elif isinstance(node, nir.IF):
                self.neuron(name, node)
            elif isinstance(node, (nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)) and any(feeds_neuron):
                if not all(feeds_neuron):
                    self.refuse(name, "feeds a neuron and something else")
                continue  # built with the neuron's rows, in neuron()
            elif isinstance(node, (nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
                self.codes[name] = _Coded(self.linear(name, None), self.shape_of(name))
            elif isinstance(node, nir.Flatten):
                self.flatten(name, node)
            elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
                self.pool(name, node)
            elif isinstance(node, nir.Output):
                self.output(name, node)
            else:
                self.refuse(name, f"{type(node).__name__} has no standard-profile form")
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, type_check=True)

    def neuron(self, name: str, node: nir.IF) -> None:
        p = dialect.neuron_params(node, name, self.label)
        shape = tuple(node.r.shape)
        sign, threshold = units(p)
        inputs = []
        for src in self.src[name]:
            s = self.g.nodes[src]
            if isinstance(s, (nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
                inputs.append(self.linear(src, sign))
            else:  # a neuron or the input straight into a neuron: a factor of one
                inputs.append(self.add(f"{src}_to_{name}", self._diag_node(
                    _diag(np.ones(shape), shape, self.codes[src], sign, self.label, name), self.codes[src]), [self.codes[src].node]))
        full = (len(sign) * shape[0],) + shape[1:]
        meta = node.metadata.get(dialect.KEY, {}) if node.metadata else {}
        self.add(name, nir.IF(r=np.ones(full, np.float32), v_threshold=_thresholds((sign, threshold), shape),
                              v_reset=np.zeros(full, np.float32),
                              metadata={KEY: {"onnx_node": str(meta.get("onnx_node") or name),
                                              "sign": [float(s) for s in sign]}}), inputs)
        self.codes[name] = _Coded(name, shape, sign)

    def flatten(self, name: str, node: nir.Flatten) -> None:
        (src,) = self.src[name]
        code = self.codes[src]
        in_shape = (code.k * code.shape[0],) + tuple(code.shape[1:])
        self.add(name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), [code.node])
        self.codes[name] = _Coded(name, (int(np.prod(code.shape)),), code.sign)

    def pool(self, name: str, node) -> None:
        (src,) = self.src[name]
        code = self.codes[src]
        geo = dict(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        out_shape = self.shape_of(name)
        if not dialect.is_max_pool(node):
            cls = nir.AvgPool2d if isinstance(node, nir.AvgPool2d) else nir.SumPool2d
            self.add(name, cls(**geo), [code.node])
            self.codes[name] = _Coded(name, out_shape, code.sign)
            return
        if code.sign is None:
            self.refuse(name, "max pooling of real values has no binary form (only of neuron outputs)")
        counted = self.add(f"{name}_count", nir.SumPool2d(**geo), [code.node])
        k = ops.window_counts(tuple(code.shape[1:]), tuple(int(v) for v in np.asarray(node.kernel_size).reshape(-1)),
                              tuple(int(v) for v in np.asarray(node.stride).reshape(-1)),
                              tuple(int(v) for v in np.asarray(node.padding).reshape(-1)))
        per_unit = [np.full(out_shape, 0.5, np.float32) if s > 0 else
                    np.broadcast_to(k - 0.5, out_shape).astype(np.float32) for s in code.sign]
        full = (code.k * out_shape[0],) + tuple(out_shape[1:])
        self.add(name, nir.IF(r=np.ones(full, np.float32), v_threshold=np.concatenate(per_unit, axis=0),
                              v_reset=np.zeros(full, np.float32)), [counted])
        self.codes[name] = _Coded(name, out_shape, code.sign)

    def output(self, name: str, node: nir.Output) -> None:
        inputs = []
        for src in self.src[name]:
            code = self.codes[src]
            if code.sign is not None:  # recombine the units: +1/-1 weights
                w = _diag(np.ones(code.shape), code.shape, code, None, self.label, name)
                inputs.append(self.add(f"{src}_value", self._diag_node(w, code), [code.node]))
            else:
                inputs.append(code.node)
        self.add(name, nir.Output(output_type=node.output_type), inputs)


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
    meta.update(format=FORMAT, exact_timesteps=1)
    std.metadata = {dialect.KEY: meta}
    growth = Growth(neuron_count(graph), neuron_count(std), weight_count(graph), weight_count(std), max(ks))
    return std, growth
