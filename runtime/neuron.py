"""The PMSM multi-spike neuron: the one implementation every Python backend calls.

Semantics (docs/spiking-onnx.md, `ai.pmsm::MultiSpikeNeuron`), in level units, per element and per sample::

    u <- v_init
    for t in 0..T-1:
        u <- u + z(t)
        s(t) <- clip(R(u), lo, hi)      # signed integer spike count; a zero count is +0.0
        u <- u - s(t)                    # reset by subtraction

``R`` is ``floor`` or round-half-to-even. The membrane is kept in float32 so that
``s(0) = clip(R(v_init + z))`` is computed with exactly the float32 addition the
source graph performs (``Add(x, 0.5)``): that is what makes T = 1 bit-exact.

The custom ONNX Runtime op (one timestep), the NIR interpreter and the Lava process models call
``initial_membrane``/``step`` or ``run``; none of them re-derives the rule. ``step`` and
``initial_membrane`` also take torch tensors (the torch runtime of NIR files, on CPU or GPU): the
same rule, written once, runs on either library's float32 arithmetic, which rounds identically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROUNDINGS = ("floor", "half_even")


@dataclass(frozen=True)
class NeuronParams:
    """Parameters of one layer of PMSM neurons.

    ``lo <= 0 <= hi`` bound the signed spike count per step (``lo = -L_neg``,
    ``hi = L_pos``; for QDQ ``lo = qmin - zp``, ``hi = qmax - zp``).
    """

    lo: int
    hi: int
    v_init: float
    rounding: str

    def __post_init__(self) -> None:
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not self.lo <= 0 <= self.hi:
            raise ValueError(f"bounds must satisfy lo <= 0 <= hi, got lo={self.lo}, hi={self.hi}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        v_init = float(np.float32(self.v_init))
        if not math.isfinite(v_init):
            raise ValueError(f"v_init must be finite, got {self.v_init!r}")
        object.__setattr__(self, "v_init", v_init)

    @property
    def max_abs_spikes(self) -> int:
        return max(-self.lo, self.hi)


class _Numpy:
    float32 = np.float32
    floor = staticmethod(np.floor)
    rint = staticmethod(np.rint)  # half to even, as ONNX QuantizeLinear
    clip = staticmethod(np.clip)

    @staticmethod
    def as_float32(a, like=None):
        return np.asarray(a, dtype=np.float32)

    @staticmethod
    def full(shape, value, like=None):
        return np.full(shape, value, dtype=np.float32)


class _Torch:
    def __init__(self):
        import torch

        self.torch = torch
        self.float32 = torch.float32
        self.floor = torch.floor
        self.rint = torch.round  # half to even, like np.rint
        self.clip = torch.clamp

    def as_float32(self, a, like=None):
        device = like.device if like is not None else None
        return self.torch.as_tensor(a, dtype=self.torch.float32, device=device)

    def full(self, shape, value, like=None):
        return self.torch.full(shape, value, dtype=self.torch.float32,
                               device=like.device if like is not None else None)


_TORCH = None


def _library(a):
    """numpy, or torch for a torch tensor (imported only then)."""
    global _TORCH
    if isinstance(a, np.ndarray) or not type(a).__module__.startswith("torch"):
        return _Numpy
    if _TORCH is None:
        _TORCH = _Torch()
    return _TORCH


def initial_membrane(shape: tuple[int, ...], params: NeuronParams, like=None):
    """``v_init`` everywhere, float32; a torch tensor on ``like``'s device when ``like`` is one."""
    return _library(like).full(tuple(shape), float(np.float32(params.v_init)), like)


def round_levels(u, rounding: str):
    """``R`` of the membrane: ``floor``, or round half to even (numpy or torch, as ``u`` is)."""
    lib = _library(u)
    return lib.floor(u) if rounding == "floor" else lib.rint(u)


def step(u, z, params: NeuronParams):
    """Advance one timestep: returns (new membrane, spikes), both float32.

    ``z`` is rounded to float32 first (round to nearest even): an input computed in higher precision
    enters the membrane exactly as a float32 input would.
    """
    lib = _library(u)
    u = lib.as_float32(u, like=u) + lib.as_float32(z, like=u)
    rounded = round_levels(u, params.rounding)
    # + 0.0: a zero spike is +0.0 (ai.pmsm version 3), whatever the sign of the rounded membrane
    # (rint(-0.3) is -0.0) and numpy's clip at a bound of 0 (numpy 1 gives +0.0 there, numpy 2
    # -0.0); it changes no other value. It is what DequantizeLinear computes for the level of the
    # zero point, so a neuron written as QuantizeLinear/DequantizeLinear equals this one bit for bit.
    s = lib.clip(rounded, params.lo, params.hi) + 0.0
    return u - s, s


def run(z: np.ndarray, params: NeuronParams) -> np.ndarray:
    """Run over the leading time axis: ``z`` is ``[T, ...]``, returns spikes ``[T, ...]``."""
    z = np.asarray(z, dtype=np.float32)
    spikes = np.empty_like(z)
    u = initial_membrane(z.shape[1:], params)
    for t in range(z.shape[0]):
        u, spikes[t] = step(u, z[t], params)
    return spikes
