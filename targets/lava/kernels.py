"""The numpy kernels of the Lava processes: convolution as matrix products, and pooling.

``lava.proc.conv.utils.conv`` (what Lava's own ``Conv`` process runs) calls
``scipy.signal.convolve2d`` once per (output channel, input channel) pair: about a million calls
per step for a ResNet-18. ``convolve`` gives the same result (a true convolution over (W, H, C)
tensors with an (O, W, H, I) kernel) from strided windows and one BLAS product per group, or one
vectorised product for depthwise kernels. Only the order of the float64 additions differs, which
is exact on integers (the fixed-point model) and below float32 resolution otherwise.
"""
from __future__ import annotations

import numpy as np

from pmsm.targets.nir import float32_pool


class Convolution:
    """One convolution's geometry and kernel, prepared once; pairs are (W, H) as in Lava."""

    def __init__(self, weight: np.ndarray, in_shape: tuple, stride: tuple, padding: tuple,
                 dilation: tuple, groups: int):
        weight = np.asarray(weight, dtype=np.float64)
        out_channels, kw, kh, per_group = weight.shape
        self.in_shape = tuple(in_shape)
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.groups = int(groups)
        self.span = (self.dilation[0] * (kw - 1) + 1, self.dilation[1] * (kh - 1) + 1)
        width, height, channels = self.in_shape
        if channels != per_group * self.groups or out_channels % self.groups:
            raise ValueError(f"kernel {weight.shape} with groups={groups} does not fit input {in_shape}")
        self.out_shape = tuple((n + 2 * p - s_) // st + 1 for n, p, s_, st in
                               zip((width, height), self.padding, self.span, self.stride)) + (out_channels,)
        # a true convolution is a correlation with the spatially flipped kernel
        correlation = np.ascontiguousarray(weight[:, ::-1, ::-1, :])
        per_out = out_channels // self.groups
        self.depthwise = per_group == 1 and per_out == 1
        if self.depthwise:
            self.kernel = np.ascontiguousarray(correlation[..., 0])                 # (C, KW, KH)
        else:
            # (G, I*KW*KH, O/G): rows ordered as the windows' (channel, kw, kh)
            grouped = correlation.reshape(self.groups, per_out, kw, kh, per_group)
            self.kernel = np.ascontiguousarray(
                grouped.transpose(0, 4, 2, 3, 1).reshape(self.groups, per_group * kw * kh, per_out))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (pw, ph), (sw, sh), (dw, dh) = self.padding, self.stride, self.dilation
        x = np.asarray(x, dtype=np.float64)
        padded = np.pad(x, ((pw, pw), (ph, ph), (0, 0))) if pw or ph else x
        w_out, h_out = self.out_shape[:2]
        if self.depthwise:
            # one multiply-add per kernel position, over all channels at once
            out = np.zeros(self.out_shape)
            for i in range(self.kernel.shape[1]):
                for j in range(self.kernel.shape[2]):
                    shifted = padded[i * dw: i * dw + sw * (w_out - 1) + 1: sw,
                                     j * dh: j * dh + sh * (h_out - 1) + 1: sh]
                    out += shifted * self.kernel[:, i, j]
            return out
        per_group = self.in_shape[2] // self.groups
        if self.span == (1, 1):
            columns = padded[::sw, ::sh][:w_out, :h_out].reshape(w_out * h_out, self.groups, per_group)
        else:
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.span, axis=(0, 1))
            # (W_out, H_out, C, KW, KH)
            windows = windows[::sw, ::sh][:w_out, :h_out, :, ::dw, ::dh]
            columns = windows.reshape(w_out * h_out, self.groups, -1)
        if self.groups == 1:
            out = columns[:, 0] @ self.kernel[0]
        else:
            out = np.einsum("pgk,gko->pgo", columns, self.kernel).reshape(w_out * h_out, -1)
        return out.reshape(self.out_shape)


def float32_pool_whc(x: np.ndarray, kernel, stride, padding, pool) -> np.ndarray:
    """ONNX's float32 average pool over one axis (docs/nir.md §5a) of a Conv1d's (L, 1, C) tensor, as
    Lava lays a 1-D value out; ``kernel``, ``stride``, ``padding`` are (W, H) pairs, the pool's axis
    being W."""
    ncl = np.asarray(x, dtype=np.float64)[:, 0, :].T[None]       # (L, 1, C) -> [1, C, L]
    out = float32_pool.apply(ncl, pool, int(kernel[0]), int(stride[0]), int(padding[0]))[0]
    return out.T[:, None, :].astype(np.float64)


def pool_whc(x: np.ndarray, kernel, stride, padding, mode: str) -> np.ndarray:
    """Pool a (W, H, C) array in float64, as Lava lays tensors out; ``kernel``, ``stride``, ``padding``
    are (W, H) pairs, ``mode`` one of ``sum``, ``avg``, ``max`` (the arguments in the order of
    :func:`pmsm.targets.nir.ops.pool2d`, which pools NIR's (N, C, H, W) tensors)."""
    fill = -np.inf if mode == "max" else 0.0
    padded = np.pad(np.asarray(x, dtype=np.float64),
                    ((padding[0], padding[0]), (padding[1], padding[1]), (0, 0)),
                    constant_values=fill)
    windows = np.lib.stride_tricks.sliding_window_view(padded, tuple(kernel), axis=(0, 1))
    windows = windows[::stride[0], ::stride[1]]
    if mode == "max":
        return windows.max(axis=(-2, -1))
    total = windows.sum(axis=(-2, -1))
    return total / (kernel[0] * kernel[1]) if mode == "avg" else total
