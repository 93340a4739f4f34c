"""Read a PMSM-dialect NIR graph and check every node before any Lava process is built.

``analyse`` walks the whole graph, infers NIR shapes (no batch dimension) and lists
**every** node the Lava lowering cannot take as ``(name, type, reason)``; if the list is
not empty it raises ``UnsupportedModelError``. NIR's own shape inference is not used: it
is wrong for non-square kernels and for ``'same'`` padding with stride 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.runtime.base.order import topological_order
from pmsm.runtime.neuron import NeuronParams
from pmsm.targets.nir.dialect import DIALECT_FORMAT, normalise
from pmsm.targets.nir.interpreter import conv1d_args
from pmsm.targets.nir.io import read_nir

TARGET = "lava"
GRAPH = "<graph>"


@dataclass(frozen=True)
class PoolGeometry:
    mode: str                  # "sum" | "avg" | "max"
    kernel: tuple[int, int]    # (H, W)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, int]    # (H, W)
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class GraphView:
    """A checked graph: topological order, edges both ways, shapes and parsed parameters."""

    source: str
    nodes: dict
    preds: dict                # name -> tuple of predecessor names (edge order)
    succs: dict
    order: tuple               # topological; Input first
    shapes: dict               # name -> NIR output shape
    input: str                 # the first Input node (a plain network has one)
    output: str                # the first Output node
    neurons: dict              # IF name -> NeuronParams
    pools: dict                # pool name -> PoolGeometry
    convs: dict                # Conv2d name -> ConvGeometry
    inputs: tuple = ()         # every Input node, in the graph's order (a region of a deployment may have several)
    outputs: tuple = ()        # every Output node


class _Problem(Exception):
    """One node's reason for being rejected."""


def load(path_or_graph) -> tuple[nir.NIRGraph, str]:
    """The graph, and its label for messages; a path is read by the NIR target's reader (type
    checked, the dialect checked, metadata as plain Python)."""
    if isinstance(path_or_graph, nir.NIRGraph):
        return path_or_graph, GRAPH
    return read_nir(str(path_or_graph)), str(path_or_graph)


def unsupported_nir_nodes(path_or_graph) -> list[tuple[str, str, str]]:
    """Every node Lava cannot take as ``(name, type, reason)``; empty when the graph is fine."""
    try:
        analyse(path_or_graph)
    except UnsupportedModelError as exc:
        return list(exc.problems)
    return []


