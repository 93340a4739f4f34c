"""Fold edge coefficients and constant offsets into the weights and biases of linear nodes.

After :mod:`.from_onnx`, an edge carries a coefficient wherever the ONNX graph multiplied or divided
an activation by a constant (a neuron's de-quantization ``theta``, the next quantizer's
pre-scaling ``1/scale`` or ``L/up``), and a node carries ``in_bias`` wherever a constant was added.
NIR edges carry plain values, so each coefficient goes, in this order of preference:

1. upstream, into the output channels of the ``Conv2d``/``Affine`` that produced the value (past
   flatten and pooling nodes, which commute with a per-channel factor; max pooling only with a
   positive one);
2. downstream, into the input channels of the ``Conv2d``/``Affine`` that consumes it;
3. into a ``Scale`` node on the edge (e.g. a residual branch from a neuron straight into a sum).

Offsets go into the bias of an upstream ``Conv2d`` (per output channel) or ``Affine``. An offset
that cannot go anywhere is a problem to report: NIR has no bias-only node.
"""
from __future__ import annotations

import numpy as np

from pmsm.targets.nir.ir import Edge, Node, WorkGraph, per_channel

Problem = tuple[str, str, str]

_TRANSPARENT = ("flatten", "sumpool", "maxpool")


def prune(work: WorkGraph) -> None:
    """Drop nodes whose values reach no Output: they would look like extra graph outputs to NIR."""
    keep = {n.name for n in work.nodes.values() if n.kind == "output"}
    frontier = list(keep)
    while frontier:
        name = frontier.pop()
        for e in work.edges:
            if e.dst == name and e.src not in keep:
                keep.add(e.src)
                frontier.append(e.src)
    for name in [n for n in work.nodes if n not in keep]:
        del work.nodes[name]
    work.edges = [e for e in work.edges if e.src in keep and e.dst in keep]


def _back_through(node: Node, coef: np.ndarray) -> np.ndarray | None:
    """The factor in front of a transparent node equal to ``coef`` behind it, or None."""
    if node.kind == "flatten":
        return coef.reshape(node.in_shape)
    v = per_channel(coef)
    if v is None or (node.kind == "maxpool" and not np.all(v > 0)):
        return None
    return np.broadcast_to(v.reshape((-1,) + (1,) * (len(node.in_shape) - 1)), node.in_shape).copy()


def _push_up(work: WorkGraph, edge: Edge, coef: np.ndarray, apply: bool) -> bool:
    src = work.nodes[edge.src]
    if len(work.out_of(src)) != 1:
        return False  # the value is also used unscaled elsewhere
    p = src.params
    if src.kind == "conv":
        v = per_channel(coef)
        if v is None:
            return False
        if apply:
            p["weight"] = p["weight"] * v.reshape((-1,) + (1,) * (p["weight"].ndim - 1))
            p["bias"] = p["bias"] * v
        return True
    if src.kind == "affine":
        if apply:
            p["weight"] = p["weight"] * coef[:, None]
            p["bias"] = p["bias"] * coef
        return True
    if src.kind == "scale":
        if apply:
            p["scale"] = p["scale"] * coef
        return True
    if src.kind in _TRANSPARENT:
        ins = work.into(src)
        back = _back_through(src, coef)
        if len(ins) != 1 or back is None:
            return False
        inner = ins[0]
        if not _push_up(work, inner, inner.coef * back, apply):
            return False
        if apply:
            inner.coef = np.ones_like(inner.coef)
            if src.in_bias is not None:
                src.in_bias = src.in_bias * back
        return True
    return False


