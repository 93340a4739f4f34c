"""Quantized ONNX models from real producers, trained for seconds on scikit-learn's digits.

Each producer writes the same two architectures its own way:

- ``mlp``: flatten -> Linear(64, 64) BN Q -> Linear(64, 32) BN Q -> Linear(32, 10)
- ``cnn``: Conv(1->8) BN Q -> [Conv(8->8) BN Q -> Conv(8->8) BN] + skip -> Q -> MaxPool(2)
  -> Conv(8->16, stride 2) BN Q -> AvgPool(2) -> ``view(N, -1)`` -> Linear(16, 10)

(residual add, max pool, average pool, strided convolution, flatten), where ``Q`` is the
producer's activation quantizer:

- ``pmsm-dynamo``: ``pmsm.exporter.quant.PMSMQuant`` (L=4, polarity), ``torch.onnx.export(dynamo=True)``
- ``pmsm-legacy``: the same layer, ``torch.onnx.export(dynamo=False)`` (the TorchScript exporter)
- ``floor-dynamo`` / ``floor-legacy``: ``ReLU`` then ``clamp(floor(x / s * L + 0.5), -L, L) / L * s``
  written by hand, through either exporter
- ``ste-dynamo`` / ``ste-legacy``: ``clamp(y + (round(y) - y).detach(), 0, L) * s`` with ``y = x / s``
- ``qcfs-dynamo`` / ``qcfs-legacy``: the QCFS way, ``z = x / up * L; q = z + (floor(z + 0.5) - z).detach();
  clamp(q, 0, L) / L * up``
- ``minmax-dynamo`` / ``minmax-legacy``: signed, ``q = (round(y) - y).detach() + y`` (the other operand
  order), clamped with ``torch.maximum(torch.minimum(q, L), -L)`` (ONNX ``Min``/``Max``)
- ``fakequant-dynamo`` / ``fakequant-legacy``: ``ReLU`` then ``torch.fake_quantize_per_tensor_affine`` on
  levels 0..127 (narrower than uint8: torch writes ``QuantizeLinear -> Clip -> DequantizeLinear``)
- ``clampfirst-dynamo`` / ``clampfirst-legacy``: the clamp before the straight-through rounding and none
  after it, at a bound off the level grid: ``z = clamp(x / up * L, 0, L - 0.3); q = z + (floor(z + 0.5)
  - z).detach(); q / L * up``
- ``relufloor-dynamo`` / ``relufloor-legacy``: ``z = relu(x / s); q = z + (floor(z) - z).detach();
  clamp(q, max=L) * s`` (the lower bound before the rounding, the upper after it)
- ``qdq-u8``: onnxruntime ``quantize_static``, QDQ format, uint8 activations, per-channel int8 weights
- ``qdq-s8``: the same with symmetric int8 activations (zero point 0, the Relu stays in the graph)
- ``qdq-a16`` / ``qdq-au16``: A16W8, int16 or uint16 activations and int8 weights: below opset 21
  onnxruntime writes ``com.microsoft::QuantizeLinear``/``DequantizeLinear`` for every Q/DQ
- ``qdq-c8``: uint8 activations through the same contrib ops (``UseQDQContribOps``, as AMD Quark
  writes its 8-bit configurations)
- ``brevitas-qonnx`` / ``brevitas-qcdq``: Brevitas ``QuantIdentity`` (8-bit input), ``QuantConv2d`` /
  ``QuantLinear`` (4-bit weights), ``QuantReLU`` (4-bit), exported with ``export_qonnx`` /
  ``export_onnx_qcdq``
- ``brevitas-qonnx-legacy`` / ``brevitas-qcdq-legacy``: the same two through the TorchScript
  exporter (``dynamo=False``): IR 7 or 9, QCDQ at opset 13, initializers listed as graph inputs

Torch models are exported at batch 1 (so every Reshape carries a hard-coded batch of 1), as users
export them, and on request at another fixed batch size (``ProducerZoo.build(..., batch=N)``). Training is seeded: the float network of each architecture trains once; the torch
quantizers start from its weights (calibrated scales, then a short quantization-aware fine-tune
where the quantizer has a gradient); the QDQ models quantize its float export; Brevitas trains its
own network from scratch. :class:`ProducerZoo` builds each model once and caches it on disk.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
TEST_SPLIT_FILE = REPO / "samples" / "digits_test.npz"
SPLIT_SEED = 0  # samples/train_digits.py: stratified 80/20 split, random_state=0
TEST_FRACTION = 0.2

ARCHITECTURES = ("mlp", "cnn")
TORCH_KINDS = ("pmsm", "floor", "ste", "qcfs", "minmax", "fakequant", "clampfirst", "relufloor")
TORCH_PRODUCERS = tuple(f"{kind}-{exporter}" for kind in TORCH_KINDS for exporter in ("dynamo", "legacy"))
QDQ_PRODUCERS = ("qdq-u8", "qdq-s8", "qdq-a16", "qdq-au16", "qdq-c8")
BREVITAS_PRODUCERS = ("brevitas-qonnx", "brevitas-qcdq", "brevitas-qonnx-legacy", "brevitas-qcdq-legacy")
PRODUCERS = TORCH_PRODUCERS + QDQ_PRODUCERS + BREVITAS_PRODUCERS

LEVELS = {"pmsm": 4, "floor": 7, "ste": 7, "qcfs": 4, "minmax": 15, "fakequant": 127,  # L of the torch quantizers
          "clampfirst": 7, "relufloor": 7}
BREVITAS_BITS = 4  # activation and weight bit width of the Brevitas network
CALIBRATION_IMAGES = 256
SEED = 0


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray  # float32 [N, 1, 8, 8], pixels / 16
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split() -> Digits:
    """The training split of samples/train_digits.py and its 360 test images.

    The committed ``samples/digits_test.npz`` is the test split when it exists; the split is
    recomputed otherwise (it is the same one).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if TEST_SPLIT_FILE.exists():
        with np.load(TEST_SPLIT_FILE) as saved:
            x_test, y_test = saved["x"].astype(np.float32), saved["y"].astype(np.int64)
    return Digits(x_train, y_train, x_test, y_test)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


