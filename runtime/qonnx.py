"""Numpy semantics of the QONNX quantizers (``Quant``/``IntQuant``, ``BipolarQuant``).

Stock ONNX Runtime has no kernel for them: the exporter folds them on weights with these functions
and the source-model runner executes them on activations through :mod:`pmsm.runtime.ortop`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from pmsm.runtime.base import proto

QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")
QONNX_QUANT_OPS = ("Quant", "IntQuant")  # same inputs (x, scale, zeropt, bitwidth) and attributes
QONNX_BIPOLAR_OP = "BipolarQuant"
QONNX_DEFAULTS = {"signed": 1, "narrow": 0, "rounding_mode": "ROUND"}


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


# Models with QONNX quantizers, made runnable by the kernels of pmsm.runtime.ortop


def is_qonnx_quantizer(node: onnx.NodeProto) -> bool:
    return node.domain in QONNX_DOMAINS and node.op_type in QONNX_QUANT_OPS + (QONNX_BIPOLAR_OP,)


def uses_qonnx(model: onnx.ModelProto) -> bool:
    """Whether any node of the model is a QONNX quantizer this module has a kernel for."""
    return any(is_qonnx_quantizer(node) for node in proto.all_nodes(model))


def with_qonnx_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose QONNX ``Quant``/``IntQuant`` nodes carry every attribute.

    onnxruntime-extensions requires all declared attributes; QONNX defaults are
    ``signed=1``, ``narrow=0``, ``rounding_mode="ROUND"``. Also adds a missing opset import
    (version 1) for each QONNX domain in use.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used: set[str] = set()
    for node in proto.all_nodes(out):
        if not is_qonnx_quantizer(node):
            continue
        used.add(node.domain)
        if node.op_type not in QONNX_QUANT_OPS:
            continue
        present = {a.name for a in node.attribute}
        for name, value in QONNX_DEFAULTS.items():
            if name not in present:
                node.attribute.append(onnx.helper.make_attribute(name, value))
    imported = {o.domain for o in out.opset_import}
    for domain in sorted(used - imported):
        out.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return out
