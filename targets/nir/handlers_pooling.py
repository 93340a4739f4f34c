"""Handlers of ONNX pooling and reshaping ops: pooling nodes, ``Flatten``, or nothing at all."""
from __future__ import annotations

import numpy as np
import onnx

from pmsm.targets.nir import geometry, handlers_sequence, ops
from pmsm.targets.nir.ir import Expr, Shape, per_channel, to_onnx_shape
from pmsm.targets.nir.translator import Translator, Unsupported, attrs, channels, flatten_expr


def _pool_geometry(t: Translator, node: onnx.NodeProto, kernel=None):
    at = attrs(node)
    in_shape = t.shape(node.input[0])
    if len(in_shape) != 3:
        raise Unsupported(f"input of shape {tuple(in_shape)} is not [C, H, W]")
    kernel = kernel or tuple(int(k) for k in at.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise Unsupported("only 2-D pooling is supported")
    if any(int(d) != 1 for d in at.get("dilations", [1, 1])):
        raise Unsupported("dilated pooling has no NIR equivalent")
    try:
        axes = geometry.onnx_axes(at, in_shape[1:], kernel)
    except geometry.GeometryError as exc:
        raise Unsupported(str(exc)) from None
    fits = [geometry.symmetric(ax, ax.kernel) for ax in axes]
    if None in fits:
        raise Unsupported("padding or ceil_mode that changes the output, which NIR's symmetric pooling "
                          f"padding cannot express: {geometry.describe(axes)}")
    out_shape = (in_shape[0], axes[0].out, axes[1].out)
    t.check_shape(node, out_shape)
    stride = (axes[0].stride, axes[1].stride)
    padding = (fits[0][1], fits[1][1])
    return at, in_shape, out_shape, kernel, stride, padding


def _max_pool(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("MaxPool's indices output is used")
    if len(t.shape(node.input[0])) == 2:
        raise Unsupported(handlers_sequence.MAX_POOL_1D)
    _, in_shape, out_shape, kernel, stride, padding = _pool_geometry(t, node)
    e = t.act(node.input[0])
    n = t.new("maxpool", node, in_shape, out_shape, kernel=kernel, stride=stride, padding=padding)
    to_out = channels(out_shape)

    def coef(c):  # max commutes with a positive factor per channel
        v = per_channel(c)
        return to_out(v) if v is not None and np.all(v > 0) else None

    def bias(b):  # ... and with an offset per channel
        v = per_channel(b)
        return None if v is None else to_out(v)

    return [t.pass_through(e, n, coef, bias)]


def _avg_like(t: Translator, node: onnx.NodeProto, in_shape, out_shape, kernel, stride, padding, include_pad) -> Expr:
    """An average pool as a sum pool followed by a factor per output position (``1/(kh*kw)``, or
    ``1/count`` of real elements with ``count_include_pad=0``), which folds into the next layer's
    weights: a sum of spike counts is exact, a division is not (docs/nir.md §4)."""
    e = t.act(node.input[0])
    to_out = channels(out_shape)

    def coef(c):
        v = per_channel(c)
        return None if v is None else to_out(v)

    n = t.new("sumpool", node, in_shape, out_shape, kernel=kernel, stride=stride, padding=padding)
    counts = (np.full(out_shape[1:], float(kernel[0] * kernel[1])) if include_pad or padding == (0, 0)
              else ops.window_counts(in_shape[1:], kernel, stride, padding))
    post = np.broadcast_to(1.0 / counts, out_shape).copy()
    return t.pass_through(e, n, coef, lambda b: ops.pool2d(b[None], kernel, stride, padding, "sum")[0], post)


def _average_pool(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    if len(t.shape(node.input[0])) == 2:
        return handlers_sequence.average_pool(t, node)
    at, in_shape, out_shape, kernel, stride, padding = _pool_geometry(t, node)
    include = bool(int(at.get("count_include_pad", 0)))
    return [_avg_like(t, node, in_shape, out_shape, kernel, stride, padding, include)]


def _global_average(t: Translator, node: onnx.NodeProto, keep_dims: bool = True) -> list[Expr]:
    in_shape = t.shape(node.input[0])
    if len(in_shape) == 2 and node.op_type == "GlobalAveragePool":
        t.check_shape(node, (in_shape[0], 1))
        return handlers_sequence.global_average(t, node)
    if len(in_shape) != 3:
        raise Unsupported(f"input of shape {tuple(in_shape)} is not [C, H, W]")
    kernel = (in_shape[1], in_shape[2])
    out_shape = (in_shape[0], 1, 1)
    if keep_dims:
        t.check_shape(node, out_shape)
    pooled = _avg_like(t, node, in_shape, out_shape, kernel, kernel, (0, 0), True)
    return [pooled if keep_dims else flatten_expr(t, node, pooled)]


def _reduce_mean(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    at = attrs(node)
    axes = at.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = t.const(node, 1, "axes").reshape(-1).tolist()
    in_shape = t.shape(node.input[0])
    rank = len(in_shape) + 1
    keep = bool(int(at.get("keepdims", 1)))
    if rank == 3 and axes is not None:
        return handlers_sequence.reduce_mean(t, node, [int(a) for a in axes], keep)
    layout = t.axes(node.input[0])
    if layout and rank == 4 and axes is not None:
        return _spatial_mean_channels_last(t, node, sorted(int(a) % rank for a in axes), layout, keep)
    t.plain(node)
    if axes is None or sorted(int(a) % rank for a in axes) != [2, 3] or rank != 4:
        raise Unsupported(f"ReduceMean over axes {axes} of a rank-{rank} tensor: only the spatial mean "
                          "(axes 2, 3 of [N, C, H, W]) is supported")
    out = _global_average(t, node, keep_dims=keep)
    if not keep:
        t.check_shape(node, out[0].shape)
    return out


def _spatial_mean_channels_last(t: Translator, node: onnx.NodeProto, reduced: list[int], layout: tuple,
                                keep: bool) -> list[Expr]:
    """The mean over the two axes NIR holds as ``(H, W)`` of a value held with its axes permuted
    (``[N, H, W, C]`` after a ``Transpose``, held as ``(C, H, W)``: ConvNeXt's pooling of
    channels-last features): the same window sum as the spatial mean of ``[N, C, H, W]``."""
    if sorted(layout.index(a) for a in reduced if a in layout) != [1, 2] or len(reduced) != 2:
        in_shape = t.onnx_shape(node.input[0])
        raise Unsupported(f"ReduceMean over axes {reduced} of [N, {', '.join(map(str, in_shape))}] held in NIR "
                          f"with its axes in the order {list(layout)}: NIR can average only the two axes after the "
                          "channels")
    if keep:
        shape = t.shape(node.input[0])
        kernel = (shape[1], shape[2])
        out = _avg_like(t, node, shape, (shape[0], 1, 1), kernel, kernel, (0, 0), True)
        out.axes = tuple(layout)
    else:
        out = _global_average(t, node, keep_dims=False)[0]  # [C]: the same order in NIR and ONNX
    t.check_shape(node, to_onnx_shape(out.shape, out.axes))
    return [out]


def _to_shape(t: Translator, node: onnx.NodeProto, out_shape: Shape) -> list[Expr]:
    in_shape = t.onnx_shape(node.input[0])
    out_shape = tuple(int(d) for d in out_shape)
    t.check_shape(node, out_shape)
    if not handlers_sequence.same_flat_order(t.act(node.input[0])):
        if out_shape == (int(np.prod(in_shape)),):
            return [handlers_sequence.flatten_in_onnx_order(t, node, t.act(node.input[0]))]
        raise Unsupported(f"reshape of {tuple(in_shape)} (held in NIR with its axes in the order "
                          f"{list(t.axes(node.input[0]))}) to {out_shape}: it would reorder the elements, and NIR "
                          "has no transpose")
    if out_shape == tuple(in_shape):
        return [t.act(node.input[0])]
    if out_shape == (int(np.prod(in_shape)),):
        return [flatten_expr(t, node, t.act(node.input[0]))]
    raise Unsupported(f"reshape from {tuple(in_shape)} to {out_shape} (per sample): NIR has only Flatten")


def _flatten(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    in_shape = t.onnx_shape(node.input[0])
    axis = int(attrs(node).get("axis", 1))
    if axis % (len(in_shape) + 1) != 1:
        raise Unsupported(f"Flatten with axis={axis} mixes the batch with the features")
    return _to_shape(t, node, (int(np.prod(in_shape)),))


def _reshape(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    target = t.const(node, 1, "target shape")
    in_shape = tuple(t.onnx_shape(node.input[0]))
    target = [int(v) for v in np.asarray(target).reshape(-1)]
    if int(attrs(node).get("allowzero", 0)) and 0 in target:
        raise Unsupported(f"Reshape to {target} with allowzero=1 makes an empty tensor")
    full = [None] + list(in_shape)  # None: the batch (times timesteps), unknown here
    dims = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(target)]
    if not dims or (dims[0] is not None and dims[0] != -1):
        raise Unsupported(f"Reshape to {target} hard-codes the batch dimension (time is folded into it)")
    rest = dims[1:]
    if dims[0] == -1:
        if any(v is None or v < 0 for v in rest) or int(np.prod(rest)) != int(np.prod(in_shape)):
            raise Unsupported(f"Reshape to {target} does not keep the batch dimension")
    elif rest.count(-1) > 1 or any(v is None or v < -1 for v in rest):
        raise Unsupported(f"Reshape to {target} is ambiguous")
    elif -1 in rest:
        known = int(np.prod([v for v in rest if v != -1]))
        if known == 0 or int(np.prod(in_shape)) % known:
            raise Unsupported(f"Reshape to {target} does not fit {in_shape}")
        rest = [int(np.prod(in_shape)) // known if v == -1 else v for v in rest]
    if int(np.prod(rest)) != int(np.prod(in_shape)):
        raise Unsupported(f"Reshape to {target} does not fit {in_shape}")
    return _to_shape(t, node, tuple(rest))


def _squeeze(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    in_shape = tuple(t.onnx_shape(node.input[0]))
    axes = attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = t.const(node, 1, "axes").reshape(-1).tolist()
    rank = len(in_shape) + 1
    if axes is None:
        axes = [i for i, d in enumerate(in_shape, start=1) if d == 1]
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes or any(in_shape[a - 1] != 1 for a in axes):
        raise Unsupported(f"Squeeze of axes {axes} on a tensor of shape [N, {', '.join(map(str, in_shape))}]")
    return _to_shape(t, node, tuple(d for i, d in enumerate(in_shape, start=1) if i not in axes))


HANDLERS = {"MaxPool": _max_pool, "AveragePool": _average_pool, "GlobalAveragePool": _global_average,
            "ReduceMean": _reduce_mean, "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze}
