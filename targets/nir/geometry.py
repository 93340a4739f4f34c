"""Window geometry of ONNX Conv/pooling nodes, brought to what NIR can hold.

NIR pads symmetrically, and nir 1.0.8's ``Conv2d`` type inference uses ``weight.shape[2]`` for both
spatial axes (a non-square kernel makes ``nir.read`` fail its type check). ONNX allows asymmetric
pads, ``auto_pad``, ``ceil_mode`` and rectangular kernels. Each axis is solved on its own: find a
symmetric padding (and, for convolutions, a zero border that makes the kernel square) under which
every output element reads exactly the same input elements as in ONNX. When none exists the node
is reported, never approximated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pmsm.targets.nir.ops import out_size


class GeometryError(ValueError):
    pass


@dataclass(frozen=True)
class Axis:
    size: int  # input length
    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int
    out: int  # output length in ONNX


def onnx_axes(attrs: dict, in_hw: tuple[int, ...], kernel: tuple[int, ...]) -> list[Axis]:
    """One :class:`Axis` per spatial axis (2 for Conv2d and pooling, 1 for Conv1d)."""
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    ceil_mode = int(attrs.get("ceil_mode", 0))
    if len(in_hw) != rank or len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
        raise GeometryError(f"only {rank}-D windows are supported here")
    axes = []
    for i in range(rank):
        size, k, s, d = in_hw[i], kernel[i], int(strides[i]), int(dilations[i])
        span = d * (k - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = math.ceil(size / s)
            total = max((out - 1) * s + span - size, 0)
            small, large = total // 2, total - total // 2
            pb, pe = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            pb = pe = 0
            out = out_size(size, k, s, 0, 0, d)
        elif auto_pad in ("NOTSET", ""):
            pb, pe = int(pads[i]), int(pads[i + rank])
            out = out_size(size, k, s, pb, pe, d)
            if ceil_mode:
                out = math.ceil((size + pb + pe - span) / s) + 1
                if (out - 1) * s >= size + pb:  # the last window may not start in the end padding
                    out -= 1
        else:
            raise GeometryError(f"unknown auto_pad {auto_pad!r}")
        if out < 1:
            raise GeometryError("the window does not fit the input")
        axes.append(Axis(size, k, s, d, pb, pe, out))
    return axes


def symmetric(axis: Axis, kernel: int) -> tuple[int, int] | None:
    """``(zero rows before the kernel, symmetric padding)`` for a kernel grown to ``kernel``.

    Leading zero rows shift the window start by ``a * dilation``, which the extra padding undoes;
    the answer is valid when the output length then matches ONNX's.
    """
    for a in range(kernel - axis.kernel + 1):
        pad = axis.pad_begin + a * axis.dilation
        if out_size(axis.size, kernel, axis.stride, pad, pad, axis.dilation) == axis.out:
            return a, pad
    return None


def describe(axes: list[Axis]) -> str:
    pads = [a.pad_begin for a in axes] + [a.pad_end for a in axes]
    return (f"pads {pads}, kernel {'x'.join(str(a.kernel) for a in axes)}, "
            f"output {'x'.join(str(a.out) for a in axes)}")
