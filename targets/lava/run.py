"""Simulate a PMSM NIR graph in Lava on many samples in one run.

Samples stream through the network back to back: sample ``n`` is presented during steps
``[n*T, (n+1)*T)`` and every neuron restarts its membrane at its own offset (its latency), so
no sample sees another's state and the whole batch takes ``N*T + depth`` steps, compiled once.
The run proceeds in chunks so that progress can be reported; results and spikes come back
through memory-mapped files (see processes/readout.py).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from lava.magma.core.run_conditions import RunSteps

from pmsm.errors import BadInputError
from pmsm.targets.lava.fixed_point import NeuronQuantization, input_exponent_for, quantize_input
from pmsm.targets.lava.graph import analyse
from pmsm.targets.lava.layout import to_lava, to_nir
from pmsm.targets.lava.lowering import lower
from pmsm.targets.lava.processes.network import Network
from pmsm.targets.lava.processes.neuron import PEAK_STATE
from pmsm.targets.lava.processes.readout import MeanReadout
from pmsm.targets.lava.processes.source import InputSource

INPUT_BITS = 8
STEPS_PER_CHUNK = 256       # about a second of simulation between progress reports on a small net


@dataclass
class LavaResult:
    output: np.ndarray                  # [N, *output shape]: mean over T of the output layer
    spikes: dict                        # onnx node (or NIR node) -> [T, N, *shape] spike counts
    fixed_point_report: list | None     # per-layer quantization records (fixed point only)


def run_lava(graph_or_path, x: np.ndarray, timesteps: int, fixed_point: bool = False,
             progress: Callable[[int, int], None] | None = None, collect_spikes: bool = False,
             samples_per_chunk: int | None = None, conv_synapse: str = "conv") -> LavaResult:
    view = analyse(graph_or_path)
    x = _check_input(x, view.shapes[view.input], timesteps)
    n, t_steps = x.shape[0], int(timesteps)
    chunk_steps = (samples_per_chunk or max(1, STEPS_PER_CHUNK // t_steps)) * t_steps
    exponent = input_exponent_for(x, INPUT_BITS) if fixed_point else 0
    with tempfile.TemporaryDirectory(prefix="pmsm-lava-") as scratch:
        # plan first (no process yet) to learn the depth, hence the number of steps
        depth = lower(view, fixed_point).depth
        total_steps = n * t_steps + depth
        net = Network(view, timesteps=t_steps, fixed_point=fixed_point, input_exponent=exponent,
                      record_dir=scratch if collect_spikes else None, record_steps=total_steps,
                      conv_synapse=conv_synapse)
        plan = net.lowered.plan
        data = to_lava(x, plan.input_lava_shape, plan.input_perm)
        if fixed_point:
            data = quantize_input(data, exponent, INPUT_BITS)
        means_path = os.path.join(scratch, "means.npy")
        np.lib.format.open_memmap(means_path, mode="w+", dtype=np.float64, shape=(n,) + plan.output_lava_shape)
        unit = net.lowered.fixed.output_unit if fixed_point else 1.0
        source = InputSource(data=data, interval=t_steps, name="input")
        readout = MeanReadout(shape=plan.output_lava_shape, interval=t_steps, latency=plan.depth,
                              path=means_path, unit=unit, name="readout")
        source.s_out.connect(net.inp)
        net.out.connect(readout.a_in)
        done_steps = 0
        try:
            while done_steps < total_steps:
                steps = min(chunk_steps, total_steps - done_steps)
                net.run(condition=RunSteps(num_steps=steps), run_cfg=net.run_cfg())
                done_steps += steps
                if progress is not None:
                    progress(min(n, max(0, (done_steps - plan.depth) // t_steps)), n)
            report = _report(net, x) if fixed_point else None
        finally:
            net.stop()
        means = np.array(np.load(means_path, mmap_mode="r"))
        spikes = _spikes(plan, net.recorded_spikes(), n, t_steps) if collect_spikes else {}
    output = to_nir(means, plan.output_shape, plan.output_perm).astype(np.float32)
    return LavaResult(output, spikes, report)


def _check_input(x, shape, timesteps) -> np.ndarray:
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or x.shape[0] < 1:
        raise BadInputError(f"input must have shape [N, {', '.join(map(str, shape))}] with N >= 1, "
                            f"got {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise BadInputError("input contains NaN or infinite values")
    return x


def _spikes(plan, recorded, n, t_steps) -> dict:
    spikes = {}
    for i, step in plan.neurons():
        # sample k's timestep t left this neuron at step k*T + latency + t
        window = recorded[i][step.latency: step.latency + n * t_steps]
        window = window.reshape((n, t_steps) + tuple(step.out_shape)).swapaxes(0, 1)
        flat = window.reshape((t_steps * n,) + tuple(step.out_shape))
        nir_layout = to_nir(flat, step.params["nir_shape"], step.params["perm"])
        spikes[step.params["onnx_node"]] = nir_layout.reshape(
            (t_steps, n) + tuple(step.params["nir_shape"])).astype(np.float32)
    return spikes


def _report(net: Network, x: np.ndarray) -> list:
    """Static quantization records plus what the run measured (input error, state bits)."""
    fixed = net.lowered.fixed
    peaks = {step.node: net.lowered.processes[i].peaks.get() for i, step in net.lowered.plan.neurons()}
    exponent = fixed.input_exponent
    x_q = quantize_input(x, exponent, INPUT_BITS) * 2.0 ** -exponent
    report = []
    for record in fixed.records:
        if record.kind == "input":
            record = dataclasses.replace(record, max_abs_error=float(np.max(np.abs(x_q - x))))
        elif isinstance(record, NeuronQuantization):
            peak = int(peaks[record.node][PEAK_STATE])
            bits = peak.bit_length() + 1
            record = dataclasses.replace(record, state_bits=bits, overflow=bits > 24)
        report.append(record)
    return report
