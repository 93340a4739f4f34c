"""Simulate a PMSM NIR graph in Lava on many samples in one run.

Samples stream through the network back to back: sample ``n`` is presented during steps
``[n*T, (n+1)*T)`` and every neuron restarts its membrane at its own offset (its latency), so
no sample sees another's state and the whole batch takes ``N*T + depth`` steps, compiled once.
The run proceeds in chunks of about a second, so that progress can be reported and an error a
process recorded (processes/failure.py) stops it early; results and spikes come back through
memory-mapped files (see processes/readout.py). However the run ends, no worker process
survives it (shutdown.py).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from lava.magma.core.run_conditions import RunSteps

from pmsm.runtime.base.errors import BadInputError
from pmsm.targets.lava.fixed_point import NeuronQuantization, SynapseQuantization, input_exponent_for, quantize_input
from pmsm.targets.lava.graph import analyse
from pmsm.targets.lava.layout import to_lava, to_nir
from pmsm.targets.lava.processes.failure import raise_recorded_failure
from pmsm.targets.lava.processes.network import Network
from pmsm.targets.lava.processes.neuron import PEAK_INPUT, PEAK_STATE
from pmsm.targets.lava.processes.readout import MeanReadout
from pmsm.targets.lava.processes.source import InputSource
from pmsm.targets.lava.program import (COMPUTE_SECONDS, INPUT_PEAK, OVERFLOWS, PEAK, STATE_OVERFLOWS, STATE_PEAK,
                                       WORD_BITS)
from pmsm.targets.lava.shutdown import WorkerGuard, scratch_folder
from pmsm.targets.nir import dialect as layout

INPUT_BITS = 8
CHUNK_SECONDS = 1.0         # simulated time between progress reports and error checks


@dataclass
class LavaResult:
    output: np.ndarray                  # [N, *output shape]: mean over T of the output layer
    spikes: dict                        # onnx node (or NIR node) -> [T, N, *shape] spike counts
    fixed_point_report: list | None     # per-layer quantization records (fixed point only)
    processes: int = 0                  # Lava processes of the run (input and readout included)
    seconds_to_start: float = 0.0       # lowering, compiling and starting the Lava processes
    host_seconds: float = 0.0           # a hybrid deployment: the host stages' time in ONNX Runtime
    core_seconds: float = 0.0           # the cores' time computing their steps (fused lowerings)


def run_lava(graph_or_path, x: np.ndarray, timesteps: int, fixed_point: bool = False,
             progress: Callable[[int, int], None] | None = None, collect_spikes: bool = False,
             samples_per_chunk: int | None = None, conv_synapse: str = "conv",
             lowering: str = "layer", input_peak: float | None = None) -> LavaResult:
    """``lowering``: "layer" (one process per neuron layer), "network" (one for all) or
    "synapse" (one per synapse, pooling and neuron layer); see processes/network.py.
    ``samples_per_chunk`` fixes the chunk length instead of aiming at a second per chunk.
    ``input_peak``: the largest ``|x|`` of the whole data set, when ``x`` is a part of it, so that
    the fixed-point input grid is the same for every part (default: ``x``'s own)."""
    view = analyse(graph_or_path)
    if len(view.inputs) != 1 or len(view.outputs) != 1:
        raise BadInputError(f"{view.source}: a network run on data has one Input and one Output node, found "
                            f"{len(view.inputs)} and {len(view.outputs)} (a region of a hybrid deployment runs "
                            "as part of its deployment: targets/lava/hybrid.py)")
    # Data, outputs and spikes are exchanged in ONNX's axis order (docs/nir.md §3a).
    x = np.asarray(x)
    x = _check_input(np.ascontiguousarray(layout.to_nir_layout(x, layout.layout(view.nodes[view.input])))
                     if x.ndim == len(view.shapes[view.input]) + 1 else x, view.shapes[view.input], timesteps)
    n, t_steps = x.shape[0], int(timesteps)
    exponent = input_exponent_for(x if input_peak is None else np.array([input_peak]), INPUT_BITS) \
        if fixed_point else 0
    with scratch_folder() as scratch, WorkerGuard() as guard:
        started = time.perf_counter()
        net = Network(view, timesteps=t_steps, fixed_point=fixed_point, input_exponent=exponent,
                      record_dir=scratch if collect_spikes else None, record_steps=n * t_steps + _depth_bound(view),
                      conv_synapse=conv_synapse, lowering=lowering, work_dir=scratch, samples=n)
        plan, depth = net.lowered.plan, net.depth
        data = to_lava(x, plan.input_lava_shape, plan.input_perm)
        if fixed_point:
            data = quantize_input(data, exponent, INPUT_BITS)
        means_path = os.path.join(scratch, "means.npy")
        np.lib.format.open_memmap(means_path, mode="w+", dtype=np.float64, shape=(n,) + plan.output_lava_shape)
        unit = net.lowered.fixed.output_unit if fixed_point else 1.0
        source = InputSource(data=data, interval=t_steps, name="input")
        readout = MeanReadout(shape=plan.output_lava_shape, interval=t_steps, latency=depth,
                              path=means_path, unit=unit, name="readout")
        source.s_out.connect(net.inp)
        net.out.connect(readout.a_in)
        stepper = _Stepper(net, n, t_steps, progress, samples_per_chunk, scratch, guard.raise_if_interrupted)
        try:
            guard.create_runtime(net, net.run_cfg(source, readout))
            seconds_to_start = time.perf_counter() - started
            stepper.run()
            report = _report(net, x) if fixed_point else None
        finally:
            guard.end_runtime(net, between_runs=stepper.idle)
        means = np.array(np.load(means_path, mmap_mode="r"))
        spikes = _spikes(net, n, t_steps) if collect_spikes else {}
        computing = core_seconds(net)
    output = to_nir(means, plan.output_shape, plan.output_perm).astype(np.float32)
    output = np.ascontiguousarray(layout.to_onnx_layout(output, layout.layout(view.nodes[view.output])))
    return LavaResult(output, spikes, report, net.process_count + 2, seconds_to_start,
                      core_seconds=computing)


def core_seconds(net: Network) -> float:
    """The time the network's cores spent computing their steps (0 for the synapse lowering)."""
    return float(sum(np.load(path, mmap_mode="r")[0, COMPUTE_SECONDS] for path in net.lowered.stats_paths or []))


class _Stepper:
    """Runs the ``n * T + depth`` steps in chunks of about ``CHUNK_SECONDS``, reporting progress,
    recorded process errors and recorded signals (``check_interrupt``) between chunks; ``idle``
    tells whether Lava is between two runs, the only time its ``stop()`` works (not before the
    first: it would wait on workers that were never told to stop)."""

    def __init__(self, net, n, t_steps, progress, samples_per_chunk, error_folder, check_interrupt):
        self.net, self.n, self.t_steps = net, n, t_steps
        self.progress, self.check_interrupt = progress, check_interrupt
        self.error_folders = [error_folder] if isinstance(error_folder, str) else list(error_folder)
        self.fixed_chunk = samples_per_chunk * t_steps if samples_per_chunk else None
        self.idle = False

    def run(self) -> None:
        total, done, chunk = self.n * self.t_steps + self.net.depth, 0, self.fixed_chunk or 1
        if self.progress is not None:
            self.progress(0, self.n)
        while done < total:
            self.check_interrupt()
            steps = min(chunk, total - done)
            started = time.perf_counter()
            self.idle = False
            self.net.run(condition=RunSteps(num_steps=steps))
            self.idle = True
            elapsed = time.perf_counter() - started
            done += steps
            for folder in self.error_folders:
                raise_recorded_failure(folder)
            if self.progress is not None:
                self.progress(min(self.n, max(0, (done - self.net.depth) // self.t_steps)), self.n)
            if not self.fixed_chunk:
                chunk = max(1, min(4 * steps, int(steps * CHUNK_SECONDS / max(elapsed, 1e-6))))


def _depth_bound(view) -> int:
    """An upper bound of any lowering's depth, known before the network exists (rows of the
    spike recordings): every node adds at most one step."""
    return len(view.order) + 2


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


def _spikes(net: Network, n: int, t_steps: int) -> dict:
    plan, recorded, latency = net.lowered.plan, net.recorded_spikes(), net.lowered.neuron_latency
    rows = next(iter(recorded.values())).shape[0] if recorded else 1
    spikes = {}
    for i, step in plan.neurons():
        # sample k's timestep t left this neuron at step k*T + latency + t
        steps = (latency[i] + np.arange(n * t_steps)) % rows
        window = recorded[i][steps].reshape((n, t_steps) + tuple(step.out_shape)).swapaxes(0, 1)
        flat = window.reshape((t_steps * n,) + tuple(step.out_shape))
        nir_layout = to_nir(flat, step.params["nir_shape"], step.params["perm"])
        counts = nir_layout.reshape((t_steps, n) + tuple(step.params["nir_shape"])).astype(np.float32)
        spikes[step.params["onnx_node"]] = np.ascontiguousarray(
            layout.to_onnx_layout(counts, layout.layout(net.lowered.view.nodes[step.node]), lead=2))
    return spikes


def _report(net: Network, x: np.ndarray) -> list:
    """Static quantization records plus what the run measured (input error, bits, overflows)."""
    exponent = net.lowered.fixed.input_exponent
    x_q = quantize_input(x, exponent, INPUT_BITS) * 2.0 ** -exponent
    return _records(net, {0: float(np.max(np.abs(x_q - x)))})


def _records(net: Network, input_errors: dict) -> list:
    """The fixed-point records of ``net`` with what its run measured; ``input_errors``: per input
    port fed by data, the largest error of the data on its grid."""
    fixed = net.lowered.fixed
    measured = _measured(net)
    report, port = [], 0
    for record in fixed.records:
        if record.kind == "input":
            if port in input_errors:
                record = dataclasses.replace(record, max_abs_error=input_errors[port])
            port += 1
        elif isinstance(record, NeuronQuantization) and record.step in measured:
            m = measured[record.step]
            bits = int(m["state_peak"]).bit_length() + 1
            record = dataclasses.replace(record, state_bits=bits, overflow=bits > WORD_BITS,
                                         input_bits=int(m["input_peak"]).bit_length() + 1,
                                         overflow_count=m.get("overflows"))
        elif isinstance(record, SynapseQuantization) and record.step in measured:
            m = measured[record.step]
            record = dataclasses.replace(record, output_bits=int(m["peak"]).bit_length() + 1,
                                         overflow_count=m["overflows"])
        report.append(record)
    return report


def _measured(net: Network) -> dict:
    """Per plan step: largest magnitudes and 24-bit overflow counts the run saw."""
    lowered = net.lowered
    if lowered.partition is None:           # the synapse lowering: neurons keep peaks in a Var
        peaks = {i: lowered.processes[i].peaks.get() for i, _ in lowered.plan.neurons()}
        return {i: {"state_peak": p[PEAK_STATE], "input_peak": p[PEAK_INPUT]} for i, p in peaks.items()}
    measured: dict = {}
    for core, path in zip(lowered.partition.cores, lowered.stats_paths):
        stats = np.load(path, mmap_mode="r")
        for row, i in enumerate(core.steps):
            step = lowered.plan.steps[i]
            m = measured.setdefault(i, {"peak": 0.0, "overflows": 0, "state_peak": 0.0, "input_peak": 0.0})
            # a step computed by several cores (a shared tree) sees the same values in each
            m["peak"] = max(m["peak"], float(stats[row, PEAK]))
            m["state_peak"] = max(m["state_peak"], float(stats[row, STATE_PEAK]))
            m["input_peak"] = max(m["input_peak"], float(stats[row, INPUT_PEAK]))
            overflows = stats[row, STATE_OVERFLOWS] if step.kind == "neuron" else stats[row, OVERFLOWS]
            m["overflows"] = max(m["overflows"], int(overflows))
    return measured
