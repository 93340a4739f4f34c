"""A host stage of a hybrid deployment as a Lava process on the CPU: every step it receives the
tensors the regions (and earlier host stages) sent, runs its ONNX model for one timestep with ONNX
Runtime, its compensation state kept between steps, and sends the results on in the same step.

What it does is plain data (``HostProgram``, built by targets/lava/hybrid.py): how each arriving
message becomes an ONNX tensor (a region's Lava layout back to ONNX's axis order, a fixed-point
integer back to its value), how long each is held back so that all inputs of one sample time meet,
and how each result becomes a message (ONNX to a region's Lava layout; a fixed-point integer on the
grid of the port it feeds). The data input is read from the program itself, as the host computer
holds the data: it is never quantized for the host.

Timing: sample time ``t`` of sample ``n`` is computed at step ``n*T + t + latency``, the step its
latest input arrives, and sent in that same step: the host computes inside the timestep, between
the cores' steps, as the zero-latency pooling and elementwise processes of the ``synapse`` lowering
do (the cores send first in a step and receive after, so there is no circular wait). Before
``latency`` and after the last sample the stage sends zeros. At ``t = 0`` the compensation state
restarts from the model's initial values.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from pmsm.runtime.base.sessions import inference_session, set_threads
from pmsm.targets.lava.layout import lava_shape, to_lava, to_nir
from pmsm.targets.lava.processes.core import declare_ports
from pmsm.targets.lava.processes.failure import FailureGuard
from pmsm.targets.nir.dialect import to_nir_layout, to_onnx_layout

MAX_PORTS = 16      # in- and out-ports a host stage declares (Lava reads them from its model class)
IN_PORTS = tuple(f"in{k}" for k in range(MAX_PORTS))
OUT_PORTS = tuple(f"out{k}" for k in range(MAX_PORTS))


@dataclass(frozen=True, eq=False)
class Layout:
    """How a tensor of one sample is laid out in a message: ONNX's axes (``perm`` None, ``axes``
    empty), or a region's Lava layout: ``rows`` of NIR shape ``nir_shape`` in NIR axis order
    ``axes`` (docs/nir.md §3a), each permuted by ``perm`` (targets/lava/layout.py)."""

    onnx_shape: tuple                   # the tensor's shape at batch 1 (rows first)
    nir_shape: tuple = ()
    axes: tuple = ()
    perm: object = None

    @property
    def size(self) -> int:
        return int(np.prod(self.onnx_shape))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        same_perm = (self.perm is None and other.perm is None) or (
            self.perm is not None and other.perm is not None and np.array_equal(self.perm, other.perm))
        return (tuple(self.onnx_shape), tuple(self.nir_shape), tuple(self.axes)) == \
            (tuple(other.onnx_shape), tuple(other.nir_shape), tuple(other.axes)) and same_perm

    def __hash__(self) -> int:
        return hash((tuple(self.onnx_shape), tuple(self.nir_shape), tuple(self.axes)))

    @property
    def is_region(self) -> bool:
        return bool(self.nir_shape)

    def to_message(self, tensor: np.ndarray) -> np.ndarray:
        x = np.asarray(tensor, np.float64).reshape(self.onnx_shape)
        if not self.is_region:
            return x.reshape(-1)
        rows = x.shape[0]
        nir = np.ascontiguousarray(to_nir_layout(x, self.axes)).reshape((rows,) + tuple(self.nir_shape))
        return to_lava(nir, lava_shape(tuple(self.nir_shape)), self.perm).reshape(-1)

    def from_message(self, message: np.ndarray) -> np.ndarray:
        x = np.asarray(message, np.float64)
        if not self.is_region:
            return x.reshape(self.onnx_shape)
        rows = self.onnx_shape[0]
        nir = to_nir(x.reshape((rows, -1)), tuple(self.nir_shape), self.perm)
        return np.ascontiguousarray(to_onnx_layout(nir, self.axes)).reshape(self.onnx_shape)


@dataclass(frozen=True)
class HostInput:
    tensor: str                         # the ONNX input it feeds
    layout: Layout
    delay: int = 0                      # steps it is held back to meet the latest input
    unit: float = 1.0                   # fixed point: the value of one integer step of the message
    dtype: str = "float32"


@dataclass(frozen=True)
class HostOutput:
    tensor: str
    layout: Layout
    exponent: int = 0                   # fixed point: the message is round(value * 2**exponent)
    bits: int = 24


@dataclass
class HostProgram:
    name: str
    model: bytes                        # the host stage's ONNX model (standard ONNX, one timestep)
    inputs: list                        # HostInput per in-port
    outputs: list                       # HostOutput per out-port
    data_inputs: dict                   # ONNX input -> [N, *shape] the stage reads from the data
    state: list                         # (state input, state output) pairs, carried between steps
    step_input: str | None              # the model's timestep input, when it has one
    interval: int                       # timesteps per sample
    latency: int                        # sample time 0 of sample 0 is computed at this step
    samples: int
    fixed_point: bool = False
    error_path: str = ""
    timing_path: str = ""               # .npy [1]: seconds spent in ONNX Runtime


class HostStage(AbstractProcess):
    def __init__(self, *, program: HostProgram, name: str | None = None) -> None:
        if len(program.inputs) > MAX_PORTS or len(program.outputs) > MAX_PORTS:
            raise ValueError(f"host stage {program.name} has {len(program.inputs)} inputs and "
                             f"{len(program.outputs)} outputs; a host process has {MAX_PORTS} of each")
        super().__init__(program=program, name=name or program.name)
        for k, port in enumerate(IN_PORTS):
            setattr(self, port, InPort(shape=(program.inputs[k].layout.size if k < len(program.inputs) else 1,)))
        for k, port in enumerate(OUT_PORTS):
            setattr(self, port, OutPort(shape=(program.outputs[k].layout.size if k < len(program.outputs) else 1,)))

    def in_port(self, k: int):
        return getattr(self, IN_PORTS[k])

    def out_port(self, k: int):
        return getattr(self, OUT_PORTS[k])


class _HostModel(PyLoihiProcessModel):
    def __init__(self, proc_params):
        super().__init__(proc_params)
        program: HostProgram = self.proc_params["program"]
        self.program = program
        self.guard = FailureGuard(program.error_path, program.name)
        self.session = None
        self.ports = None
        self.buffers = [[np.zeros(i.layout.size) for _ in range(i.delay)] for i in program.inputs]
        self.state: dict = {}

    def _open(self):
        # one thread: a host stage runs small ops once per step, and the pool threads ONNX Runtime
        # would otherwise start (one per core, spinning between runs) in every host process compete
        # with all the other processes of the network for the cores
        set_threads(1)
        self.session = inference_session(self.program.model)
        self.ports = ([getattr(self, p) for p in IN_PORTS[: len(self.program.inputs)]],
                      [getattr(self, p) for p in OUT_PORTS[: len(self.program.outputs)]])
        self.timing = np.load(self.program.timing_path, mmap_mode="r+") if self.program.timing_path else None

    def run_spk(self) -> None:
        if self.session is None:
            self._open()
        ins, outs = self.ports
        k = self.time_step - 1
        # receive first, send what was computed from it in the same step: the host works inside
        # the timestep, between the cores' steps (a host hop costs no step; module docstring)
        messages = [self._delayed(i, k, port.recv()) for i, port in enumerate(ins)]
        program = self.program
        sample, t = divmod(k - program.latency, program.interval)
        results = None
        if not self.guard.failed and k >= program.latency and sample < program.samples:
            with self.guard:
                results = self._compute(messages, sample, t)
        if results is None:     # before the first sample, after the last, or after a recorded error
            results = [np.zeros(o.layout.size) for o in program.outputs]
        for port, message in zip(outs, results):
            port.send(message)

    def _delayed(self, i: int, k: int, message: np.ndarray) -> np.ndarray:
        buffer = self.buffers[i]
        if not buffer:
            return message
        slot = k % len(buffer)
        out, buffer[slot] = buffer[slot], np.array(message, copy=True)
        return out

    def _compute(self, messages: list, sample: int, t: int) -> list:
        program = self.program
        feeds = {}
        for spec, message in zip(program.inputs, messages):
            value = spec.layout.from_message(message)
            feeds[spec.tensor] = (value * spec.unit if program.fixed_point else value).astype(spec.dtype)
        for name, data in program.data_inputs.items():
            feeds[name] = data[sample:sample + 1]
        if program.step_input is not None:
            feeds[program.step_input] = np.array(t, np.int64)
        if t == 0:
            self.state = {}
        feeds.update(self.state)
        names = list(dict.fromkeys(o.tensor for o in program.outputs)) + [s_out for _, s_out in program.state]
        started = time.perf_counter()
        results = dict(zip(names, self.session.run(names, feeds)))
        if self.timing is not None:
            self.timing[0] += time.perf_counter() - started
        self.state = {s_in: results[s_out] for s_in, s_out in program.state}
        sent = []
        for spec in program.outputs:
            message = spec.layout.to_message(results[spec.tensor])
            if program.fixed_point:
                limit = 2 ** (spec.bits - 1) - 1
                message = np.clip(np.rint(message * 2.0 ** spec.exponent), -limit, limit)
            sent.append(message)
        return sent


@implements(proc=HostStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostStageFloat(_HostModel):
    pass


@implements(proc=HostStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostStageFixed(_HostModel):
    pass


declare_ports(PyHostStageFloat, float, IN_PORTS, OUT_PORTS)
declare_ports(PyHostStageFixed, np.int32, IN_PORTS, OUT_PORTS, precision=24)
