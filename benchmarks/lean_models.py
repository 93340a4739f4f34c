"""The networks of ``benchmarks/lean.py``: QDQ models of the architectures issue 23 measured.

Random weights, 3x32x32 inputs, 10 classes, quantized by onnxruntime's ``quantize_static`` (QDQ,
uint8 activations, int8 weights, calibrated on 8 seeded random images), at a fixed batch of
``batch`` (the batch the spiking file then runs at):

- ``resnet18``: torchvision's ResNet-18 on CIFAR-size inputs (``tests/cifar_models.py``, no torch);
- ``vit``: torchvision ``VisionTransformer`` 4 layers x 192 (3 heads, MLP 768, 4x4 patches);
- ``deit``: a DeiT-style transformer written as timm writes it (class and distillation tokens,
  pre-norm blocks, one ``qkv`` Linear reshaped into heads, ``q @ k^T * scale``, softmax, GELU MLP,
  the two heads averaged), 4 layers x 192, 3 heads;
- ``efficientnet``: torchvision ``efficientnet_b0`` (MBConv with depthwise convolutions, SiLU as
  ``x * sigmoid(x)``, squeeze-and-excitation).

Exported with torch's TorchScript exporter (opset 17; faster than dynamo for a benchmark's set-up).
Files are cached in ``folder`` and reused.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("resnet18", "vit", "deit", "efficientnet")
IMAGE, CLASSES, CALIBRATION_IMAGES = 32, 10, 8


def _torch_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "vit":
        model = torchvision.models.VisionTransformer(image_size=IMAGE, patch_size=4, num_layers=4, num_heads=3,
                                                     hidden_dim=192, mlp_dim=768, num_classes=CLASSES)
        torch.nn.init.normal_(model.heads.head.weight, std=192 ** -0.5)  # torchvision zeroes the head
        return model
    if name == "efficientnet":
        return torchvision.models.efficientnet_b0(num_classes=CLASSES)
    if name == "deit":
        return _deit(torch)
    raise ValueError(name)


def _deit(torch):
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads, self.scale = heads, (dim // heads) ** -0.5
            self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attention = (q @ k.transpose(-2, -1)) * self.scale
            return self.proj((attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        def __init__(self, dim, heads, mlp):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class DeiT(nn.Module):
        def __init__(self, dim=192, depth=4, heads=3, mlp=768, patch=4):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, patch, stride=patch)
            tokens = (IMAGE // patch) ** 2
            self.cls_token, self.dist_token = nn.Parameter(torch.randn(1, 1, dim) * .02), nn.Parameter(torch.randn(1, 1, dim) * .02)
            self.pos = nn.Parameter(torch.randn(1, tokens + 2, dim) * .02)
            self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head, self.head_dist = nn.Linear(dim, CLASSES), nn.Linear(dim, CLASSES)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            b = x.shape[0]
            x = torch.cat((self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x), dim=1) + self.pos
            x = self.norm(self.blocks(x))
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2

    return DeiT()


def quantized(name: str, folder: str | Path, batch: int = 16) -> Path:
    """The QDQ u8 model ``name`` at a fixed ``batch``, built once in ``folder``."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_qdq_u8_batch{batch}.onnx"
    if path.exists():
        return path
    float_path = folder / f"{name}_float_batch{batch}.onnx"
    if name == "resnet18":
        sys.path.insert(0, os.path.join(REPO, "tests"))
        import cifar_models

        onnx.save(cifar_models.resnet18(0, batch), str(float_path))
        input_name = "x"
    else:
        import torch

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_torch_model(name).eval(), (torch.randn(batch, 3, IMAGE, IMAGE),), str(float_path),
                              dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"])
        input_name = "x"
    rng = np.random.default_rng(1)
    feeds = ({input_name: rng.uniform(0, 1, (batch, 3, IMAGE, IMAGE)).astype(np.float32)}
             for _ in range(CALIBRATION_IMAGES // batch or 1))
    return _quantize_static(float_path, path, feeds, "QUInt8")


def _quantize_static(float_path: Path, path: Path, feeds, activation_type: str) -> Path:
    """``quantize_static`` of ``float_path`` (QDQ, int8 weights, calibrated on ``feeds``) written to
    ``path`` atomically; the float model is removed."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    partial = path.with_suffix(".partial.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(partial), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8)
    os.replace(partial, path)
    float_path.unlink()
    return path


def uint16_cnn(folder: str | Path) -> Path:
    """A small CNN with 16-bit activations (65,536 spike levels a layer): onnxruntime's
    ``quantize_static`` with ``QUInt16`` activations at opset 21, batch 1, built once in ``folder``."""
    import onnx

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from cifar_models import _Builder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cnn_qdq_u16.onnx"
    if path.exists():
        return path
    b = _Builder(0)
    x = b.relu(b.conv("x", 3, 8, 3, stride=2))
    x = b.relu(b.conv(x, 8, 16, 3, stride=2))
    b.classifier(x, 16)
    model = b.model("cnn16", 1)
    model.opset_import[0].version = 21
    float_path = folder / "cnn_float_u16.onnx"
    onnx.save(model, str(float_path))
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (CALIBRATION_IMAGES, 1, 3, IMAGE, IMAGE)).astype(np.float32)
    return _quantize_static(float_path, path, ({"x": image} for image in images), "QUInt16")


if __name__ == "__main__":
    for model in sys.argv[2:] or MODELS:
        print(quantized(model, sys.argv[1]))
