"""Networks over one axis, trained on the digits and exported by torch: a keyword-spotting-style 1-D
CNN (``[N, C, L]``: the 8 rows of a digit as 8 channels over 8 positions) and a token MLP
(``[N, T, F]``: the rows as 8 tokens of 8 features, linear layers applied token-wise).

Each comes quantized the two ways the other tests' models are: with the PMSM layer
(``pmsm.exporter.quant.PMSMQuant``, torch's dynamo exporter) and by onnxruntime's
``quantize_static`` (QDQ, uint8 activations, per-channel int8 weights) of the float network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from producers import Digits, _quiet, load_digits_split, quantize_qdq, train

EPOCHS = 6


def digits_as_sequences() -> Digits:
    """The digits split with images ``[N, 1, 8, 8]`` as sequences ``[N, 8, 8]``."""
    d = load_digits_split()
    return Digits(d.x_train[:, 0].copy(), d.y_train, d.x_test[:, 0].copy(), d.y_test)


def _modules():
    import torch
    from torch import nn

    from pmsm.exporter.quant import PMSMQuant, calibrate_model

    class KeywordCnn(nn.Module):
        """Conv1d (padded, grouped, strided, dilated) + quantizers + average pooling + Linear."""

        def __init__(self, quantized: bool, levels: int = 2):
            super().__init__()

            def act():
                return PMSMQuant(levels) if quantized else nn.ReLU()

            self.conv1 = nn.Conv1d(8, 16, 3, padding=1)
            self.q1 = act()
            self.conv2 = nn.Conv1d(16, 16, 3, padding=2, dilation=2, groups=2)
            self.q2 = act()
            self.pool = nn.AvgPool1d(2)
            self.conv3 = nn.Conv1d(16, 24, 3, stride=2, padding=1)
            self.q3 = act()
            self.head = nn.Linear(24, 10)

        def forward(self, x):
            x = self.q1(self.conv1(x))
            x = self.pool(self.q2(self.conv2(x)) + x)  # a residual sum over the positions
            x = self.q3(self.conv3(x))
            return self.head(x.mean(dim=2))

    class TokenMlp(nn.Module):
        """Token-wise linear layers on ``[N, T, F]``, quantizers, a residual sum, mean over tokens."""

        def __init__(self, quantized: bool, levels: int = 2, flatten: bool = False):
            super().__init__()

            def act():
                return PMSMQuant(levels) if quantized else nn.ReLU()

            self.q0 = act() if quantized else nn.Identity()
            self.embed = nn.Linear(8, 16)
            self.q1 = act()
            self.mlp = nn.Linear(16, 16)
            self.q2 = act()
            self.flatten = flatten  # classify all tokens (flattened) instead of their mean
            self.head = nn.Linear(16 * 8 if flatten else 16, 10)

        def forward(self, x):
            h = self.q1(self.embed(self.q0(x)))
            h = self.q2(self.mlp(h) + h)
            return self.head(h.flatten(1) if self.flatten else h.mean(dim=1))

    return torch, KeywordCnn, TokenMlp, calibrate_model


def build(arch: str, producer: str, folder: Path, data: Digits, batch: int = 1) -> Path:
    """``arch``: "kws", "token" (mean over tokens) or "token_flat" (all tokens flattened into the
    classifier); ``producer``: "pmsm" (PMSM layer) or "qdq" (quantize_static)."""
    torch, KeywordCnn, TokenMlp, calibrate_model = _modules()
    torch.manual_seed(0)
    if arch == "kws":
        model = KeywordCnn(quantized=producer == "pmsm")
    else:
        model = TokenMlp(quantized=producer == "pmsm", flatten=arch == "token_flat")
    if producer == "pmsm":
        calibrate_model(model, torch.from_numpy(data.x_train[:256]))
    model = train(model, data, EPOCHS)
    float_path = folder / f"{arch}_{producer}_float.onnx"
    path = folder / f"{arch}_{producer}.onnx"
    with _quiet():
        torch.onnx.export(model.eval(), (torch.zeros(batch, 8, 8),), str(float_path if producer == "qdq" else path),
                          dynamo=True, verbose=False)
    target = float_path if producer == "qdq" else path
    onnx.save_model(onnx.load(str(target)), str(target), save_as_external_data=False)
    if producer == "qdq":
        quantize_qdq(float_path, path, data, "u8")
    return path


def save_data(folder: Path, data: Digits, count: int) -> Path:
    path = folder / "sequences.npz"
    np.savez(path, x=data.x_test[:count], y=data.y_test[:count])
    return path
