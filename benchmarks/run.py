"""Benchmarks (figures, not tests): conversion time and reference inference time.

Models: VGG-16-sized and ResNet-20-sized CNNs on 3x32x32 input with PMSM quantizers (L=4), random
weights, exported by torch's default exporter. For each: conversion time to spiking ONNX, and the
spiking ONNX on ONNX Runtime at T=1 and T=4 against the source ANN on stock ONNX Runtime, measured
side by side in one run, twice: through the custom op (the reference) and through the portable
standard-ONNX function body (no custom op library registered), both with optimizations disabled.
The last column says whether the two agreed bit for bit (outputs, at both T).

    .venv/bin/python benchmarks/run.py [--batch 32] [--repeats 3] [--models vgg16,resnet20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def vgg16(quant):
    import torch.nn as nn

    layers, channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), quant()]
            channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 512), quant(), nn.Linear(512, 10))


def resnet20(quant):
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), quant())
            self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            self.out = quant()

        def forward(self, x):
            return self.out(self.conv2(self.conv1(x)) + self.skip(x))

    stages, cin = [], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for index in range(3):
            stages.append(Block(cin, cout, stride if index == 0 else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), quant(), *stages,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def export_model(name: str, folder: str) -> str:
    import torch

    from pmsm.exporter.quant import PMSMQuant

    torch.manual_seed(0)
    model = {"vgg16": vgg16, "resnet20": resnet20}[name](lambda: PMSMQuant(levels=4, polarity=True)).eval()
    path = os.path.join(folder, f"{name}.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), path, dynamo=True, verbose=False)
    return path


def timed(function, repeats: int, keep: list | None = None) -> float:
    """Median wall time of ``repeats`` calls; the last call's result is appended to ``keep``."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    if keep is not None:
        keep.append(result)
    return statistics.median(times)


def bench(path: str, batch: int, repeats: int) -> dict:
    import onnx

    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.exporter.loading import load_source
    from pmsm.runtime.execute import AnnRunner, SpikingModel

    folder = os.path.dirname(path)
    figures = {"parameters_mb": sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                                    if f.startswith(os.path.basename(path))) / 1e6}
    source = load_source(path)
    figures["convert_s"] = timed(lambda: to_spiking_onnx(source.model), repeats)
    spiking, neurons = to_spiking_onnx(source.model)
    figures["neuron_layers"] = len(neurons)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 3, 32, 32)).astype(np.float32)
    unbatched = onnx.load(path)
    ann = AnnRunner(unbatched)
    ann_optimized = AnnRunner(unbatched, optimized=True)
    snn = SpikingModel(spiking)
    portable = SpikingModel(spiking, portable=True)
    ann.run(x[:1]), ann_optimized.run(x[:1]), snn.run(x[:2], 1), portable.run(x[:2], 1)  # warm up every session
    figures["ann_s"] = timed(lambda: ann.run(x), repeats)
    figures["ann_opt_s"] = timed(lambda: ann_optimized.run(x), repeats)
    figures["equal"] = True
    for timesteps in (1, 4):
        results: list = []
        figures[f"snn_t{timesteps}_s"] = timed(lambda: snn.run(x, timesteps, batch_size=batch), repeats, results)
        figures[f"port_t{timesteps}_s"] = timed(lambda: portable.run(x, timesteps, batch_size=batch), repeats, results)
        reference, body = (np.ascontiguousarray(r.output, dtype=np.float32) for r in results)
        figures["equal"] &= bool(np.array_equal(reference.view(np.uint32), body.view(np.uint32)))
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="vgg16,resnet20")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        print(f"batch {args.batch} images 3x32x32, median of {args.repeats} runs, CPU threads: {os.cpu_count()}")
        print(f"{'model':<10}{'MB':>7}{'neurons':>9}{'convert s':>11}{'ANN s':>8}{'ANN opt s':>11}"
              f"{'SNN T=1 s':>11}{'ratio':>7}{'SNN T=4 s':>11}{'ratio':>7}"
              f"{'port T=1 s':>12}{'ratio':>7}{'port T=4 s':>12}{'ratio':>7}{'equal':>7}")
        for name in args.models.split(","):
            path = export_model(name, folder)
            f = bench(path, args.batch, args.repeats)
            print(f"{name:<10}{f['parameters_mb']:>7.1f}{f['neuron_layers']:>9}{f['convert_s']:>11.2f}"
                  f"{f['ann_s']:>8.3f}{f['ann_opt_s']:>11.3f}{f['snn_t1_s']:>11.3f}{f['snn_t1_s'] / f['ann_s']:>7.2f}"
                  f"{f['snn_t4_s']:>11.3f}{f['snn_t4_s'] / f['ann_s']:>7.2f}"
                  f"{f['port_t1_s']:>12.3f}{f['port_t1_s'] / f['ann_s']:>7.2f}"
                  f"{f['port_t4_s']:>12.3f}{f['port_t4_s'] / f['ann_s']:>7.2f}{'yes' if f['equal'] else 'NO':>7}",
                  flush=True)
    print("ratio = time / source ANN time (stock ORT, optimizations off); SNN = spiking ONNX through the custom op\n"
          "(the reference), port = the same file through its standard-ONNX function body (no custom op library),\n"
          "both with optimizations off; equal = port and SNN outputs identical bit for bit at T=1 and T=4;\n"
          "ANN opt = the source ANN at ONNX Runtime's default optimization level, for information")
    return 0


if __name__ == "__main__":
    sys.exit(main())
