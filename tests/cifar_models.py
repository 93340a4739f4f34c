"""CIFAR-size networks people deploy, with random weights, quantized by onnxruntime (QDQ u8).

``resnet18`` and ``mobilenet_v2`` follow torchvision's architectures (ImageNet stem, 10 classes)
on 3x32x32 inputs, written directly as ONNX with the batch norms folded into the convolutions
(what torch's exporter does in eval mode), He-initialised so that activations neither vanish nor
explode through the depth, then quantized with ``quantize_static`` (QDQ, uint8 activations,
per-channel int8 weights) on a seeded random calibration batch. No torch, no training: a model
builds in seconds. Used by the Lava tests and by ``benchmarks/lava_speed.py``.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
CALIBRATION_IMAGES = 16
ARCHITECTURES = ("resnet18", "mobilenet_v2")


class _Builder:
    """Appends ONNX nodes and initializers; every layer gets a readable name."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> str:
        name = self._name("conv")
        fan_in = c_in // groups * kernel * kernel
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (c_out, c_in // groups, kernel, kernel))
        b = self.rng.normal(0.0, 0.05, c_out)
        pad = kernel // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const(name + ".w", w), self._const(name + ".b", b)], [name], name=name,
            kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=groups))
        return name

    def op(self, kind: str, inputs: list, **attrs) -> str:
        name = self._name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        name = self._name("relu6")
        lo, hi = self._const(name + ".min", np.array(0.0)), self._const(name + ".max", np.array(6.0))
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [name], name=name))
        return name

    def classifier(self, x: str, channels: int) -> str:
        pooled = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        name = self._name("fc")
        w = self.rng.normal(0.0, np.sqrt(1.0 / channels), (CLASSES, channels))
        self.nodes.append(helper.make_node(
            "Gemm", [pooled, self._const(name + ".w", w), self._const(name + ".b", np.zeros(CLASSES))],
            ["logits"], name=name, transB=1))
        return "logits"

    def model(self, graph_name: str, batch: int | str = 1) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *INPUT_SHAPE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 10
        return model


def resnet18(seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """torchvision ``resnet18(num_classes=10)``: 7x7/2 stem, 3x3/2 max pool, four stages of two
    basic blocks (64, 128, 256, 512 channels; 1x1 projection on the skip when the shape changes)."""
    b = _Builder(seed)
    x = b.relu(b.conv("x", 3, 64, 7, stride=2))
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            y = b.conv(b.relu(b.conv(x, c_in, c_out, 3, stride=s)), c_out, c_out, 3)
            skip = b.conv(x, c_in, c_out, 1, stride=s) if (s != 1 or c_in != c_out) else x
            x = b.relu(b.op("Add", [y, skip]))
            c_in = c_out
    b.classifier(x, 512)
    return b.model("resnet18", batch)


# (expansion t, output channels c, repeats n, first stride s): torchvision's table
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """torchvision ``mobilenet_v2(num_classes=10)``: inverted residual blocks (1x1 expansion with
    ReLU6, 3x3 depthwise with ReLU6, linear 1x1 projection, skip when stride 1 and same width)."""
    b = _Builder(seed)
    x = b.relu6(b.conv("x", 3, 32, 3, stride=2))
    c_in = 32
    for t, c_out, repeats, first_stride in _MOBILENET_V2:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            hidden = c_in * t
            y = b.relu6(b.conv(x, c_in, hidden, 1)) if t != 1 else x
            y = b.relu6(b.conv(y, hidden, hidden, 3, stride=stride, groups=hidden))
            y = b.conv(y, hidden, c_out, 1)
            x = b.op("Add", [x, y]) if stride == 1 and c_in == c_out else y
            c_in = c_out
    x = b.relu6(b.conv(x, c_in, 1280, 1))
    b.classifier(x, 1280)
    return b.model("mobilenet_v2", batch)


def calibration_images(count: int = CALIBRATION_IMAGES, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (count, *INPUT_SHAPE)).astype(np.float32)


def quantized(arch: str, folder: Path | str, seed: int = 0, dynamic_batch: bool = False) -> Path:
    """The QDQ u8 model of ``arch`` in ``folder`` (built once; reused when it is there): batch 1, or
    a symbolic batch ``N`` with ``dynamic_batch``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    folder = Path(folder)
    batch = "N" if dynamic_batch else 1
    path = folder / f"{arch}_cifar_qdq_u8_seed{seed}{'_batchN' if dynamic_batch else ''}.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    float_path = folder / f"{arch}_cifar_float_seed{seed}_batch{batch}.onnx"
    onnx.save(globals()[arch](seed, batch), str(float_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration_images())

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"x": image[None]}

    partial = path.with_suffix(".partial.onnx")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(str(float_path), str(partial), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    os.replace(partial, path)
    float_path.unlink()
    return path
