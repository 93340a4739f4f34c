"""Numpy semantics of the QONNX quantizers (``Quant``, ``BipolarQuant``).

Stock ONNX Runtime has no kernel for them; the exporter folds them on weights and the source-model
runner executes them on activations. Arithmetic is float32 in the order QONNX specifies:
``q = clip(R(x / scale + zeropt), qmin, qmax)``, ``y = (q - zeropt) * scale``.
"""
from __future__ import annotations

import numpy as np

ROUNDING_MODES = {
    "ROUND": np.rint,  # half to even
    "HALF_EVEN": np.rint,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "ROUND_TO_ZERO": np.trunc,
}


def integer_range(bitwidth: float, signed: int, narrow: int) -> tuple[int, int]:
    """(qmin, qmax) of a QONNX integer quantizer."""
    bits = int(round(float(bitwidth)))
    if bits < 1 or float(bitwidth) != bits:
        raise ValueError(f"bitwidth must be a positive integer, got {bitwidth}")
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if narrow:
            qmin += 1
    else:
        qmin, qmax = 0, 2**bits - 1
        if narrow:
            qmax -= 1
    return qmin, qmax


def rounding_function(rounding_mode: str):
    try:
        return ROUNDING_MODES[str(rounding_mode).upper()]
    except KeyError:
        raise ValueError(f"unknown rounding_mode {rounding_mode!r}; known: {sorted(ROUNDING_MODES)}") from None


def quant(x, scale, zeropt, bitwidth, *, signed: int = 1, narrow: int = 0, rounding_mode: str = "ROUND") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zeropt = np.asarray(zeropt, dtype=np.float32)
    qmin, qmax = integer_range(np.asarray(bitwidth).reshape(-1)[0], signed, narrow)
    q = np.clip(rounding_function(rounding_mode)((x / scale + zeropt).astype(np.float32)), qmin, qmax)
    return ((q - zeropt) * scale).astype(np.float32)


def bipolar_quant(x, scale) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (np.where(x >= 0, np.float32(1), np.float32(-1)) * np.asarray(scale, dtype=np.float32)).astype(np.float32)
