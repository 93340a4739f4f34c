"""Split the untimed network into NIR regions and host ops (a hybrid deployment, docs/nir.md §7).

Every node the NIR translation takes becomes region work; every node it refuses (with its reason,
as the pre-flight reports it), and every node temporal compensation rewrites, becomes host work.
What NIR expresses is decided by :mod:`.from_onnx` itself, node by node: this module never lists
ops. The translation runs with each host tensor a region consumes standing in as an extra NIR
``Input``, and each region tensor a host op consumes materialised as an NIR ``Output``.

The schedule of one timestep is a sequence of *stages*, alternately region stages and host stages,
found by levelling the graph of region work nodes and host ops: a node's stage is the first of its
kind at or after the stages of everything it reads. So a stage reads only earlier stages and
itself, and one timestep is every stage once, in order: the same dependency order as the spiking
ONNX's loop body, hence the same values at every step. A region is a connected part of a region
stage (one NIR file); a host stage is one ONNX model. An edge between two region nodes of
different stages (a residual around host work) becomes an ``Output`` of one region and an
``Input`` of the other, joined in the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from pmsm.exporter.linearity import FLOAT_TYPES, commutes_with_time_mean
from pmsm.exporter.timeloop import VALUE_FREE_OPS, element_types
from pmsm.runtime.base.proto import implicit_inputs
from pmsm.runtime.schema import is_neuron
from pmsm.targets.nir.convert import layouts_to_try, linear_layout
from pmsm.targets.nir.fold import fold_biases, fold_coefficients, prune
from pmsm.targets.nir.from_onnx import _op, _outputs, translate_node
from pmsm.targets.nir.ir import Edge, Expr, WorkGraph
from pmsm.targets.nir.onnx_view import NetworkView, network_view, node_label
from pmsm.targets.nir.translator import Translator, Unknown, Unsupported

LINK_PREFIX = "pmsm_link/"  # manifest tensors joining two regions (no ONNX tensor has the name)
_MAX_ROUNDS = 64


@dataclass
class Port:
    """One tensor crossing a region's boundary: its NIR node, the manifest tensor, the shape NIR
    holds (no batch) and the layout (NIR axis i holds ONNX axis layout[i]; () for ONNX's order)."""

    node: str
    tensor: str
    shape: tuple
    layout: tuple = ()


@dataclass
class Region:
    name: str
    stage: int
    work: WorkGraph
    inputs: list[Port] = field(default_factory=list)
    outputs: list[Port] = field(default_factory=list)
    onnx_nodes: list[str] = field(default_factory=list)  # the ONNX nodes it computes


@dataclass
class HostStage:
    name: str
    stage: int
    nodes: list[onnx.NodeProto]
    inputs: list[str] = field(default_factory=list)  # tensors it reads from the data input and earlier stages
    outputs: list[str] = field(default_factory=list)  # tensors later stages or the graph outputs read


@dataclass
class Partition:
    regions: list[Region]
    hosts: list[HostStage]
    host_reasons: dict[str, tuple[str, str]]  # ONNX node -> (op, why it runs on the host)
    data_input: str
    data_shape: tuple
    graph_outputs: list[str]
    input_layout: tuple = ()

    @property
    def stages(self) -> list:
        """Regions and host stages in the order one timestep runs them."""
        return sorted(self.regions + self.hosts, key=lambda s: (s.stage, s.name))


def compensated_nodes(network: onnx.ModelProto) -> dict[str, str]:
    """Nodes temporal compensation rewrites in the spiking ONNX (pmsm.exporter.compensation): a
    region computes the plain op, so each of these runs on the host, compensated as in the body."""
    dtypes = element_types(network)
    varying: set[str] = set()
    in_body: set[str] = set()
    out = {}
    for node in network.graph.node:
        reads = [n for n in node.input if n] + sorted(implicit_inputs(node))
        if is_neuron(node) or any(n in in_body for n in reads):
            in_body.update(o for o in node.output if o)
            moving = [n for n in reads if n in varying]
            if moving and not is_neuron(node) and not commutes_with_time_mean(node, varying, dtypes):
                out[node_label(node)] = ("its output is temporally compensated (the mean over time of a nonlinear "
                                         "op), which the host computes as the spiking ONNX's loop body does")
            if is_neuron(node) or node.op_type not in VALUE_FREE_OPS and moving:
                varying.update(o for o in node.output if o)
    return out


class _Cut:
    """One translation of the network with a given set of host nodes."""

    def __init__(self, model: onnx.ModelProto, view: NetworkView, label: str, host: dict, input_axes: tuple):
        self.view = view
        self.t = Translator(view, input_axes)
        self.host = dict(host)  # label -> (op, reason)
        self.host_tensors: dict[str, str] = {}  # tensor -> producing host node
        self.stand_ins: dict[str, str] = {}  # host tensor -> its Input work node
        self.dtypes = element_types(model)
        self.touched: dict[str, set[str]] = {}  # ONNX node -> work nodes it made or reads
        t = self.t
        for node in view.nodes:
            label_ = node_label(node)
            if label_ in self.host:
                self._to_host(node)
                continue
            before = set(t.work.nodes)
            try:
                self._stand_ins(node)
                translate_node(t, node)
                made = set(t.work.nodes) - before
                reads = {k for n in node.input if n in t.env for k in t.env[n].terms}
                self.touched[label_] = made | reads | {k for o in node.output if o in t.env for k in t.env[o].terms}
            except (Unsupported, Unknown) as exc:
                for name in set(t.work.nodes) - before:  # stand-ins or nodes of a half-translated node
                    del t.work.nodes[name]
                t.work.edges = [e for e in t.work.edges if e.src in t.work.nodes and e.dst in t.work.nodes]
                for tensor in [k for k, v in self.stand_ins.items() if v not in t.work.nodes]:
                    del self.stand_ins[tensor]
                    t.env.pop(tensor, None)
                why = str(exc) if isinstance(exc, Unsupported) else f"input '{exc}' has no known shape"
                self.host[label_] = (_op(node), why)
                self._to_host(node)
        self._materialise()

    def _to_host(self, node: onnx.NodeProto) -> None:
        for name in node.output:
            if name:
                self.host_tensors[name] = node_label(node)
                self.t.env.pop(name, None)

    def _stand_ins(self, node: onnx.NodeProto) -> None:
        """Every float host tensor this node reads becomes an NIR Input (once)."""
        t = self.t
        for name in node.input:
            if not name or name not in self.host_tensors or name in t.env:
                continue
            if self.dtypes.get(name) not in FLOAT_TYPES:
                raise Unsupported(f"input '{name}' is computed on the host and is not a floating-point tensor")
            shape = self.view.shapes.get(name)
            if shape is None:
                raise Unsupported(f"input '{name}' is computed on the host and its shape is unknown")
            axes = self._layout_for_linear(name, len(shape)) if len(shape) in (2, 3) else ()
            held = tuple(shape[a - 1] for a in axes) if axes else tuple(shape)
            stand_in = t.work.add("input", name, held, held, onnx_node=name)
            if axes:
                stand_in.params["layout"] = axes
            t.env[name] = Expr.of(stand_in, axes)
            self.stand_ins[name] = stand_in.name

    def _layout_for_linear(self, tensor: str, rank: int) -> tuple:
        """The layout to hold host ``tensor`` in: features first when a MatMul/Gemm reads its last
        axis (:func:`.convert.linear_layout`), else ONNX's order."""
        return linear_layout(self.view.nodes, [tensor], rank, set(self.host))

    def _materialise(self) -> None:
        """An Output for each region tensor a host op reads, and for each graph output."""
        t = self.t
        self.host_reads: dict[str, str] = {}  # region tensor -> its Output work node
        aliases = self.view.aliases
        for node in self.view.nodes:
            if node_label(node) not in self.host:
                continue
            for name in list(node.input) + sorted(implicit_inputs(node)):
                if name in t.env and name not in aliases and name not in self.host_reads:
                    expr = t.env[name]
                    out = t.work.add("output", name, expr.shape, expr.shape, onnx_node=name)
                    if expr.axes:
                        out.params["layout"] = tuple(expr.axes)
                    t.work.connect(expr, out)
                    out.params.setdefault("bias_from", expr.bias_from or (name, "Output"))
                    self.host_reads[name] = out.name
        problems: list = []
        _outputs(t, problems)


def _components(work: WorkGraph) -> dict[str, int]:
    parent = {n: n for n in work.nodes}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in work.edges:
        if e.src in parent and e.dst in parent:
            parent[find(e.src)] = find(e.dst)
    roots: dict[str, int] = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in work.nodes}


