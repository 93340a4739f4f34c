"""A hybrid NIR deployment (docs/nir.md §7) simulated in Lava as a Loihi 2 system would run it: every
NIR region lowered to cores as a plain network is (processes/network.py), every host stage a CPU
process running its ONNX model once per timestep (processes/host.py), all exchanging messages every
step, compiled and run as one Lava network.

Timing (docs/lava.md, "Hybrid deployments"): samples stream back to back as in run.py. Every tensor
has an *arrival*: the step, counted from a sample time's presentation, at which its consumers
receive it; the data arrives at 0. A region starts where its latest input arrives (its ``offset``),
holds earlier inputs back to meet it, and delivers its outputs ``depth`` steps later, like a plain
network. A host stage computes in the step its latest input arrives and delivers in that same
step: a host hop costs no step (the host works inside the timestep, between the cores' steps). The
readout averages the graph output from its arrival on.

Fixed point: regions run in fixed point as plain networks do; host stages compute in float on the
values the fixed-point regions sent. A value the host sends to a region is quantized on a grid of
``HOST_MESSAGE_BITS`` bits chosen from the largest magnitude the floating-point deployment (the NIR
interpreter's arithmetic) reaches on the samples of the run; a value the host sends to another host
stage or to the readout on ``HOST_FORWARD_BITS`` bits.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from onnx import helper

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.targets.lava.build import reshaped
from pmsm.targets.lava.fixed_point import input_exponent_for, quantize_input
from pmsm.targets.lava.graph import analyse, unsupported_nir_nodes
from pmsm.targets.lava.layout import to_lava, to_nir
from pmsm.targets.lava.processes.host import HostInput, HostOutput, HostProgram, HostStage, Layout
from pmsm.targets.lava.processes.network import Network, NetworkModel
from pmsm.targets.lava.processes.readout import MeanReadout
from pmsm.targets.lava.processes.source import InputSource
from pmsm.targets.lava.run import INPUT_BITS, LavaResult, _check_input, _records, _Stepper, core_seconds
from pmsm.targets.lava.shutdown import WorkerGuard, scratch_folder
from pmsm.targets.nir import dialect
from pmsm.targets.nir.deployment import STEP_INPUT, Deployment, DeploymentRunner

TARGET = "lava"
HOST_MESSAGE_BITS = 16      # host -> region: a graded payload Loihi 2 carries (up to 24 bits)
HOST_FORWARD_BITS = 24      # host -> host, host -> readout
REGION_LINK_BITS = 24       # region -> region: what an output port carries
LOWERINGS = ("layer", "network")
# One Lava process per region: a region is what the partition maps to neuromorphic cores between two
# host hops, and Lava's cost is per process and step (about 0.5 ms each, docs/lava.md): the QDQ ViT
# of the tests runs 61 processes instead of 75 (one per neuron layer), 64 images at T = 1 in 7.0 s
# instead of 11.3 s, with the same spikes (tests/test_lava_deployment.py runs both).
DEFAULT_LOWERING = "network"


def unsupported_regions(deployment: Deployment) -> list:
    """Every region node Lava cannot take, as ``(region/node, type, reason)``."""
    problems = []
    for name, graph in deployment.regions.items():
        problems += [(f"{name}/{node}", kind, reason) for node, kind, reason in unsupported_nir_nodes(graph)]
    return problems


@dataclass
class _Port:
    """Where a tensor comes from in the Lava network: a process's out-port, the step of its arrival,
    its layout in the message and, in fixed point, the value of one integer step."""

    port: object
    arrival: int
    layout: Layout
    unit: float = 1.0


def run_deployment(deployment: Deployment, x: np.ndarray, timesteps: int, fixed_point: bool = False,
                   progress=None, collect_spikes: bool = False, samples_per_chunk: int | None = None,
                   lowering: str = DEFAULT_LOWERING, input_peak: float | None = None) -> LavaResult:
    """The deployment simulated in Lava on ``x`` ``[N, *input shape]`` (ONNX layout); the result as
    :func:`pmsm.targets.lava.run.run_lava` gives it: output, spikes keyed by ONNX node as the NIR
    interpreter's deployment runner gives them, fixed-point records of every region."""
    if lowering not in LOWERINGS:
        raise ValueError(f"a deployment lowers its regions with one of {LOWERINGS}, got {lowering!r}")
    problems = unsupported_regions(deployment)
    if problems:
        raise UnsupportedModelError("<deployment>", TARGET, problems)
    manifest = deployment.manifest
    shape = tuple(manifest["data_input"]["shape"])
    x = _check_input(np.asarray(x, np.float32), shape, timesteps)
    if manifest["data_input"].get("batch") not in (None, 1):
        raise BadInputError(f"deployment: the source has a fixed batch of {manifest['data_input']['batch']}; Lava "
                            "streams one sample at a time: export the source with batch 1 or a dynamic batch")
    n, t_steps = x.shape[0], int(timesteps)
    observed = _observe(deployment, x, t_steps, fixed_point)
    with scratch_folder() as scratch, WorkerGuard() as guard:
        started = time.perf_counter()
        built = _Assembly(deployment, x, t_steps, fixed_point, scratch, observed, lowering, input_peak,
                          collect_spikes).build()
        stepper = _Stepper(built, n, t_steps, progress, samples_per_chunk, built.error_folders,
                           guard.raise_if_interrupted)
        try:
            guard.create_runtime(built.readout, built.run_cfg())
            seconds_to_start = time.perf_counter() - started
            stepper.run()
            report = built.fixed_point_report() if fixed_point else None
        finally:
            guard.end_runtime(built.readout, between_runs=stepper.idle)
        means = np.array(np.load(built.means_path, mmap_mode="r"))
        spikes = built.spikes(n, t_steps) if collect_spikes else {}
        host_seconds = sum(float(np.load(p)[0]) for p in built.timing_paths)
        computing = sum(core_seconds(net) for _, net, _, _ in built.networks)
    output = np.stack([built.output_layout.from_message(row.reshape(-1)) for row in means])
    output = output.reshape((n,) + output.shape[2:]) if output.shape[1] == 1 else output
    return LavaResult(output.astype(np.float32), spikes, report, built.process_count, seconds_to_start,
                      host_seconds, computing)


