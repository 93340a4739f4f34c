"""A discrete-time numpy interpreter for PMSM-dialect NIR graphs.

Each timestep evaluates every node once in topological order with no delay on edges; a node's input
is the sum of its incoming edges (in edge order). The input is presented unchanged at every step,
IF nodes run the PMSM neuron of :mod:`pmsm.runtime.neuron`, and the result is the mean over the
timesteps of what reaches the Output node. Batched over samples, float32 throughout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import nir
import numpy as np

from pmsm.errors import BadInputError
from pmsm.runtime import neuron
from pmsm.targets.nir import dialect, ops


@dataclass
class NirResult:
    output: np.ndarray  # [N, ...]: mean over T of the (first) Output node
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every Output node by name
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, N, ...] by the neuron's ONNX node name


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _conv_padding(node: nir.Conv2d, name: str) -> tuple[int, int]:
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        span = [int(d) * (int(k) - 1) for d, k in zip(_pair(node.dilation), node.weight.shape[2:])]
        if pad == "same" and _pair(node.stride) == (1, 1) and all(s % 2 == 0 for s in span):
            return (span[0] // 2, span[1] // 2)
        raise BadInputError(f"Conv2d node '{name}': padding '{pad}' with this stride/kernel is ambiguous")
    return _pair(pad)


def _linear_op(node: nir.NIRNode, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function a stateless node applies to a batch ``[N, ...]``."""
    if isinstance(node, nir.Conv2d):
        w, b = np.asarray(node.weight, np.float32), np.asarray(node.bias, np.float32)
        args = (_pair(node.stride), _conv_padding(node, name), _pair(node.dilation), int(node.groups))
        return lambda x: ops.conv2d(x, w, b, *args)
    if isinstance(node, nir.Affine):
        w, b = np.asarray(node.weight, np.float32), np.asarray(node.bias, np.float32)
        return lambda x: x @ w.T + b
    if isinstance(node, nir.Linear):
        w = np.asarray(node.weight, np.float32)
        return lambda x: x @ w.T
    if isinstance(node, nir.Scale):
        s = np.asarray(node.scale, np.float32)
        return lambda x: x * s
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)

        def flatten(x: np.ndarray) -> np.ndarray:
            dims = list(x.shape[1:])  # NIR shapes have no batch: dims count from the first feature axis
            stop = len(dims) if end == -1 else end + 1
            return x.reshape((x.shape[0], *dims[:start], int(np.prod(dims[start:stop])), *dims[stop:]))
        return flatten
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        mode = "max" if dialect.is_max_pool(node) else ("avg" if isinstance(node, nir.AvgPool2d) else "sum")
        args = (_pair(node.kernel_size), _pair(node.stride), _pair(node.padding), mode)
        return lambda x: ops.pool2d(x, *args)
    if isinstance(node, nir.Output):
        return lambda x: x
    raise BadInputError(f"node '{name}': NIR type {type(node).__name__} is not part of the PMSM dialect")


def _topological(graph: nir.NIRGraph, label: str) -> list[str]:
    indegree = {name: 0 for name in graph.nodes}
    for _, dst in graph.edges:
        indegree[dst] += 1
    ready = [n for n in graph.nodes if indegree[n] == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for src, dst in graph.edges:
            if src == name:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    if len(order) != len(graph.nodes):
        raise BadInputError(f"{label}: the graph has a cycle; the PMSM dialect is feed-forward")
    return order


class NirInterpreter:
    def __init__(self, graph: nir.NIRGraph, label: str = "<nir graph>") -> None:
        dialect.check(graph, label)
        self.graph = graph
        self.label = label
        self.order = _topological(graph, label)
        self.sources = {name: [src for src, dst in graph.edges if dst == name] for name in graph.nodes}
        self.input = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
        self.input_shape = tuple(int(d) for d in np.asarray(graph.nodes[self.input].input_type["input"]).reshape(-1))
        self.outputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Output)]
        self.neurons = {n: dialect.neuron_params(node, n, label)
                        for n, node in graph.nodes.items() if isinstance(node, nir.IF)}
        self.ops = {n: _linear_op(graph.nodes[n], n) for n in self.order
                    if n != self.input and n not in self.neurons}
        # Nodes fed only by the input see the same value at every step: computed once per run.
        dynamic: set[str] = set()
        for n in self.order:
            if n in self.neurons or any(s in dynamic for s in self.sources[n]):
                dynamic.add(n)
        self.static = [n for n in self.order if n not in dynamic]
        self.dynamic = [n for n in self.order if n in dynamic]

    def _key(self, name: str) -> str:
        meta = self.graph.nodes[name].metadata.get(dialect.KEY, {})
        return str(meta.get("onnx_node") or name)

    def _input_of(self, name: str, values: dict) -> np.ndarray:
        srcs = self.sources[name]
        if not srcs:
            raise BadInputError(f"{self.label}: node '{name}' has no input")
        total = values[srcs[0]]
        for s in srcs[1:]:
            total = total + values[s]
        return total

    def run(self, x: np.ndarray, timesteps: int, collect_spikes: bool = False) -> NirResult:
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise BadInputError(f"{self.label}: input of shape {x.shape} does not match the Input node "
                                f"[N, {', '.join(map(str, self.input_shape))}]")
        n = x.shape[0]
        values: dict[str, np.ndarray] = {self.input: x}
        for name in self.static:
            if name != self.input:
                values[name] = self.ops[name](self._input_of(name, values))
        membranes = {name: neuron.initial_membrane((n,) + tuple(self.graph.nodes[name].r.shape), p)
                     for name, p in self.neurons.items()}
        spikes = {name: [] for name in self.neurons} if collect_spikes else {}
        sums = {name: None for name in self.outputs}
        for _ in range(int(timesteps)):
            for name in self.dynamic:
                z = self._input_of(name, values)
                if name in self.neurons:
                    membranes[name], values[name] = neuron.step(membranes[name], z, self.neurons[name])
                    if collect_spikes:
                        spikes[name].append(values[name])
                else:
                    values[name] = self.ops[name](z)
            for name in self.outputs:
                out = values[name]
                sums[name] = out.astype(np.float32) if sums[name] is None else sums[name] + out
        means = {name: (sums[name] / np.float32(timesteps)).astype(np.float32) for name in self.outputs}
        return NirResult(
            output=means[self.outputs[0]],
            outputs=means,
            spikes={self._key(name): np.stack(s) for name, s in spikes.items()},
        )
