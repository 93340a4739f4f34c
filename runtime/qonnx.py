"""Numpy semantics of the QONNX quantizers (``Quant``/``IntQuant``, ``BipolarQuant``).

Stock ONNX Runtime has no kernel for them: the exporter folds them on weights with these functions
and the source-model runner executes them on activations through :mod:`pmsm.runtime.ortop`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _round_half_away(v: np.ndarray, half_up: bool) -> np.ndarray:
    # Exact in float32: |v| - floor(|v|) is representable, unlike |v| + 0.5.
    a = np.abs(v)
    f = np.floor(a)
    frac = a - f
    step = frac > 0.5 if not half_up else frac >= 0.5
    return np.copysign(f + step.astype(np.float32), v).astype(np.float32)


_ROUNDING_MODES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ROUND": np.rint,  # half to even
    "HALF_EVEN": np.rint,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "ROUND_TO_ZERO": np.trunc,
    "DOWN": np.trunc,
    "UP": lambda v: np.copysign(np.ceil(np.abs(v)), v),
    "HALF_UP": lambda v: _round_half_away(v, half_up=True),
    "HALF_DOWN": lambda v: _round_half_away(v, half_up=False),
}


def qonnx_int_range(bitwidth, signed: bool, narrow: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integer range ``(qmin, qmax)`` of a QONNX ``Quant``, as float32 arrays shaped like ``bitwidth``."""
    b = np.asarray(bitwidth, dtype=np.float64)
    if not np.all(np.isfinite(b)) or np.any(b != np.round(b)) or np.any(b < 1):
        raise ValueError(f"bitwidth must be an integer >= 1, got {b.tolist()!r}")
    if signed:
        qmin = -(2.0 ** (b - 1)) + (1.0 if narrow else 0.0)
        qmax = 2.0 ** (b - 1) - 1.0
    else:
        qmin = np.zeros_like(b)
        qmax = 2.0**b - 1.0 - (1.0 if narrow else 0.0)
    return qmin.astype(np.float32), qmax.astype(np.float32)


def qonnx_quant(x, scale, zeropt, bitwidth, *, signed=True, narrow=False, rounding_mode: str = "ROUND") -> np.ndarray:
    """QONNX ``Quant``/``IntQuant``: ``y = (clip(R(x / scale + zeropt), qmin, qmax) - zeropt) * scale``.

    float32 arithmetic in that order (``x / scale`` is a float32 division). Clipping before or
    after ``R`` gives the same result, as the bounds are integers.
    """
    mode = str(rounding_mode).upper()
    if mode not in _ROUNDING_MODES:
        raise ValueError(f"unknown rounding_mode {rounding_mode!r} (known: {', '.join(_ROUNDING_MODES)})")
    x, scale, zeropt = _f32(x), _f32(scale), _f32(zeropt)
    qmin, qmax = qonnx_int_range(bitwidth, bool(signed), bool(narrow))
    v = (x / scale).astype(np.float32) + zeropt
    q = np.clip(_ROUNDING_MODES[mode](v.astype(np.float32)), qmin, qmax).astype(np.float32)
    return ((q - zeropt) * scale).astype(np.float32)


def qonnx_bipolar_quant(x, scale) -> np.ndarray:
    """QONNX ``BipolarQuant``: ``y = (+1 if x / scale >= 0 else -1) * scale``, float32."""
    x, scale = _f32(x), _f32(scale)
    v = (x / scale).astype(np.float32)
    return (np.where(v >= 0, np.float32(1), np.float32(-1)) * scale).astype(np.float32)