def _producer_of(model: onnx.ModelProto, tensor: str) -> str | None:
    for node in model.graph.node:
        if tensor in node.output:
            return node_label(node)
    return None


def _cut_fixpoint(model: onnx.ModelProto, label: str, forced: dict, input_axes: tuple) -> _Cut:
    """Translate with host nodes added until every region folds and holds a neuron."""
    host = dict(forced)
    labels = {node_label(n) for n in model.graph.node}
    for _ in range(_MAX_ROUNDS):
        cut = _Cut(model, network_view(model, label), label, host, input_axes)
        work = cut.t.work
        prune(work)
        added = {}
        component = _components(work)
        neurons = {component[n.name] for n in work.nodes.values() if n.kind == "if"}
        for onnx_node, names in cut.touched.items():
            if onnx_node in cut.host:
                continue
            live = [component[n] for n in names if n in component]
            if live and not any(c in neurons for c in live):
                added[onnx_node] = ("", "no neuron in its region: the values it computes are not spikes, so it "
                                        "runs with the host ops around it")
        if not added:
            fold_coefficients(work)
            for where, op, why in fold_biases(work):
                culprit = where if where in labels else _producer_of(model, where)
                if culprit is None or culprit in cut.host:
                    raise AssertionError(f"{label}: cannot place '{where}' ({op}: {why})")
                added[culprit] = (op, why)
        if not added:
            return cut
        host = {**cut.host, **added}
    raise AssertionError(f"{label}: the partition did not settle")