# --------------------------------------------------------------------------- torch architectures


def _torch():
    import torch

    return torch


def _layers_torch():
    from torch import nn

    return {
        "conv": lambda cin, cout, stride=1: nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        "linear": nn.Linear,
        "input": nn.Identity,
    }


def build_network(arch: str, act: Callable[[], "object"], layers: dict | None = None):
    """``mlp`` or ``cnn`` (module docstring) with ``act()`` as every hidden nonlinearity,
    initialised from a fixed seed."""
    from torch import nn

    _torch().manual_seed(SEED)

    layers = layers or _layers_torch()
    conv, linear = layers["conv"], layers["linear"]

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_quant = layers["input"]()
            self.flatten = nn.Flatten()
            self.fc1, self.bn1, self.act1 = linear(64, 64), nn.BatchNorm1d(64), act()
            self.fc2, self.bn2, self.act2 = linear(64, 32), nn.BatchNorm1d(32), act()
            self.fc3 = linear(32, 10)

        def forward(self, x):
            x = self.flatten(self.input_quant(x))
            x = self.act1(self.bn1(self.fc1(x)))
            x = self.act2(self.bn2(self.fc2(x)))
            return self.fc3(x)

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_quant = layers["input"]()
            self.conv1, self.bn1, self.act1 = conv(1, 8), nn.BatchNorm2d(8), act()
            self.conv2, self.bn2, self.act2 = conv(8, 8), nn.BatchNorm2d(8), act()
            self.conv3, self.bn3 = conv(8, 8), nn.BatchNorm2d(8)
            self.act3 = act()  # after the residual sum
            self.maxpool = nn.MaxPool2d(2)
            self.conv4, self.bn4, self.act4 = conv(8, 16, stride=2), nn.BatchNorm2d(16), act()
            self.avgpool = nn.AvgPool2d(2)
            self.fc = linear(16, 10)

        def forward(self, x):
            x = self.act1(self.bn1(self.conv1(self.input_quant(x))))
            r = self.bn3(self.conv3(self.act2(self.bn2(self.conv2(x)))))
            x = self.maxpool(self.act3(x + r))
            x = self.avgpool(self.act4(self.bn4(self.conv4(x))))
            return self.fc(x.view(x.size(0), -1))  # flatten as many models write it

    return {"mlp": MLP, "cnn": CNN}[arch]()


