"""A discrete-time numpy interpreter for PMSM-dialect NIR graphs, in the dialect's defined
arithmetic (docs/nir.md §4).

Each timestep evaluates every node once in topological order with no delay on edges; a node's input
is the sum of its incoming edges. The input is presented unchanged at every step. Linear and pooling
nodes compute in float64, which the writer's weight grid makes exact (see :mod:`.arithmetic`), so the
summation order of BLAS does not matter; a value is rounded to float32 only where it enters an IF
node (which runs the PMSM neuron of :mod:`pmsm.runtime.neuron`) or the Output. The result is the mean
over the timesteps of the Output's float32 values, summed in float32 in time order and divided by T
in float32, as the spiking ONNX's ReduceMean does (docs/nir.md §4a). Batched over samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import nir
import numpy as np

from pmsm.runtime import neuron
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.order import topological_order
from pmsm.targets.nir import dialect, float32_pool, ops


@dataclass
class NirResult:
    output: np.ndarray  # [N, ...]: mean over T of the (first) Output node
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every Output node by name
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, N, ...] by the neuron's ONNX node name
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # [T, N, ...] float32 z of each neuron, same keys


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def conv_padding(node: nir.Conv2d, name: str) -> tuple[int, int]:
    pad = node.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        span = [int(d) * (int(k) - 1) for d, k in zip(_pair(node.dilation), node.weight.shape[2:])]
        if pad == "same" and _pair(node.stride) == (1, 1) and all(s % 2 == 0 for s in span):
            return (span[0] // 2, span[1] // 2)
        raise BadInputError(f"Conv2d node '{name}': padding '{pad}' with this stride/kernel is ambiguous")
    return _pair(pad)


def conv1d_args(node: nir.Conv1d, name: str) -> tuple[int, int, int, int]:
    """``(stride, padding, dilation, groups)`` of a Conv1d, its padding as one integer."""
    def one(v) -> int:
        return int(np.asarray(v).reshape(-1)[0])

    stride, dilation, pad = one(node.stride), one(node.dilation), node.padding
    if isinstance(pad, str):
        span = dilation * (int(node.weight.shape[2]) - 1)
        if pad == "valid":
            pad = 0
        elif pad == "same" and stride == 1 and span % 2 == 0:
            pad = span // 2
        else:
            raise BadInputError(f"Conv1d node '{name}': padding '{pad}' with this stride/kernel is ambiguous")
    return stride, one(pad), dilation, int(node.groups)


def _linear_op(node: nir.NIRNode, name: str, absolute: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """The function a stateless node applies to a float64 batch ``[N, ...]``; with ``absolute``, the
    same node with every parameter replaced by its magnitude (a bound on the terms it sums)."""
    def param(a) -> np.ndarray:
        a = np.asarray(a, np.float64)
        return np.abs(a) if absolute else a

    if isinstance(node, nir.Conv2d):
        w, b = param(node.weight), param(node.bias)
        args = (_pair(node.stride), conv_padding(node, name), _pair(node.dilation), int(node.groups))
        return lambda x: ops.conv2d(x, w, b, *args)
    if isinstance(node, nir.Conv1d):
        w, b = param(node.weight), param(node.bias)
        args = conv1d_args(node, name)
        pool = dialect.float32_pool(node, name)
        if pool is not None and not absolute:  # ONNX's float32 average pool (docs/nir.md §5a)
            stride, pad = args[0], args[1]
            return lambda x: float32_pool.apply(x, pool, w.shape[2], stride, pad).astype(np.float64)
        return lambda x: ops.conv1d(x, w, b, *args)
    if isinstance(node, nir.Affine):
        w, b = param(node.weight), param(node.bias)
        return lambda x: x @ w.T + b
    if isinstance(node, nir.Linear):
        w = param(node.weight)
        return lambda x: x @ w.T
    if isinstance(node, nir.Scale):
        s = param(node.scale)
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


def topological(graph: nir.NIRGraph, label: str) -> list[str]:
    order = topological_order(graph.nodes, graph.edges)
    if len(order) != len(graph.nodes):
        raise BadInputError(f"{label}: the graph has a cycle; the PMSM dialect is feed-forward")
    return order


class NirInterpreter:
    def __init__(self, graph: nir.NIRGraph, label: str = "<nir graph>") -> None:
        self._validate(graph, label)
        self.graph = graph
        self.label = label
        self.order = topological(graph, label)
        self.sources = {name: [src for src, dst in graph.edges if dst == name] for name in graph.nodes}
        self.input = next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))
        # Data, outputs and spikes are exchanged in ONNX's axis order; a node whose metadata gives a
        # layout (docs/nir.md §3a) holds them permuted inside the graph.
        self.layouts = {n: dialect.layout(node) for n, node in graph.nodes.items()
                        if isinstance(node, (nir.Input, nir.Output, nir.IF))}
        self.nir_input_shape = tuple(int(d) for d in
                                     np.asarray(graph.nodes[self.input].input_type["input"]).reshape(-1))
        self.input_shape = dialect.to_onnx_shape(self.nir_input_shape, self.layouts[self.input])
        self.outputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Output)]
        self.neurons = {n: self._neuron(node, n, label) for n, node in graph.nodes.items() if isinstance(node, nir.IF)}
        self.ops = {n: _linear_op(graph.nodes[n], n) for n in self.order
                    if not isinstance(graph.nodes[n], nir.Input) and n not in self.neurons}
        self._absolute_ops = None
        # Nodes fed only by the input see the same value at every step: computed once per run.
        dynamic: set[str] = set()
        for n in self.order:
            if n in self.neurons or any(s in dynamic for s in self.sources[n]):
                dynamic.add(n)
        self.static = [n for n in self.order if n not in dynamic]
        self.dynamic = [n for n in self.order if n in dynamic]

    @staticmethod
    def _validate(graph: nir.NIRGraph, label: str) -> None:
        dialect.check(graph, label)

    @staticmethod
    def _neuron(node: nir.IF, name: str, label: str):
        return dialect.neuron_params(node, name, label)

    def key(self, name: str) -> str:
        """The name a neuron's spikes are reported under: its ONNX node, else its NIR node."""
        meta = self.graph.nodes[name].metadata.get(dialect.KEY, {})
        return str(meta.get("onnx_node") or name)

    def _input_of(self, name: str, values: dict) -> np.ndarray:
        srcs = self.sources[name]
        if not srcs:
            raise BadInputError(f"{self.label}: node '{name}' has no input")
        total = values[srcs[0]]
        for s in srcs[1:]:
            total = total + values[s]  # exact in float64 (docs/nir.md §4): the order is immaterial
        return total

    def _check_input(self, x: np.ndarray, timesteps: int) -> np.ndarray:
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise BadInputError(f"{self.label}: input of shape {x.shape} does not match the Input node "
                                f"[N, {', '.join(map(str, self.input_shape))}]")
        return np.ascontiguousarray(dialect.to_nir_layout(x, self.layouts[self.input]))

    def _evaluate(self, x: np.ndarray, timesteps: int, ops: dict, fire, record) -> None:
        """Step the graph; ``fire(name, z, t)`` gives a neuron's output for its float64 input ``z``,
        ``record(name, value, t)`` sees every Output node's float64 value."""
        values: dict[str, np.ndarray] = {self.input: x.astype(np.float64)}
        for name in self.static:
            if name != self.input:
                values[name] = ops[name](self._input_of(name, values))
        for t in range(int(timesteps)):
            for name in self.dynamic:
                z = self._input_of(name, values)
                values[name] = fire(name, z, t) if name in self.neurons else ops[name](z)
            for name in self.outputs:
                record(name, values[name], t)

    def run(self, x: np.ndarray, timesteps: int, collect_spikes: bool = False,
            collect_inputs: bool = False) -> NirResult:
        x = self._check_input(x, timesteps)
        n = x.shape[0]
        membranes = {name: neuron.initial_membrane((n,) + tuple(self.graph.nodes[name].r.shape), p)
                     for name, p in self.neurons.items()}
        spikes = {name: [] for name in self.neurons} if collect_spikes else {}
        inputs = {name: [] for name in self.neurons} if collect_inputs else {}
        sums = {name: None for name in self.outputs}

        def fire(name, z, t):
            membranes[name], s = neuron.step(membranes[name], z, self.neurons[name])
            if collect_spikes:
                spikes[name].append(s)
            if collect_inputs:
                inputs[name].append(z.astype(np.float32))
            return s.astype(np.float64)

        def record(name, value, t):
            sums[name] = dialect.readout_add(sums[name], value)  # float32, in time order (§4a)

        self._evaluate(x, timesteps, self.ops, fire, record)
        means = {name: dialect.to_onnx_layout(dialect.readout_mean(sums[name], timesteps), self.layouts[name])
                 for name in self.outputs}
        return NirResult(
            output=means[self.outputs[0]],
            outputs=means,
            spikes={self.key(name): self._onnx_order(name, np.stack(s)) for name, s in spikes.items()},
            inputs={self.key(name): self._onnx_order(name, np.stack(z)) for name, z in inputs.items()},
        )

    def _onnx_order(self, name: str, a: np.ndarray) -> np.ndarray:
        """``[T, N, ...]`` of a neuron from NIR's axis order to ONNX's."""
        return dialect.to_onnx_layout(a, self.layouts[name], lead=2)

    def _output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in np.asarray(self.graph.nodes[name].output_type["output"]).reshape(-1))

    def currents(self, x: np.ndarray, spikes: dict[str, np.ndarray], absolute: bool = False) -> dict[str, np.ndarray]:
        """Every neuron's float64 input ``[T, N, ...]`` when the neurons emit the given ``spikes``
        (keyed like :attr:`NirResult.spikes`) instead of running. With ``absolute``, every parameter,
        input and spike is replaced by its magnitude: the sum of the magnitudes of the terms each
        input adds up, which bounds how far any other summation order can round it."""
        timesteps = len(next(iter(spikes.values())))
        x = self._check_input(np.abs(x) if absolute else x, timesteps)
        if absolute and self._absolute_ops is None:
            self._absolute_ops = {n: _linear_op(self.graph.nodes[n], n, absolute=True) for n in self.ops}
        out = {name: [] for name in self.neurons}

        def fire(name, z, t):
            out[name].append(z)
            s = dialect.to_nir_layout(np.asarray(spikes[self.key(name)][t], np.float64), self.layouts[name])
            return np.abs(s) if absolute else s

        self._evaluate(x, timesteps, self._absolute_ops if absolute else self.ops, fire, lambda *a: None)
        return {self.key(name): self._onnx_order(name, np.stack(z)) for name, z in out.items()}
