"""Small queries and edits on onnx-graphsurgeon graphs shared by the passes."""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

_counter = itertools.count()


def constant_value(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The value of a constant tensor (initializer or folded Constant), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def scalar_value(tensor: gs.Tensor) -> Optional[float]:
    """The value of a constant holding a single element (any shape of size 1), else None."""
    value = constant_value(tensor)
    if value is None or value.size != 1:
        return None
    return value.reshape(()).item()


def computed_from_constants(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is a constant or computed from constants only (a weight, not an activation)."""
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if id(current) in seen or isinstance(current, gs.Constant) or current.is_empty():
            continue
        seen.add(id(current))
        if not current.inputs:
            return False  # a graph input
        for maker in current.inputs:
            stack.extend(maker.inputs)
    return True


def producer(tensor: gs.Tensor) -> Optional[gs.Node]:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def sole_consumer(tensor: gs.Tensor, graph: gs.Graph) -> Optional[gs.Node]:
    """The only node reading ``tensor``, if it is not also a graph output."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def split_constant_operand(node: gs.Node) -> Optional[tuple[gs.Tensor, np.ndarray, int]]:
    """For a binary op with exactly one constant operand: (variable operand, constant, its index)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    va, vb = constant_value(a), constant_value(b)
    if va is None and vb is not None:
        return a, vb, 1
    if vb is None and va is not None:
        return b, va, 0
    return None


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every reader of ``old`` (and the graph outputs) read ``new`` instead.

    A graph output keeps its name: ``new`` takes it over when it is an intermediate tensor of its
    own; otherwise (a graph input, another output, a constant) an ``Identity`` carries it.
    """
    for node in list(old.outputs):
        node.inputs = [new if t is old else t for t in node.inputs]
    if old not in graph.outputs:
        return
    name = old.name
    old.name = fresh_name(f"{name}_replaced")
    if isinstance(new, gs.Variable) and new not in graph.inputs and new not in graph.outputs:
        new.name = name
        new.shape = new.shape if new.shape is not None else old.shape
        new.dtype = new.dtype if new.dtype is not None else old.dtype
        output = new
    else:
        output = gs.Variable(name, dtype=old.dtype, shape=old.shape)
        graph.nodes.append(gs.Node(op="Identity", name=fresh_name(f"{name}_keep_name"), inputs=[new],
                                   outputs=[output]))
    graph.outputs = [output if t is old else t for t in graph.outputs]


def fresh_name(stem: str) -> str:
    return f"{stem}__{next(_counter)}"



def add_node(graph: gs.Graph, op: str, inputs: list, name: str, attrs: dict | None = None,
             domain: str | None = None, dtype=np.float32) -> gs.Variable:
    """Append ``op`` to the graph and return its (single) output variable."""
    output = gs.Variable(fresh_name(f"{name}_out"), dtype=dtype)
    node = gs.Node(op=op, name=name, inputs=list(inputs), outputs=[output], attrs=dict(attrs or {}))
    if domain:
        node.domain = domain
    graph.nodes.append(node)
    return output
