"""A neuromorphic core as one Lava process: neuron layers with their dendritic trees.

The process runs a *program*, the plan steps of its layers in topological order (synapses,
pooling, scaling, biases, neurons; see partition.py), on what arrives at its input ports, and
sends the spikes of its neurons (and, in the last core, the network output) one step later. The
steps compute what the per-step processes of the ``synapse`` lowering compute (``Dense``:
``weights . x``; ``Conv``: Lava's convolution, here as matrix products; pooling, elementwise
maps and the neuron through the same functions), so results agree spike for spike.

Host-side files (created by the caller) carry what ``Var.get`` would move one element per
message: spikes (``record_paths``), per-step statistics (``stats_path``: largest magnitudes and
24-bit overflow counts, fixed point) and the first error a step raised (``error_path``; the core
then keeps the protocol going with zeros so that the host can stop the network cleanly).
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from pmsm.targets.lava.partition import MAX_INPUTS
from pmsm.targets.lava.processes.failure import FailureGuard
from pmsm.targets.lava.program import CoreProgram, FixedPointRunner, FloatRunner

MAX_OUTPUTS = 8         # out-ports a core process declares: the last core sends every Output node's value
IN_PORTS = tuple(f"in{k}" for k in range(MAX_INPUTS))
OUT_PORTS = ("a_out",) + tuple(f"a_out{k}" for k in range(1, MAX_OUTPUTS))


class CoreProcess(AbstractProcess):
    def __init__(self, *, program: CoreProgram, name: str | None = None) -> None:
        super().__init__(program=program, name=name)
        for k, name_ in enumerate(IN_PORTS):
            size = program.input_sizes[k] if k < len(program.input_sizes) else 1
            setattr(self, name_, InPort(shape=(size,)))
        if len(program.outputs) > MAX_OUTPUTS:
            raise ValueError(f"core {name} computes {len(program.outputs)} outputs; a core has {MAX_OUTPUTS} out-ports")
        self.s_out = OutPort(shape=(max(1, program.message_size),))
        sizes = program.output_sizes
        for k, name_ in enumerate(OUT_PORTS):
            setattr(self, name_, OutPort(shape=(sizes[k] if k < len(sizes) else 1,)))


class _CoreModel(PyLoihiProcessModel):
    runner_class = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        program: CoreProgram = self.proc_params["program"]
        self.program = program
        self.runner = self.runner_class(program)
        self.guard = FailureGuard(program.error_path, program.name)
        self.ports = None           # Lava sets the port objects after __init__
        self.pending_spikes = np.zeros(max(1, program.message_size))
        self.pending_outputs = [np.zeros(size) for size in program.output_sizes]

    def run_spk(self) -> None:
        # send first: what was computed in the previous step (one step per hop, as Dense/Conv)
        self.s_out.send(self.pending_spikes)
        if self.ports is None:
            self.ports = [getattr(self, name) for name in IN_PORTS[: len(self.program.input_sizes)]]
            self.out_ports = [getattr(self, name) for name in OUT_PORTS[: len(self.pending_outputs)]]
        for port, pending in zip(self.out_ports, self.pending_outputs):
            port.send(pending)
        messages = [port.recv() for port in self.ports]
        if self.guard.failed:
            return
        with self.guard:
            spikes, outputs = self.runner.step(self.time_step - 1, messages)
            self.pending_spikes = spikes if spikes is not None else self.pending_spikes
            self.pending_outputs = outputs if outputs is not None else self.pending_outputs


def declare_ports(model, dtype, in_ports, out_ports, **precision):
    """Lava reads a model's port types from its class attributes, one per port name."""
    for name in in_ports:
        setattr(model, name, LavaPyType(PyInPort.VEC_DENSE, dtype, **precision))
    for name in out_ports:
        setattr(model, name, LavaPyType(PyOutPort.VEC_DENSE, dtype, **precision))
    return model


@implements(proc=CoreProcess, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyCoreFloat(_CoreModel):
    runner_class = FloatRunner


@implements(proc=CoreProcess, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyCoreFixed(_CoreModel):
    runner_class = FixedPointRunner


declare_ports(PyCoreFloat, float, IN_PORTS, ("s_out",) + OUT_PORTS)
declare_ports(PyCoreFixed, np.int32, IN_PORTS, ("s_out",) + OUT_PORTS, precision=24)
