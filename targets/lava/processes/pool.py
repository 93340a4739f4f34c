"""Pooling over (W, H, C) tensors as one zero-latency Lava process: sum, average or max.

Max pooling runs per timestep over spike counts (exact at T = 1 only, docs/nir.md). In
fixed point an average pool is planned as a sum pool whose scale carries the 1/area.
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

from pmsm.targets.lava.kernels import float32_pool_whc, pool_whc

MODES = ("sum", "avg", "max", "float32_avg")


class Pool(AbstractProcess):
    def __init__(self, *, in_shape: tuple, out_shape: tuple, mode: str, kernel: tuple,
                 stride: tuple, padding: tuple, pool=None, name: str | None = None) -> None:
        """``pool``: the :class:`pmsm.targets.nir.float32_pool.Float32Pool` of mode ``float32_avg``
        (ONNX's float32 average pool over one axis, docs/nir.md §5a)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(in_shape=in_shape, out_shape=out_shape, mode=mode, kernel=tuple(kernel),
                         stride=tuple(stride), padding=tuple(padding), pool=pool, name=name)
        self.a_in = InPort(shape=tuple(in_shape))
        self.a_out = OutPort(shape=tuple(out_shape))


class _PoolModel(PyLoihiProcessModel):
    def _pool(self, x: np.ndarray) -> np.ndarray:
        p = self.proc_params
        if p["mode"] == "float32_avg":
            return float32_pool_whc(x, p["kernel"], p["stride"], p["padding"], p["pool"])
        return pool_whc(x, p["kernel"], p["stride"], p["padding"], p["mode"])


@implements(proc=Pool, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPoolFloat(_PoolModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self) -> None:
        self.a_out.send(self._pool(self.a_in.recv()))


@implements(proc=Pool, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPoolFixed(_PoolModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        if self.proc_params["mode"] == "avg":
            raise ValueError("fixed point plans average pooling as a sum pool")
        self.a_out.send(np.rint(self._pool(self.a_in.recv())).astype(np.int64))
