"""Recognition as rules: each quantizer pattern is a small object, and one driver runs them all.

A rule answers three questions about a node of the graph, its *anchor* (a ``QuantizeLinear``, a
``Floor``, a neuron):

- ``matches(node)``: is this node the kind of node the pattern starts from? (op and domain only,
  so the driver can list the anchors before anything is rewritten);
- ``check(graph, node)``: does the pattern hold around it, and with which parameters? It returns
  what the rewrite needs (a *finding*), a :class:`Refusal` naming the node and the reason the
  pattern cannot become a neuron, or None when the node is not this pattern after all (a weight,
  a rounding of constants, a shape another rule owns). ``check`` reads the graph and never edits
  it, so a refused pattern leaves the graph as it was;
- ``rewrite(graph, finding)``: replace the pattern, returning the neuron records it made (or
  updated: a record with the name of an existing one replaces it).

Rules run one after the other, each over the anchors present when it starts, in graph order; a
rule sees the graph its predecessors left, and each rule's leftovers are cleaned up before the
next starts. A refusal either stops the run (no ``problems`` list: raised as the node's
:class:`PatternError`) or is recorded and the run goes on, so the
pre-flight can list every refused node at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import onnx_graphsurgeon as gs

from pmsm.runtime.base.errors import BadInputError


class PatternError(BadInputError):
    """A pattern was recognised but cannot be expressed as PMSM neurons exactly: one line naming
    the node."""

    def __init__(self, node: gs.Node, reason: str):
        self.node_name, self.op, self.reason = node.name, node.op, reason
        super().__init__(f"node '{node.name}' ({node.op}): {reason}")


@dataclass(frozen=True)
class Refusal:
    """A pattern that was recognised but cannot be expressed as PMSM neurons exactly."""

    node: gs.Node
    reason: str


class Rule:
    """One quantizer pattern (see the module's text). Subclasses set ``name`` and implement the
    three methods."""

    name = ""

    def matches(self, node: gs.Node) -> bool:
        raise NotImplementedError

    def check(self, graph: gs.Graph, node: gs.Node) -> Any:
        """A finding for :meth:`rewrite`, a :class:`Refusal`, or None (not this pattern)."""
        raise NotImplementedError

    def rewrite(self, graph: gs.Graph, finding: Any) -> list:
        raise NotImplementedError


def run_rules(graph: gs.Graph, rules, problems: Optional[list] = None, error=PatternError) -> list:
    """Apply ``rules`` in order to every anchor of ``graph``; the records they made, in order.

    A refusal is raised as ``error(node, reason)`` when there is no ``problems`` list; a check or
    rewrite may also raise a :class:`PatternError` itself (a helper deep inside a check refusing a
    parameter), which is treated like a returned refusal.
    """
    records: list = []
    for rule in rules:
        for node in [n for n in graph.nodes if rule.matches(n)]:
            try:
                finding = rule.check(graph, node)
                if finding is None:
                    continue
                if isinstance(finding, Refusal):
                    raise error(finding.node, finding.reason)
                made = rule.rewrite(graph, finding)
            except PatternError as refused:
                if problems is None:
                    raise
                problems.append((refused.node_name, refused.op, refused.reason))
                continue
            _merge(records, made)
        graph.cleanup()
    return records


def _merge(records: list, made: list) -> None:
    """Append the new records; one with the name of a record already made replaces it in place."""
    positions = {record.name: index for index, record in enumerate(records)}
    for record in made:
        if record.name in positions:
            records[positions[record.name]] = record
        else:
            positions[record.name] = len(records)
            records.append(record)
