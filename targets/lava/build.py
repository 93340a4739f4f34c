"""Instantiate the Lava processes of a Plan and wire them.

Two shapes of network: ``build`` makes one process per plan step (the ``synapse`` lowering:
Lava's own Dense, Conv or Sparse for every synapse), ``build_cores`` one process per core of a
Partition (the ``layer`` and ``network`` lowerings, processes/core.py). Connections to the
enclosing network's own ports are returned as callables: Lava wants them made inside the
network's SubProcessModel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.sparse.process import Sparse
from scipy.sparse import csr_matrix

from pmsm.targets.lava.fixed_point import FixedPointPlan
from pmsm.targets.lava.graph import GraphView
from pmsm.targets.lava.partition import Partition
from pmsm.targets.lava.plan import Plan, Step, input_index, is_input
from pmsm.targets.lava.processes.core import OUT_PORTS, CoreProcess
from pmsm.targets.lava.processes.elementwise import Elementwise
from pmsm.targets.lava.processes.neuron import PmsmNeuron
from pmsm.targets.lava.processes.pool import Pool
from pmsm.targets.lava.program import STAT_COLUMNS, CoreProgram, Operation

CONV_SYNAPSES = ("conv", "sparse")
LAVA_CONV_MAX_GROUPS = 127      # Lava's Conv keeps `groups` in an int8 Var: 144 groups read as -112


@dataclass
class Lowered:
    """A graph turned into Lava processes (not yet connected to the network's own ports)."""

    view: GraphView
    plan: Plan
    fixed: FixedPointPlan | None
    processes: list          # aligned with plan.steps, or one per core
    parent_links: list       # callables taking the network process
    neuron_latency: dict     # neuron step -> step at which it computes sample time 0
    depth: int               # steps from presenting sample time t to its arrival at `out`
    partition: Partition | None = None
    stats_paths: list = None  # per core: .npy of its statistics (program.py)


def build(view: GraphView, plan: Plan, fixed: FixedPointPlan | None, timesteps: int,
          record_paths: dict | None = None, conv_synapse: str = "conv") -> Lowered:
    """``record_paths``: step index -> ``.npy`` file a neuron writes its spikes into.
    ``conv_synapse``: "conv" (Lava's Conv) or "sparse" (the same kernel as a Sparse matrix)."""
    if conv_synapse not in CONV_SYNAPSES:
        raise ValueError(f"conv_synapse must be one of {CONV_SYNAPSES}, got {conv_synapse!r}")
    processes = []
    for i, step in enumerate(plan.steps):
        params = fixed.params[i] if fixed is not None else step.params
        processes.append(_make(step, params, timesteps, (record_paths or {}).get(i, ""), conv_synapse))
    links = []
    for step, proc in zip(plan.steps, processes):
        for term in step.inputs:
            _connect(term, processes, in_port(proc), links)
    for k, output in enumerate(plan.outputs):
        for term in output.terms:
            src = out_port(processes[term.src])
            links.append(lambda net, src=src, k=k: reshaped(src, net.outputs[k].shape).connect(net.outputs[k]))
    latency = {i: step.latency for i, step in plan.neurons()}
    return Lowered(view, plan, fixed, processes, links, latency, plan.depth)


def build_cores(view: GraphView, plan: Plan, fixed: FixedPointPlan | None, partition: Partition,
                timesteps: int, work_dir: str, record_paths: dict | None = None, offset: int = 0,
                input_delays: tuple = (), rows: int = 1, samples: int = 0) -> Lowered:
    """One CoreProcess per core; ``work_dir`` receives their statistics and error files.
    ``offset``: the step at which sample time 0 reaches the input ports (0 for a network fed by
    the data; in a hybrid deployment, where the region sits in the schedule). ``input_delays``:
    per input port, steps its messages are held back beyond the core's own alignment (ports whose
    producers deliver earlier than the latest one). ``rows``: independent rows of every value
    (program.py); ``samples``: the samples of the run, outside whose steps the cores idle (0: unknown)."""
    processes, stats_paths = [], []
    for c, core in enumerate(partition.cores):
        operations = []
        for i in core.steps:
            step = plan.steps[i]
            params = fixed.params[i] if fixed is not None else step.params
            operations.append(Operation(i, step.kind, step.node, [(t.src, tuple(t.shape)) for t in step.inputs],
                                        tuple(step.in_shape), tuple(step.out_shape), params))
        reads = {}
        for key, slot in core.reads.items():
            shape = plan.inputs[input_index(key)].lava_shape if is_input(key) else plan.steps[key].out_shape
            reads[key] = (slot.port, slot.offset, slot.size, tuple(shape))
        delays = [i.delay + (_extra_delay(input_delays, i.source) if is_input(i.source) else 0) for i in core.inputs]
        stats_path = os.path.join(work_dir, f"stats_{c:04d}.npy")
        np.lib.format.open_memmap(stats_path, mode="w+", dtype=np.float64, shape=(max(1, len(operations)), STAT_COLUMNS))
        stats_paths.append(stats_path)
        program = CoreProgram(
            core.name, operations, reads, [i.size * rows for i in core.inputs], delays,
            list(core.sends),
            [[(t.src, tuple(t.shape)) for t in output.terms] for output in plan.outputs] if core.has_output else [],
            int(timesteps), core.latency + int(offset),
            {i: p for i, p in (record_paths or {}).items() if i in core.neurons},
            stats_path, os.path.join(work_dir, f"core_{c:04d}.error"), int(rows), int(samples))
        processes.append(CoreProcess(program=program, name=core.name))
    links = []
    for core, proc in zip(partition.cores, processes):
        for port, feed in enumerate(core.inputs):
            dst = getattr(proc, f"in{port}")
            if is_input(feed.source):
                k = input_index(feed.source)
                links.append(lambda net, dst=dst, k=k: reshaped(net.inputs[k], dst.shape).connect(dst))
            else:
                processes[feed.source].s_out.connect(dst)
    output = processes[partition.output_core]
    for k in range(len(plan.outputs)):
        src = getattr(output, OUT_PORTS[k])
        links.append(lambda net, src=src, k=k: reshaped(src, net.outputs[k].shape).connect(net.outputs[k]))
    latency = {n: partition.neuron_latency(n) + int(offset) for n, _ in plan.neurons()}
    return Lowered(view, plan, fixed, processes, links, latency, partition.depth, partition, stats_paths)


def _extra_delay(input_delays: tuple, key: int) -> int:
    k = input_index(key)
    return int(input_delays[k]) if k < len(input_delays) else 0


def _make(step: Step, p: dict, timesteps: int, record_path: str, conv_synapse: str):
    name = f"{step.kind}:{step.node}"
    if step.kind == "dense":
        return Dense(weights=p["weights"], num_message_bits=_message_bits(p), name=name)
    if step.kind == "conv" and conv_synapse == "sparse":
        return Sparse(weights=conv_matrix(step, p), num_message_bits=_message_bits(p), name=name)
    if step.kind == "conv":
        weight, groups = p["weight"], p["groups"]
        if groups > LAVA_CONV_MAX_GROUPS:
            weight, groups = regroup(weight, groups, 1), 1
        return Conv(weight=weight, input_shape=tuple(step.in_shape), padding=p["padding"],
                    stride=p["stride"], dilation=p["dilation"], groups=groups,
                    num_message_bits=_message_bits(p), name=name)
    if step.kind == "pool":
        return Pool(in_shape=step.in_shape, out_shape=step.out_shape, mode=p["mode"],
                    kernel=p["kernel"], stride=p["stride"], padding=p["padding"], pool=p.get("pool"), name=name)
    if step.kind == "elementwise":
        return Elementwise(shape=step.out_shape, scale=p["scale"], bias=p["bias"], delay=p["delay"],
                           shift=p.get("shift", 0), name=name)
    if step.kind == "neuron":
        return PmsmNeuron(shape=step.out_shape, lo=p["lo"], hi=p["hi"], v_init=p["v_init"],
                          rounding=p["rounding"], bias=p["bias"], interval=timesteps,
                          latency=step.latency, state_exponent=p.get("state_exponent", 0),
                          record_path=record_path, name=name)
    raise ValueError(f"unknown step kind {step.kind!r}")


def regroup(weight: np.ndarray, groups: int, new_groups: int) -> np.ndarray:
    """A Lava (O, W, H, I/groups) kernel as one of ``new_groups`` groups (a divisor of
    ``groups``), zero across the old groups: the same convolution."""
    out_channels, kw, kh, per_group = weight.shape
    factor = groups // new_groups
    wide = np.zeros((out_channels, kw, kh, per_group * factor), dtype=weight.dtype)
    per_out = out_channels // groups
    for o in range(out_channels):
        slot = (o // per_out) % factor
        wide[o, :, :, slot * per_group:(slot + 1) * per_group] = weight[o]
    return wide


def _message_bits(p: dict) -> int:
    # Lava's simulation only tells 0 (binary: the sign is lost) from > 0 (graded); the cap keeps
    # the value plausible for a 24-bit datapath, the fixed-point report states the real need.
    return max(1, min(24, int(p["message_bits"])))


def conv_matrix(step: Step, p: dict) -> csr_matrix:
    """The convolution as a (flat out, flat in) matrix over Lava's (W, H, C) order."""
    dst, src, values = conv_utils.conv_to_sparse(tuple(step.in_shape), tuple(step.out_shape), p["weight"],
                                                 p["stride"], p["padding"], p["dilation"], p["groups"])
    shape = (int(np.prod(step.out_shape)), int(np.prod(step.in_shape)))
    return csr_matrix((values, (dst, src)), shape=shape)


def in_port(proc):
    return proc.s_in if isinstance(proc, (Dense, Conv, Sparse)) else proc.a_in


def out_port(proc):
    return proc.s_out if isinstance(proc, PmsmNeuron) else proc.a_out


def reshaped(port, shape):
    """``port`` as ``shape`` (a virtual reshape: Flatten, flat ports)."""
    return port if tuple(port.shape) == tuple(shape) else port.reshape(tuple(shape))


def _connect(term, processes, dst, links) -> None:
    # a reshape to the destination's shape covers Flatten and flat Sparse ports alike
    if is_input(term.src):
        k = input_index(term.src)
        links.append(lambda net: reshaped(net.inputs[k], dst.shape).connect(dst))
    else:
        reshaped(out_port(processes[term.src]), dst.shape).connect(dst)
