"""The PMSM neuron as a Lava process. Both models step ``pmsm.runtime.neuron``; neither
re-derives the rule.

Streaming: the neuron sits ``latency`` steps behind the input, so sample ``n``'s timestep
``t`` reaches it at step ``n * interval + latency + t``; the membrane restarts from
``v_init`` whenever ``(step - latency) % interval == 0`` (lava-dl's reset interval/offset).

Spike recording writes each step's spikes into a memory-mapped ``.npy`` file (row
``step % rows``) that the host created: Lava's ``Var.get`` moves an array one element per
message (measured ~20 us per element), far too slow for spike traces.

Fixed point keeps the membrane as an integer in units of ``2**-state_exponent`` levels (one
spike, the threshold, is ``2**state_exponent`` units). Each step converts state and input to
level units, which float32 holds exactly while they fit 24 bits, calls ``step`` and converts
back; ``peaks`` records the largest magnitudes so the 24-bit budget can be checked.
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

from pmsm.runtime.neuron import NeuronParams, initial_membrane, step

PEAK_STATE, PEAK_INPUT, PEAK_SPIKE = range(3)


class PmsmNeuron(AbstractProcess):
    def __init__(self, *, shape: tuple, lo: int, hi: int, v_init: float, rounding: str,
                 bias: np.ndarray, interval: int, latency: int, state_exponent: int = 0,
                 record_path: str = "", name: str | None = None) -> None:
        NeuronParams(lo=lo, hi=hi, v_init=v_init, rounding=rounding)   # fail here, not in a worker
        if interval < 1 or latency < 0:
            raise ValueError(f"bad timing interval={interval} latency={latency}")
        shape = tuple(shape)
        super().__init__(shape=shape, lo=int(lo), hi=int(hi), v_init=float(v_init),
                         rounding=str(rounding), interval=int(interval), latency=int(latency),
                         state_exponent=int(state_exponent), record_path=str(record_path),
                         name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=0)
        self.bias = Var(shape=shape, init=np.broadcast_to(bias, shape).copy())
        self.peaks = Var(shape=(3,), init=0)


class _NeuronModel(PyLoihiProcessModel):
    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = self.proc_params
        self.params = NeuronParams(lo=p["lo"], hi=p["hi"], v_init=p["v_init"], rounding=p["rounding"])
        self.record = np.load(p["record_path"], mmap_mode="r+") if p["record_path"] else None

    def _window_starts(self) -> bool:
        p = self.proc_params
        return (self.time_step - 1 - p["latency"]) % p["interval"] == 0

    def _emit(self, s: np.ndarray) -> None:
        if self.record is not None:
            self.record[(self.time_step - 1) % self.record.shape[0]] = s
        self.peaks[PEAK_SPIKE] = max(self.peaks[PEAK_SPIKE], float(np.abs(s).max(initial=0)))
        self.s_out.send(s)


@implements(proc=PmsmNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPmsmNeuronFloat(_NeuronModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    peaks: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        z = self.a_in.recv() + self.bias
        if self._window_starts():
            u = initial_membrane(self.u.shape, self.params)
        else:
            u = self.u.astype(np.float32)
        u, s = step(u, z, self.params)
        self.u = u.astype(np.float64)
        self._emit(s.astype(np.float64))


@implements(proc=PmsmNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPmsmNeuronFixed(_NeuronModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=8)
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    peaks: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        exponent = self.proc_params["state_exponent"]
        z = self.a_in.recv().astype(np.int64) + self.bias.astype(np.int64)
        if self._window_starts():
            u = self._to_units(initial_membrane(self.u.shape, self.params), exponent)
        else:
            u = self.u.astype(np.int64)
        self.peaks[PEAK_STATE] = max(self.peaks[PEAK_STATE], float(np.abs(u + z).max(initial=0)))
        self.peaks[PEAK_INPUT] = max(self.peaks[PEAK_INPUT], float(np.abs(z).max(initial=0)))
        unit = 2.0 ** -exponent
        u_levels, s = step((u * unit).astype(np.float32), (z * unit).astype(np.float32), self.params)
        self.u = self._to_units(u_levels, exponent)
        self._emit(s.astype(np.int64))

    @staticmethod
    def _to_units(levels: np.ndarray, exponent: int) -> np.ndarray:
        return np.rint(levels.astype(np.float64) * 2.0 ** exponent).astype(np.int64)
