"""Bounds on the work one run may take, each with a command-line flag to raise it.

A hostile or mistaken input (a 100,000-node graph, a zip bomb posing as ``--data``, ``--timesteps
100000``) must be refused at once with a message naming the limit, not after minutes of work or a
kill by the memory cap. The command sets the limits for the run (:func:`applied`); code deep in
the loader reads them with :func:`current`, so the Python API gets the defaults.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, fields

import onnx

from pmsm.runtime.base import proto
from pmsm.runtime.base.errors import BadInputError

MAX_TIMESTEP_VALUES = 16  # `--timesteps 1,2,...,10000` would run every backend 10,000 times


@dataclass(frozen=True)
class Limits:
    """Each field is raised by the flag of its name (``max_nodes``: ``--max-nodes``)."""

    max_nodes: int = 10_000  # a QDQ ResNet-50 has about 1,000; the converter's time grows faster than linearly
    max_weight_bytes: int = 2 << 30  # what one protobuf holds; beyond, weights live in external data
    max_data_elements: int = 1 << 28  # 1 GiB of float32 once loaded
    max_timesteps: int = 1024
    max_load_seconds: float = 60.0  # ONNX Runtime loading and running one sample, source or spiking model
    # If/Loop/Scan bodies inside bodies: ONNX Runtime's session build about doubles with each level
    # (If nested 16 / 18 / 20 deep: 1.1 / 3.6 / 19 s; 30 deep would take hours); real models nest 1-3
    max_subgraph_depth: int = 10

_current: contextvars.ContextVar[Limits] = contextvars.ContextVar("pmsm_limits", default=Limits())


def current() -> Limits:
    return _current.get()


@contextlib.contextmanager
def applied(limits: Limits):
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def from_arguments(args) -> Limits:
    """The limits named on the command line (``args.max_nodes`` ...), defaults for the others."""
    values = {f.name: getattr(args, f.name) for f in fields(Limits) if getattr(args, f.name, None) is not None}
    return Limits(**values)


def flag(name: str) -> str:
    """The command-line flag of the limit ``name``."""
    return "--" + name.replace("_", "-")


def check_timesteps(timesteps, limits: Limits | None = None) -> list[int]:
    """``timesteps`` as sorted distinct positive ints within the maximum, or BadInputError."""
    limits = limits or current()
    values = list(timesteps)
    if not values or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in values):
        raise BadInputError(f"--timesteps must be positive integers, got {values!r}")
    values = sorted(set(values))
    if len(values) > MAX_TIMESTEP_VALUES:
        raise BadInputError(f"--timesteps lists {len(values)} values; at most {MAX_TIMESTEP_VALUES} are verified in "
                            "one run")
    if values[-1] > limits.max_timesteps:
        raise BadInputError(f"--timesteps {values[-1]} is above the maximum of {limits.max_timesteps}; "
                            f"raise it with {flag('max_timesteps')} if you mean it")
    return values


# ---------------------------------------------------------------------------------------------
# Graph size
# ---------------------------------------------------------------------------------------------


def check_file_size(path: str, size: int, limits: Limits | None = None) -> None:
    """Refuse a file far larger than the weights allowed before parsing it (a parse takes twice its size)."""
    limits = limits or current()
    allowed = limits.max_weight_bytes + (64 << 20)  # room for the graph itself
    if size > allowed:
        raise BadInputError(f"{path}: the file is {describe_bytes(size)}, more than the "
                            f"{describe_bytes(limits.max_weight_bytes)} of weights allowed; raise the limit with "
                            f"{flag('max_weight_bytes')}")


def check_model_size(model: onnx.ModelProto, path: str, limits: Limits | None = None) -> None:
    """Nodes (subgraphs included) and declared weight bytes (external data included) within the limits."""
    limits = limits or current()
    nodes = sum(1 for _ in proto.all_nodes(model))
    if nodes > limits.max_nodes:
        raise BadInputError(f"{path}: the graph has {nodes} nodes, more than the {limits.max_nodes} allowed; "
                            f"raise the limit with {flag('max_nodes')}")
    depth = subgraph_depth(model)
    if depth > limits.max_subgraph_depth:
        raise BadInputError(f"{path}: subgraphs (If/Loop/Scan bodies) are nested {depth} deep, more than the "
                            f"{limits.max_subgraph_depth} allowed (ONNX Runtime's load time doubles with each "
                            f"level); raise the limit with {flag('max_subgraph_depth')}")
    weights = sum(proto.declared_bytes(tensor) for tensor, _ in proto.all_tensors(model))
    if weights > limits.max_weight_bytes:
        raise BadInputError(f"{path}: the weights take {describe_bytes(weights)}, more than the "
                            f"{describe_bytes(limits.max_weight_bytes)} allowed; raise the limit with "
                            f"{flag('max_weight_bytes')}")


def subgraph_depth(model: onnx.ModelProto) -> int:
    """How deep subgraphs nest: 0 for a graph without any, 1 for an If in the main graph, ...
    (function bodies count as graphs of their own: a body's subgraphs nest from 1 again)."""
    deepest = 0
    stack = [(model.graph, 0)] + [(function, 0) for function in model.functions]
    while stack:
        graph, depth = stack.pop()
        deepest = max(deepest, depth)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append((attribute.g, depth + 1))
                stack.extend((g, depth + 1) for g in attribute.graphs)
    return deepest


def describe_bytes(count: int) -> str:
    for unit, size in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                       ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} bytes"