def train(model, data: Digits, epochs: int, lr: float = 3e-3, seed: int = SEED):
    """Adam on cross-entropy, batch 64, seeded; returns the model in eval mode."""
    torch = _torch()
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def torch_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    torch = _torch()
    with torch.no_grad():
        return accuracy(model(torch.from_numpy(x)).numpy(), y)


# ------------------------------------------------------------------------------- torch quantizers


def _quantizer_classes():
    """kind -> quantizer module class; ``whole_range`` says whether ``scale`` is the whole range
    (calibrated to it) or one step."""
    torch = _torch()
    from torch import nn

    class FloorClipQuant(nn.Module):
        """A hand-written signed quantizer: ``clamp(floor(x / s * L + 0.5), -L, L) / L * s``."""

        whole_range = True

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, x):
            s, L = self.scale, float(self.levels)
            return torch.clamp(torch.floor(x / s * L + 0.5), -L, L) / L * s

    class RoundSTEQuant(nn.Module):
        """Unsigned ``clamp(round(x / s), 0, L) * s`` with the detached straight-through round."""

        whole_range = False

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, x):
            y = x / self.scale
            y = y + (torch.round(y) - y).detach()
            return torch.clamp(y, 0, self.levels) * self.scale

    class QCFSQuant(nn.Module):
        """The QCFS layer as its users write it: floor with a shift inside the straight-through trick."""

        whole_range = True

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, v):
            up, L = self.scale, float(self.levels)
            z = v / up * L
            q = z + (torch.floor(z + 0.5) - z).detach()
            return torch.clamp(q, 0.0, L) / L * up

    class MinMaxSTEQuant(nn.Module):
        """Signed round with the straight-through trick written the other way round, clamped by
        ``torch.minimum``/``torch.maximum``."""

        whole_range = False

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0
            self.register_buffer("top", torch.tensor(float(levels)))

        def forward(self, x):
            y = x / self.scale
            q = (torch.round(y) - y).detach() + y
            return torch.maximum(torch.minimum(q, self.top), -self.top) * self.scale

    class FakeQuant(nn.Module):
        """torch's own fake quantizer on levels 0..127."""

        whole_range = False

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, x):
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale), 0, 0, self.levels)

    class ClampFirstQuant(nn.Module):
        """The clamp before the straight-through rounding, none after it, at a bound that is not a
        whole level (``L - 0.3`` rounds up to ``L``)."""

        whole_range = True

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, v):
            up, L = self.scale, float(self.levels)
            z = torch.clamp(v / up * L, min=0.0, max=L - 0.3)
            q = z + (torch.floor(z + 0.5) - z).detach()
            return q / L * up

    class ReluFloorMinQuant(nn.Module):
        """``relu``, then the straight-through floor, then ``min(., L)``."""

        whole_range = False

        def __init__(self, levels: int):
            super().__init__()
            self.levels, self.scale = levels, 1.0

        def forward(self, x):
            z = torch.relu(x / self.scale)
            q = z + (torch.floor(z) - z).detach()
            return torch.clamp(q, max=float(self.levels)) * self.scale

    return {"floor": FloorClipQuant, "ste": RoundSTEQuant, "qcfs": QCFSQuant, "minmax": MinMaxSTEQuant,
            "fakequant": FakeQuant, "clampfirst": ClampFirstQuant, "relufloor": ReluFloorMinQuant}


