"""Walking an ONNX ModelProto: every graph, every constant tensor, and who reads a tensor."""
from __future__ import annotations

from collections import defaultdict

import onnx

from pmsm.runtime.base.order import topological_order


def all_graphs(model: onnx.ModelProto):
    """The main graph and every subgraph in node attributes (If, Loop and Scan bodies)."""
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def all_nodes(model: onnx.ModelProto):
    """Every node: those of all graphs and those of model-local function bodies."""
    for graph in all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def all_tensors(model: onnx.ModelProto):
    """``(tensor, owner)`` for every constant: initializers (owner None), sparse initializers and
    tensor attributes (owner: the node holding it), in every graph."""
    for graph in all_graphs(model):
        for tensor in graph.initializer:
            yield tensor, None
        for sparse in graph.sparse_initializer:
            yield sparse.values, None
    for node in all_nodes(model):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t, node
            for tensor in attribute.tensors:
                yield tensor, node


def declared_elements(tensor: onnx.TensorProto) -> int:
    elements = 1
    for d in tensor.dims:
        elements *= max(int(d), 0)
    return elements


def declared_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's declared shape and element type take, whatever storage it claims."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1  # unknown or string element type: the checker speaks about it
    return declared_elements(tensor) * itemsize


def readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes of any graph reading it (names are model-wide in these walks)."""
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in all_nodes(model):
        for name in node.input:
            if name:
                found[name].append(node)
    return found


def node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name or (node.output[0] if node.output else '?')}' ({node.op_type})"


def onnx_node_order(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` ordered so that every node comes after the producers of its inputs (in the same
    graph; names produced elsewhere are inputs); nodes on a cycle are left out."""
    producers = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    edges = [(producers[name], index) for index, node in enumerate(nodes) for name in node.input if name in producers]
    return [nodes[index] for index in topological_order(range(len(nodes)), edges)]


def sort_topologically(graph: onnx.GraphProto) -> bool:
    """Put ``graph``'s nodes (and those of its subgraphs) in an order where every node comes after
    the nodes whose outputs it reads (the order of
    :func:`~pmsm.runtime.base.order.topological_order`). Returns False when no such order
    exists (a cycle); a name no node writes is left for onnx's checker to name.
    """
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
            if not all(sort_topologically(subgraph) for subgraph in subgraphs):
                return False
    nodes = list(graph.node)
    writer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    edges = {(writer[name], index) for index, node in enumerate(nodes) for name in _names_read(node)
             if name in writer and writer[name] != index}
    order = topological_order(range(len(nodes)), sorted(edges))
    if len(order) != len(nodes):
        return False
    if order != list(range(len(nodes))):
        sorted_nodes = [nodes[index] for index in order]
        del graph.node[:]
        graph.node.extend(sorted_nodes)
    return True


def _names_read(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads: its inputs and the outer-scope names its subgraphs use."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            names |= _outer_names(subgraph)
    return names


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the scopes around it."""
    local = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    local |= {name for node in graph.node for name in node.output}
    return {name for name in _names_read_in(graph) if name not in local}


def _names_read_in(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names |= _names_read(node)
    names |= {value.name for value in graph.output}
    return names


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names that the subgraphs of ``node`` (If, Loop, Scan) read."""
    found: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                found.update(n for n in list(inner.input) + sorted(implicit_inputs(inner)) if n and n not in defined)
                defined.update(inner.output)
    return found
