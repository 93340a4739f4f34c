"""Readout sink: the mean over the ``interval`` timesteps of each sample of what reaches it.

Sample ``n`` arrives during steps ``[n*interval + latency, (n+1)*interval + latency)``; its
mean (times ``unit``, the value of one integer step in fixed point) goes to row ``n`` of a
memory-mapped ``.npy`` file the host created (Lava's ``Var.get`` moves arrays one element per
message: too slow for results).
"""
from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class MeanReadout(AbstractProcess):
    def __init__(self, *, shape: tuple, interval: int, latency: int, path: str,
                 unit: float = 1.0, name: str | None = None) -> None:
        if interval < 1 or latency < 0:
            raise ValueError(f"bad readout timing interval={interval} latency={latency}")
        shape = tuple(shape)
        super().__init__(interval=int(interval), latency=int(latency), path=str(path),
                         unit=float(unit), name=name)
        self.a_in = InPort(shape=shape)
        self.acc = Var(shape=shape, init=0)


class _ReadoutModel(PyLoihiProcessModel):
    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.means = np.load(self.proc_params["path"], mmap_mode="r+")   # [N, *shape]

    def _accumulate(self, x: np.ndarray) -> None:
        p = self.proc_params
        k = self.time_step - 1 - p["latency"]
        if k < 0:
            return
        sample, t = divmod(k, p["interval"])
        acc = x if t == 0 else self._add(self.acc, x)
        self.acc = acc
        if t == p["interval"] - 1 and sample < self.means.shape[0]:
            self.means[sample] = self._mean(acc)

    def _add(self, acc: np.ndarray, x: np.ndarray) -> np.ndarray:
        return acc + x

    def _mean(self, acc: np.ndarray) -> np.ndarray:
        return acc * self.proc_params["unit"] / self.proc_params["interval"]


@implements(proc=MeanReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyMeanReadoutFloat(_ReadoutModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    acc: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        # each step's output rounded to float32 once, as the NIR dialect defines the readout
        self._accumulate(self.a_in.recv().astype(np.float32).astype(np.float64))

    def _add(self, acc: np.ndarray, x: np.ndarray) -> np.ndarray:
        # summed in float32 in time order, as the dialect's readout (docs/nir.md §4a)
        return (acc.astype(np.float32) + x.astype(np.float32)).astype(np.float64)

    def _mean(self, acc: np.ndarray) -> np.ndarray:
        mean = acc.astype(np.float32) * np.float32(self.proc_params["unit"]) / np.float32(self.proc_params["interval"])
        return mean.astype(np.float64)


@implements(proc=MeanReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMeanReadoutFixed(_ReadoutModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def run_spk(self) -> None:
        self._accumulate(self.a_in.recv().astype(np.int64))