def _quantized_copy(float_model, arch: str, kind: str, data: Digits):
    """The float network's weights with ``kind``'s quantizer in place of every ReLU, calibrated
    on training images, then fine-tuned where the quantizer passes a gradient."""
    torch = _torch()
    from torch import nn

    classes = _quantizer_classes()
    levels = LEVELS[kind]
    if kind == "pmsm":
        from pmsm.exporter.quant import PMSMQuant

        def act():
            return PMSMQuant(levels, polarity=True)
    elif kind in ("floor", "fakequant"):
        def act():
            return nn.Sequential(nn.ReLU(), classes[kind](levels))
    else:
        def act():
            return classes[kind](levels)

    model = build_network(arch, act)
    model.load_state_dict(float_model.state_dict(), strict=False)
    calibration = torch.from_numpy(data.x_train[:CALIBRATION_IMAGES])
    if kind == "pmsm":
        from pmsm.exporter.quant import calibrate_model

        model.eval()
        calibrate_model(model, calibration)
    else:
        _calibrate_scales(model, calibration, tuple(classes.values()))
    if kind != "floor":  # floor has no gradient: post-training quantization only
        train(model, data, epochs=5, lr=1e-3)
    return model.eval()


def _calibrate_scales(model, x, kinds) -> None:
    """Each quantizer's range becomes the 99.9th percentile of its input (layers calibrate in
    order, each seeing the already-quantized layers before it)."""
    torch = _torch()

    def hook(module, args):
        values = args[0].detach().flatten()
        signed = module.__class__.__name__ in ("FloorClipQuant", "MinMaxSTEQuant")
        top = float(torch.quantile(values.abs() if signed else values.clamp(min=0), 0.999))
        top = top if top > 0 else 1.0
        module.scale = top if module.whole_range else top / module.levels

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet():
    """Exporters print progress and warnings; keep test output readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def export_torch(model, path: Path, dynamo: bool, batch: int = 1) -> Path:
    """Export at a fixed batch size with torch's dynamo or TorchScript exporter, weights inside the file."""
    torch = _torch()
    example = (torch.zeros(batch, 1, 8, 8),)
    with _quiet():
        if dynamo:
            torch.onnx.export(model.eval(), example, str(path), dynamo=True, verbose=False)
        else:
            torch.onnx.export(model.eval(), example, str(path), dynamo=False, input_names=["x"],
                              output_names=["logits"])
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


QDQ_ACTIVATIONS = {"u8": "QUInt8", "s8": "QInt8", "a16": "QInt16", "au16": "QUInt16", "c8": "QUInt8"}


def quantize_qdq(float_path: Path, path: Path, data: Digits, activation: str) -> Path:
    """onnxruntime ``quantize_static`` in QDQ format: ``activation`` "u8" (asymmetric), "s8"
    (symmetric), "a16"/"au16" (int16/uint16: contrib Q/DQ below opset 21) or "c8" (uint8 through
    the contrib Q/DQ), per-channel int8 weights, calibrated (MinMax) on training images one at a time."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    source_input = onnx.load(str(float_path)).graph.input[0]
    input_name = source_input.name
    batch = max(1, source_input.type.tensor_type.shape.dim[0].dim_value)  # the export's fixed batch

    class Reader(CalibrationDataReader):
        def __init__(self):
            images = data.x_train[:max(CALIBRATION_IMAGES // 2, batch)]
            self.batches = iter(images[i:i + batch] for i in range(0, len(images) - batch + 1, batch))

        def get_next(self):
            images = next(self.batches, None)
            return None if images is None else {input_name: images}

    with _quiet():
        quantize_static(
            str(float_path), str(path), Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=getattr(QuantType, QDQ_ACTIVATIONS[activation]),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # int8 activations symmetric around 0 (zero point 0): ONNX Runtime then keeps the
            # Relu in front of the QuantizeLinear, while uint8 folds it into the range
            extra_options={"ActivationSymmetric": activation == "s8", "UseQDQContribOps": activation == "c8"},
        )
    return path


def _layers_brevitas():
    import brevitas.nn as qnn

    bits = BREVITAS_BITS
    return {
        "conv": lambda cin, cout, stride=1: qnn.QuantConv2d(cin, cout, 3, stride=stride, padding=1,
                                                            weight_bit_width=bits),
        "linear": lambda fin, fout: qnn.QuantLinear(fin, fout, bias=True, weight_bit_width=bits),
        "input": lambda: qnn.QuantIdentity(bit_width=8),  # the analog image, 8-bit signed
    }


def build_brevitas(arch: str, data: Digits):
    import brevitas.nn as qnn

    with _quiet():
        model = build_network(arch, lambda: qnn.QuantReLU(bit_width=BREVITAS_BITS), _layers_brevitas())
        return train(model, data, epochs=10 if arch == "mlp" else 5)


def export_brevitas(model, path: Path, flavour: str, dynamo: bool = True, batch: int = 1) -> Path:
    """``export_qonnx`` (``flavour`` "qonnx") or ``export_onnx_qcdq`` ("qcdq") at batch 1, through
    torch's dynamo exporter (the default) or the TorchScript one."""
    torch = _torch()
    from brevitas.export import export_onnx_qcdq, export_qonnx

    exporter = export_qonnx if flavour == "qonnx" else export_onnx_qcdq
    with _quiet():
        exporter(model.eval(), torch.zeros(batch, 1, 8, 8), export_path=str(path), dynamo=dynamo)
    return path


