"""Benchmark (figures, not a test): Vision Transformers through the spiking ONNX time loop.

Models, random weights, 3x32x32 images in 4x4 patches, exported by torch's default (dynamo)
exporter at batch 1 and quantized by onnxruntime's ``quantize_static`` (QDQ, calibrated on random
images), each once with quantize_static's default op types (``default``) and once with
``op_types_to_quantize`` = Conv, MatMul, Gemm, Add, Softmax, Mul (``all``):

- ``vit-4x192``: torchvision ``VisionTransformer(image_size=32, patch_size=4, num_layers=4,
  num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=10)``;
- ``vit-s``: the same class at ViT-S size (12 layers, hidden 384, 6 heads, MLP 1536).

torchvision initialises the classification head to zero (every output would be 0), so the head is
re-initialised at random. For each model: conversion time to spiking ONNX (temporal compensation on,
the default), and the spiking ONNX at T=1 and T=4 against the source ANN, all on ONNX Runtime with
optimizations disabled, measured side by side in one run at batch 1 (the export batch), twice:
through the custom op (the reference) and through the portable standard-ONNX function body (no
custom op library). ``exact``: the spiking outputs at T=1 equal the ANN's bit for bit (both bodies);
``equal``: the portable body's outputs equal the reference's bit for bit at T=1 and T=4.

    .venv/bin/python benchmarks/vit.py [--images 2] [--repeats 3] [--models vit-4x192,vit-s] [--op-types default,all]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from run import timed  # benchmarks/run.py

SIZES = {  # name -> (layers, hidden, heads, mlp)
    "vit-4x192": (4, 192, 3, 768),
    "vit-s": (12, 384, 6, 1536),
}
IMAGE, PATCH, CLASSES = 32, 4, 10
OP_TYPES = {"default": None, "all": ["Conv", "MatMul", "Gemm", "Add", "Softmax", "Mul"]}
CALIBRATION_IMAGES = 8


def export_float(name: str, folder: str) -> str:
    import torch
    import torchvision

    layers, hidden, heads, mlp = SIZES[name]
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=IMAGE, patch_size=PATCH, num_layers=layers,
                                                 num_heads=heads, hidden_dim=hidden, mlp_dim=mlp,
                                                 num_classes=CLASSES)
    torch.nn.init.normal_(model.heads.head.weight, std=hidden ** -0.5)
    path = os.path.join(folder, f"{name}.float.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, IMAGE, IMAGE),), path, dynamo=True, verbose=False)
    return path


def quantize(float_path: str, op_types: str) -> str:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = onnx.load(float_path, load_external_data=False).graph.input[0].name
    rng = np.random.default_rng(1)

    class RandomImages(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({name: rng.normal(size=(1, 3, IMAGE, IMAGE)).astype(np.float32)}
                              for _ in range(CALIBRATION_IMAGES))

        def get_next(self):
            return next(self.feeds, None)

    path = float_path.replace(".float.onnx", f".qdq-{op_types}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(float_path, path, RandomImages(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=OP_TYPES[op_types])
    return path


def bench(path: str, images: int, repeats: int) -> dict:
    from pmsm.exporter.convert import convert
    from pmsm.exporter.loading import load_source
    from pmsm.runtime.execute import AnnRunner, SpikingModel

    source = load_source(path)
    figures = {"mb": os.path.getsize(path) / 1e6}
    conversions: list = []
    figures["convert_s"] = timed(lambda: convert(source.model), repeats, conversions)
    conversion = conversions[0]
    figures["neurons"] = len(conversion.neurons)
    figures["compensated"] = len(conversion.compensated)
    x = np.random.default_rng(0).normal(size=(images, 3, IMAGE, IMAGE)).astype(np.float32)
    ann = AnnRunner(source.model)
    snn = SpikingModel(conversion.spiking)
    portable = SpikingModel(conversion.spiking, portable=True)
    ann.run(x[:1]), snn.run(x[:1], 1), portable.run(x[:1], 1)  # warm up every session
    outputs: list = []
    figures["ann_s"] = timed(lambda: ann.run(x), repeats, outputs)
    reference = outputs.pop()[0]
    figures["exact"], figures["equal"] = True, True
    for timesteps in (1, 4):
        figures[f"snn_t{timesteps}_s"] = timed(lambda: snn.run(x, timesteps), repeats, outputs)
        figures[f"port_t{timesteps}_s"] = timed(lambda: portable.run(x, timesteps), repeats, outputs)
        spiking, body = (np.ascontiguousarray(o.output, dtype=np.float32) for o in outputs[-2:])
        figures["equal"] &= bool(np.array_equal(spiking.view(np.uint32), body.view(np.uint32)))
        if timesteps == 1:
            figures["exact"] = bool(np.array_equal(spiking, reference) and np.array_equal(body, reference))
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images per timed call (run one at a time)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(SIZES))
    parser.add_argument("--op-types", default=",".join(OP_TYPES))
    args = parser.parse_args(argv)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{args.images} images 3x{IMAGE}x{IMAGE} at batch 1, median of {args.repeats} runs, "
          f"CPU threads: {os.cpu_count()}, load average {load}")
    print("timings are from a shared machine: compare the ratios of one row, measured side by side")
    header = (f"{'model':<18}{'MB':>6}{'neurons':>9}{'comp':>6}{'convert s':>11}{'ANN s':>8}"
              f"{'SNN T=1 s':>11}{'ratio':>7}{'SNN T=4 s':>11}{'ratio':>7}"
              f"{'port T=1 s':>12}{'ratio':>7}{'port T=4 s':>12}{'ratio':>7}{'exact':>7}{'equal':>7}")
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            started = time.perf_counter()
            float_path = export_float(name, folder)
            for op_types in args.op_types.split(","):
                f = bench(quantize(float_path, op_types), args.images, args.repeats)
                ann = f["ann_s"]
                print(f"{name + ' ' + op_types:<18}{f['mb']:>6.1f}{f['neurons']:>9}{f['compensated']:>6}"
                      f"{f['convert_s']:>11.2f}{ann:>8.3f}"
                      f"{f['snn_t1_s']:>11.3f}{f['snn_t1_s'] / ann:>7.2f}{f['snn_t4_s']:>11.3f}{f['snn_t4_s'] / ann:>7.2f}"
                      f"{f['port_t1_s']:>12.3f}{f['port_t1_s'] / ann:>7.2f}{f['port_t4_s']:>12.3f}"
                      f"{f['port_t4_s'] / ann:>7.2f}{'yes' if f['exact'] else 'NO':>7}{'yes' if f['equal'] else 'NO':>7}",
                      flush=True)
            print(f"  ({name}: export, quantization and measurement {time.perf_counter() - started:.0f} s)", flush=True)
    print("MB = quantized source file; neurons = activation quantizers mapped to neurons; comp = nonlinear nodes\n"
          "given temporal compensation; ratio = time / source ANN time (stock ORT, optimizations off);\n"
          "SNN = spiking ONNX through the custom op (the reference), port = the same file through its\n"
          "standard-ONNX function body (no custom op library), optimizations off; exact = both equal the ANN\n"
          "bit for bit at T=1; equal = port and SNN outputs identical bit for bit at T=1 and T=4")
    return 0


if __name__ == "__main__":
    sys.exit(main())
