"""Data sets larger than memory should be, and a model quick enough that reading them is the cost.

``pool_linear_model(side)``: ``x [N, 3, side, side]`` -> 8x8 average pool -> a u8 QDQ activation
quantizer -> flatten -> a linear layer of 10 outputs: one neuron layer, a few microseconds per sample.
``write_images``: a memory-mapped ``x.npy`` (and ``y.npy``) of the size asked for, written in pieces.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def pool_linear_model(side: int = 224) -> onnx.ModelProto:
    pooled = side // 8
    weight = np.random.default_rng(0).normal(0, 0.05, (10, 3 * pooled * pooled)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
        helper.make_node("QuantizeLinear", ["pooled", "scale", "zero"], ["q"], name="quantize"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dequantize"),
        helper.make_node("Flatten", ["dq"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "weight"], ["logits"], transB=1, name="linear"),
    ]
    graph = helper.make_graph(
        nodes, "pool_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.array(1 / 64, np.float32), "scale"),
         numpy_helper.from_array(np.array(0, np.uint8), "zero"), numpy_helper.from_array(weight, "weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def write_images(folder: str, size_bytes: int, side: int = 224, seed: int = 0) -> int:
    """``folder/x.npy`` of about ``size_bytes`` of uniform [0, 4) images and ``folder/y.npy``
    labels; returns the number of samples."""
    os.makedirs(folder, exist_ok=True)
    samples = max(1, size_bytes // (3 * side * side * 4))
    x = np.lib.format.open_memmap(os.path.join(folder, "x.npy"), mode="w+", dtype=np.float32,
                                  shape=(samples, 3, side, side))
    rng = np.random.default_rng(seed)
    for start in range(0, samples, 256):
        x[start:start + 256] = rng.uniform(0, 4, (min(256, samples - start), 3, side, side)).astype(np.float32)
    x.flush()
    del x
    np.save(os.path.join(folder, "y.npy"), rng.integers(0, 10, samples))
    return samples
