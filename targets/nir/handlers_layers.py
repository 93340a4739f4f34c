"""Handlers of the ONNX linear layers: Conv -> ``Conv2d`` (``Conv1d`` over one axis), Gemm and MatMul ->
``Affine`` (``Conv1d`` of kernel 1 token-wise, :mod:`.handlers_sequence`)."""
from __future__ import annotations

import numpy as np
import onnx

from pmsm.targets.nir import geometry, handlers_sequence, ops
from pmsm.targets.nir.ir import Expr
from pmsm.targets.nir.translator import Translator, Unsupported, attrs


def _conv(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    w = t.const(node, 1, "weight")
    b = t.const(node, 2, "bias")
    if w.ndim == 3:
        return handlers_sequence.conv1d(t, node, w, b)
    if w.ndim != 4:
        raise Unsupported(f"only 1-D and 2-D convolutions are supported (weight has {w.ndim} dimensions)")
    at = attrs(node)
    groups = int(at.get("group", 1))
    in_shape = t.shape(node.input[0])
    if len(in_shape) != 3:
        raise Unsupported(f"input of shape {tuple(in_shape)} is not [C, H, W]")
    c_out, c_group, kh, kw = w.shape
    if in_shape[0] != c_group * groups or c_out % groups:
        raise Unsupported(f"weight {w.shape} with group={groups} does not fit {in_shape[0]} input channels")
    try:
        axes = geometry.onnx_axes(at, in_shape[1:], (kh, kw))
    except geometry.GeometryError as exc:
        raise Unsupported(str(exc)) from None
    k = max(kh, kw)
    fits = [geometry.symmetric(ax, k) for ax in axes]
    if None in fits:
        why = "asymmetric padding that changes the output (NIR Conv2d pads symmetrically)"
        if kh != kw:
            why += "; non-square kernel that cannot be made square with zero rows (nir 1.0.8 types Conv2d " \
                   "by weight.shape[2] on both axes)"
        raise Unsupported(f"{why}: {geometry.describe(axes)}")
    (ah, ph), (aw, pw) = fits
    # nir 1.0.8 types a Conv2d input as weight.shape[1] channels, which is wrong for groups > 1
    # (nir.read's type check then fails): write a grouped convolution as a dense one whose
    # cross-group weights are zero. Same values; only the float summation order may change.
    square = np.zeros((c_out, in_shape[0], k, k))
    og = c_out // groups
    for g in range(groups):
        square[g * og:(g + 1) * og, g * c_group:(g + 1) * c_group, ah:ah + kh, aw:aw + kw] = w[g * og:(g + 1) * og]
    out_shape = (c_out, axes[0].out, axes[1].out)
    t.check_shape(node, out_shape)
    bias = np.zeros(c_out) if b is None else np.broadcast_to(np.asarray(b, np.float64).reshape(-1), (c_out,)).copy()
    e = t.act(node.input[0])
    n = t.new("conv", node, in_shape, out_shape, weight=square, bias=bias, stride=(axes[0].stride, axes[1].stride),
              padding=(ph, pw), dilation=(axes[0].dilation, axes[1].dilation), groups=1)
    t.work.connect(Expr(e.shape, e.terms), n)
    out = Expr.of(n)
    if e.bias is not None:
        # conv(x + b) = conv(x) + conv(b) with zero padding: an offset map, folded later if per-channel.
        mapped = ops.conv2d(e.bias[None], square, None, n.params["stride"], (ph, pw), n.params["dilation"], 1)[0]
        out = out.shifted(mapped)
        out.bias_from = e.bias_from
    return [out]


def _affine(t: Translator, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> list[Expr]:
    in_shape = t.shape(node.input[0])
    if len(in_shape) >= 2:  # [N, T, F] @ W or [N, H, W, C] @ W: the same W at every position
        return handlers_sequence.token_linear(t, node, weight, bias)
    if len(in_shape) != 1 or in_shape[0] != weight.shape[1]:
        raise Unsupported(f"input of shape {tuple(in_shape)} does not match a [{weight.shape[1]}] feature vector")
    out_shape = (weight.shape[0],)
    t.check_shape(node, out_shape)
    e = t.act(node.input[0])
    n = t.new("affine", node, in_shape, out_shape, weight=weight, bias=bias)
    t.work.connect(Expr(e.shape, e.terms), n)
    out = Expr.of(n)
    if e.bias is not None:
        out = out.shifted(weight @ e.bias)
        out.bias_from = e.bias_from
    return [out]


def _gemm(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    at = attrs(node)
    if t.is_const(node.input[0]):
        raise Unsupported("the first Gemm operand is a constant: only activation x constant is supported")
    b = t.const(node, 1, "weight")
    c = t.const(node, 2, "bias")
    if int(at.get("transA", 0)):
        raise Unsupported("transA=1 would transpose the batch into the features")
    if b.ndim != 2:
        raise Unsupported(f"weight of shape {b.shape} is not a matrix")
    mat = b.T if int(at.get("transB", 0)) else b  # [K, M]
    weight = float(at.get("alpha", 1.0)) * np.asarray(mat, np.float64).T
    m = weight.shape[0]
    bias = np.zeros(m)
    if c is not None:
        c = np.asarray(c, np.float64)
        if c.ndim == 2 and c.shape[0] != 1:
            raise Unsupported(f"bias of shape {c.shape} varies over the batch")
        try:
            bias = float(at.get("beta", 1.0)) * np.broadcast_to(c.reshape(-1) if c.ndim == 2 else c, (m,))
        except ValueError:
            raise Unsupported(f"bias of shape {c.shape} does not broadcast to [{m}]") from None
    return _affine(t, node, weight, np.array(bias, np.float64))


def _matmul(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    a, b = node.input[0], node.input[1]
    if not t.is_const(a) and not t.is_const(b):
        raise Unsupported("MatMul between two activations is not a fixed linear map: NIR cannot express it")
    if t.is_const(a):
        raise Unsupported("constant x activation MatMul (the activation must be the first operand)")
    w = np.asarray(t.view.constants[b], np.float64)
    if w.ndim != 2:
        raise Unsupported(f"weight of shape {w.shape} is not a matrix")
    return _affine(t, node, w.T.copy(), np.zeros(w.shape[1]))


HANDLERS = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Transpose": handlers_sequence.transpose}
