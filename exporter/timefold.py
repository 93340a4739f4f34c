"""Fold time into the batch dimension and read out the mean over timesteps (docs/spiking-onnx.md)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm.errors import BadInputError
from pmsm.exporter.graph import add_node
from pmsm.exporter.quantizers import timesteps_input
from pmsm.runtime.schema import FOLD_PREFIX, READOUT_PREFIX, TIMESTEPS_INPUT

BATCH_DIM = "N"


def data_input(graph: gs.Graph) -> gs.Variable:
    """The one floating-point data input of the network."""
    candidates = [t for t in graph.inputs if t.name != TIMESTEPS_INPUT and isinstance(t, gs.Variable)]
    if len(candidates) != 1:
        names = ", ".join(t.name for t in candidates) or "none"
        raise BadInputError(f"the network must have exactly one data input, found {len(candidates)} ({names})")
    tensor = candidates[0]
    if tensor.dtype is not None and np.dtype(tensor.dtype) != np.float32:
        raise BadInputError(f"data input '{tensor.name}' is {np.dtype(tensor.dtype)}; float32 is supported")
    return tensor


def fold_time_into_batch(graph: gs.Graph) -> gs.Graph:
    """Repeat the data input time-major to ``[T*N, ...]``: row ``t*N + n`` is sample ``n`` at step ``t``."""
    x = data_input(graph)
    rank = len(x.shape) if x.shape is not None else None
    if not rank:
        raise BadInputError(f"data input '{x.name}' needs a known rank with the batch first")
    timesteps = timesteps_input(graph)
    t_vector = add_node(graph, "Reshape", [timesteps, gs.Constant(f"{FOLD_PREFIX}one", np.array([1], np.int64))],
                        f"{FOLD_PREFIX}timesteps_vector", dtype=np.int64)
    repeats = add_node(graph, "Concat", [t_vector, gs.Constant(f"{FOLD_PREFIX}ones", np.ones(rank - 1, np.int64))],
                       f"{FOLD_PREFIX}repeats", attrs={"axis": 0}, dtype=np.int64)
    readers = [n for n in x.outputs]
    repeated = add_node(graph, "Tile", [x, repeats], f"{FOLD_PREFIX}tile")
    for node in readers:
        node.inputs = [repeated if t is x else t for t in node.inputs]
    x.shape = [BATCH_DIM] + list(x.shape[1:])
    return graph


def mean_readout(graph: gs.Graph) -> gs.Graph:
    """Each output ``[T*N, ...]`` becomes the mean over T of ``[T, N, ...]``, under its own name."""
    timesteps = timesteps_input(graph)
    opset = int(graph.opset or 13)
    new_outputs = []
    for index, output in enumerate(graph.outputs):
        if output.dtype is not None and np.dtype(output.dtype) != np.float32:
            raise BadInputError(f"output '{output.name}' is {np.dtype(output.dtype)}; the readout averages float32 "
                                "outputs over timesteps")
        name = output.name
        row_shape = list(output.shape[1:]) if output.shape else None
        output.name = f"{name}__per_step"
        output.shape = None  # [T*N, ...]
        stem = f"{READOUT_PREFIX}{index}"
        t_vector = add_node(graph, "Reshape", [timesteps, gs.Constant(f"{stem}/one", np.array([1], np.int64))],
                            f"{stem}/timesteps_vector", dtype=np.int64)
        shape = add_node(graph, "Shape", [output], f"{stem}/shape", dtype=np.int64)
        tail = add_node(graph, "Slice", [shape, gs.Constant(f"{stem}/start", np.array([1], np.int64)),
                                         gs.Constant(f"{stem}/end", np.array([2**62], np.int64))],
                        f"{stem}/tail", dtype=np.int64)
        target = add_node(graph, "Concat", [t_vector, gs.Constant(f"{stem}/minus_one", np.array([-1], np.int64)),
                                            tail], f"{stem}/target", attrs={"axis": 0}, dtype=np.int64)
        per_step = add_node(graph, "Reshape", [output, target], f"{stem}/split_time")
        if opset >= 18:
            mean_inputs, attrs = [per_step, gs.Constant(f"{stem}/axes", np.array([0], np.int64))], {"keepdims": 0}
        else:
            mean_inputs, attrs = [per_step], {"axes": [0], "keepdims": 0}
        mean = add_node(graph, "ReduceMean", mean_inputs, f"{stem}/mean", attrs=attrs)
        mean.name = name
        mean.dtype = np.float32
        mean.shape = [BATCH_DIM] + row_shape if row_shape is not None else None
        new_outputs.append(mean)
    graph.outputs = new_outputs
    return graph


def forget_batch_shapes(graph: gs.Graph) -> gs.Graph:
    """Intermediate shapes recorded at the export batch size are wrong once time is folded in.

    Graph outputs keep their per-row shape with a symbolic batch (the readout restores ``[N, ...]``;
    ONNX's checker requires a shape on graph outputs).
    """
    keep = {id(t) for t in graph.inputs}
    outputs = {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Variable) or id(tensor) in keep:
            continue
        if id(tensor) in outputs and tensor.shape:
            tensor.shape = [BATCH_DIM] + list(tensor.shape[1:])
        else:
            tensor.shape = None
    return graph