def partition(model: onnx.ModelProto, label: str, compensation: bool = True) -> Partition:
    """The regions and host stages of ``model`` (the folded untimed network, ``Export.folded``)."""
    forced = {k: ("", why) for k, why in compensated_nodes(model).items()} if compensation else {}
    for k in forced:
        op = next(n.op_type for n in model.graph.node if node_label(n) == k)
        forced[k] = (op, forced[k][1])
    view = network_view(model, label)
    cut = _cut_fixpoint(model, label, forced, ())
    for layout in layouts_to_try(view):
        swapped = _cut_fixpoint(model, label, forced, layout)
        if len(swapped.host) < len(cut.host):
            cut = swapped
    return _stages(model, cut)


def _stages(model: onnx.ModelProto, cut: _Cut) -> Partition:
    work, view = cut.t.work, cut.view
    host_nodes = [n for n in view.nodes if node_label(n) in cut.host]
    producer = {o: node_label(n) for n in host_nodes for o in n.output if o}
    readers_of_output = {out: [] for out in cut.host_reads.values()}
    for node in host_nodes:
        for name in list(node.input) + sorted(implicit_inputs(node)):
            if name in cut.host_reads and cut.host_reads[name] in work.nodes:
                readers_of_output[cut.host_reads[name]].append(node_label(node))
    # One graph of region work nodes ("w:") and host ops ("h:"), levelled: regions even, host odd.
    preds: dict[str, set[str]] = {f"w:{n}": set() for n in work.nodes}
    preds.update({f"h:{node_label(n)}": set() for n in host_nodes})
    for e in work.edges:
        preds[f"w:{e.dst}"].add(f"w:{e.src}")
    for tensor, stand_in in cut.stand_ins.items():
        if stand_in in work.nodes:
            preds[f"w:{stand_in}"].add(f"h:{producer[tensor]}")
    for node in host_nodes:
        for name in list(node.input) + sorted(implicit_inputs(node)):
            if name in producer:
                preds[f"h:{node_label(node)}"].add(f"h:{producer[name]}")
            elif name in cut.host_reads and cut.host_reads[name] in work.nodes:
                preds[f"h:{node_label(node)}"].add(f"w:{cut.host_reads[name]}")
    level: dict[str, int] = {}

    def visit(key: str) -> int:
        if key in level:
            return level[key]
        level[key] = -1  # guards against a cycle (none: both graphs are acyclic and joined by tensors)
        low = max((visit(p) for p in preds[key]), default=0)
        parity = 0 if key.startswith("w:") else 1
        level[key] = low if low % 2 == parity else low + 1
        return level[key]

    for key in preds:
        visit(key)
    # Region stages: connected parts of each even level; edges between levels become links.
    links: list[Edge] = [e for e in work.edges if level[f"w:{e.src}"] != level[f"w:{e.dst}"]]
    kept = [e for e in work.edges if level[f"w:{e.src}"] == level[f"w:{e.dst}"]]
    inner = WorkGraph()
    inner.nodes, inner.edges = dict(work.nodes), kept
    component = _components(inner)
    groups: dict[tuple, list[str]] = {}
    for name in work.nodes:
        groups.setdefault((level[f"w:{name}"], component[name]), []).append(name)
    regions: list[Region] = []
    where: dict[str, Region] = {}
    for index, ((stage, _), names) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0]))):
        sub = WorkGraph()
        sub.nodes = {n: work.nodes[n] for n in names}
        sub.edges = [e for e in kept if e.src in sub.nodes]
        region = Region(f"region_{len(regions)}", stage, sub)
        regions.append(region)
        for n in names:
            where[n] = region
    link_outputs: dict[str, str] = {}
    for e in links:
        if not e.is_plain:
            raise AssertionError(f"edge {e.src} -> {e.dst} between regions still carries a factor")
        src_region, dst_region = where[e.src], where[e.dst]
        tensor = LINK_PREFIX + e.src
        shape = work.nodes[e.src].out_shape
        layout = tuple(work.nodes[e.src].params.get("layout", ()))
        if e.src not in link_outputs:
            out = src_region.work.add("output", f"link_{e.src}", shape, shape)
            if layout:
                out.params["layout"] = layout
            src_region.work.edges.append(Edge(e.src, out.name, np.ones(shape)))
            link_outputs[e.src] = out.name
            src_region.outputs.append(Port(out.name, tensor, shape, layout))
        stand_in = dst_region.work.add("input", f"link_{e.src}", shape, shape)
        if layout:
            stand_in.params["layout"] = layout
        dst_region.work.edges.append(Edge(stand_in.name, e.dst, np.ones(shape)))
        dst_region.inputs.append(Port(stand_in.name, tensor, shape, layout))
    by_stand_in = {v: k for k, v in cut.stand_ins.items()}
    for region in regions:
        for n in list(region.work.nodes.values()):
            layout = tuple(n.params.get("layout", ()))
            if n.kind == "input" and n.name == cut.t.input.name:
                region.inputs.insert(0, Port(n.name, view.input_name, n.out_shape, layout))
            elif n.kind == "input" and n.name in by_stand_in:
                region.inputs.append(Port(n.name, by_stand_in[n.name], n.out_shape, layout))
            elif n.kind == "output" and not n.name.startswith("link_"):
                region.outputs.append(Port(n.name, n.onnx_node, n.in_shape, layout))
        region.onnx_nodes = sorted({k for k, made in cut.touched.items()
                                    if k not in cut.host and any(m in region.work.nodes for m in made)})
    hosts = _host_stages(model, host_nodes, level, regions)
    outputs = [o.name for o in model.graph.output]
    return Partition(regions, hosts, {k: v for k, v in cut.host.items()}, view.input_name, tuple(view.input_shape),
                     outputs, tuple(cut.t.input_axes))


