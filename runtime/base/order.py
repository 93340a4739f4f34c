"""One topological order for every graph the package walks (ONNX nodes, NIR nodes)."""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable


def topological_order(nodes: Iterable[Hashable], edges: Iterable[tuple[Hashable, Hashable]]) -> list:
    """``nodes`` ordered so that each comes after every node with an edge into it: nodes without
    inputs first, in their given order, then breadth first along the edges in their given order
    (so the order is the same on every run). Nodes on a cycle are left out: a result shorter than
    ``nodes`` means the graph has one."""
    nodes = list(nodes)
    indegree = {node: 0 for node in nodes}
    successors: dict = {node: [] for node in nodes}
    for source, target in edges:
        successors[source].append(target)
        indegree[target] += 1
    ready = deque(node for node in nodes if indegree[node] == 0)
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for target in successors[node]:
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
    return order
