"""A three-input transformer of the shape Hugging Face's BERT exports take, on scikit-learn's digits.

``input_ids`` int64 ``[N, S]``, ``attention_mask`` int64 ``[N, S]`` (1: a token, 0: padding) and
``token_type_ids`` int64 ``[N, S]`` (two segments), as ``BertForSequenceClassification`` is called:

- token embedding of the ids + token-type embedding + a learned position embedding, layer norm;
- one encoder layer: two-head self-attention whose scores get the padding mask added as
  ``where(mask, 0, -inf)`` (ONNX ``Where`` with a ``-inf`` constant, as every such export
  writes), softmax, output projection, residual and layer norm; GELU feed-forward, residual,
  layer norm;
- the first token's hidden state through a ``tanh`` pooler and a classifier (10 classes).

The data are the UCI digits as text: each 8x8 image is read row by row as 32 tokens, one per
pair of neighbouring pixels (each intensity 0..16 in five steps, token id 1..25; 0 is the padding
id), the first 16 tokens in segment 0, the rest in segment 1, and each sequence cut at a seeded
length of 20..32 tokens, padded with id 0 and mask 0. The network trains in a few seconds (seeded) and is exported with torch's TorchScript
exporter at a symbolic batch size, then quantized by onnxruntime's ``quantize_static`` (QDQ,
uint8 activations, int8 weights). The mask's ``Add`` and the ``Softmax`` that reads it are left
out of quantization (``-inf`` has no finite scale); :func:`quantize` with ``quantize_mask=True``
includes them, and ONNX Runtime then gives the masked scores a scale of ``inf``.

The real ``transformers`` package is not a project dependency (measured 2026-12-07: 100 MB for
transformers 5.20 alone, about 160 MB with huggingface_hub, tokenizers, hf_xet, pydantic and the
rest); this module writes the same graph shape by hand.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

SEQUENCE = 32
LEVELS = 5  # steps of one pixel's intensity in a token
VOCABULARY = 1 + LEVELS * LEVELS  # one id per pair of pixel steps, and the padding id 0
HIDDEN = 16
HEADS = 2
FEED_FORWARD = 32
CLASSES = 10
SHORTEST = 20  # tokens kept at least, of 32
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SEED = 0


@dataclass(frozen=True)
class TextDigits:
    """Digits as token sequences: ``{input name: int64 [N, S]}`` and labels, train and test."""

    train: dict
    y_train: np.ndarray
    test: dict
    y_test: np.ndarray


def digits_as_text() -> TextDigits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    steps = digits.images.reshape(len(digits.images), SEQUENCE, 2).astype(np.int64) * LEVELS // 17
    pixels = steps[:, :, 0] * LEVELS + steps[:, :, 1]
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(SHORTEST, SEQUENCE + 1, size=len(pixels))
    positions = np.arange(SEQUENCE)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int64)
    ids = (pixels + 1) * mask
    types = np.broadcast_to((positions >= SEQUENCE // 2).astype(np.int64), ids.shape) * mask
    y = digits.target.astype(np.int64)
    split = train_test_split(np.arange(len(y)), test_size=0.2, random_state=SEED, stratify=y)

    def take(rows):
        return {"input_ids": ids[rows], "attention_mask": mask[rows], "token_type_ids": np.ascontiguousarray(types[rows])}

    return TextDigits(take(split[0]), y[split[0]], take(split[1]), y[split[1]])


def build_network():
    import torch
    from torch import nn

    torch.manual_seed(SEED)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(VOCABULARY, HIDDEN)
            self.types = nn.Embedding(2, HIDDEN)
            self.positions = nn.Parameter(torch.randn(1, SEQUENCE, HIDDEN) * 0.1)
            self.norm0 = nn.LayerNorm(HIDDEN)
            self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
            self.attention_out = nn.Linear(HIDDEN, HIDDEN)
            self.norm1 = nn.LayerNorm(HIDDEN)
            self.up, self.down = nn.Linear(HIDDEN, FEED_FORWARD), nn.Linear(FEED_FORWARD, HIDDEN)
            self.norm2 = nn.LayerNorm(HIDDEN)
            self.pooler = nn.Linear(HIDDEN, HIDDEN)
            self.classifier = nn.Linear(HIDDEN, CLASSES)

        def heads(self, x):
            n, s, _ = x.shape
            return x.view(n, s, HEADS, HIDDEN // HEADS).transpose(1, 2)

        def forward(self, input_ids, attention_mask, token_type_ids):
            x = self.norm0(self.words(input_ids) + self.types(token_type_ids) + self.positions)
            q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
            scores = q @ k.transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5
            padding = torch.where(attention_mask[:, None, None, :] > 0, 0.0, float("-inf"))
            attended = (torch.softmax(scores + padding, dim=-1) @ v).transpose(1, 2).reshape(x.shape)
            x = self.norm1(x + self.attention_out(attended))
            x = self.norm2(x + self.down(nn.functional.gelu(self.up(x))))
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))

    return Encoder()


def train(model, data: TextDigits, epochs: int = 8):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # a small network: more threads only contend with the rest of the machine
    feeds = {name: torch.from_numpy(data.train[name]) for name in INPUTS}
    labels = torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 64):
            rows = order[start:start + 64]
            optimizer.zero_grad(set_to_none=True)
            logits = model(*(feeds[name][rows] for name in INPUTS))
            torch.nn.functional.cross_entropy(logits, labels[rows]).backward()
            optimizer.step()
    return model.eval()


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


def export(model, path: Path, dynamo: bool = False) -> Path:
    """Export at a symbolic batch size with torch's TorchScript exporter (opset 17) or its dynamo
    exporter (opset 18); both write ``Where(mask, 0, -inf)`` with ``-inf`` as a constant."""
    import torch

    example = tuple(torch.ones(2, SEQUENCE, dtype=torch.int64) for _ in INPUTS)
    with _quiet():
        torch.onnx.export(model.eval(), example, str(path), dynamo=dynamo, input_names=list(INPUTS),
                          output_names=["logits"], dynamic_axes={name: {0: "batch"} for name in INPUTS + ("logits",)},
                          opset_version=18 if dynamo else 17)
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def quantize(float_path: Path, path: Path, data: TextDigits, quantize_mask: bool = False) -> Path:
    """``quantize_static``, QDQ, uint8 activations, int8 weights, MinMax on 64 training sequences.
    The ``Add`` of the padding mask and the ``Softmax`` are left out unless ``quantize_mask``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(float_path))
    masking = [node.name for node in model.graph.node if node.op_type == "Add"
               and any(_made_by(model, name, "Where") for name in node.input)]
    assert len(masking) == 1, masking
    masking += [node.name for node in model.graph.node if node.op_type == "Softmax"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(64))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {name: data.train[name][row:row + 1] for name in INPUTS}

    with _quiet():
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[] if quantize_mask else masking)
    return path


