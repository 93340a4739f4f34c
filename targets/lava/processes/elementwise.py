"""Per-element affine map with a delay: ``y(t) = scale * x(t - delay) + bias``.

Used for Scale nodes that cannot be folded into weights, for biases that must be added before
a max pool or at the output, and for delay alignment of residual branches. Zero latency when
``delay == 0``. Fixed point: ``y = ((x * scale) << shift) + bias`` with an 8-bit ``scale``.
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class Elementwise(AbstractProcess):
    def __init__(self, *, shape: tuple, scale: np.ndarray, bias: np.ndarray, delay: int = 0,
                 shift: int = 0, name: str | None = None) -> None:
        if delay < 0 or shift < 0:
            raise ValueError(f"delay and shift must be >= 0, got {delay}, {shift}")
        shape = tuple(shape)
        super().__init__(shape=shape, delay=int(delay), shift=int(shift), name=name)
        self.a_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.scale = Var(shape=shape, init=np.broadcast_to(scale, shape).copy())
        self.bias = Var(shape=shape, init=np.broadcast_to(bias, shape).copy())
        # ring buffer of the last `delay` inputs (one dummy row when there is no delay)
        self.buffer = Var(shape=(max(int(delay), 1),) + shape, init=0)


class _ElementwiseModel(PyLoihiProcessModel):
    def _delayed(self, x: np.ndarray) -> np.ndarray:
        delay = self.proc_params["delay"]
        if delay == 0:
            return x
        slot = (self.time_step - 1) % delay
        out = self.buffer[slot].copy()
        self.buffer[slot] = x
        return out


@implements(proc=Elementwise, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyElementwiseFloat(_ElementwiseModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    buffer: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        x = self._delayed(self.a_in.recv())
        self.a_out.send(x * self.scale + self.bias)


@implements(proc=Elementwise, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyElementwiseFixed(_ElementwiseModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    scale: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    buffer: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        x = self._delayed(self.a_in.recv().astype(np.int64))
        y = np.left_shift(x * self.scale.astype(np.int64), self.proc_params["shift"])
        self.a_out.send(y + self.bias)