def analyse(path_or_graph) -> GraphView:
    if isinstance(path_or_graph, GraphView):
        return path_or_graph
    graph, source = load(path_or_graph)
    problems: list[tuple[str, str, str]] = []
    nodes = dict(graph.nodes)

    def bad(name: str, reason: str) -> None:
        problems.append((name, type(nodes[name]).__name__ if name in nodes else "NIRGraph", reason))

    for name, node in nodes.items():
        reason = _unsupported_type(node)
        if reason:
            bad(name, reason)
    meta = _meta(graph).get("pmsm", {})
    if isinstance(meta, dict) and meta.get("format", DIALECT_FORMAT) != DIALECT_FORMAT:
        bad(GRAPH, f"graph format {meta.get('format')!r} is not {DIALECT_FORMAT!r}")
    if isinstance(meta, dict) and meta.get("readout", "mean") != "mean":
        bad(GRAPH, f"graph readout {meta.get('readout')!r} is not supported (only 'mean')")

    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for edge in graph.edges:
        src, dst = str(edge[0]), str(edge[1])
        if src not in nodes or dst not in nodes:
            bad(GRAPH, f"edge {src} -> {dst} names an unknown node (nested graph ports are not supported)")
            continue
        preds[dst].append(src)
        succs[src].append(dst)

    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if not inputs or not outputs:
        bad(GRAPH, f"need at least one Input and one Output node, found {len(inputs)} and {len(outputs)}")
    order = topological_order(nodes, [(src, dst) for src, dsts in succs.items() for dst in dsts])
    for name in nodes:
        if name not in order:
            bad(name, "lies on a cycle: recurrent connections are not supported")
    reaching = _reaching(outputs, preds)
    for name in nodes:
        if isinstance(nodes[name], nir.Input):
            if preds[name]:
                bad(name, "the Input node has incoming edges")
        elif not preds[name]:
            bad(name, "has no incoming edge")
        if name not in reaching and not isinstance(nodes[name], nir.Output):
            bad(name, "does not lead to an Output node")

    shapes: dict[str, tuple[int, ...]] = {}
    neurons, pools, convs = {}, {}, {}
    rejected = {name for name, _, _ in problems}
    for name in order:
        node = nodes[name]
        if name in rejected:
            continue
        in_shapes = [shapes.get(p) for p in preds[name]]
        try:
            if isinstance(node, nir.IF):
                neurons[name] = neuron_params(node)
            if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
                pools[name] = _pool_geometry(node)
            if isinstance(node, (nir.Conv1d, nir.Conv2d)):
                convs[name] = _conv_geometry(node)
            if any(s is None for s in in_shapes) and not isinstance(node, nir.Input):
                # A predecessor was rejected (its reason is listed): check this node against
                # its own declared input shape so that its problems are listed too.
                declared = (node.input_type or {}).get("input")
                if declared is None:
                    continue
                in_shapes = [_shape(declared)]
            if len(set(in_shapes)) > 1:
                raise _Problem(f"incoming edges carry different shapes {sorted(set(in_shapes))}")
            in_shape = in_shapes[0] if in_shapes else None
            shapes[name] = _out_shape(node, in_shape, pools.get(name), convs.get(name))
        except _Problem as exc:
            bad(name, str(exc))
    if problems:
        raise UnsupportedModelError(source, TARGET, _unique(problems))
    return GraphView(source, nodes, {n: tuple(p) for n, p in preds.items()},
                     {n: tuple(s) for n, s in succs.items()}, tuple(order), shapes,
                     inputs[0], outputs[0], neurons, pools, convs, tuple(inputs), tuple(outputs))


_SUPPORTED = (nir.Input, nir.Output, nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Flatten,
              nir.AvgPool2d, nir.SumPool2d, nir.Scale, nir.IF)


def _unsupported_type(node) -> str | None:
    if isinstance(node, nir.NIRGraph):
        return "nested NIR graphs are not supported"
    if not isinstance(node, _SUPPORTED):
        return f"no Lava lowering for NIR node type {type(node).__name__} in the PMSM dialect"
    if isinstance(node, nir.IF) and "pmsm" not in _meta(node):
        return ("IF without metadata['pmsm'] is a binary integrate-and-fire neuron, "
                "not a PMSM neuron; only PMSM neurons can be lowered")
    pmsm = _meta(node).get("pmsm")
    if isinstance(node, nir.SumPool2d) and pmsm is not None:
        op = pmsm.get("op", "sum_pool2d") if isinstance(pmsm, dict) else None
        if op not in ("max_pool2d", "sum_pool2d"):
            return f"SumPool2d with metadata['pmsm']['op']={op!r} (known: 'max_pool2d', 'sum_pool2d')"
    return None


def _meta(node) -> dict:
    """Metadata as plain Python (nir.read gives numpy scalars and arrays back)."""
    meta = normalise(node.metadata or {})
    return meta if isinstance(meta, dict) else {}


def neuron_params(node: nir.IF) -> NeuronParams:
    meta = _meta(node)["pmsm"]
    if not isinstance(meta, dict):
        raise _Problem("metadata['pmsm'] is not a mapping")
    missing = [k for k in ("lo", "hi", "v_init", "rounding") if k not in meta]
    if missing:
        raise _Problem(f"metadata['pmsm'] lacks {missing}")
    if int(meta.get("version", 1)) != 1:
        raise _Problem(f"PMSM neuron format version {meta.get('version')} is not supported (only 1)")
    if str(meta.get("reset", "subtract")) != "subtract":
        raise _Problem(f"reset {meta.get('reset')!r} is not supported (only 'subtract')")
    for field, want in (("r", 1.0), ("v_threshold", 1.0), ("v_reset", 0.0)):
        value = np.asarray(getattr(node, field) if getattr(node, field) is not None else want)
        if value.size and not np.all(value == want):
            raise _Problem(f"PMSM IF needs {field}={want:g} everywhere (level units)")
    try:
        return NeuronParams(lo=meta["lo"], hi=meta["hi"], v_init=float(meta["v_init"]),
                            rounding=str(meta["rounding"]))
    except (TypeError, ValueError) as exc:
        raise _Problem(f"bad PMSM neuron parameters: {exc}") from None