def _made_by(model: onnx.ModelProto, tensor: str, op_type: str) -> bool:
    return any(node.op_type == op_type and tensor in node.output for node in model.graph.node)


@dataclass(frozen=True)
class Built:
    data: TextDigits
    network: object  # the trained torch module
    float_paths: dict  # exporter ("legacy", "dynamo") -> float ONNX file, once exported
    quantized: dict  # exporter -> quantize_static's QDQ file (the mask left out)
    mask_quantized: Path  # the TorchScript export quantized with the mask's Add included (scale inf)


def build(folder: Path, exporters=("legacy",)) -> Built:
    """The network trained once, exported by each of ``exporters`` ("legacy": TorchScript,
    "dynamo"), each export quantized; and its data."""
    folder = Path(folder)
    data = digits_as_text()
    network = train(build_network(), data)
    built = Built(data, network, {}, {}, folder / "text_mask_quantized.onnx")
    for kind in exporters:
        add_export(built, folder, kind)
    quantize(built.float_paths["legacy"], built.mask_quantized, data, quantize_mask=True)
    return built


def add_export(built: Built, folder: Path, kind: str) -> Path:
    """Export ``built``'s network with exporter ``kind`` and quantize it (once)."""
    if kind not in built.quantized:
        path = export(built.network, Path(folder) / f"text_float_{kind}.onnx", dynamo=kind == "dynamo")
        built.float_paths[kind] = path
        built.quantized[kind] = quantize(path, Path(folder) / f"text_qdq_{kind}.onnx", built.data)
    return built.quantized[kind]
