"""Read the network of a spiking ONNX model into a :class:`~.ir.WorkGraph`.

Problems are collected, never skipped: a node that cannot be converted is recorded with a reason
and its outputs are marked unknown, so nodes further down are still checked on their own terms
(the pre-flight lists every offending node at once).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from pmsm.runtime.base.errors import BadInputError
from pmsm.targets.nir import handlers_elementwise, handlers_layers, handlers_pooling
from pmsm.targets.nir.ir import WorkGraph
from pmsm.targets.nir.onnx_view import NetworkView, is_neuron, network_view, node_label
from pmsm.targets.nir.translator import Problem, Translator, Unknown, Unsupported, unsupported_reason

HANDLERS = {**handlers_elementwise.HANDLERS, **handlers_layers.HANDLERS, **handlers_pooling.HANDLERS}


@dataclass
class Translation:
    view: NetworkView
    work: WorkGraph
    problems: list[Problem] = field(default_factory=list)


# Ops that read the layout of their activation inputs (Expr.axes) themselves; every other op needs
# ONNX's own axis order.
_LAYOUT_AWARE = {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Relu", "BatchNormalization", "MatMul",
                 "Transpose", "ReduceMean", "Flatten", "Reshape", "Squeeze"}


def translate(model: onnx.ModelProto, label: str, input_axes: tuple = (),
              view: NetworkView | None = None) -> Translation:
    view = view or network_view(model, label)
    if view.input_shape is None:
        raise BadInputError(f"{label}: data input '{view.input_name}' needs fixed dimensions after the batch")
    t = Translator(view, input_axes)
    problems: list[Problem] = []
    for node in view.nodes:
        _visit(t, node, problems)
    _outputs(t, problems)
    return Translation(view, t.work, problems)


def _op(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def translate_node(t: Translator, node: onnx.NodeProto) -> None:
    """Translate one node into ``t`` (its outputs bound in ``t.env``); ``Unsupported`` with the
    reason when NIR cannot take it."""
    handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if is_neuron(node):
        handler = handlers_elementwise.neuron
    if handler is None:
        raise Unsupported(unsupported_reason(node))
    if all(t.is_const(name) for name in node.input if name):
        raise Unsupported("all inputs are constants, but the node could not be evaluated ahead of time")
    if node.op_type not in _LAYOUT_AWARE and not is_neuron(node):
        t.plain(node)
    for name, expr in zip(node.output, handler(t, node)):
        t.env[name] = expr


def _visit(t: Translator, node: onnx.NodeProto, problems: list[Problem]) -> None:
    try:
        translate_node(t, node)
    except Unsupported as exc:
        problems.append((node_label(node), _op(node), str(exc)))
        t.unknown.update(node.output)
    except Unknown:
        t.unknown.update(node.output)


def _outputs(t: Translator, problems: list[Problem]) -> None:
    for out_name, src in t.view.outputs:
        if src in t.view.constants:
            problems.append((out_name, "Output", "the graph output is a constant"))
            continue
        if src not in t.env:
            continue  # produced by a node already reported
        expr = t.env[src]
        node = t.work.add("output", out_name, expr.shape, expr.shape, onnx_node=out_name)
        if expr.axes:
            node.params["layout"] = tuple(expr.axes)
        t.work.connect(expr, node)
        node.params.setdefault("bias_from", expr.bias_from or (out_name, "Output"))
