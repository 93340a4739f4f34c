"""Verification at data set scale, side by side in one run (figures, not a test).

``throughput`` (default): for a CIFAR-size QDQ ResNet-18 (tests/cifar_models.py, random weights,
onnxruntime ``quantize_static`` u8) and the digits CNN sample, the source ANN on ONNX Runtime with
optimizations off (the time ``--verify`` is measured against), then ``--verify --timesteps 1,2,4``
with 1 and 2 worker processes: its wall time, and images per second per backend and T.

``memory``: peak RSS of ``pmsm-export --verify`` on generated data sets of growing size (default
2 GB and 4 GB of float32 images 3x224x224, as a memory-mapped ``x.npy``), each in a fresh process,
with a small QDQ model (average pool, quantizer, linear layer) so that the run is bound by reading
the data: memory must not grow with the data.

    .venv/bin/python benchmarks/verify_scale.py [--images 1000] [--timesteps 1,2,4] [--workers 1,2]
    .venv/bin/python benchmarks/verify_scale.py memory [--sizes-gb 2,4]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # tests/cifar_models.py builds the networks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("throughput", "memory"), default="throughput")
    parser.add_argument("--images", type=int, default=1000, help="ResNet-18 images (digits: the 360 test images)")
    parser.add_argument("--timesteps", default="1,2,4")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--reference-samples", default="256")
    parser.add_argument("--sizes-gb", default="2,4")
    parser.add_argument("--resnet-only", action="store_true", help="leave out the digits CNN")
    args = parser.parse_args()
    if args.mode == "memory":
        memory([float(s) for s in args.sizes_gb.split(",")])
    else:
        throughput(args.images, [int(t) for t in args.timesteps.split(",")],
                   [int(w) for w in args.workers.split(",")], args.reference_samples, 1 if args.resnet_only else 2)


def throughput(images: int, timesteps: list[int], workers: list[int], reference_samples: str,
               cases_wanted: int = 2) -> None:
    import onnxruntime

    from cifar_models import quantized
    from resnet_qdq import images as random_images

    print(f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, T = {timesteps}, "
          f"--reference-samples {reference_samples}")
    with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as folder:
        resnet = str(quantized("resnet18", folder))
        resnet_data = os.path.join(folder, "resnet.npz")
        np.savez(resnet_data, x=random_images(images, seed=3))
        cases = [("ResNet-18 QDQ u8 3x32x32", resnet, resnet_data),
                 ("digits CNN PMSM L2", os.path.join(REPO, "samples", "digits_cnn_pmsm_L2.onnx"),
                  os.path.join(REPO, "samples", "digits_test.npz"))][:cases_wanted]
        rows = []
        for label, model, data in cases:
            alone = _ann_seconds(model, data)
            print(f"\n{label}: source ANN (optimizations off) {alone:.2f} s for its images, run alone")
            for count in workers:
                report, wall = _verify(model, data, folder, timesteps, count, reference_samples)
                # the ANN as --verify ran it, on the same chunks moments before the other backends
                ann = report["verification"]["ann_seconds"]
                print(f"  --workers {count}: the ANN inside --verify took {ann:.2f} s; of the wall time, "
                      f"{wall - report['verification']['wall_seconds']:.1f} s went on start-up, conversion and "
                      "post-flight")
                per_value, per_step = ann * len(timesteps), ann * sum(timesteps)
                print(f"  --workers {count}: --verify {wall:.1f} s wall = {wall / ann:.1f}x one ANN pass, "
                      f"{wall / per_value:.2f}x the ANN run once per T value ({per_value:.1f} s), "
                      f"{wall / per_step:.2f}x once per timestep ({per_step:.1f} s); "
                      f"{'passed' if report['verification']['passed'] else 'FAILED'}")
                for name, by_t in report["verification"]["backends"].items():
                    for t, entry in by_t.items():
                        rate = entry["samples"] / entry["seconds"] if entry["seconds"] else float("inf")
                        rows.append((label, count, name, t, entry["samples"], rate, entry["bits_differ"]))
        print(f"\n{'model':<26}{'workers':>8}  {'backend':<16}{'T':>3}{'samples':>9}{'images/s':>10}"
              f"{'bits differ':>12}")
        for label, count, name, t, samples, rate, differ in rows:
            print(f"{label:<26}{count:>8}  {name:<16}{t:>3}{samples:>9}{rate:>10.0f}{differ:>12}")
        print("(images/s per backend: its samples over the seconds it spent on them, summed over workers)")


def _ann_seconds(model: str, data: str) -> float:
    from pmsm.runtime.execute import AnnRunner

    with np.load(data) as archive:
        x = archive["x"].astype(np.float32)
    source = AnnRunner(model)
    source.run(x[:8])
    start = time.perf_counter()
    source.run(x)
    return time.perf_counter() - start


def _verify(model, data, folder, timesteps, workers, reference_samples):
    import json

    report = os.path.join(folder, f"report-{workers}.json")
    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), model, "--verify", "--data", data,
               "--timesteps", ",".join(map(str, timesteps)), "-o", os.path.join(folder, "out.onnx"),
               "--report", report, "--reference-samples", reference_samples, "--workers", str(workers)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(result.stderr)
    with open(report) as handle:
        return json.load(handle), wall


def memory(sizes_gb: list[float]) -> None:
    import onnx

    from big_inputs import pool_linear_model, write_images

    with tempfile.TemporaryDirectory(prefix="pmsm-bench-memory-") as folder:
        model = os.path.join(folder, "pool_linear.onnx")
        onnx.save(pool_linear_model(224), model)
        print(f"{'data':>8}{'samples':>9}{'peak RSS':>12}{'wall':>9}")
        for size in sizes_gb:
            data = os.path.join(folder, f"data-{size:g}gb")
            samples = write_images(data, int(size * 2 ** 30))
            peak, wall = peak_rss(model, data, folder)
            print(f"{size:>6g}GB{samples:>9}{peak / 2 ** 20:>9.0f} MiB{wall:>8.0f}s", flush=True)
            for name in os.listdir(data):
                os.remove(os.path.join(data, name))


def peak_rss(model: str, data: str, folder: str) -> tuple[int, float]:
    """Peak resident memory of the command (its own process) and its wall time."""
    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), model, "--verify", "--data", data,
               "--timesteps", "1", "-o", os.path.join(folder, "out.onnx"), "--max-data-elements", str(1 << 40)]
    probe = ("import resource, subprocess, sys, time; s = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - s, r.returncode); "
             "sys.stderr.write(r.stderr)")
    result = subprocess.run([sys.executable, "-c", probe] + command, capture_output=True, text=True)
    fields = result.stdout.split()
    if not fields or fields[2] != "0":
        raise SystemExit(f"verification failed: {result.stderr}")
    return int(fields[0]) * 1024, float(fields[1])


if __name__ == "__main__":
    main()
