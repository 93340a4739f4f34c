"""Speed of the spiking ONNX reference paths against the source ANN, side by side in one run (figures, not a test).

Models: a QDQ ResNet-18 (tests/cifar_models.py: torchvision's architecture on 3x32x32 inputs, random
weights, onnxruntime ``quantize_static`` with uint8 activations and per-channel int8 weights) run
``--batch`` images per ``session.run``, and the digits CNN sample (samples/digits_cnn_pmsm_L2.onnx,
exported at batch 1, so one image per ``session.run``) on ``--digits`` test images. For each: the
source ANN on ONNX Runtime with graph optimizations off (the reference semantics), then its spiking
ONNX at each T through

- ``custom op``: the ``ai.pmsm::MultiSpikeNeuron`` kernel (``SpikingModel(model)``, the reference);
- ``standard-op body``: the model-local function of standard ONNX ops (``portable=True``);

and, with ``--before REV`` (default 5524697, the revision before this benchmark; ``none`` skips it):

- ``custom op, list outputs``: the same kernel called through onnxruntime-extensions' own dispatcher,
  which hands outputs back as Python lists, as at REV;
- ``body of REV``: the function body that REV's exporter/portable.py writes.

Spikes are collected (``collect_spikes=True``, as ``--verify`` runs the reference). Each path runs
round robin with the others ``--rounds`` times; the figure is the fastest round (the least disturbed
by other load on the machine), the median beside it. ``equal`` says whether the outputs and every
spike of the path are bit for bit those of the custom op at that T.

    .venv/bin/python benchmarks/reference_speed.py [--batch 16] [--digits 100] [--timesteps 1,4]
        [--rounds 5] [--before 5524697] [--models resnet18,digits]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # tests/cifar_models.py builds the ResNet-18


def resnet18(folder: str, batch: int):
    import onnx

    import cifar_models

    path = cifar_models.quantized("resnet18", folder, dynamic_batch=True)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (batch, *cifar_models.INPUT_SHAPE)).astype(np.float32)
    return onnx.load(str(path)), x, batch


def digits(images: int):
    import onnx

    x = np.load(os.path.join(REPO, "samples", "digits_test.npz"))["x"][:images]
    return onnx.load(os.path.join(REPO, "samples", "digits_cnn_pmsm_L2.onnx")), x, None


def body_of_revision(revision: str) -> types.ModuleType:
    """exporter/portable.py as it was at ``revision``, as a module (it imports only onnx and pmsm's schema)."""
    source = subprocess.run(["git", "-C", REPO, "show", f"{revision}:exporter/portable.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"portable_at_{revision}")
    exec(compile(source, f"{revision}:exporter/portable.py", "exec"), module.__dict__)  # noqa: S102
    return module


class ListOutputs:
    """While active, the kernels are called through onnxruntime-extensions' own dispatcher, which
    returns their outputs as lists (what pmsm.runtime.ortop replaced with arrays)."""

    def __enter__(self):
        from onnxruntime_extensions import PyOp, _ocos

        PyOp.install_hooker(_ocos._on_pyop_invocation)

    def __exit__(self, *exc):
        from onnxruntime_extensions import PyOp, _ocos

        from pmsm.runtime import ortop

        PyOp.install_hooker(ortop._dispatch_to(_ocos._on_pyop_invocation, ortop._array_kernels()))


def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def bench(name: str, source, x: np.ndarray, batch, timesteps: list[int], rounds: int, before: str | None) -> None:
    import onnx

    from pmsm.exporter import portable
    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.runtime.execute import SourceModel, SpikingModel

    spiking, neurons = to_spiking_onnx(source)
    ann = SourceModel(source)
    paths = {"custom op": (SpikingModel(spiking), None), "standard-op body": (SpikingModel(spiking, portable=True), None)}
    if before:
        old = onnx.ModelProto()
        old.CopyFrom(spiking)
        del old.functions[:]
        old.functions.append(body_of_revision(before).neuron_function(portable.default_opset(spiking)))
        paths["custom op, list outputs"] = (paths["custom op"][0], ListOutputs)
        paths[f"body of {before}"] = (SpikingModel(old, portable=True), None)

    def run_ann():
        return ann.run(x, batch_size=batch)

    def run_path(model, context, t):
        def run():
            if context is None:
                return model.run(x, t, collect_spikes=True, batch_size=batch)
            with context():
                return model.run(x, t, collect_spikes=True, batch_size=batch)
        return run

    run_ann()
    for model, context in paths.values():
        run_path(model, context, 1)()
    images = f"{len(x)} images, {batch or 1} per run"
    print(f"\n{name}: {len(neurons)} neuron layers, {images}")
    print(f"{'T':>2}  {'path':<26}{'ms':>10}{'median':>10}{'vs ANN':>8}{'equal':>7}")
    ann_times = []
    for t in timesteps:
        runs = {label: run_path(model, context, t) for label, (model, context) in paths.items()}
        times: dict[str, list[float]] = {label: [] for label in runs}
        results = {}
        for _ in range(rounds):
            start = time.perf_counter()
            run_ann()
            ann_times.append(time.perf_counter() - start)
            for label, run in runs.items():
                start = time.perf_counter()
                results[label] = run()
                times[label].append(time.perf_counter() - start)
        ann_best = min(ann_times)
        if t == timesteps[0]:
            print(f"{'':>2}  {'source ANN (opt. off)':<26}{ann_best * 1e3:>10.1f}{statistics.median(ann_times) * 1e3:>10.1f}"
                  f"{1.0:>8.2f}{'':>7}")
        reference = results["custom op"]
        for label, spent in times.items():
            got = results[label]
            equal = all(same_bits(a, b) for a, b in zip(got.outputs, reference.outputs)) and \
                all(same_bits(got.spikes[k], reference.spikes[k]) for k in reference.spikes)
            print(f"{t:>2}  {label:<26}{min(spent) * 1e3:>10.1f}{statistics.median(spent) * 1e3:>10.1f}"
                  f"{min(spent) / ann_best:>8.2f}{'yes' if equal else 'NO':>7}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="ResNet-18 images per session.run")
    parser.add_argument("--digits", type=int, default=100, help="digits test images (one per session.run)")
    parser.add_argument("--timesteps", default="1,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default="5524697", help="revision whose paths to measure too ('none': skip)")
    parser.add_argument("--models", default="resnet18,digits")
    args = parser.parse_args(argv)
    before = None if args.before.lower() == "none" else args.before
    timesteps = [int(t) for t in args.timesteps.split(",")]
    import onnxruntime as ort

    print(f"CPU cores: {os.cpu_count()}, onnxruntime {ort.__version__} (default threads), ms per run of all images: "
          f"fastest of {args.rounds} rounds, then the median; vs ANN = fastest / the ANN's fastest")
    with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as folder:
        for name in args.models.split(","):
            if name == "resnet18":
                source, x, batch = resnet18(folder, args.batch)
                label = "QDQ ResNet-18 (CIFAR-size, u8)"
            elif name == "digits":
                source, x, batch = digits(args.digits)
                label = "digits CNN (samples/digits_cnn_pmsm_L2.onnx)"
            else:
                parser.error(f"unknown model {name!r}; choose from resnet18, digits")
            bench(label, source, x, batch, timesteps, args.rounds, before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
