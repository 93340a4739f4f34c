"""Train the bundled digits samples, export them to ONNX and write samples/README.md.

    .venv/bin/python samples/train_digits.py              # all models, 5 seeds each
    .venv/bin/python samples/train_digits.py --seeds 1    # only the exported seed
    .venv/bin/python samples/train_digits.py --archs vit  # only the ViT; the other files stay

Data: scikit-learn's UCI handwritten digits (1797 images, 8x8, shipped inside the package),
pixels scaled to [0, 1] by /16, a fixed stratified 80/20 split (random_state=0): 1437 training,
360 test images. The test split is written to samples/digits_test.npz (``x`` float32
[360, 1, 8, 8], ``y`` int64 [360]).

Models: in the MLP and the CNN every hidden nonlinearity is a quantizer
(``pmsm.exporter.quant.PMSMQuant``) behind a batch norm, and the float baselines use ReLU in its
place; the ViT keeps its LayerNorms, GELUs and softmax and has quantizers where a quantized
transformer quantizes activations (see :class:`DigitsViT`), and its float baseline has none. The
readout is a plain Linear; the analog image goes straight into the first layer. Quantizer lambdas
are initialised by maximising the entropy of the output levels on a calibration batch, then
trained with Adam: from scratch with the weights (MLP, CNN), or as a fine-tuning of the trained
float ViT.

For export, each batch norm is folded into the Conv/Linear before it (so no
BatchNormalization node is left), and the model is exported with torch's default (dynamo)
exporter at batch 1. Reported accuracies are those of the exported files, run by ONNX Runtime
with graph optimizations disabled (the reference semantics, docs/verification.md). Extra seeds (not
exported) measure the run-to-run spread, evaluated in torch on the BN-folded model. The ViT's
spiking ONNX model is measured too (T = 1, 2, 4, with and without temporal compensation).

Every figure goes to samples/results.json, which the README is written from: ``--archs``
retrains some architectures and keeps the figures (and files) of the others.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from pmsm.exporter.convert import convert
from pmsm.exporter.quant import PMSMQuant, calibrate_model, quantizer_parameters
from pmsm.runtime.execute import AnnRunner, SpikingModel

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
TEST_FRACTION = 0.2


# ---------------------------------------------------------------------------------------- data


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test


# -------------------------------------------------------------------------------------- models

Act = Callable[[int], nn.Module]  # channel count -> nonlinearity (the count is unused so far)


def relu(_: int) -> nn.Module:
    return nn.ReLU()


def identity(_: int) -> nn.Module:
    return nn.Identity()


def quant(levels: int, polarity: bool) -> Act:
    return lambda _: PMSMQuant(levels, polarity=polarity)


class DigitsMLP(nn.Module):
    """flatten -> Linear(64,128) BN act -> Linear(128,64) BN act -> Linear(64,10)."""

    def __init__(self, act: Act) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1, self.bn1, self.act1 = nn.Linear(64, 128), nn.BatchNorm1d(128), act(128)
        self.fc2, self.bn2, self.act2 = nn.Linear(128, 64), nn.BatchNorm1d(64), act(64)
        self.fc3 = nn.Linear(64, 10)

    def bn_pairs(self) -> list[tuple[str, str]]:
        return [("fc1", "bn1"), ("fc2", "bn2")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.fc1(self.flatten(x))))
        x = self.act2(self.bn2(self.fc2(x)))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """Conv BN act -> residual [Conv BN act -> Conv BN] + skip -> act -> MaxPool(2)
    -> Conv BN act -> AvgPool(2) -> flatten -> Linear(32*2*2, 10)."""

    def __init__(self, act: Act) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), act(16)
        self.conv2, self.bn2, self.act2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), act(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.act3 = act(16)  # after the residual sum
        self.maxpool = nn.MaxPool2d(2)
        self.conv4, self.bn4, self.act4 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), act(32)
        self.avgpool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def bn_pairs(self) -> list[tuple[str, str]]:
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv4", "bn4")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        r = self.bn3(self.conv3(self.act2(self.bn2(self.conv2(x)))))
        x = self.maxpool(self.act3(x + r))
        x = self.avgpool(self.act4(self.bn4(self.conv4(x))))
        return self.fc(self.flatten(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``act`` quantizes the heads' concatenated output, before the projection.

    Written out (not ``nn.MultiheadAttention``) so that the exported graph is the plain sequence
    MatMul, Mul(scale), Softmax, MatMul that any quantized transformer has.
    """

    def __init__(self, dim: int, heads: int, act: Act) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.act_out = act(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        qkv = self.qkv(x).reshape(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [n, heads, s, d / heads] each
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, s, d)
        return self.proj(self.act_out(out))


class EncoderBlock(nn.Module):
    """Pre-norm: x + Proj(attention(act(LN(x)))), then x + FC2(act(GELU(FC1(act(LN(x))))))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: Act) -> None:
        super().__init__()
        self.norm1, self.act1 = nn.LayerNorm(dim), act(dim)
        self.attention = SelfAttention(dim, heads, act)
        self.norm2, self.act2 = nn.LayerNorm(dim), act(dim)
        self.fc1, self.gelu, self.act3 = nn.Linear(dim, mlp_dim), nn.GELU(), act(mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.act1(self.norm1(x)))
        return x + self.fc2(self.act3(self.gelu(self.fc1(self.act2(self.norm2(x))))))


class DigitsViT(nn.Module):
    """2x2 patches: Conv(1->32, 2, stride 2) + learned position -> act -> 2 encoder blocks
    (4 heads, MLP 64) -> LN -> mean over the 16 tokens -> act -> Linear(32, 10).

    ``act`` sits where a quantized transformer quantizes its activations: the embedded tokens,
    each LayerNorm's output (the input of the QKV and FC1 projections), the attention output, the
    GELU output and the head's input. The residual stream, Q, K, V and the attention weights stay
    unquantized: they are linear in quantized tensors, and the ops between them (the two MatMuls of
    activations, Softmax, LayerNorm, GELU) are what temporal compensation is for.
    """

    def __init__(self, act: Act, dim: int = 32, heads: int = 4, mlp_dim: int = 64, layers: int = 2,
                 patch: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.position = nn.Parameter(0.02 * torch.randn(1, (8 // patch) ** 2, dim))
        self.act_embed = act(dim)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim, act) for _ in range(layers)])
        self.norm, self.act_head = nn.LayerNorm(dim), act(dim)
        self.head = nn.Linear(dim, 10)

    def bn_pairs(self) -> list[tuple[str, str]]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position  # [n, 16, dim]
        x = self.norm(self.blocks(self.act_embed(tokens)))
        return self.head(self.act_head(x.mean(dim=1)))


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean())


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every BN folded into the Conv/Linear before it (BN -> Identity).

    Done here rather than left to the exporter so that the committed graphs have no
    BatchNormalization node whichever exporter or version writes them.
    """
    model = copy.deepcopy(model).eval()
    for layer_name, bn_name in model.bn_pairs():
        layer, bn = getattr(model, layer_name), getattr(model, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(scale.reshape(shape))
        layer.bias.copy_((layer.bias - bn.running_mean) * scale + bn.bias)
        setattr(model, bn_name, nn.Identity())
    return model


# ------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class Variant:
    name: str  # file stem; empty for float baselines (not exported)
    arch: str  # "mlp" | "cnn" | "vit"
    kind: str  # "float" | "unsigned" | "pmsm"
    levels: int | None

    def build(self) -> nn.Module:
        if self.kind != "float":
            act = quant(self.levels, polarity=self.kind == "pmsm")
        else:  # the ViT's own nonlinearity is its GELU: its float baseline simply has no quantizers
            act = identity if self.arch == "vit" else relu
        return ARCHS[self.arch](act)

    @property
    def fine_tuned(self) -> bool:
        """Quantization-aware fine-tuning of its float baseline rather than training from scratch."""
        return self.arch in FINE_TUNED_ARCHS and self.kind != "float"


ARCHS = {"mlp": DigitsMLP, "cnn": DigitsCNN, "vit": DigitsViT}
# The ViT trains in float first; its quantizers are then calibrated on the trained activations and
# fine-tuned: a quantized transformer's usual recipe. Measured against 40 epochs with quantizers
# from the start (seeds 0-2: 96.67 % mean test accuracy in torch, within the spread of the
# fine-tuned seeds): the same accuracy for two thirds of the CPU time (20 s against 29 s, 1 thread).
FINE_TUNED_ARCHS = {"vit"}


VARIANTS = [
    Variant("digits_mlp_float", "mlp", "float", None),
    Variant("digits_mlp_unsigned_L2", "mlp", "unsigned", 2),
    Variant("digits_mlp_pmsm_L2", "mlp", "pmsm", 2),
    Variant("digits_mlp_unsigned_L4", "mlp", "unsigned", 4),
    Variant("digits_mlp_pmsm_L4", "mlp", "pmsm", 4),
    Variant("digits_cnn_float", "cnn", "float", None),
    Variant("digits_cnn_unsigned_L2", "cnn", "unsigned", 2),
    Variant("digits_cnn_pmsm_L2", "cnn", "pmsm", 2),
    Variant("digits_cnn_unsigned_L4", "cnn", "unsigned", 4),
    Variant("digits_cnn_pmsm_L4", "cnn", "pmsm", 4),
    Variant("digits_vit_float", "vit", "float", None),
    Variant("digits_vit_pmsm_L4", "vit", "pmsm", 4),
]
EPOCHS = {"mlp": 40, "cnn": 30, "vit": 25}
FINE_TUNE_EPOCHS = 15  # quantization-aware, from the float ViT's weights
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
CALIBRATION_SIZE = 512


def train(variant: Variant, x: torch.Tensor, y: torch.Tensor, seed: int, start: nn.Module | None = None) -> nn.Module:
    """Train ``variant`` from scratch, or fine-tune it from the weights of ``start`` (its float baseline)."""
    torch.manual_seed(seed)
    model = variant.build()
    if start is not None:
        missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
        lambda_names = {name for name, p in model.named_parameters() if any(p is q for q in quantizer_parameters(model))}
        assert set(missing) == lambda_names and not unexpected, (missing, unexpected)
    model.train()
    if variant.kind != "float":
        # Entropy initialisation of lambda on the BN-normalised activations of a training batch.
        calibrate_model(model, x[:CALIBRATION_SIZE])
    lambdas = {id(p) for p in quantizer_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in lambdas], "weight_decay": WEIGHT_DECAY},
        # lambda sets the quantization range: decay would shrink it for no reason
        {"params": [p for p in model.parameters() if id(p) in lambdas], "weight_decay": 0.0},
    ]
    epochs = FINE_TUNE_EPOCHS if start is not None else EPOCHS[variant.arch]
    opt = torch.optim.Adam(groups, lr=LR)
    steps_per_epoch = -(-len(x) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


# -------------------------------------------------------------------------------- export, eval


def export(model: nn.Module, path: Path) -> None:
    folded = fold_batchnorm(model)
    torch.onnx.export(
        folded, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=True, external_data=False, verbose=False
    )
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert m.ir_version <= 11, m.ir_version
    assert "BatchNormalization" not in ops, ops
    n_quant = sum(isinstance(q, PMSMQuant) for q in folded.modules())
    assert ops.count("Floor") == n_quant, ops
    # The exporter annotates nodes and values with stack traces (absolute paths of this
    # machine) and FX names; drop them so the files are small and the same wherever built.
    graph = m.graph
    for item in [*graph.node, *graph.initializer, *graph.value_info, *graph.input, *graph.output]:
        del item.metadata_props[:]
    onnx.checker.check_model(m)
    onnx.save_model(m, str(path), save_as_external_data=False)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the exported file itself, one image at a time (exported at batch 1)."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    pred = [int(np.argmax(sess.run(None, {name: x[i : i + 1]})[0])) for i in range(len(x))]
    return float(np.mean(np.asarray(pred) == y))


SNN_TIMESTEPS = (1, 2, 4)


def spiking_accuracies(path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """The spiking ONNX model of ``path`` on the reference backend (the custom op), with temporal
    compensation (``on``, the default) and without (``off``): accuracy at each T, the largest
    ``|SNN - source|`` of the logits at T = 1, and the nodes compensated (count by op type)."""
    source = onnx.load(str(path))
    reference = AnnRunner(source).run(x)[0]
    figures: dict = {"timesteps": list(SNN_TIMESTEPS), "acc": {}, "t1_max_abs_diff": {}}
    for compensation in ("on", "off"):
        conversion = convert(source, compensation=compensation == "on")
        if compensation == "on":
            figures["neurons"] = len(conversion.neurons)
            figures["compensated"] = dict(sorted(collections.Counter(op for _, op in conversion.compensated).items()))
            figures["uncompensated"] = [list(entry) for entry in conversion.uncompensated]
        snn = SpikingModel(conversion.spiking)
        figures["acc"][compensation] = []
        for timesteps in SNN_TIMESTEPS:
            logits = snn.run(x, timesteps).output
            figures["acc"][compensation].append(float(np.mean(logits.argmax(axis=1) == y)))
            if timesteps == 1:
                figures["t1_max_abs_diff"][compensation] = float(np.abs(logits - reference).max())
    return figures


def seed_summary(accs: list[float]) -> dict:
    a = np.asarray(accs)
    return {"n": len(a), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


# -------------------------------------------------------------------------------------- report

ARCH_LABELS = {"mlp": "MLP", "cnn": "CNN", "vit": "ViT"}


def spiking_section(rows: list[dict], n_test: int) -> list[str]:
    """The spiking ONNX accuracy table of the models :func:`spiking_accuracies` measured."""
    measured = [r for r in rows if r["spiking"]]
    if not measured:
        return []
    steps = " | ".join(f"SNN T={t}" for t in SNN_TIMESTEPS)
    lines = [
        "## The ViT as a spiking network",
        "",
        f"Accuracy on the {n_test} test images of the spiking ONNX model (`pmsm.exporter.convert.convert`,",
        "run by `pmsm.runtime.execute.SpikingModel` through the reference custom op, one image per",
        "run as exported), with temporal compensation of the nonlinear ops (the default) and without it",
        "(`compensation=False`); quantized ANN: the source file on ONNX Runtime:",
        "",
        f"| file | float ANN | quantized ANN | compensation | {steps} |",
        "|---|---|---|---|" + "---|" * len(SNN_TIMESTEPS),
    ]
    float_acc = {r["arch"]: r["acc"] for r in rows if r["kind"] == "float"}
    for r in measured:
        figures = r["spiking"]
        for compensation in ("on", "off"):
            cells = " | ".join(f"{100 * a:.2f} %" for a in figures["acc"][compensation])
            model = (f"`{r['file']}` | {100 * float_acc[r['arch']]:.2f} % | {100 * r['acc']:.2f} %"
                     if compensation == "on" else " | |")
            lines.append(f"| {model} | {'on (default)' if compensation == 'on' else 'off'} | {cells} |")
    lines.append("")
    for r in measured:
        figures = r["spiking"]
        diffs = figures["t1_max_abs_diff"]
        ops = ", ".join(f"{count} {op}" for op, count in figures["compensated"].items())
        uncompensated = figures["uncompensated"]
        lines += [
            f"`{r['file']}`: {figures['neurons']} neuron layers; compensated nodes: {ops}"
            + (f"; left uncompensated: {len(uncompensated)}" if uncompensated else "") + ".",
            f"At T = 1 the largest |SNN - ANN| of the logits over the {n_test} images is {diffs['on']:g} with",
            f"compensation and {diffs['off']:g} without" + (" (bit-exact)." if diffs["on"] == diffs["off"] == 0 else "."),
            "",
        ]
    return lines


def write_readme(folder: Path, results: dict, n_test: int) -> None:
    rows, seed, threads = results["models"], results["seed"], results["threads"]
    by_key = {(r["arch"], r["kind"], r["levels"]): r for r in rows}
    n_seeds = results["seeds"]

    def cell(arch, kind, levels):
        r = by_key.get((arch, kind, levels))
        return "" if r is None else f"{100 * r['acc']:.2f} %"

    def spread_cell(arch, kind, levels):
        r = by_key.get((arch, kind, levels))
        if r is None:
            return ""
        a = r["seeds"]
        return f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f} ({100 * a['min']:.1f}–{100 * a['max']:.1f})"

    def table(fmt):
        out = [
            "| model | float ANN | unsigned L=2 | PMSM L=2 | unsigned L=4 | PMSM L=4 |",
            "|---|---|---|---|---|---|",
        ]
        for arch in ARCHS:
            cells = [fmt(arch, k, lv) for k, lv in (("float", None), ("unsigned", 2), ("pmsm", 2), ("unsigned", 4), ("pmsm", 4))]
            out.append(f"| {ARCH_LABELS[arch]} | " + " | ".join(cells) + " |")
        return out

    lines = [
        "# Digits samples",
        "",
        "Small quantized networks trained on scikit-learn's UCI handwritten digits (8x8 images,",
        f"pixels / 16), with the test split they are measured on (`digits_test.npz`, {n_test} images:",
        "`x` float32 `[N, 1, 8, 8]`, `y` int64 `[N]`; stratified 80/20 split, `random_state=0`).",
        "",
        "Regenerate everything here (models, data, this file) with",
        "",
        "```",
        ".venv/bin/python samples/train_digits.py                # every architecture",
        ".venv/bin/python samples/train_digits.py --archs vit    # only the ViT",
        "```",
        "",
        "`--archs` retrains only the architectures it names; the files and figures of the others stay",
        "as they are, read back from `results.json` (every figure of this file, as the script measured it).",
        "Training is seeded and deterministic on one machine; another CPU or torch build may give",
        "slightly different weights and accuracies.",
        "",
        "## Models",
        "",
        "- **MLP**: flatten -> Linear(64,128) BN Q -> Linear(128,64) BN Q -> Linear(64,10).",
        "- **CNN**: Conv(1->16,3,pad 1) BN Q -> [Conv(16->16) BN Q -> Conv(16->16) BN] + skip -> Q",
        "  -> MaxPool(2) -> Conv(16->32) BN Q -> AvgPool(2) -> flatten -> Linear(128,10).",
        "- **ViT**: 2x2 patches, Conv(1->32, 2, stride 2) + learned position embedding -> Q -> 2 pre-norm",
        "  encoder blocks [x + Proj(Q(attention(Q(LN(x))))), x + FC2(Q(GELU(FC1(Q(LN(x))))))] -> LN",
        "  -> mean over the 16 tokens -> Q -> Linear(32,10); hidden 32, 4 heads of 8, MLP 64, written in",
        "  plain torch (`SelfAttention`: MatMul, Mul(scale), Softmax, MatMul). `Q` sits where a",
        "  quantized transformer quantizes activations: the embedded tokens, each LayerNorm's output",
        "  (the QKV and FC1 inputs), the attention output before its projection, the GELU output and the",
        "  head's input (10 quantizers). The residual stream, Q, K, V and the attention weights stay",
        "  unquantized.",
        "",
        "`Q` is `pmsm.exporter.quant.PMSMQuant`: PMSM (signed, levels `[-L, L]`) or unsigned",
        "(QCFS-style, `[0, L]`). The input is the analog image; the readout Linear has no quantizer.",
        "Float baselines use ReLU for `Q` (the ViT's has no `Q`; not exported). Lambdas start from the",
        "entropy initialisation on a calibration batch, then train with the weights (Adam, one-cycle",
        f"learning rate; {EPOCHS['mlp']} epochs MLP, {EPOCHS['cnn']} epochs CNN, batch {BATCH}).",
        f"The ViT is first trained in float ({EPOCHS['vit']} epochs), then its quantizers are entropy-initialised",
        f"on the float weights and it is fine-tuned with them ({FINE_TUNE_EPOCHS} epochs, same schedule).",
        "",
        "Batch norm is folded into the preceding Conv/Linear before export, so the files contain no",
        "`BatchNormalization`. Exported with torch's default (dynamo) exporter at batch 1",
        "(IR 10, opset 20); each quantizer appears as",
        "`Div(x, up) Mul(L) Add(0.5) Floor Clip(lo, hi) Div(L) Mul(up)`. The ViT's graph also has",
        "`LayerNormalization`, `Gelu`, `Softmax`, MatMuls of two activations and the Reshape/Transpose/",
        "Slice/Squeeze of the heads.",
        "",
        "## Test accuracy",
        "",
        f"Accuracy of the exported `.onnx` files (seed {seed}) on the {n_test} test images, run by ONNX",
        "Runtime with graph optimizations disabled (float baselines: the same measurement on a",
        "temporary export):",
        "",
        *table(cell),
        "",
        "PMSM minus unsigned for these files, in percentage points (one test image is "
        f"{100 / n_test:.2f} points):",
        "",
    ]
    for arch in ARCHS:
        diffs = []
        for levels in (2, 4):
            p, u = by_key.get((arch, "pmsm", levels)), by_key.get((arch, "unsigned", levels))
            if p is not None and u is not None:
                diffs.append(f"L={levels}: {100 * (p['acc'] - u['acc']):+.2f}")
        if diffs:
            lines.append(f"- {ARCH_LABELS[arch]}: " + ", ".join(diffs))
    lines += [
        "",
        f"Run-to-run spread: the same training with {n_seeds} seeds ({seed}..{seed + n_seeds - 1}), test accuracy",
        "in torch on the BN-folded model, mean ± standard deviation (min–max), in %:",
        "",
        *table(spread_cell),
        "",
        "Differences smaller than this spread say nothing about polarity; compare the means.",
        "",
        *spiking_section(rows, n_test),
        "## Files",
        "",
        "Per file, as the tests read it (`tests/test_samples.py` recomputes each accuracy):",
        "",
        "| file | accuracy | size | training time |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r["file"]:
            size = (folder / r["file"]).stat().st_size
            fine_tuned = " (fine-tuning)" if r["fine_tuned"] else ""
            lines.append(f"| `{r['file']}` | {100 * r['acc']:.2f} % | {size / 1024:.1f} KiB | {r['train_s']:.1f} s{fine_tuned} |")
    runs = ", ".join(f"{run['seconds']:.0f} s ({', '.join(ARCH_LABELS[a] for a in run['archs'])})" for run in results["runs"])
    lines += [
        "",
        "Training times (float baselines: "
        + ", ".join(f"{r['name']} {r['train_s']:.1f} s" for r in rows if not r["file"])
        + f") are for one training run with {threads} torch thread{'s' if threads != 1 else ''} on a"
        " shared 2-core CPU and vary with its load; a fine-tuned file's time is its fine-tuning alone,"
        " after its float baseline's training. The script's runs that made these files took "
        f"{runs}, including all seeds, export and evaluation.",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def previous_results(path: Path, archs: list[str], args: argparse.Namespace) -> dict:
    """The figures of the architectures not retrained this time, from the last runs' ``results.json``."""
    kept = [a for a in ARCHS if a not in archs]
    if not kept:
        return {"models": [], "runs": []}
    if not path.exists():
        raise SystemExit(f"error: {path}: no figures for {', '.join(kept)}; train every architecture (no --archs)")
    results = json.loads(path.read_text())
    settings = {"seed": args.seed, "seeds": args.seeds, "threads": args.threads}
    if any(results[key] != value for key, value in settings.items()):
        raise SystemExit(f"error: {path} was made with {', '.join(f'--{k} {results[k]}' for k in settings)}; "
                         "use the same settings or train every architecture")
    missing = [a for a in kept if not any(r["arch"] == a for r in results["models"])]
    if missing:
        raise SystemExit(f"error: {path}: no figures for {', '.join(missing)}; add them to --archs")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: samples/)")
    parser.add_argument("--archs", default=",".join(ARCHS),
                        help=f"architectures to train, of {','.join(ARCHS)} (default: all; the others keep their "
                             "files and figures)")
    # One thread: these models are too small to gain from more, and on shared cores extra
    # threads spin-wait (measured 5-8x slower with 2 threads on a loaded 2-core machine).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the exported models")
    parser.add_argument("--seeds", type=int, default=5, help="training runs per model for the spread")
    args = parser.parse_args(argv)
    archs = [a for a in ARCHS if a in args.archs.split(",")]
    unknown = set(args.archs.split(",")) - set(ARCHS)
    if unknown or not archs:
        parser.error(f"--archs: expected names among {','.join(ARCHS)}, got {args.archs!r}")
    results_path = args.out / "results.json"
    previous = previous_results(results_path, archs, args)

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_split()
    np.savez_compressed(args.out / "digits_test.npz", x=x_test, y=y_test)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_test), torch.from_numpy(y_test)

    rows = []
    float_models: dict[tuple[str, int], nn.Module] = {}  # (arch, seed) -> float baseline, to fine-tune from
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            if v.arch not in archs:
                continue
            seed_accs = []
            for seed in range(args.seed, args.seed + args.seeds):
                t0 = time.perf_counter()
                trained = train(v, xt, yt, seed, start=float_models[v.arch, seed] if v.fine_tuned else None)
                if v.kind == "float":
                    float_models[v.arch, seed] = trained
                if seed == args.seed:
                    model, train_s = trained, time.perf_counter() - t0
                seed_accs.append(torch_accuracy(fold_batchnorm(trained), xv, yv))
            exported = v.kind != "float"
            path = (args.out if exported else Path(tmp)) / f"{v.name}.onnx"
            export(model, path)
            acc = onnx_accuracy(path, x_test, y_test)
            spiking = spiking_accuracies(path, x_test, y_test) if exported and v.arch == "vit" else None
            rows.append(
                {
                    "name": v.name,
                    "file": path.name if exported else "",
                    "arch": v.arch,
                    "kind": v.kind,
                    "levels": v.levels,
                    "acc": acc,
                    "seeds": seed_summary(seed_accs),
                    "train_s": train_s,
                    "fine_tuned": v.fine_tuned,
                    "spiking": spiking,
                }
            )
            print(
                f"{v.name:24s} onnx {100 * acc:6.2f} %  torch seeds {' '.join(f'{100 * a:.2f}' for a in seed_accs)}"
                f"  train {train_s:4.1f} s  {path.stat().st_size / 1024:5.1f} KiB",
                flush=True,
            )
            if spiking:
                print("  SNN " + "  ".join(f"compensation {c}: " + " ".join(f"T={t} {100 * a:.2f} %" for t, a in
                                                                            zip(SNN_TIMESTEPS, accs))
                                           for c, accs in spiking["acc"].items())
                      + f"  T=1 max |SNN - ANN| {spiking['t1_max_abs_diff']}", flush=True)

    total_s = time.perf_counter() - start
    order = [v.name for v in VARIANTS]
    results = {
        "seed": args.seed, "seeds": args.seeds, "threads": args.threads,
        "models": sorted([r for r in previous["models"] if r["arch"] not in archs] + rows,
                         key=lambda r: order.index(r["name"])),
        "runs": [run for run in previous["runs"] if not set(run["archs"]) & set(archs)]
        + [{"archs": archs, "seconds": round(total_s, 1)}],
    }
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    write_readme(args.out, results, len(y_test))
    print(f"wrote {results_path} and {args.out / 'README.md'} ({total_s:.0f} s)")


if __name__ == "__main__":
    main()
