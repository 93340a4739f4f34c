"""Numpy kernels for the linear and pooling nodes of the PMSM dialect of NIR.

Shared by the interpreter (float32, batched) and the converter (float64, to carry constant offsets
through convolutions and poolings exactly). Layout is ``[N, C, H, W]``; padding is symmetric, as
in NIR.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

Pair = tuple[int, int]


def out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    """Output length of a window op along one axis (floor mode)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _windows(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, fill: float) -> np.ndarray:
    """A read-only view ``[N, C, Ho, Wo, kh, kw]`` of the padded input's windows."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"window {kernel} does not fit the padded input {h}x{w}")
    s = x.strides
    return as_strided(x, shape=(n, c, ho, wo, kh, kw),
                      strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw), writeable=False)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: Pair, padding: Pair,
           dilation: Pair, groups: int) -> np.ndarray:
    """Cross-correlation as ONNX ``Conv`` computes it (weight OIHW), in ``x``'s dtype."""
    weight = weight.astype(x.dtype, copy=False)
    o, cg, kh, kw = weight.shape
    if groups == 1:
        out = _conv_dense(x, weight, stride, padding, dilation)
    else:
        win = _windows(x, (kh, kw), stride, padding, dilation, 0.0)
        n, _, ho, wo, _, _ = win.shape
        grouped = win.reshape(n, groups, cg, ho, wo, kh, kw)
        out = np.einsum("ngchwij,gocij->ngohw", grouped, weight.reshape(groups, o // groups, cg, kh, kw),
                        optimize=True).reshape(n, o, ho, wo)
    out = np.ascontiguousarray(out)
    if bias is not None:
        out += bias.astype(x.dtype, copy=False).reshape(1, o, 1, 1)
    return out


def _conv_dense(x: np.ndarray, weight: np.ndarray, stride: Pair, padding: Pair, dilation: Pair) -> np.ndarray:
    # im2col in channels-last order: each copied run is a contiguous channel vector, which is
    # several times faster than gathering kernel rows of 3 elements; then one BLAS product.
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    o, c, kh, kw = weight.shape
    xl = x.transpose(0, 2, 3, 1)
    if ph or pw:
        xl = np.pad(xl, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    xl = np.ascontiguousarray(xl)
    n, h, w, _ = xl.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded input {h}x{w}")
    s = xl.strides
    win = as_strided(xl, shape=(n, ho, wo, kh, kw, c),
                     strides=(s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)
    cols = win.reshape(n * ho * wo, kh * kw * c)
    out = cols @ weight.transpose(0, 2, 3, 1).reshape(o, -1).T
    return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)


def pool2d(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, mode: str) -> np.ndarray:
    """``mode``: ``"sum"`` (zero padding), ``"avg"`` (sum / kh*kw, zero padding counted, as
    torch's ``count_include_pad=True``), ``"max"`` (padding never wins: -inf)."""
    fill = -np.inf if mode == "max" else 0.0
    win = _windows(x, kernel, stride, padding, (1, 1), fill)
    if mode == "max":
        return win.max(axis=(4, 5))
    total = win.sum(axis=(4, 5))
    if mode == "sum":
        return total
    if mode == "avg":
        return (total / x.dtype.type(kernel[0] * kernel[1])).astype(x.dtype, copy=False)
    raise ValueError(f"unknown pooling mode {mode!r}")


def window_counts(shape_hw: Pair, kernel: Pair, stride: Pair, padding: Pair) -> np.ndarray:
    """Number of real (non-padding) elements in each window, ``[Ho, Wo]``."""
    ones = np.ones((1, 1) + tuple(shape_hw))
    return pool2d(ones, kernel, stride, padding, "sum")[0, 0]


def conv1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, stride: int, padding: int,
           dilation: int, groups: int) -> np.ndarray:
    """ONNX ``Conv`` over one axis (``x [N, C, L]``, weight ``[O, C/groups, K]``): the 2-D kernel on a
    unit height, so both share one implementation."""
    out = conv2d(x[:, :, None, :], weight[:, :, None, :], bias, (1, int(stride)), (0, int(padding)),
                 (1, int(dilation)), groups)
    return out[:, :, 0, :]


def sum_pool1d(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Per channel, the sum over each zero-padded window of ``x [N, C, L]``."""
    return pool2d(x[:, :, None, :], (1, int(kernel)), (1, int(stride)), (0, int(padding)), "sum")[:, :, 0, :]


def sum_pool1d_weight(channels: int, kernel: int) -> np.ndarray:
    """The ``Conv1d`` weight ``[C, C, K]`` that sums each channel over its window: ones on the channel
    diagonal. NIR 1.0.8 has no 1-D pooling node; a sum of spike counts times 1 is exact."""
    w = np.zeros((channels, channels, int(kernel)))
    w[np.arange(channels), np.arange(channels), :] = 1.0
    return w
