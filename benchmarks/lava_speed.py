"""Lava simulation speed against the spiking ONNX reference, side by side in one run (figures, not a test).

For CIFAR-size networks people deploy (ResNet-18 and MobileNetV2 in torchvision's architecture,
random weights, onnxruntime QDQ u8; tests/cifar_models.py) and for hybrid deployments (``vit``:
the QDQ torchvision ViT of the tests, ``convnext``: a ConvNeXt-style block; tests/
test_nir_deployment.py; regions on cores, host stages as CPU processes), on the same random
images: the spiking ONNX reference, then Lava in floating and fixed point for each lowering, with
the number of Lava processes (= OS processes; of them host stages), the seconds spent compiling
and starting them, the whole run's wall time, its ratio to the reference's and, for a deployment,
the share of the run the cores spent computing their steps and the host stages in ONNX Runtime
(their seconds over the run's wall time; the rest is Lava's start, message passing and
synchronisation). The per-synapse lowering (Lava's own Dense and
Conv processes) is timed over ``--synapse-steps`` simulated steps and extrapolated to the run:
a full run of it takes tens of minutes.

``--cost-model`` measures instead what a simulated step costs in Lava's multiprocessing runtime
against the number of processes, the size of their messages and the number of connections.

    .venv/bin/python benchmarks/lava_speed.py [--models resnet18,mobilenet_v2,vit,convnext] [--images 64] [--timesteps 1,2]
        [--lowerings layer,network] [--synapse-steps 0] [--fixed-point-report]
    .venv/bin/python benchmarks/lava_speed.py --cost-model
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))      # tests/cifar_models.py builds the networks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--timesteps", default="1,2")
    parser.add_argument("--lowerings", default="layer,network")
    parser.add_argument("--synapse-steps", type=int, default=0,
                        help="time the per-synapse lowering over this many steps (0: skip it)")
    parser.add_argument("--fixed-point-report", action="store_true",
                        help="print the per-layer fixed-point report of the first model at T=1")
    parser.add_argument("--models-dir", help="where the quantized models are built (default: a temporary folder)")
    parser.add_argument("--cost-model", action="store_true", help="measure the cost of a simulated step instead")
    args = parser.parse_args(argv)
    if args.cost_model:
        return cost_model()
    with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as scratch:
        folder = args.models_dir or scratch
        print(f"{args.images} random images (3x32x32 CIFAR-size, 3x16x16 hybrid), CPU threads: {os.cpu_count()}; "
              f"'vs ref' = wall time / the spiking ONNX reference's on the same images and T")
        print(f"{'model':<13}{'T':>2}  {'backend':<22}{'processes':>9}{'hosts':>6}{'start s':>9}{'total s':>9}"
              f"{'vs ref':>8}{'agree':>7}{'cores %':>8}{'host %':>8}")
        for index, arch in enumerate(args.models.split(",")):
            export, x = _model(arch, folder, args.images)
            for timesteps in [int(t) for t in args.timesteps.split(",")]:
                _compare(arch, export, x, timesteps, args.lowerings.split(","), args.synapse_steps)
            if args.fixed_point_report and index == 0:
                _fixed_point_report(arch, export, x[:16])
    return 0


HYBRID = ("vit", "convnext")


def _model(arch: str, folder: str, images: int):
    from pmsm.pipeline import convert

    if arch in HYBRID:
        import pathlib

        from test_nir_deployment import _model as hybrid_model

        export = convert(hybrid_model(arch, "default", pathlib.Path(folder)), "lava")
        x = np.random.default_rng(0).normal(size=(images, 3, 16, 16)).astype(np.float32)
        return export, x
    import cifar_models

    export = convert(str(cifar_models.quantized(arch, folder)), "lava")
    x = np.random.default_rng(0).uniform(0.0, 1.0, (images, *cifar_models.INPUT_SHAPE)).astype(np.float32)
    return export, x


def _compare(arch, export, x, timesteps, lowerings, synapse_steps) -> None:
    from pmsm.runtime.execute import SpikingModel
    from pmsm.targets.lava import run_lava
    from pmsm.targets.lava.hybrid import run_deployment
    from pmsm.targets.nir.deployment import Deployment

    hybrid = isinstance(export.nir_graph, Deployment)
    reference = SpikingModel(export.spiking)
    start = time.perf_counter()
    expected = reference.run(x, timesteps).output.argmax(1)
    ref_s = time.perf_counter() - start
    _row(arch, timesteps, "onnx (reference)", "-", "-", ref_s, ref_s, 1.0)
    hosts = sum(1 for s in export.nir_graph.manifest["stages"] if s["kind"] == "host") if hybrid else 0
    for lowering in lowerings:
        for fixed in (False, True):
            start = time.perf_counter()
            run = run_deployment if hybrid else run_lava
            result = run(export.nir_graph, x, timesteps, fixed_point=fixed, lowering=lowering)
            seconds = time.perf_counter() - start
            name = f"lava {lowering}" + (" fixed" if fixed else "")
            _row(arch, timesteps, name, result.processes, result.seconds_to_start, seconds, ref_s,
                 float(np.mean(result.output.argmax(1) == expected)), hosts,
                 result.host_seconds / seconds if hybrid else None, result.core_seconds / seconds)
    if synapse_steps and not hybrid:
        processes, start_s, total_s = _synapse_estimate(export.nir_graph, x, timesteps, synapse_steps)
        _row(arch, timesteps, f"lava synapse ~{synapse_steps} st", processes, start_s, total_s, ref_s, None)


def _row(arch, timesteps, name, processes, start_s, total_s, ref_s, agree, hosts="-", host_share=None,
         core_share=None) -> None:
    start = f"{start_s:.1f}" if isinstance(start_s, float) else start_s
    agree_text = "-" if agree is None else f"{100 * agree:.0f}%"
    share = "-" if host_share is None else f"{100 * host_share:.0f}%"
    cores = "-" if core_share is None else f"{100 * core_share:.0f}%"
    print(f"{arch:<13}{timesteps:>2}  {name:<22}{processes:>9}{hosts:>6}{start:>9}{total_s:>9.1f}"
          f"{total_s / ref_s:>8.1f}{agree_text:>7}{cores:>8}{share:>8}", flush=True)


def _synapse_estimate(graph, x, timesteps, steps) -> tuple:
    """The per-synapse lowering: start-up measured, the run extrapolated from ``steps`` steps."""
    from lava.magma.core.run_conditions import RunSteps

    from pmsm.targets.lava import Network
    from pmsm.targets.lava.layout import to_lava
    from pmsm.targets.lava.processes.readout import MeanReadout
    from pmsm.targets.lava.processes.source import InputSource
    from pmsm.targets.lava.shutdown import WorkerGuard

    with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as scratch, WorkerGuard():
        start = time.perf_counter()
        net = Network(graph, timesteps=timesteps, lowering="synapse")
        plan = net.lowered.plan
        means = os.path.join(scratch, "means.npy")
        np.lib.format.open_memmap(means, mode="w+", dtype=np.float64, shape=(len(x),) + plan.output_lava_shape)
        source = InputSource(data=to_lava(x, plan.input_lava_shape, plan.input_perm), interval=timesteps)
        readout = MeanReadout(shape=plan.output_lava_shape, interval=timesteps, latency=net.depth, path=means)
        source.s_out.connect(net.inp)
        net.out.connect(readout.a_in)
        net.create_runtime(run_cfg=net.run_cfg(source, readout))
        start_s = time.perf_counter() - start
        begin = time.perf_counter()
        net.run(condition=RunSteps(num_steps=steps))
        per_step = (time.perf_counter() - begin) / steps
        net.stop()
    total_steps = len(x) * timesteps + net.depth
    return net.process_count + 2, start_s, start_s + per_step * total_steps


def _fixed_point_report(arch, export, x) -> None:
    """Per layer: weight error, bits used (a neuron's state, a synapse's output), bits of the
    messages (sent by a neuron, received by a synapse), 24-bit overflows, spikes unlike floating
    point."""
    from pmsm.targets.lava import NeuronQuantization, run_lava

    floating = run_lava(export.nir_graph, x, 1, collect_spikes=True, lowering="network")
    fixed = run_lava(export.nir_graph, x, 1, collect_spikes=True, lowering="network", fixed_point=True)
    names = {step.node: step.params["onnx_node"] for step in _neuron_steps(export.nir_graph)}
    print(f"\nfixed point, {arch}, {len(x)} images, T=1: predictions agree with floating point on "
          f"{100 * np.mean(fixed.output.argmax(1) == floating.output.argmax(1)):.0f}%")
    print(f"  {'layer':<38}{'kind':<9}{'w err max':>10}{'bits used':>10}{'payload':>8}{'overflow':>9}"
          f"{'spikes unlike float':>24}")
    for record in fixed.fixed_point_report:
        if record.kind == "input":
            print(f"  {record.node:<38}{'input':<9}{'':>10}{'':>10}{record.bits:>8}{'':>9}"
                  f"  max |x - x_q| {record.max_abs_error:.3g}")
            continue
        if isinstance(record, NeuronQuantization):
            spikes = floating.spikes[names[record.node]]
            unlike = int(np.count_nonzero(fixed.spikes[names[record.node]] != spikes))
            print(f"  {record.node:<38}{'neuron':<9}{'':>10}{record.state_bits:>10}{record.payload_bits:>8}"
                  f"{record.overflow_count or 0:>9}{f'{unlike} of {int(np.abs(spikes).sum())}':>24}")
        else:
            print(f"  {record.node:<38}{record.kind:<9}{100 * record.max_rel_error:>9.2f}%{record.output_bits:>10}"
                  f"{record.payload_bits:>8}{record.overflow_count or 0:>9}")


def _neuron_steps(graph) -> list:
    from pmsm.targets.lava.graph import analyse
    from pmsm.targets.lava.lowering import lower

    return [step for _, step in lower(analyse(graph), synapse_latency=0).neurons()]


def cost_model() -> int:
    """Seconds per simulated step of chains and fan-ins of identity processes."""
    print(f"cost of one simulated step in Lava's multiprocessing runtime, CPU threads: {os.cpu_count()}")
    print(f"{'shape':<34}{'processes':>10}{'elements':>10}{'connections':>12}{'ms/step':>9}{'ms/process':>11}")
    for processes, size in ((2, 1), (8, 1), (32, 1), (64, 1), (8, 1000), (8, 10_000), (8, 100_000)):
        per_step = _time_steps(_chain(processes, size))
        print(f"{'chain of identity maps':<34}{processes:>10}{size:>10}{processes - 1:>12}"
              f"{1e3 * per_step:>9.2f}{1e3 * per_step / processes:>11.3f}", flush=True)
    for sources in (1, 8, 32):
        per_step = _time_steps(_fan_in(sources, 1))
        print(f"{'sources into one port':<34}{sources + 1:>10}{1:>10}{sources:>12}"
              f"{1e3 * per_step:>9.2f}{1e3 * per_step / (sources + 1):>11.3f}", flush=True)
    return 0


def _chain(count: int, size: int) -> list:
    from pmsm.targets.lava.processes.elementwise import Elementwise

    procs = [Elementwise(shape=(size,), scale=np.ones(size), bias=np.zeros(size)) for _ in range(count)]
    for a, b in zip(procs, procs[1:]):
        a.a_out.connect(b.a_in)
    return procs


def _fan_in(sources: int, size: int) -> list:
    from pmsm.targets.lava.processes.elementwise import Elementwise

    sink = Elementwise(shape=(size,), scale=np.ones(size), bias=np.zeros(size))
    procs = [Elementwise(shape=(size,), scale=np.ones(size), bias=np.zeros(size)) for _ in range(sources)]
    for proc in procs:
        proc.a_out.connect(sink.a_in)
    return [sink, *procs]


def _time_steps(procs: list, steps: int = 200) -> float:
    from lava.magma.core.run_conditions import RunSteps

    from pmsm.targets.lava.models import run_config
    from pmsm.targets.lava.shutdown import WorkerGuard

    with WorkerGuard():
        procs[0].create_runtime(run_cfg=run_config(False, procs))
        procs[0].run(condition=RunSteps(num_steps=10))          # warm up
        start = time.perf_counter()
        procs[0].run(condition=RunSteps(num_steps=steps))
        per_step = (time.perf_counter() - start) / steps
        procs[0].stop()
    return per_step


if __name__ == "__main__":
    sys.exit(main())
