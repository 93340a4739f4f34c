"""Handlers of element-wise ONNX ops and of the neuron: they only rewrite the symbolic expression,
except the neuron, which becomes an ``IF`` node."""
from __future__ import annotations

import numpy as np
import onnx

from pmsm.runtime.neuron import NeuronParams
from pmsm.runtime.schema import NEURON_ATTRIBUTES
from pmsm.targets.nir import float32_pool
from pmsm.targets.nir.ir import Expr
from pmsm.targets.nir.onnx_view import node_label
from pmsm.targets.nir.translator import Translator, Unsupported, attrs, full, unsupported_reason


def _binary(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    op = node.op_type
    a, b = node.input[0], node.input[1]
    if not t.is_const(a) and not t.is_const(b):
        if op in ("Mul", "Div"):
            raise Unsupported(f"{op} of two activations is not linear: NIR cannot express it")
        sa, sb = t.onnx_shape(a), t.onnx_shape(b)
        if tuple(sa) != tuple(sb):
            raise Unsupported(f"{op} of activations with different shapes {tuple(sa)} and {tuple(sb)}")
        ea, eb = t.act(a), t.act(b)
        if ea.axes != eb.axes:
            raise Unsupported(f"{op} of activations held in NIR with different axis orders {list(ea.axes)} and "
                              f"{list(eb.axes)} (NIR has no transpose)")
        return [ea.plus(eb if op == "Add" else eb.scaled(np.full(eb.shape, -1.0)))]
    const_first = t.is_const(a)
    act_name, const_name = (b, a) if const_first else (a, b)
    if op == "Div" and const_first:
        raise Unsupported("division of a constant by an activation is not linear")
    e = t.act(act_name)
    c = t.to_nir_layout(full(t.view.constants[const_name], t.onnx_shape(act_name)), e.axes)
    origin = (node_label(node), op)
    if op == "Mul":
        return [e.scaled(c)]
    if op == "Div":
        if np.any(c == 0):
            raise Unsupported("division by zero")
        return [e.scaled(1.0 / c)]
    if op == "Add":
        return [e.shifted(c, origin)]
    if const_first:  # c - x
        return [e.scaled(np.full(e.shape, -1.0)).shifted(c, origin)]
    return [e.shifted(-c, origin)]


def _batch_norm(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    """Inference-mode batch norm is a per-channel scale and shift: it folds like any other."""
    at = attrs(node)
    if at.get("training_mode", 0):
        raise Unsupported("batch statistics in training mode")
    if not all(t.is_const(name) for name in node.input[1:5]):
        raise Unsupported("scale, bias, mean and variance must be constants")
    scale, bias, mean, var = (np.asarray(t.view.constants[name], np.float64) for name in node.input[1:5])
    shape = t.onnx_shape(node.input[0])
    per_channel = (-1,) + (1,) * (len(shape) - 1)  # channels first, shapes without batch
    gain = scale / np.sqrt(var + float(at.get("epsilon", 1e-5)))
    e = t.act(node.input[0])

    def laid_out(v):
        return t.to_nir_layout(full(v.reshape(per_channel), shape), e.axes)
    return [e.scaled(laid_out(gain)).shifted(laid_out(bias - mean * gain), (node_label(node), node.op_type))]


def _identity(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        raise Unsupported("Dropout's mask output is used")
    return [t.act(node.input[0])]


def _relu(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    # A Relu right after a neuron that never emits negative counts (lo >= 0) changes nothing.
    e = t.act(node.input[0])
    if len(e.terms) == 1:
        (src, coef), = e.terms.items()
        n = t.work.nodes[src]
        if n.kind == "if" and n.params["neuron"].lo >= 0 and np.all(coef >= 0) and (e.bias is None or np.all(e.bias >= 0)):
            return [e]
    raise Unsupported(unsupported_reason(node))


def neuron(t: Translator, node: onnx.NodeProto) -> list[Expr]:
    at = attrs(node)
    missing = [k for k in NEURON_ATTRIBUTES if k not in at]
    if missing:
        raise Unsupported(f"missing attribute(s) {', '.join(missing)}")
    try:
        params = NeuronParams(at["lo"], at["hi"], float(at["v_init"]), at["rounding"])
    except (TypeError, ValueError) as exc:
        raise Unsupported(str(exc)) from None
    e = t.act(node.input[0])
    float32_pool.mark(t, node, e)  # ONNX's float32 average pool in front of it, where it is one (§5a)
    n = t.new("if", node, e.shape, e.shape, neuron=params)
    if e.axes:
        n.params["layout"] = tuple(e.axes)
    t.work.connect(e, n)
    return [Expr.of(n, e.axes)]


HANDLERS = {"Add": _binary, "Sub": _binary, "Mul": _binary, "Div": _binary,
            "Identity": _identity, "Dropout": _identity, "Relu": _relu,
            "BatchNormalization": _batch_norm}