# ------------------------------------------------------------------------------------------ zoo


@dataclass(frozen=True)
class Built:
    producer: str
    arch: str
    path: Path

    @property
    def model(self) -> onnx.ModelProto:
        return onnx.load(str(self.path))


class ProducerZoo:
    """Builds each (producer, architecture) model on first request and keeps it in ``folder``."""

    def __init__(self, folder: Path, data: Digits | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data = data or load_digits_split()
        self._float: dict[str, object] = {}
        self._quantized: dict[tuple[str, str], object] = {}
        self._built: dict[tuple[str, str], Built] = {}
        _torch().set_num_threads(min(2, os.cpu_count() or 1))

    def float_network(self, arch: str):
        if arch not in self._float:
            from torch import nn

            self._float[arch] = train(build_network(arch, nn.ReLU), self.data, epochs=15 if arch == "mlp" else 10)
        return self._float[arch]

    def torch_network(self, kind: str, arch: str):
        """The trained torch module behind producers ``<kind>-dynamo`` / ``<kind>-legacy``."""
        key = (kind, arch)
        if key not in self._quantized:
            if kind == "brevitas":
                self._quantized[key] = build_brevitas(arch, self.data)
            else:
                self._quantized[key] = _quantized_copy(self.float_network(arch), arch, kind, self.data)
        return self._quantized[key]

    def build(self, producer: str, arch: str, batch: int = 1) -> Built:
        """The model of ``producer`` for ``arch``, exported at the fixed ``batch`` size."""
        key = (producer, arch, batch)
        if key not in self._built:
            suffix = "" if batch == 1 else f"_b{batch}"
            path = self.folder / f"{arch}_{producer}{suffix}.onnx"
            kind, flavour = producer.split("-")[:2]
            if producer in TORCH_PRODUCERS:
                export_torch(copy.deepcopy(self.torch_network(kind, arch)), path, dynamo=flavour == "dynamo", batch=batch)
            elif producer in QDQ_PRODUCERS:
                float_path = self.folder / f"{arch}_float{suffix}.onnx"
                if not float_path.exists():
                    export_torch(self.float_network(arch), float_path, dynamo=True, batch=batch)
                quantize_qdq(float_path, path, self.data, flavour)
            elif producer in BREVITAS_PRODUCERS:
                export_brevitas(self.torch_network("brevitas", arch), path, flavour,
                                dynamo=not producer.endswith("-legacy"), batch=batch)
            else:
                raise ValueError(f"unknown producer {producer!r}")
            self._built[key] = Built(producer, arch, path)
        return self._built[key]
