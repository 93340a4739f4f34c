"""A CIFAR-size ResNet-18 with seeded random weights, quantized by onnxruntime's ``quantize_static``
(QDQ, uint8 activations, per-channel int8 weights): the largest real producer model the NIR tests use.

Random weights are enough: the tests compare backends spike for spike, not accuracy. Batch norm
statistics are randomised too, so activations have realistic, non-trivial ranges.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

INPUT_SHAPE = (3, 32, 32)
SEED = 0


def _network():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(64)
            blocks, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = self.pool(self.blocks(x))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(SEED)
    model = ResNet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(count: int, seed: int = 1) -> np.ndarray:
    """Seeded CIFAR-shaped inputs in [0, 1]."""
    return np.random.default_rng(seed).uniform(0, 1, (count,) + INPUT_SHAPE).astype(np.float32)


def build_qdq_resnet18(folder: Path) -> Path:
    """``folder/resnet18_qdq_u8.onnx`` (built once; about 20 s)."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = Path(folder)
    path = folder / "resnet18_qdq_u8.onnx"
    if path.exists():
        return path
    float_path = folder / "resnet18_float.onnx"
    torch.onnx.export(_network(), (torch.zeros(1, *INPUT_SHAPE),), str(float_path), dynamo=True, verbose=False)
    onnx.save_model(onnx.load(str(float_path)), str(float_path), save_as_external_data=False)
    input_name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batch = iter(images(8, seed=2))

        def get_next(self):
            image = next(self.batch, None)
            return None if image is None else {input_name: image[None]}

    quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return path
