"""Input injection: presents sample ``n`` of ``data`` during steps ``[n*interval, (n+1)*interval)``.

The analog input is repeated at every timestep of its window (docs/lava.md, Timing); after the last
sample the source sends zeros while the pipeline drains.
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class InputSource(AbstractProcess):
    def __init__(self, *, data: np.ndarray, interval: int, name: str | None = None) -> None:
        if data.ndim < 2 or interval < 1:
            raise ValueError(f"need data [N, ...] and interval >= 1, got {data.shape}, {interval}")
        super().__init__(interval=int(interval), name=name)
        self.data = Var(shape=data.shape, init=data)
        self.s_out = OutPort(shape=data.shape[1:])


class _SourceModel(PyLoihiProcessModel):
    def _current(self) -> np.ndarray:
        sample = (self.time_step - 1) // self.proc_params["interval"]
        if sample < self.data.shape[0]:
            return self.data[sample]
        return np.zeros(self.data.shape[1:], dtype=self.data.dtype)


@implements(proc=InputSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyInputSourceFloat(_SourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    data: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        self.s_out.send(self._current())


@implements(proc=InputSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyInputSourceFixed(_SourceModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    data: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        self.s_out.send(self._current())
