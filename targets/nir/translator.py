"""The state shared by the ONNX op handlers while a spiking ONNX network is read.

A handler gets a :class:`Translator` and an ONNX node, and returns one :class:`~.ir.Expr` per
output. It first checks what it can without the input's value (attributes, constant weights,
shapes) so that a node is judged on its own terms even when a node before it failed, then builds
nodes. It raises :class:`Unsupported` with a reason for anything NIR cannot hold.
"""
from __future__ import annotations

import numpy as np
import onnx

from pmsm.targets.nir.ir import Edge, Expr, Node, Shape, WorkGraph, to_nir_array, to_onnx_shape
from pmsm.targets.nir.onnx_view import TIMESTEPS_INPUT, NetworkView, node_label

Problem = tuple[str, str, str]


class Unsupported(Exception):
    """This node cannot be converted; the message is the reason."""


class Unknown(Exception):
    """An input comes from a node that could not be converted: nothing more to check here."""


class Translator:
    """What handlers read (inputs as constants, shapes, expressions) and build (nodes)."""

    def __init__(self, view: NetworkView, input_axes: tuple = ()) -> None:
        """``input_axes``: the layout of the data input in NIR (see :attr:`.ir.Expr.axes`); ``()``
        keeps ONNX's order. A token input ``[N, T, F]`` is held as ``(F, T)`` (axes ``(2, 1)``) so
        that token-wise linear layers are ``Conv1d`` nodes of kernel 1 (docs/nir.md §3a)."""
        self.view = view
        self.work = WorkGraph()
        self.env: dict[str, Expr] = {}
        self.unknown: set[str] = set()
        self.input_axes = tuple(input_axes)
        shape = tuple(view.input_shape)
        if self.input_axes:
            shape = tuple(shape[a - 1] for a in self.input_axes)
        self.input = self.work.add("input", view.input_name, shape, shape)
        if self.input_axes:
            self.input.params["layout"] = self.input_axes
        for name in view.aliases:
            self.env[name] = Expr.of(self.input, self.input_axes)

    # -- inputs of a node ------------------------------------------------------------------------

    def is_const(self, name: str) -> bool:
        return name in self.view.constants

    def const(self, node: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if not self.is_const(name):
            raise Unsupported(f"{what} '{name}' is not a constant (NIR needs fixed weights)")
        return np.asarray(self.view.constants[name])

    def _not_data(self, name: str) -> Unsupported:
        return Unsupported(f"input '{name}' is not computed from the data input (it depends on "
                           f"'{TIMESTEPS_INPUT}' or on a node outside the network)")

    def shape(self, name: str) -> Shape:
        if name in self.env:
            return self.env[name].shape
        if name not in self.unknown:
            raise self._not_data(name)
        if name in self.view.shapes:
            return self.view.shapes[name]
        raise Unknown(name)

    def act(self, name: str) -> Expr:
        if name in self.env:
            return self.env[name]
        if self.is_const(name):
            raise Unsupported(f"input '{name}' is a constant where an activation is expected")
        if name not in self.unknown:
            raise self._not_data(name)
        raise Unknown(name)

    def onnx_shape(self, name: str) -> Shape:
        """The activation's shape as ONNX sees it (without batch), whatever its layout in NIR."""
        shape = self.shape(name)
        return to_onnx_shape(shape, self.env[name].axes) if name in self.env else shape

    def axes(self, name: str) -> tuple:
        return self.env[name].axes if name in self.env else ()

    def plain(self, node: onnx.NodeProto) -> None:
        """Unsupported unless every activation input keeps ONNX's axis order in NIR."""
        for name in node.input:
            if name and self.axes(name):
                raise Unsupported(f"input '{name}' is held in NIR with its axes in the order "
                                  f"{list(self.axes(name))} of ONNX's (features first, for token-wise "
                                  f"Conv1d), which {node.op_type} cannot take")

    @staticmethod
    def to_nir_layout(a: np.ndarray, axes: tuple) -> np.ndarray:
        return to_nir_array(a, axes)

    def check_shape(self, node: onnx.NodeProto, shape: Shape) -> None:
        """``shape``: the output shape in ONNX's axis order."""
        inferred = self.view.shapes.get(node.output[0])
        if inferred is not None and tuple(inferred) != tuple(shape):
            raise Unsupported(f"output shape {tuple(shape)} computed here differs from ONNX shape inference "
                              f"{tuple(inferred)}")

    # -- helpers for handlers --------------------------------------------------------------------

    def new(self, kind: str, node: onnx.NodeProto, in_shape: Shape, out_shape: Shape, **params) -> Node:
        return self.work.add(kind, node_label(node), in_shape, out_shape, onnx_node=node_label(node), **params)

    def pass_through(self, expr: Expr, target: Node, map_coef, map_bias, post: np.ndarray | None = None) -> Expr:
        """Connect ``expr`` to a linear, per-channel op and carry scale factors and offsets past it.

        Carrying a single term's factor past the op (instead of leaving it on the edge in front)
        lets :mod:`.fold` put it into the next layer's weights: e.g. ``neuron -> Mul(theta) ->
        MaxPool -> Conv`` ends with ``theta`` inside the Conv.
        """
        mapped = None if expr.bias is None else map_bias(expr.bias)
        carried = None
        # An offset that cannot pass the op stays at its input, after the factors: then the factors
        # must stay on the edges too.
        if len(expr.terms) == 1 and (expr.bias is None or mapped is not None):
            (src, coef), = expr.terms.items()
            carried = map_coef(coef)
            if carried is not None:
                self.work.edges.append(Edge(src, target.name, np.ones(target.in_shape)))
        if carried is None:
            self.work.connect(Expr(expr.shape, expr.terms), target)
            carried = np.ones(target.out_shape)
        out = Expr(target.out_shape, {target.name: np.broadcast_to(carried, target.out_shape).copy()})
        if expr.bias is not None:
            if mapped is None:
                self.work.connect(Expr(expr.shape, {}, expr.bias, expr.bias_from), target)
            else:
                out = out.shifted(mapped)
                out.bias_from = expr.bias_from
        return out if post is None else out.scaled(post)


def attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def unsupported_reason(node: onnx.NodeProto) -> str:
    op = node.op_type
    if op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu",
              "Softplus", "Clip", "Floor", "Round", "Ceil"):
        return (f"{op} is not absorbed into a neuron: only quantized activations become PMSM neurons, and NIR "
                "has no other element-wise nonlinearity")
    if op in ("QuantizeLinear", "DequantizeLinear"):
        return f"{op} on an activation was not converted into a neuron"
    if op in ("Softmax", "LogSoftmax"):
        return f"{op} inside the network: NIR has no {op}; export the logits instead (argmax is unchanged)"
    if node.domain not in ("", "ai.onnx"):
        return f"custom op of domain '{node.domain}' has no NIR equivalent"
    return f"{op} has no equivalent in the NIR target (supported: Conv (1-D, 2-D), Gemm, MatMul (also token-wise), " \
           "Add/Sub/Mul/Div, MaxPool, AveragePool, GlobalAveragePool, ReduceMean, Flatten, Reshape, Transpose, " \
           "Identity, the neuron)"


def full(c: np.ndarray, shape: Shape) -> np.ndarray:
    """A constant operand broadcast to the activation's shape without batch, or Unsupported."""
    c = np.asarray(c, dtype=np.float64)
    rank = len(shape) + 1
    if c.ndim > rank:
        raise Unsupported(f"constant of shape {c.shape} has more dimensions than the activation")
    if c.ndim == rank:
        if c.shape[0] != 1:
            raise Unsupported(f"constant of shape {c.shape} varies over the batch dimension")
        c = c[0]
    try:
        if np.broadcast_shapes(c.shape, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise Unsupported(f"constant of shape {c.shape} would change the activation's shape {tuple(shape)}") from None
    if not np.all(np.isfinite(c)):
        raise Unsupported("constant operand is not finite")
    return np.broadcast_to(c, shape).copy()


def channels(shape: Shape):
    """Broadcast a per-channel vector ``[C]`` to ``shape`` (``[C, ...]``)."""
    def broadcast(v: np.ndarray) -> np.ndarray:
        return np.broadcast_to(v.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
    return broadcast
