"""Handlers of ONNX ops over one axis: 1-D convolution, token-wise linear layers, transposes and 1-D
average pooling, all as standard NIR ``Conv1d`` (docs/nir.md §3a).

Per sample, a 1-D activation is ``[C, L]`` (channels, positions) and NIR's ``Conv1d`` reads it in
that order. A token activation ``[T, F]`` (tokens, features: ``MatMul`` by a constant on the last
axis of ``[N, T, F]``) is held in NIR as ``(F, T)``: then the token-wise linear layer is a ``Conv1d``
of kernel 1 (the same ``W`` applied at every position), which ``nir.read`` type-checks and nirtorch
runs. One rank up, a pointwise linear layer on channels-last features ``[N, H, W, C]`` is a
``Conv2d`` 1x1 over ``(C, H, W)`` by the same rule. NIR has no transpose node, so which axis comes first is fixed where the data enter (the Input
node's ``metadata["pmsm"]["layout"]``) and ``Transpose`` nodes only change the recorded layout
(:attr:`.ir.Expr.axes`): a permutation of the axes moves no value and rounds nothing.
"""
from __future__ import annotations

import numpy as np
import onnx

from pmsm.targets.nir import geometry, ops
from pmsm.targets.nir.ir import Expr, per_channel, to_onnx_shape
from pmsm.targets.nir.onnx_view import node_label
from pmsm.targets.nir.translator import Translator, Unsupported, attrs, channels, flatten_expr

# Largest permutation written as an Affine (weights, all but one per row zero): 4096 elements.
MAX_PERMUTATION_WEIGHTS = 1 << 24
MAX_POOL_1D = ("MaxPool over one axis: NIR 1.0.8 has no 1-D pooling node (only AvgPool2d and SumPool2d), and "
               "this dialect's max pooling is a marked SumPool2d over (C, H, W); use average pooling (written "
               "as a Conv1d that sums each window) or a strided Conv, or keep this network on --target onnx")


def conv1d(t: Translator, node: onnx.NodeProto, w: np.ndarray, b: np.ndarray | None) -> list[Expr]:
    at = attrs(node)
    groups = int(at.get("group", 1))
    in_shape = t.shape(node.input[0])
    if len(in_shape) != 2:
        raise Unsupported(f"1-D convolution of an input of shape {tuple(in_shape)}, not [C, L]")
    c_out, c_group, k = w.shape
    if in_shape[0] != c_group * groups or c_out % groups:
        raise Unsupported(f"weight {w.shape} with group={groups} does not fit {in_shape[0]} input channels")
    try:
        axis, = geometry.onnx_axes(at, in_shape[1:], (k,))
    except geometry.GeometryError as exc:
        raise Unsupported(str(exc)) from None
    fit = geometry.symmetric(axis, k)
    if fit is None:
        raise Unsupported("asymmetric padding that changes the output (NIR Conv1d pads symmetrically): "
                          f"{geometry.describe([axis])}")
    pad = fit[1]
    # nir 1.0.8 types a Conv1d input as weight.shape[1] channels, wrong for groups > 1: a grouped
    # convolution is written dense with zero weights between groups, as for Conv2d.
    dense = np.zeros((c_out, in_shape[0], k))
    og = c_out // groups
    for g in range(groups):
        dense[g * og:(g + 1) * og, g * c_group:(g + 1) * c_group] = w[g * og:(g + 1) * og]
    out_shape = (c_out, axis.out)
    t.check_shape(node, out_shape)
    bias = np.zeros(c_out) if b is None else np.broadcast_to(np.asarray(b, np.float64).reshape(-1), (c_out,)).copy()
    e = t.act(node.input[0])
    n = t.new("conv", node, in_shape, out_shape, weight=dense, bias=bias, stride=(axis.stride,), padding=(pad,),
              dilation=(axis.dilation,), groups=1)
    t.work.connect(Expr(e.shape, e.terms), n)
    out = Expr.of(n)
    if e.bias is not None:
        out = out.shifted(ops.conv1d(e.bias[None], dense, None, axis.stride, pad, axis.dilation, 1)[0])
        out.bias_from = e.bias_from
    return [out]


