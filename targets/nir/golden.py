"""Golden traces (``--golden FILE``, docs/nir.md §12): what a NIR file or a deployment does, step by
step, on the first samples of ``--data``, in NIR's own data format (``nir.write_data``, NIR 1.0.8),
so that a hardware team can compare its chip layer by layer.

The file is a :class:`nir.data_ir.NIRGraphData` whose nodes are keyed like the NIR graph's:

- ``input``: ``{"value"}``, the data input at every step (the same at each step), in the Input
  node's layout, flattened;
- each ``IF`` node: ``{"spikes"}``, its signed spike counts ``[samples, T, neurons]`` (float32,
  the node's own NIR layout flattened in C order);
- ``output``: ``{"value"}``, each step's value of the (first) graph output, ``[samples, T, n]``
  (the answer is its mean over the steps);
- for a deployment, one nested ``NIRGraphData`` per region (``region_K``), keyed by that region's
  NIR nodes, besides ``input`` and ``output``.

Every ``TimeGriddedData`` has ``dt = 1``. :func:`read_golden` reads one back; :func:`layer_spikes`
turns a region's or file's entries back into ``[T, N, *shape]`` arrays keyed by ONNX node, the form
the interpreter's ``currents`` and the verification use.
"""
from __future__ import annotations

import os

import nir
import numpy as np
from nir.data_ir import NIRGraphData, NIRNodeData, TimeGriddedData

from pmsm.runtime import neuron
from pmsm.runtime.base.files import atomic_path
from pmsm.targets.nir import dialect
from pmsm.targets.nir.deployment import Deployment, DeploymentRunner
from pmsm.targets.nir.interpreter import NirInterpreter


def _gridded(a: np.ndarray) -> TimeGriddedData:
    """``[T, N, ...]`` -> ``TimeGriddedData`` of ``[N, T, prod(...)]``."""
    a = np.asarray(a, np.float32)
    return TimeGriddedData(np.ascontiguousarray(np.swapaxes(a.reshape(a.shape[0], a.shape[1], -1), 0, 1)), 1.0)


def _graph_traces(interp: NirInterpreter, spikes_onnx: dict) -> dict:
    """Entries of one NIR graph's IF nodes, from spikes keyed by ONNX node ``[T, N, ...]``."""
    nodes = {}
    for name in interp.neurons:
        s = spikes_onnx[interp.key(name)]
        held = dialect.to_nir_layout(np.asarray(s), interp.layouts[name], lead=2)
        nodes[name] = NIRNodeData({"spikes": _gridded(held)})
    return nodes


def traces(graph_or_deployment, x: np.ndarray, timesteps: int) -> NIRGraphData:
    """The golden traces of ``x`` (module docstring)."""
    x = np.asarray(x, np.float32)
    repeated = np.broadcast_to(x[None], (int(timesteps),) + x.shape)
    if isinstance(graph_or_deployment, Deployment):
        runner = DeploymentRunner(graph_or_deployment)
        steps: list = []
        _, spikes, _ = runner.run(x, timesteps, steps=steps)
        nodes = {"input": NIRNodeData({"value": _gridded(repeated)}),
                 "output": NIRNodeData({"value": _gridded(np.concatenate(steps, axis=1))})}
        for stage in runner.stages:
            if not isinstance(stage, tuple):
                nodes[stage.stage["name"]] = NIRGraphData(_graph_traces(stage.interp, spikes))
        return NIRGraphData(nodes)
    interp = NirInterpreter(graph_or_deployment)
    spikes, outputs = _plain_steps(interp, x, int(timesteps))
    nodes = {"input": NIRNodeData({"value": _gridded(dialect.to_nir_layout(repeated, interp.layouts[interp.input],
                                                                           lead=2))}),
             "output": NIRNodeData({"value": _gridded(outputs)})}
    nodes.update(_graph_traces(interp, spikes))
    return NIRGraphData(nodes)


def _plain_steps(interp: NirInterpreter, x: np.ndarray, timesteps: int) -> tuple[dict, np.ndarray]:
    """Spikes by ONNX node ``[T, N, ...]`` and each step's first output ``[T, N, ...]`` (float32)."""
    x = interp._check_input(x, timesteps)
    membranes, spikes, outputs = {}, {interp.key(n): [] for n in interp.neurons}, []
    first = interp.outputs[0]

    def fire(name, z, t):
        p = interp.neurons[name]
        u = membranes.get(name)
        membranes[name], s = neuron.step(u if u is not None else neuron.initial_membrane(z.shape, p), z, p)
        spikes[interp.key(name)].append(dialect.to_onnx_layout(s, interp.layouts[name]))
        return s.astype(np.float64)

    def record(name, value, t):
        if name == first:
            outputs.append(dialect.to_onnx_layout(value.astype(np.float32), interp.layouts[name]))

    interp._evaluate(x, timesteps, interp.ops, fire, record)
    return {k: np.stack(v) for k, v in spikes.items()}, np.stack(outputs)


def write_golden(data: NIRGraphData, path: str) -> None:
    """Write ``data`` with ``nir.write_data``, atomically."""
    with atomic_path(os.fspath(path), suffix=".h5") as temporary:
        nir.write_data(temporary, data)


def read_golden(path: str) -> NIRGraphData:
    """Read a golden-trace file (``nir.read_data``)."""
    return nir.read_data(os.fspath(path))


def layer_spikes(graph: nir.NIRGraph, data: NIRGraphData) -> dict[str, np.ndarray]:
    """The spikes of ``graph``'s IF nodes in ``data`` as ``[T, N, *ONNX shape]`` keyed by ONNX node
    (what :meth:`NirInterpreter.currents` takes), undoing the layout and the flattening."""
    interp = NirInterpreter(graph)
    out = {}
    for name in interp.neurons:
        grid = np.asarray(data.nodes[name].observables["spikes"].data)  # [N, T, neurons]
        shape = tuple(int(d) for d in graph.nodes[name].r.shape)
        a = np.swapaxes(grid, 0, 1).reshape((grid.shape[1], grid.shape[0]) + shape)
        out[interp.key(name)] = dialect.to_onnx_layout(a, interp.layouts[name], lead=2)
    return out
