"""Turn the folded working graph into standard NIR 1.0.8 nodes with the PMSM metadata."""
from __future__ import annotations

import nir
import numpy as np

from pmsm.targets.nir import arithmetic, dialect, ops
from pmsm.targets.nir.ir import Node, WorkGraph


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _pair(v) -> np.ndarray:
    return np.array([int(v[0]), int(v[1])], dtype=np.int64)


def _layout(n: Node) -> dict:
    """``metadata`` saying how NIR's axes map to ONNX's (docs/nir.md §3a); empty in ONNX's order."""
    return {dialect.KEY: dialect.layout_metadata(n.params["layout"])} if n.params.get("layout") else {}


def _nir_node(n: Node) -> nir.NIRNode:
    p = n.params
    if n.kind == "input":
        return nir.Input(input_type={"input": np.array(n.out_shape)}, metadata=_layout(n))
    if n.kind == "output":
        return nir.Output(output_type={"output": np.array(n.in_shape)}, metadata=_layout(n))
    if n.kind == "if":
        shape = n.out_shape
        return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.ones(shape, np.float32),
                      v_reset=np.zeros(shape, np.float32),
                      metadata={dialect.KEY: dialect.neuron_metadata(p["neuron"], n.onnx_node, p.get("layout", ()))})
    if n.kind == "conv" and np.ndim(p["weight"]) == 3:
        weight, bias = arithmetic.on_grid(p["weight"], p["bias"])
        return nir.Conv1d(input_shape=int(n.in_shape[1]), weight=_f32(weight), stride=int(p["stride"][0]),
                          padding=int(p["padding"][0]), dilation=int(p["dilation"][0]), groups=int(p["groups"]),
                          bias=_f32(bias))
    if n.kind == "sumpool" and len(p["kernel"]) == 1 and "float32" in p:
        # ONNX's float32 average pool (docs/nir.md §5a): the weights hold its real-number factor,
        # the metadata the float32 op that the dialect's consumers run.
        channels = int(n.in_shape[0])
        weight = ops.sum_pool1d_weight(channels, p["kernel"][0]) * np.asarray(p["factor"]).reshape(-1, 1, 1)
        return nir.Conv1d(input_shape=int(n.in_shape[1]), weight=_f32(weight), stride=int(p["stride"][0]),
                          padding=int(p["padding"][0]), dilation=1, groups=1, bias=np.zeros(channels, np.float32),
                          metadata={dialect.KEY: p["float32"].metadata()})
    if n.kind == "sumpool" and len(p["kernel"]) == 1:
        # NIR 1.0.8 has no 1-D pooling node: a window sum is a Conv1d whose weights are 1 on the
        # channel diagonal (exact: sums of counts times 1); the 1/count factor is already folded.
        channels = int(n.in_shape[0])
        return nir.Conv1d(input_shape=int(n.in_shape[1]), weight=_f32(ops.sum_pool1d_weight(channels, p["kernel"][0])),
                          stride=int(p["stride"][0]), padding=int(p["padding"][0]), dilation=1, groups=1,
                          bias=np.zeros(channels, np.float32),
                          metadata={dialect.KEY: {"op": "sum_pool1d", "version": dialect.VERSION}})
    if n.kind == "conv":
        weight, bias = arithmetic.on_grid(p["weight"], p["bias"])
        # input_shape given explicitly: nir's own inference is wrong for 'same' with stride 2.
        return nir.Conv2d(input_shape=(int(n.in_shape[1]), int(n.in_shape[2])), weight=_f32(weight),
                          stride=tuple(int(s) for s in p["stride"]), padding=tuple(int(s) for s in p["padding"]),
                          dilation=tuple(int(s) for s in p["dilation"]), groups=int(p["groups"]),
                          bias=_f32(bias))
    if n.kind == "affine":
        weight, bias = arithmetic.on_grid(p["weight"], p["bias"])
        return nir.Affine(weight=_f32(weight), bias=_f32(bias))
    if n.kind == "scale":
        return nir.Scale(scale=_f32(p["scale"]))
    if n.kind == "flatten":
        return nir.Flatten(input_type={"input": np.array(n.in_shape)}, start_dim=0, end_dim=-1)
    pool = dict(kernel_size=_pair(p["kernel"]), stride=_pair(p["stride"]), padding=_pair(p["padding"]))
    if n.kind == "avgpool":
        return nir.AvgPool2d(**pool)
    if n.kind == "sumpool":
        return nir.SumPool2d(**pool)
    if n.kind == "maxpool":
        return nir.SumPool2d(**pool, metadata={dialect.KEY: dict(dialect.MAX_POOL)})
    raise AssertionError(f"unknown node kind {n.kind}")


def to_nir(work: WorkGraph, graph_metadata: dict) -> nir.NIRGraph:
    nodes = {name: _nir_node(n) for name, n in work.nodes.items()}
    edges = [(e.src, e.dst) for e in work.edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={dialect.KEY: graph_metadata}, type_check=True)