def token_linear(t: Translator, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> list[Expr]:
    """``y[..., :] = W x[..., :] + b`` at every position of the leading axes (tokens ``[N, T, F]``,
    or pixels ``[N, H, W, C]`` as in ConvNeXt's pointwise layers): a convolution with a kernel of
    size 1 over a layout that holds the features first, ``Conv1d`` over ``(F, T)`` or ``Conv2d``
    1x1 over ``(C, H, W)``. The leading axes may be held in any order: a kernel of size 1 reads
    each position alone."""
    e = t.act(node.input[0])
    onnx_shape = tuple(t.onnx_shape(node.input[0]))
    rank = len(onnx_shape)
    if onnx_shape[-1] != weight.shape[1]:
        raise Unsupported(f"input of shape {onnx_shape} does not match a weight of {weight.shape[1]} inputs")
    if rank > 3:
        raise Unsupported(f"MatMul over the last axis of a [N, {', '.join(map(str, onnx_shape))}] activation: NIR "
                          "1.0.8 has Conv1d and Conv2d only, so a linear layer applied at every position is "
                          "written for one or two leading axes")
    if not e.axes or e.axes[0] != rank:
        dims = ", ".join(map(str, onnx_shape))
        raise Unsupported(f"MatMul over the last axis of a [N, {dims}] activation that NIR holds with axis "
                          f"{(e.axes or tuple(range(1, rank + 1)))[0]} first: NIR's kernel-1 "
                          f"{'Conv1d' if rank == 2 else 'Conv2d'} expresses a linear layer at every position only "
                          "with the features first, and NIR has no transpose (the layout is chosen at the input; "
                          "a Transpose before this node would give it)")
    positions = tuple(e.shape[1:])
    out_nir = (weight.shape[0],) + positions
    t.check_shape(node, onnx_shape[:-1] + (weight.shape[0],))
    unit = tuple(1 for _ in positions)
    kernel = weight.reshape(weight.shape + unit).copy()
    zero = tuple(0 for _ in positions)
    n = t.new("conv", node, e.shape, out_nir, weight=kernel, bias=bias, stride=unit, padding=zero, dilation=unit,
              groups=1)
    n.params["token_wise"] = True
    t.work.connect(Expr(e.shape, e.terms), n)
    out = Expr.of(n, e.axes)
    if e.bias is not None:
        out = out.shifted(np.tensordot(weight, e.bias, axes=1))
        out.bias_from = e.bias_from
    return [out]


def transpose(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    given = attrs(node).get("perm")
    if given is None or int(given[0]) != 0:  # without perm, ONNX reverses every axis, the batch too
        raise Unsupported(f"Transpose with perm {given if given is not None else 'reversed'} moves the batch axis")
    e = t.act(node.input[0])
    rank = len(e.shape)
    perm = [int(p) for p in given]
    if sorted(perm) != list(range(rank + 1)):
        raise Unsupported(f"Transpose with perm {perm} does not fit a rank-{rank + 1} tensor")
    current = e.axes or tuple(range(1, rank + 1))
    where = {p: i for i, p in enumerate(perm)}  # ONNX input axis -> its position in the output
    axes = tuple(where[a] for a in current)
    axes = () if axes == tuple(range(1, rank + 1)) else axes
    t.check_shape(node, to_onnx_shape(e.shape, axes))
    return [Expr(e.shape, dict(e.terms), e.bias, e.bias_from, axes)]


def same_flat_order(e: Expr) -> bool:
    """Whether flattening the NIR tensor gives ONNX's element order (the axes longer than 1 keep
    their relative order)."""
    if not e.axes:
        return True
    order = [a for a, d in zip(e.axes, e.shape) if d != 1]
    return order == sorted(order)


def _sum_pool(t: Translator, node: onnx.NodeProto, e: Expr, kernel: int, stride: int, padding: int,
              include_pad: bool, out_len: int) -> Expr:
    """Average pooling along the last NIR axis as a window sum (a ``Conv1d`` of ones when written)
    followed by a factor ``1/count`` that folds into the next layer, as for 2-D pooling."""
    in_shape = e.shape
    out_shape = (in_shape[0], out_len)
    to_out = channels(out_shape)

    def coef(c):
        v = per_channel(c)
        return None if v is None else to_out(v)

    n = t.new("sumpool", node, in_shape, out_shape, kernel=(kernel,), stride=(stride,), padding=(padding,))
    counts = (np.full(out_len, float(kernel)) if include_pad or padding == 0
              else ops.sum_pool1d(np.ones((1, 1, in_shape[1])), kernel, stride, padding)[0, 0])
    post = np.broadcast_to(1.0 / counts, out_shape).copy()
    out = t.pass_through(e, n, coef, lambda b: ops.sum_pool1d(b[None], kernel, stride, padding)[0], post)
    out.axes = e.axes
    return out


def average_pool(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    at = attrs(node)
    in_shape = t.shape(node.input[0])
    kernel = tuple(int(k) for k in at.get("kernel_shape", ()))
    if len(kernel) != 1:
        raise Unsupported(f"{len(kernel)}-D pooling of a [C, L] input")
    if any(int(d) != 1 for d in at.get("dilations", [1])):
        raise Unsupported("dilated pooling has no NIR equivalent")
    try:
        axis, = geometry.onnx_axes(at, in_shape[1:], kernel)
    except geometry.GeometryError as exc:
        raise Unsupported(str(exc)) from None
    fit = geometry.symmetric(axis, axis.kernel)
    if fit is None:
        raise Unsupported("padding or ceil_mode that changes the output, which a symmetric padding cannot "
                          f"express: {geometry.describe([axis])}")
    t.check_shape(node, (in_shape[0], axis.out))
    include = bool(int(at.get("count_include_pad", 0)))
    return [_sum_pool(t, node, t.act(node.input[0]), kernel[0], axis.stride, fit[1], include, axis.out)]


def global_average(t: Translator, node: onnx.NodeProto, keep_dims: bool = True) -> list[Expr]:
    """The mean over the positions (``GlobalAveragePool`` of ``[N, C, L]``, or ``ReduceMean`` over
    the tokens of ``[N, T, F]`` held as ``(F, T)``): a sum over the whole last NIR axis."""
    e = t.act(node.input[0])
    length = e.shape[1]
    pooled = _sum_pool(t, node, e, length, length, 0, True, 1)
    if keep_dims:
        return [pooled]
    return [flatten_expr(t, node, pooled)]


def reduce_mean(t: Translator, node: onnx.NodeProto, axes: list[int], keep: bool) -> list[Expr]:
    e = t.act(node.input[0])
    reduced = [int(a) % 3 for a in axes]
    layout = e.axes or (1, 2)
    if reduced == [0] or len(reduced) != 1 or layout.index(reduced[0]) != 1:
        onnx_shape = t.onnx_shape(node.input[0])
        raise Unsupported(f"ReduceMean over axes {axes} of [N, {onnx_shape[0]}, {onnx_shape[1]}]: NIR can sum only "
                          f"along the positions (or tokens) axis, here ONNX axis {layout[1]}")
    out = global_average(t, node, keep_dims=keep)
    onnx_out = to_onnx_shape(out[0].shape, out[0].axes)
    t.check_shape(node, onnx_out)
    return out


def flatten_in_onnx_order(t: Translator, node: onnx.NodeProto, e: Expr) -> Expr:
    """Flatten a value NIR holds with its axes permuted (tokens ``(F, T)`` where ONNX flattens
    ``[T, F]``): NIR's ``Flatten`` gives the elements in NIR's order, and an ``Affine`` whose weights
    are a permutation matrix (ones, exact) puts them in ONNX's, so everything after it (a classifier
    ``Gemm``, a quantizer) sees ONNX's order."""
    size = int(np.prod(e.shape))
    if size * size > MAX_PERMUTATION_WEIGHTS:
        raise Unsupported(f"flattening {e.onnx_shape}, held in NIR with its axes in the order {list(e.axes)}, "
                          f"needs a {size}x{size} permutation (NIR has no transpose); more than "
                          f"{MAX_PERMUTATION_WEIGHTS} weights: average over the tokens instead")
    flat = flatten_expr(t, node, e)
    # entry j: the ONNX flat index of NIR flat element j
    onnx_index = np.arange(size).reshape(e.onnx_shape).transpose([a - 1 for a in e.axes]).ravel()
    weight = np.zeros((size, size))
    weight[onnx_index, np.arange(size)] = 1.0
    n = t.work.add("affine", f"{node_label(node)}_order", (size,), (size,), onnx_node=node_label(node),
                   weight=weight, bias=np.zeros(size))
    t.work.connect(Expr(flat.shape, flat.terms), n)
    out = Expr.of(n)
    if flat.bias is not None:
        out = out.shifted(weight @ flat.bias)
        out.bias_from = flat.bias_from
    return out
