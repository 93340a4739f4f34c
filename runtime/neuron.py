"""The PMSM multi-spike neuron: the one implementation every Python backend calls.

Semantics (DESIGN §4), in level units, per element and per sample::

    u <- v_init
    for t in 0..T-1:
        u <- u + z(t)
        s(t) <- clip(R(u), lo, hi)      # signed integer spike count
        u <- u - s(t)                    # reset by subtraction

``R`` is ``floor`` or round-half-to-even. The membrane is kept in float32 so that
``s(0) = clip(R(v_init + z))`` is computed with exactly the float32 addition the
source graph performs (``Add(x, 0.5)``): that is what makes T = 1 bit-exact.

The custom ONNX Runtime op, the NIR interpreter and the Lava process models call
``initial_membrane``/``step`` or ``run_time_major``; none of them re-derives the rule.
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


def _round(u: np.ndarray, rounding: str) -> np.ndarray:
    # np.rint rounds half to even, as ONNX QuantizeLinear does.
    return np.floor(u) if rounding == "floor" else np.rint(u)


def initial_membrane(shape: tuple[int, ...], params: NeuronParams) -> np.ndarray:
    return np.full(shape, np.float32(params.v_init), dtype=np.float32)


def step(u: np.ndarray, z: np.ndarray, params: NeuronParams) -> tuple[np.ndarray, np.ndarray]:
    """Advance one timestep: returns (new membrane, spikes), both float32."""
    u = (u + np.asarray(z, dtype=np.float32)).astype(np.float32, copy=False)
    s = np.clip(_round(u, params.rounding), params.lo, params.hi).astype(np.float32, copy=False)
    if params.lo == 0 or params.hi == 0:
        # A -0.0 at a bound of 0 leaves numpy 1's clip as +0.0 and numpy 2's as -0.0; adding +0.0
        # makes it +0.0 on both, as the portable body computes it (its zero_sign) and changes
        # nothing else.
        s = s + np.float32(0.0)
    return (u - s).astype(np.float32, copy=False), s


def run(z: np.ndarray, params: NeuronParams) -> np.ndarray:
    """Run over the leading time axis: ``z`` is ``[T, ...]``, returns spikes ``[T, ...]``."""
    z = np.asarray(z, dtype=np.float32)
    spikes = np.empty_like(z)
    u = initial_membrane(z.shape[1:], params)
    for t in range(z.shape[0]):
        u, spikes[t] = step(u, z[t], params)
    return spikes


def run_time_major(z: np.ndarray, timesteps: int, params: NeuronParams) -> np.ndarray:
    """Time folded into batch: ``z`` is ``[T*N, ...]`` with row ``t*N + n``; same shape out."""
    z = np.asarray(z, dtype=np.float32)
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if z.ndim == 0 or z.shape[0] % timesteps:
        raise ValueError(
            f"leading dimension {z.shape[0] if z.ndim else '()'} is not a multiple of timesteps={timesteps}"
        )
    n = z.shape[0] // timesteps
    return run(z.reshape((timesteps, n) + z.shape[1:]), params).reshape(z.shape)