def _host_stages(model: onnx.ModelProto, host_nodes: list, level: dict, regions: list[Region]) -> list[HostStage]:
    by_stage: dict[int, list] = {}
    for node in host_nodes:
        by_stage.setdefault(level[f"h:{node_label(node)}"], []).append(node)
    produced_at: dict[str, int] = {}
    for stage, nodes in by_stage.items():
        for node in nodes:
            for o in node.output:
                if o:
                    produced_at[o] = stage
    read_later: dict[str, set[int]] = {}
    for region in regions:
        for port in region.inputs:
            read_later.setdefault(port.tensor, set()).add(region.stage)
    for stage, nodes in by_stage.items():
        for node in nodes:
            for name in list(node.input) + sorted(implicit_inputs(node)):
                read_later.setdefault(name, set()).add(stage)
    graph_outputs = {o.name for o in model.graph.output}
    stages = []
    for index, stage in enumerate(sorted(by_stage)):
        nodes = by_stage[stage]
        made = {o for n in nodes for o in n.output if o}
        reads = []
        for node in nodes:
            for name in list(node.input) + sorted(implicit_inputs(node)):
                if name and name not in made and name not in reads:
                    reads.append(name)
        outs = [o for n in nodes for o in n.output if o and (o in graph_outputs or
                                                              any(s != stage for s in read_later.get(o, ())))]
        stages.append(HostStage(f"host_{index}", stage, nodes, reads, outs))
    return stages