def _push_down(work: WorkGraph, edge: Edge) -> bool:
    dst = work.nodes[edge.dst]
    if dst.kind not in ("conv", "affine"):
        return False
    ins = work.into(dst)
    if not all(np.array_equal(e.coef, edge.coef) for e in ins):
        return False  # one weight tensor cannot take different factors for different inputs
    p = dst.params
    if dst.kind == "affine":
        p["weight"] = p["weight"] * edge.coef[None, :]
    else:
        v = per_channel(edge.coef)
        if v is None:
            return False
        w = p["weight"]
        groups = p["groups"]
        # Input channel j of group g feeds output channels g*og .. (g+1)*og - 1.
        factor = np.repeat(v.reshape(groups, w.shape[1]), w.shape[0] // groups, axis=0)
        p["weight"] = w * factor.reshape(factor.shape + (1,) * (w.ndim - 2))
    for e in ins:
        e.coef = np.ones_like(e.coef)
    return True


def _insert_scale(work: WorkGraph, edge: Edge) -> None:
    src = work.nodes[edge.src]
    for e in work.out_of(src):  # the same factor on the same value: share one Scale node
        other = work.nodes[e.dst]
        if other.kind == "scale" and np.array_equal(other.params["scale"], edge.coef) and e.is_plain:
            edge.src, edge.coef = other.name, np.ones_like(edge.coef)
            return
    scale = work.add("scale", f"{src.name}_scale", src.out_shape, src.out_shape, onnx_node=src.onnx_node,
                     scale=edge.coef.copy())
    work.edges.append(Edge(src.name, scale.name, np.ones(src.out_shape)))
    edge.src, edge.coef = scale.name, np.ones_like(edge.coef)


def _float32_pools(work: WorkGraph) -> None:
    """A window sum marked as ONNX's float32 average pool (:mod:`.float32_pool`) computes the
    de-quantization, the division and the pre-scaling itself: the factor on its one edge, to the
    one neuron it feeds, is what its weights hold. Where the value goes elsewhere too, or the factor
    is not one per channel, the mark is dropped and the exact form stays."""
    for node in list(work.nodes.values()):
        if node.kind != "sumpool" or "float32" not in node.params:
            continue
        out = work.out_of(node)
        v = per_channel(out[0].coef) if len(out) == 1 else None
        pool = node.params["float32"]
        dst = work.nodes[out[0].dst] if len(out) == 1 else None
        if v is None or dst.kind != "if" or len(work.into(dst)) != 1 or dst.in_bias is not None or \
                not np.allclose(v, pool.factor(), rtol=1e-12, atol=0):
            del node.params["float32"]
            continue
        node.params["factor"] = pool.factor()
        out[0].coef = np.ones_like(out[0].coef)


def fold_coefficients(work: WorkGraph) -> None:
    _float32_pools(work)
    for edge in list(work.edges):
        if edge.is_plain:
            continue
        if _push_up(work, edge, edge.coef, apply=False):
            _push_up(work, edge, edge.coef, apply=True)
            edge.coef = np.ones_like(edge.coef)
        elif not _push_down(work, edge):
            _insert_scale(work, edge)


def _push_bias(work: WorkGraph, edge: Edge, bias: np.ndarray, apply: bool) -> bool:
    src = work.nodes[edge.src]
    if len(work.out_of(src)) != 1:
        return False
    p = src.params
    if src.kind == "conv":
        v = per_channel(bias)
        if v is None:
            return False  # Conv2d's bias is one number per output channel
        if apply:
            p["bias"] = p["bias"] + v
        return True
    if src.kind == "affine":
        if apply:
            p["bias"] = p["bias"] + bias
        return True
    if src.kind == "flatten":
        back = bias.reshape(src.in_shape)
    elif src.kind == "maxpool" or (src.kind == "sumpool" and not any(src.params["padding"])):
        v = per_channel(bias)
        if v is None:
            return False
        if src.kind == "sumpool":  # each output sums kh*kw copies of the offset
            v = v / float(np.prod(src.params["kernel"]))
        back = np.broadcast_to(v.reshape((-1,) + (1,) * (len(src.in_shape) - 1)), src.in_shape).copy()
    else:
        return False
    for inner in work.into(src):
        if _push_bias(work, inner, back, False):
            return _push_bias(work, inner, back, apply) if apply else True
    return False


def fold_biases(work: WorkGraph) -> list[Problem]:
    problems = []
    for node in list(work.nodes.values()):
        bias = node.in_bias
        if bias is None:
            continue
        node.in_bias = None
        if not np.any(bias):
            continue
        for edge in work.into(node):
            if _push_bias(work, edge, bias, apply=False):
                _push_bias(work, edge, bias, apply=True)
                break
        else:
            if _insert_bias_conv1d(work, node, bias):
                continue
            origin = node.params.get("bias_from") or (node.onnx_node or node.name, node.kind)
            problems.append((origin[0], origin[1],
                             f"adds a constant offset (reaching '{node.onnx_node or node.name}') that NIR cannot "
                             "hold: it must fold into the bias of a Conv (one value per channel) or Gemm before "
                             "it, and there is none (e.g. an offset after a neuron with no linear layer after it, "
                             "or an offset on the input of a zero-padded Conv)"))
    return problems


def _insert_bias_conv1d(work: WorkGraph, node: Node, bias: np.ndarray) -> bool:
    """An offset per channel on a ``[C, L]`` or ``[C, H, W]`` value (e.g. a bias added after a QDQ
    quantizer of a token-wise or pointwise MatMul's output) with no layer to absorb it: a ``Conv1d``
    of kernel 1 (a ``Conv2d`` 1x1 for ``[C, H, W]``) with identity weights carries it. Its input is
    what reached ``node`` (the same sum), its output that plus the offset: the identity weights are
    exact, and so is the sum in float64 (docs/nir.md §4a)."""
    v = per_channel(bias)
    if len(node.in_shape) not in (2, 3) or v is None:
        return False
    channels = node.in_shape[0]
    unit = tuple(1 for _ in node.in_shape[1:])
    carrier = work.add("conv", f"{node.name}_bias", node.in_shape, node.in_shape, onnx_node=node.onnx_node,
                       weight=np.eye(channels).reshape((channels, channels) + unit), bias=v.copy(), stride=unit,
                       padding=tuple(0 for _ in unit), dilation=unit, groups=1)
    for edge in work.into(node):
        edge.dst = carrier.name
    work.edges.append(Edge(carrier.name, node.name, np.ones(node.in_shape)))
    return True
