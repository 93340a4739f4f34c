"""The converter's working graph: NIR-shaped nodes whose edges still carry scale factors.

While the ONNX graph is read, every element-wise multiplication, division and constant addition is
kept symbolically (an :class:`Expr`: a sum of scaled node outputs plus a constant offset) instead
of becoming a node. When a real node consumes an ``Expr``, each term becomes an :class:`Edge` with
its coefficient, and the offset becomes the node's ``in_bias``. :mod:`.fold` then moves the
coefficients and offsets into the weights and biases of neighbouring ``Conv2d``/``Affine`` nodes,
so that what travels between nodes in the written file is exactly the integer spike counts.

Arrays are float64 here so that the folding introduces as little rounding as possible; they become
float32 when the NIR nodes are written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

Shape = tuple[int, ...]


@dataclass
class Node:
    name: str
    kind: str  # input, output, if, conv, affine, avgpool, sumpool, maxpool, flatten, scale
    in_shape: Shape
    out_shape: Shape
    onnx_node: str = ""
    params: dict = field(default_factory=dict)
    in_bias: np.ndarray | None = None  # constant added to the summed input, shape ``in_shape``


@dataclass
class Edge:
    src: str
    dst: str
    coef: np.ndarray  # multiplies the source's output before the destination sums its inputs

    @property
    def is_plain(self) -> bool:
        return bool(np.all(self.coef == 1.0))


@dataclass
class Expr:
    """``sum(coef * output of node) + bias`` over one activation tensor (shape without batch)."""

    shape: Shape
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    bias: np.ndarray | None = None
    bias_from: tuple[str, str] | tuple = ()  # (ONNX node, op) that introduced the offset, for messages
    # Layout: NIR axis i holds the ONNX axis axes[i] (the batch is ONNX axis 0); () means the same
    # order as in ONNX. A token tensor [N, T, F] held as (F, T) in NIR has axes (2, 1).
    axes: tuple = ()

    @staticmethod
    def of(node: Node, axes: tuple = ()) -> "Expr":
        return Expr(node.out_shape, {node.name: np.ones(node.out_shape)}, axes=tuple(axes))

    def scaled(self, factor: np.ndarray) -> "Expr":
        bias = None if self.bias is None else self.bias * factor
        return Expr(self.shape, {k: c * factor for k, c in self.terms.items()}, bias, self.bias_from, self.axes)

    def shifted(self, offset: np.ndarray, origin: tuple = ()) -> "Expr":
        bias = offset if self.bias is None else self.bias + offset
        return Expr(self.shape, dict(self.terms), bias, self.bias_from or origin, self.axes)

    def plus(self, other: "Expr") -> "Expr":
        terms = dict(self.terms)
        for k, c in other.terms.items():
            terms[k] = terms[k] + c if k in terms else c
        if other.bias is None:
            bias = self.bias
        else:
            bias = other.bias if self.bias is None else self.bias + other.bias
        return Expr(self.shape, terms, bias, self.bias_from or other.bias_from, self.axes)

    def reshaped(self, shape: Shape) -> "Expr":
        bias = None if self.bias is None else self.bias.reshape(shape)
        return Expr(shape, {k: c.reshape(shape) for k, c in self.terms.items()}, bias, self.bias_from)

    @property
    def onnx_shape(self) -> Shape:
        """The shape ONNX sees (without batch): ``shape`` with the layout undone."""
        return to_onnx_shape(self.shape, self.axes)


def to_onnx_shape(nir_shape: Shape, axes: tuple) -> Shape:
    if not axes:
        return tuple(nir_shape)
    out = [0] * len(nir_shape)
    for i, a in enumerate(axes):
        out[a - 1] = nir_shape[i]
    return tuple(out)


def to_nir_array(a: np.ndarray, axes: tuple) -> np.ndarray:
    """A per-sample array in ONNX layout (no batch axis) -> NIR layout."""
    return a if not axes else np.ascontiguousarray(np.transpose(a, [x - 1 for x in axes]))


def per_channel(a: np.ndarray) -> np.ndarray | None:
    """``a[C, ...]`` as a ``[C]`` vector when it is constant over everything but the first axis."""
    flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    if np.all(flat == flat[:, :1]):
        return flat[:, 0].copy()
    return None


def _safe(name: str) -> str:
    # HDF5 groups split on '/', and some readers treat '.' specially: keep names plain.
    cleaned = re.sub(r"[^A-Za-z0-9_\-]", "_", name).strip("_")
    return cleaned or "node"


class WorkGraph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []

    def add(self, kind: str, stem: str, in_shape: Shape, out_shape: Shape, onnx_node: str = "", **params) -> Node:
        base = _safe(stem)
        name, k = base, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        node = Node(name, kind, tuple(in_shape), tuple(out_shape), onnx_node, dict(params))
        self.nodes[name] = node
        return node

    def connect(self, expr: Expr, node: Node) -> None:
        """``node`` sums ``expr``: one edge per term, the offset kept as the node's input bias."""
        for src, coef in expr.terms.items():
            self.edges.append(Edge(src, node.name, np.array(coef, dtype=np.float64)))
        if expr.bias is not None and np.any(expr.bias != 0):
            node.in_bias = np.broadcast_to(expr.bias, node.in_shape).astype(np.float64)
            node.params.setdefault("bias_from", expr.bias_from)

    def into(self, node: Node) -> list[Edge]:
        return [e for e in self.edges if e.dst == node.name]

    def out_of(self, node: Node) -> list[Edge]:
        return [e for e in self.edges if e.src == node.name]
