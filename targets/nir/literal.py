"""A simulator of NIR graphs that follows NIR's node definitions literally and ignores all metadata:
the reference for the standard-only profile (:mod:`.standard`), and what any conforming consumer
computes.

``IF`` is NIR's integrate-and-fire neuron discretised with ``dt = 1``: ``v <- v + r * z``, one spike
when ``v > v_threshold``, then ``v <- v_reset``; ``v`` starts at 0. It runs in float32 on the neuron
input rounded to float32; linear nodes compute exactly as in the PMSM dialect (docs/nir.md §4), so
the only difference to the PMSM interpreter is the neuron. A ``SumPool2d`` is a sum pool, whatever
its metadata says.
"""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from pmsm.runtime.base.errors import BadInputError
from pmsm.targets.nir import dialect
from pmsm.targets.nir.interpreter import NirInterpreter, NirResult, _linear_op
from pmsm.targets.nir.standard import KEY


@dataclass(frozen=True)
class BinaryIF:
    r: np.ndarray
    v_threshold: np.ndarray
    v_reset: np.ndarray


class LiteralInterpreter(NirInterpreter):
    """``run(x, timesteps, collect_spikes)``: spikes are reported per PMSM neuron (the standard
    profile's stacked units recombined: positive levels minus the others), keyed by its ONNX node,
    for comparison."""

    @staticmethod
    def _validate(graph: nir.NIRGraph, label: str) -> None:
        for name, node in graph.nodes.items():
            if not isinstance(node, dialect.NODE_TYPES):
                raise BadInputError(f"{label}: node '{name}' has NIR type {type(node).__name__}, which this "
                                    "simulator does not run")

    @staticmethod
    def _neuron(node: nir.IF, name: str, label: str) -> BinaryIF:
        return BinaryIF(np.asarray(node.r, np.float32), np.asarray(node.v_threshold, np.float32),
                        np.asarray(node.v_reset, np.float32))

    def __init__(self, graph: nir.NIRGraph, label: str = "<nir graph>") -> None:
        super().__init__(graph, label)
        for name in self.neurons:  # the units keep their PMSM neuron's axis order (docs/nir.md §3a)
            meta = dialect.normalise(graph.nodes[name].metadata or {}).get(KEY) or {}
            if meta.get("layout") is not None:
                self.layouts[name] = tuple(int(a) for a in np.ravel(meta["layout"]))
        for name in self.ops:  # metadata ignored: a max-pool marker is just a sum pool
            node = graph.nodes[name]
            if isinstance(node, nir.SumPool2d) and node.metadata:
                self.ops[name] = _linear_op(nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride,
                                                          padding=node.padding), name)

    def run(self, x: np.ndarray, timesteps: int, collect_spikes: bool = False,
            collect_inputs: bool = False) -> NirResult:
        x = self._check_input(x, timesteps)
        n = x.shape[0]
        v = {name: np.zeros((n,) + p.r.shape, np.float32) for name, p in self.neurons.items()}
        spikes = {name: [] for name in self.neurons}
        sums = {name: None for name in self.outputs}

        def fire(name, z, t):
            p = self.neurons[name]
            v[name] = v[name] + p.r * z.astype(np.float32)
            s = (v[name] > p.v_threshold).astype(np.float32)
            v[name] = np.where(s > 0, p.v_reset, v[name])
            spikes[name].append(s)
            return s.astype(np.float64)

        def record(name, value, t):
            sums[name] = dialect.readout_add(sums[name], value)  # float32, in time order (docs/nir.md §4a)

        self._evaluate(x, timesteps, self.ops, fire, record)
        means = {name: dialect.to_onnx_layout(dialect.readout_mean(sums[name], timesteps), self.layouts[name])
                 for name in self.outputs}
        return NirResult(output=means[self.outputs[0]], outputs=means,
                         spikes=self._recombined(spikes) if collect_spikes else {})

    def _recombined(self, spikes: dict) -> dict:
        out = {}
        for name, s in spikes.items():
            meta = dialect.normalise(self.graph.nodes[name].metadata or {}).get(KEY)
            if not meta:
                continue  # a max pool's threshold units: not a neuron of the network
            signs = np.where(np.asarray(meta["levels"]).reshape(-1) >= 1, 1.0, -1.0)
            s = np.stack(s)  # [T, N, K * C, ...]: the units of level k in block k
            blocks = s.reshape(s.shape[:2] + (len(signs), s.shape[2] // len(signs)) + s.shape[3:])
            key = str(meta["onnx_node"])
            counts = dialect.to_onnx_layout(np.tensordot(blocks, signs, axes=([2], [0])), self.layouts[name], lead=2)
            out[key] = out.get(key, 0) + counts
        return {k: v.astype(np.float32) for k, v in out.items()}