def _observe(deployment: Deployment, x: np.ndarray, timesteps: int, fixed_point: bool) -> dict:
    """Each tensor's shape at one sample (the rows of a region: a sequence-first tensor leads with its
    tokens) and, for fixed point, its largest magnitude on ``x`` (the grid of host messages)."""
    # the runner (one ONNX Runtime session per host stage) and the shapes, once per deployment
    if "lava_runner" not in deployment.derived:
        deployment.derived["lava_runner"] = DeploymentRunner(deployment)
    runner = deployment.derived["lava_runner"]
    shapes, peaks = deployment.derived.setdefault("lava_shapes", {}), {}

    def watch(name, value):
        value = np.asarray(value)
        shapes.setdefault(name, value.shape)
        peak = float(np.max(np.abs(value), initial=0.0)) if value.dtype.kind == "f" else 0.0
        peaks[name] = max(peaks.get(name, 0.0), peak)

    if not shapes:
        runner.run(x[:1], 1, watch=watch)
    if fixed_point:
        runner.run(x, timesteps, watch=watch)
    return {"shapes": shapes, "peaks": peaks}


class _Assembly:
    """The Lava processes of one deployment, wired; built before any of them runs."""

    def __init__(self, deployment, x, timesteps, fixed_point, scratch, observed, lowering, input_peak,
                 collect_spikes):
        self.deployment, self.x, self.timesteps, self.fixed = deployment, x, timesteps, fixed_point
        self.scratch, self.observed, self.lowering = scratch, observed, lowering
        self.input_peak, self.collect = input_peak, collect_spikes
        self.data_input = deployment.manifest["data_input"]["tensor"]
        self.ports: dict[str, _Port] = {}   # tensor -> where it comes from
        self.networks: list = []            # (stage, Network, {input port: float data in Lava layout}, rows)
        self.hosts: list = []               # _PendingHost, in schedule order
        self.reads: list = []               # (host producing the tensor, HostOutput, in-port reading it)
        self.sources: list = []
        self.timing_paths: list = []
        self.error_folders: list = [scratch]

    # -- building -------------------------------------------------------------------------------
    def build(self) -> "_Assembly":
        stages = self.deployment.manifest["stages"]
        self.record_steps = len(self.x) * self.timesteps + self._depth_bound(stages)
        for stage in stages:
            if stage["kind"] == "region":
                self._region(stage)
            else:
                self._host(stage)
        self._readout(self.deployment.manifest["outputs"][0]["tensor"])
        for host in self.hosts:     # every consumer is known: host stages become processes
            host.make_process(self.reads)
        for host in self.hosts:
            for k, (tensor, src) in enumerate(host.sources):
                if not isinstance(src.port, _PendingHost):
                    reshaped(src.port, (src.layout.size,)).connect(host.process.in_port(k))
        for producer, spec, dst in self.reads:
            port = producer.process.out_port(producer.program.outputs.index(spec))
            dst = dst() if callable(dst) else dst
            reshaped(port, dst.shape).connect(dst)
        return self

    def _depth_bound(self, stages) -> int:
        """An upper bound of the output's arrival, known before any network exists (rows of the
        spike recordings): every NIR node adds at most one step, every host stage one."""
        return 2 + sum(len(self.deployment.regions[s["name"]].nodes) + 2 if s["kind"] == "region" else 1
                       for s in stages)

    def _region(self, stage: dict) -> None:
        name = stage["name"]
        view = analyse(self.deployment.regions[name])
        by_node = {p["node"]: p for p in stage["inputs"]}
        inputs = [by_node[node] for node in view.inputs]
        arrivals = [0 if p["tensor"] == self.data_input else self.ports[p["tensor"]].arrival for p in inputs]
        offset = max(arrivals)
        rows = 1 if inputs[0]["tensor"] == self.data_input else int(self.observed["shapes"][inputs[0]["tensor"]][0])
        exponents = [self._region_exponent(p["tensor"]) for p in inputs] if self.fixed else 0
        bits = [self._region_bits(p["tensor"]) for p in inputs]
        folder = self._folder(name)
        net = Network(view, timesteps=self.timesteps, fixed_point=self.fixed, input_exponent=exponents,
                      input_bits=bits, record_dir=folder if self.collect else None, record_steps=self.record_steps,
                      lowering=self.lowering, work_dir=folder, name=name, offset=offset,
                      input_delays=tuple(offset - a for a in arrivals), rows=rows, samples=len(self.x))
        plan = net.lowered.plan
        data = {}
        for k, p in enumerate(inputs):
            layout = _region_layout(plan.inputs[k], p, rows)
            if p["tensor"] == self.data_input:
                data[k] = self._data_source(net.inputs[k], plan.inputs[k], tuple(p["layout"]),
                                            exponents[k] if self.fixed else 0)
                continue
            src = self.ports[p["tensor"]]
            if isinstance(src.port, _PendingHost):
                spec = HostOutput(p["tensor"], layout, exponents[k] if self.fixed else 0, HOST_MESSAGE_BITS)
                self.reads.append((src.port, spec, net.inputs[k]))
            elif src.layout != layout or (self.fixed and src.unit != 2.0 ** -exponents[k]):
                raise UnsupportedModelError("<deployment>", TARGET, [(p["tensor"], "region link", (
                    "one region sends it in a layout or fixed-point scale another region does not read"))])
            else:       # spikes of one region's neurons read by another region's synapses
                reshaped(src.port, net.inputs[k].shape).connect(net.inputs[k])
        for p in stage["outputs"]:
            j = list(view.outputs).index(p["node"])
            unit = net.lowered.fixed.output_units[j] if self.fixed else 1.0
            self.ports[p["tensor"]] = _Port(net.outputs[j], offset + net.depth,
                                            _region_layout(plan.outputs[j], p, rows), unit)
        self.networks.append((stage, net, data, rows))

    def _folder(self, name: str) -> str:
        folder = os.path.join(self.scratch, name)
        os.makedirs(folder)
        self.error_folders.append(folder)
        return folder

    def _region_exponent(self, tensor: str) -> int:
        """The grid of a region's input: the data's as plain networks have it; a host tensor's from
        its largest magnitude on the run's samples."""
        if tensor == self.data_input:
            peak = self.input_peak if self.input_peak is not None else float(np.max(np.abs(self.x), initial=0))
            return input_exponent_for(np.array([peak]), INPUT_BITS)
        src = self.ports[tensor]
        if not isinstance(src.port, _PendingHost):      # a region's spikes: its own output grid
            return int(round(-np.log2(src.unit)))
        return input_exponent_for(np.array([self.observed["peaks"].get(tensor, 0.0)]), HOST_MESSAGE_BITS)

    def _region_bits(self, tensor: str) -> int:
        if tensor == self.data_input:
            return INPUT_BITS
        src = self.ports[tensor]
        return HOST_MESSAGE_BITS if isinstance(src.port, _PendingHost) else REGION_LINK_BITS

    def _forward_exponent(self, tensor: str) -> int:
        return input_exponent_for(np.array([self.observed["peaks"].get(tensor, 0.0)]), HOST_FORWARD_BITS)

    def _data_source(self, dst, port, axes, exponent) -> np.ndarray:
        data = np.ascontiguousarray(dialect.to_nir_layout(self.x, axes)).reshape((len(self.x),) + tuple(port.shape))
        data = to_lava(data, port.lava_shape, port.perm)
        sent = quantize_input(data, exponent, INPUT_BITS) if self.fixed else data
        source = InputSource(data=sent, interval=self.timesteps, name=f"input:{dst.process.name}")
        source.s_out.connect(dst)
        self.sources.append(source)
        return data

    def _host(self, stage: dict) -> None:
        name = stage["name"]
        model = self.deployment.hosts[name]
        declared = {i.name: i for i in model.graph.input}
        sources = [(t, self.ports[t]) for t in stage["inputs"] if t != self.data_input]
        latency = max((src.arrival for _, src in sources), default=0)
        folder = self._folder(name)
        timing = os.path.join(folder, "onnx_seconds.npy")
        np.save(timing, np.zeros(1))
        self.timing_paths.append(timing)
        inputs = []
        for tensor, src in sources:
            unit = 1.0
            if self.fixed:
                unit = 2.0 ** -self._forward_exponent(tensor) if isinstance(src.port, _PendingHost) else src.unit
            inputs.append(HostInput(tensor, src.layout, latency - src.arrival, unit, _dtype(declared[tensor])))
        # the host's own copy of the data, in the type its model declares (token ids are integers)
        data = {t: self.x.astype(_dtype(declared[t]), copy=False) for t in stage["inputs"] if t == self.data_input}
        program = HostProgram(name, model.SerializeToString(), inputs, [], data,
                              [(s["input"], s["output"]) for s in stage["state"]],
                              STEP_INPUT if STEP_INPUT in declared else None, self.timesteps, latency,
                              len(self.x), self.fixed, os.path.join(folder, "host.error"), timing)
        host = _PendingHost(program, sources)
        for k, (tensor, src) in enumerate(sources):
            if isinstance(src.port, _PendingHost):
                spec = HostOutput(tensor, src.layout, self._forward_exponent(tensor), HOST_FORWARD_BITS)
                self.reads.append((src.port, spec, lambda host=host, k=k: host.process.in_port(k)))
        for tensor in stage["outputs"]:
            self.ports[tensor] = _Port(host, latency, Layout(tuple(self.observed["shapes"][tensor])),
                                       2.0 ** -self._forward_exponent(tensor) if self.fixed else 1.0)
        self.hosts.append(host)

    def _readout(self, tensor: str) -> None:
        src = self.ports[tensor]
        self.means_path = os.path.join(self.scratch, "means.npy")
        size = src.layout.size
        np.lib.format.open_memmap(self.means_path, mode="w+", dtype=np.float64, shape=(len(self.x), size))
        self.readout = MeanReadout(shape=(size,), interval=self.timesteps, latency=src.arrival,
                                   path=self.means_path, unit=src.unit if self.fixed else 1.0, name="readout")
        if isinstance(src.port, _PendingHost):
            self.reads.append((src.port, HostOutput(tensor, src.layout, self._forward_exponent(tensor),
                                                    HOST_FORWARD_BITS), self.readout.a_in))
        else:
            reshaped(src.port, (size,)).connect(self.readout.a_in)
        self.depth = src.arrival
        self.output_layout = src.layout

    # -- running --------------------------------------------------------------------------------
    @property
    def processes(self) -> list:
        found = [*self.sources, self.readout] + [h.process for h in self.hosts]
        for _, net, _, _ in self.networks:
            found += net.lowered.processes
        return found

    @property
    def process_count(self) -> int:
        return len(self.processes)

    @property
    def host_count(self) -> int:
        return len(self.hosts)

    def run_cfg(self):
        # Lava executes every file of the processes folder to discover models: the run configuration
        # (which imports them all) is imported when a run is configured, not on discovery
        from pmsm.targets.lava.models import run_config

        return run_config(self.fixed, self.processes, {net: NetworkModel for _, net, _, _ in self.networks})

    def run(self, condition) -> None:
        self.readout.run(condition=condition)

    def spikes(self, n: int, t_steps: int) -> dict:
        """Spike counts keyed by ONNX node, ``[T, N, *shape]`` as the deployment runner gives them
        (``[T, N, rows, *shape]`` for a region applied to several rows)."""
        spikes = {}
        for _, net, _, rows in self.networks:
            recorded, latency = net.recorded_spikes(), net.lowered.neuron_latency
            for i, step in net.lowered.plan.neurons():
                record = recorded[i]
                steps = (latency[i] + np.arange(n * t_steps)) % record.shape[0]
                window = record[steps].reshape((n, t_steps, rows) + tuple(step.out_shape)).swapaxes(0, 1)
                flat = window.reshape((t_steps * n * rows,) + tuple(step.out_shape))
                nir_shape = tuple(step.params["nir_shape"])
                counts = to_nir(flat, nir_shape, step.params["perm"]).reshape((t_steps, n, rows) + nir_shape)
                axes = dialect.layout(net.lowered.view.nodes[step.node])
                counts = np.ascontiguousarray(dialect.to_onnx_layout(counts.astype(np.float32), axes, lead=3))
                spikes[step.params["onnx_node"]] = counts[:, :, 0] if rows == 1 else counts
        return spikes

    def fixed_point_report(self) -> list:
        report = []
        for _, net, data, _ in self.networks:
            errors = {k: _input_error(d, net.lowered.fixed.input_exponents[k]) for k, d in data.items()}
            report += _records(net, errors)
        return report


class _PendingHost:
    """A host stage while the assembly learns who reads its outputs (each tensor, in the layout and
    on the grid its reader needs, is one out-port)."""

    def __init__(self, program: HostProgram, sources: list):
        self.program, self.sources = program, sources       # sources: (tensor, _Port) per in-port
        self.process = None

    def make_process(self, reads: list) -> None:
        for producer, spec, _ in reads:
            if producer is self and spec not in self.program.outputs:
                self.program.outputs.append(spec)
        self.process = HostStage(program=self.program, name=self.program.name)


def _region_layout(port, stage_port: dict, rows: int) -> Layout:
    axes = tuple(int(a) for a in stage_port["layout"])
    return Layout((rows,) + tuple(dialect.to_onnx_shape(tuple(port.shape), axes)), tuple(port.shape), axes, port.perm)


def _input_error(data: np.ndarray, exponent: int) -> float:
    """The largest error of the data on the fixed-point input grid."""
    return float(np.max(np.abs(quantize_input(data, exponent, INPUT_BITS) * 2.0 ** -exponent - data), initial=0))


def _dtype(value_info) -> str:
    elem = value_info.type.tensor_type.elem_type
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem))) if elem else "float32"
