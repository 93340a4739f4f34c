"""Lava simulation speed against the reference backend, side by side in one run (figures, not a test).

For a bundled sample (default: the residual CNN, PMSM L=2) on the digits test split: images per
second and simulated timesteps per second of Lava (floating point, with `Conv` and with `Sparse`
synapses) and of the spiking ONNX reference, and where Lava's time goes (per process per step).

    .venv/bin/python benchmarks/lava_speed.py [--model samples/digits_cnn_pmsm_L2.onnx] [--samples 360] [--timesteps 1,2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(REPO, "samples", "digits_cnn_pmsm_L2.onnx"))
    parser.add_argument("--data", default=os.path.join(REPO, "samples", "digits_test.npz"))
    parser.add_argument("--samples", type=int, default=360)
    parser.add_argument("--timesteps", default="1,2")
    args = parser.parse_args(argv)

    from pmsm.pipeline import convert
    from pmsm.runtime.execute import SpikingModel
    from pmsm.targets.lava import run_lava
    from pmsm.targets.lava.graph import analyse
    from pmsm.targets.lava.lowering import lower

    export = convert(args.model, "lava")
    x = np.load(args.data)["x"][: args.samples].astype(np.float32)
    plan = lower(analyse(export.nir_graph), False)
    processes = len(plan.steps) + 2  # the input source and the readout
    reference = SpikingModel(export.spiking)
    print(f"{os.path.basename(args.model)}: {len(x)} images, {processes} Lava processes, depth {plan.depth} steps, "
          f"CPU threads: {os.cpu_count()}")
    print(f"{'backend':<16}{'T':>3}{'seconds':>9}{'images/s':>10}{'steps/s':>9}{'ms/process/step':>17}{'vs ref':>8}")
    for timesteps in [int(t) for t in args.timesteps.split(",")]:
        steps = len(x) * timesteps + plan.depth
        start = time.perf_counter()
        reference.run(x, timesteps)
        ref_s = time.perf_counter() - start
        print(f"{'onnx (ref)':<16}{timesteps:>3}{ref_s:>9.2f}{len(x) / ref_s:>10.0f}{'-':>9}{'-':>17}{1:>8.1f}")
        for synapse in ("conv", "sparse"):
            start = time.perf_counter()
            run_lava(export.nir_graph, x, timesteps, conv_synapse=synapse)
            lava_s = time.perf_counter() - start
            per_process = 1e3 * lava_s / steps / processes
            print(f"{'lava ' + synapse:<16}{timesteps:>3}{lava_s:>9.2f}{len(x) / lava_s:>10.0f}{steps / lava_s:>9.0f}"
                  f"{per_process:>17.3f}{lava_s / ref_s:>8.1f}", flush=True)
    print("vs ref = wall time / the spiking ONNX reference's wall time on the same images and T "
          "(Lava times include compiling and starting its processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