def pair(value, what: str) -> tuple[int, int]:
    arr = np.asarray(value).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.equal(np.mod(arr, 1), 0)):
        raise _Problem(f"{what} must be an int or an int pair, got {value!r}")
    return int(arr[0]), int(arr[1])


def _pool_geometry(node) -> PoolGeometry:
    if isinstance(node, nir.AvgPool2d):
        mode = "avg"
    else:
        op = _meta(node).get("pmsm", {}).get("op", "sum_pool2d")
        mode = "max" if op == "max_pool2d" else "sum"
    kernel = pair(node.kernel_size, "kernel_size")
    stride = pair(node.stride if node.stride is not None else node.kernel_size, "stride")
    padding = pair(node.padding if node.padding is not None else 0, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise _Problem(f"bad pooling geometry kernel={kernel} stride={stride} padding={padding}")
    # AvgPool2d divides by the whole kernel area, padding included (the dialect's reading, as
    # torch's count_include_pad=True; the writer expresses the other case as SumPool2d + Scale).
    return PoolGeometry(mode, kernel, stride, padding)


def _conv_geometry(node) -> ConvGeometry:
    if isinstance(node, nir.Conv1d):
        # Lowered as a 2-D convolution of unit height: pairs (1, x) and (0, x).
        try:
            stride, padding, dilation, groups = conv1d_args(node, "")
        except BadInputError as exc:
            raise _Problem(str(exc)) from None
        if np.asarray(node.weight).ndim != 3:
            raise _Problem(f"Conv1d weight must be (O, I, K), got shape {np.shape(node.weight)}")
        return ConvGeometry((1, stride), (0, padding), (1, dilation), groups)
    weight = np.asarray(node.weight)
    if weight.ndim != 4:
        raise _Problem(f"Conv2d weight must be OIHW (4-D), got shape {weight.shape}")
    stride = pair(node.stride, "stride")
    dilation = pair(node.dilation, "dilation")
    groups = int(node.groups)
    if isinstance(node.padding, str):
        if node.padding == "valid":
            padding = (0, 0)
        else:  # 'same': only unambiguous with stride 1 and an even total padding
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            if stride != (1, 1) or any(t % 2 for t in total):
                raise _Problem("padding='same' needs stride 1 and odd (dilated) kernels")
            padding = (total[0] // 2, total[1] // 2)
    else:
        padding = pair(node.padding, "padding")
    return ConvGeometry(stride, padding, dilation, groups)


def _out_shape(node, in_shape, pool: PoolGeometry | None, conv: ConvGeometry | None) -> tuple[int, ...]:
    if isinstance(node, nir.Input):
        return _shape(node.input_type["input"])
    if isinstance(node, nir.Output):
        return in_shape
    if isinstance(node, nir.Flatten):
        nd = len(in_shape)
        start, end = node.start_dim % max(nd, 1), node.end_dim % max(nd, 1)
        if nd > 1 and (start, end) != (0, nd - 1):
            raise _Problem(f"only full flattening is supported (start_dim=0, end_dim=-1), "
                           f"got start_dim={node.start_dim} end_dim={node.end_dim} on shape {in_shape}")
        return (int(np.prod(in_shape)),)
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = np.asarray(node.weight)
        if weight.ndim != 2:
            raise _Problem(f"weight must be 2-D [out, in], got {weight.shape}")
        if in_shape != (weight.shape[1],):
            raise _Problem(f"input shape {in_shape} does not match weight {weight.shape} (flatten first)")
        if isinstance(node, nir.Affine) and np.asarray(node.bias).size not in (1, weight.shape[0]):
            raise _Problem(f"bias shape {np.shape(node.bias)} does not match {weight.shape[0]} outputs")
        return (weight.shape[0],)
    if isinstance(node, nir.Conv1d):
        weight = np.asarray(node.weight)
        if len(in_shape) != 2:
            raise _Problem(f"Conv1d needs a (C, L) input, got {in_shape}")
        as_2d = nir.Conv2d(input_shape=None, weight=weight[:, :, None, :], stride=conv.stride, padding=conv.padding,
                           dilation=conv.dilation, groups=conv.groups, bias=node.bias)
        out = _conv_shape(as_2d, (in_shape[0], 1, in_shape[1]), conv)
        if node.input_shape is not None and int(np.ravel(node.input_shape)[0]) != in_shape[1]:
            raise _Problem(f"input_shape {int(np.ravel(node.input_shape)[0])} disagrees with the incoming "
                           f"{in_shape[1]}")
        return (out[0], out[2])
    if isinstance(node, nir.Conv2d):
        return _conv_shape(node, in_shape, conv)
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        if len(in_shape) != 3:
            raise _Problem(f"pooling needs a (C, H, W) input, got {in_shape}")
        hw = [(n + 2 * p - k) // s + 1 for n, k, s, p in
              zip(in_shape[1:], pool.kernel, pool.stride, pool.padding)]
        if min(hw) < 1:
            raise _Problem(f"pooling leaves no output for input {in_shape}")
        if pool.mode == "max" and any(2 * p > k for p, k in zip(pool.padding, pool.kernel)):
            raise _Problem("max pooling padding larger than half the kernel")
        return (in_shape[0], hw[0], hw[1])
    if isinstance(node, nir.Scale):
        scale = np.asarray(node.scale)
        try:
            if np.broadcast_shapes(scale.shape, in_shape) != tuple(in_shape):
                raise ValueError
        except ValueError:
            raise _Problem(f"scale of shape {scale.shape} does not broadcast to {in_shape}") from None
        return in_shape
    if isinstance(node, nir.IF):
        r_shape = np.shape(node.r)
        if int(np.prod(r_shape)) not in (1, int(np.prod(in_shape))):
            raise _Problem(f"neuron shape {r_shape} does not match its input {in_shape}")
        return in_shape
    raise _Problem(f"no Lava lowering for {type(node).__name__}")


def _conv_shape(node: nir.Conv2d, in_shape, geo: ConvGeometry) -> tuple[int, ...]:
    weight = np.asarray(node.weight)
    if len(in_shape) != 3:
        raise _Problem(f"Conv2d needs a (C, H, W) input, got {in_shape}")
    if in_shape[0] != weight.shape[1] * geo.groups or weight.shape[0] % geo.groups:
        raise _Problem(f"weight {weight.shape} with groups={geo.groups} does not fit input {in_shape}")
    if node.input_shape is not None and tuple(int(v) for v in np.ravel(node.input_shape)) != in_shape[1:]:
        raise _Problem(f"input_shape {tuple(np.ravel(node.input_shape))} disagrees with the incoming {in_shape[1:]}")
    bias = np.asarray(node.bias) if node.bias is not None else np.zeros(1)
    if bias.size not in (1, weight.shape[0]):
        raise _Problem(f"bias shape {bias.shape} does not match {weight.shape[0]} output channels")
    hw = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
          zip(in_shape[1:], weight.shape[2:], geo.stride, geo.padding, geo.dilation)]
    if min(hw) < 1:
        raise _Problem(f"convolution leaves no output for input {in_shape}")
    return (weight.shape[0], hw[0], hw[1])


def _shape(value) -> tuple[int, ...]:
    if value is None:
        raise _Problem("shape is not given")
    return tuple(int(v) for v in np.ravel(value))


def _reaching(outputs, preds) -> set[str]:
    seen, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(preds[name])
    return seen


def _unique(problems):
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
