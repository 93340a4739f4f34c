"""A hybrid NIR deployment (docs/nir.md §7): NIR regions in the PMSM dialect, host ops as standard
ONNX, and a manifest that says how they meet at every timestep; built, written, read and run.

The container is one zip archive (format ``pmsm-nir-deployment/1``)::

    manifest.json            the format, the schedule of one timestep, every tensor crossing a boundary
    regions/region_K.nir     one standard NIR 1.0.8 file per region (nir.read type checks each)
    host/host_K.onnx         one standard ONNX model per host stage (plain ONNX Runtime runs it)

One timestep runs every stage of ``manifest["stages"]`` once, in order. A stage reads tensors by
name: the data input, or a tensor an earlier stage (or, for a host stage, itself) wrote at this
step. A host model has two more kinds of inputs: ``step`` (the 0-based timestep, int64 scalar) and
its compensation state (each carried from its ``state`` output of the previous step; the initial
value is the input's initializer in the model). Graph outputs are averaged over the timesteps.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import nir
import numpy as np
import onnx
from onnx import TensorProto, helper

from pmsm.exporter.compensation import compensate
from pmsm.exporter.synapses import mac_share, synaptic_layers
from pmsm.exporter.timeloop import Names, element_types
from pmsm.runtime import neuron
from pmsm.runtime.backend import BackendRun, ProgressFn
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.files import atomic_write_bytes
from pmsm.runtime.base.proto import implicit_inputs
from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.schema import NEURON_DOMAIN, is_neuron
from pmsm.targets.nir import dialect
from pmsm.targets.nir.emit import to_nir
from pmsm.targets.nir.interpreter import NirInterpreter, _linear_op
from pmsm.targets.nir.io import read_nir, write_nir
from pmsm.targets.nir.onnx_view import node_label
from pmsm.targets.nir.partition import LINK_PREFIX, Partition

FORMAT = "pmsm-nir-deployment/1"
MANIFEST = "manifest.json"
STEP_INPUT = "step"
ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass
class Deployment:
    manifest: dict
    regions: dict[str, nir.NIRGraph]
    hosts: dict[str, onnx.ModelProto]
    files: dict[str, bytes] = field(default_factory=dict)  # archive member -> bytes (as written)
    derived: dict = field(default_factory=dict, repr=False, compare=False)  # what runners derive once per deployment

    @property
    def neuron_layers(self) -> int:
        return sum(1 for g in self.regions.values() for n in g.nodes.values() if isinstance(n, nir.IF))


def is_deployment(data: bytes) -> bool:
    return data[:4] == ZIP_SIGNATURE


# -- building ------------------------------------------------------------------------------------


def build(folded: onnx.ModelProto, part: Partition, *, compensation: bool, timesteps: int, source_sha256: str,
          source_name: str, summary: dict) -> Deployment:
    """The deployment of ``part`` (a partition of ``folded``)."""
    regions, hosts, stages = {}, {}, []
    for region in part.regions:
        meta = dialect.graph_metadata(int(timesteps), source_sha256, source_name)
        meta["deployment_region"] = region.name
        regions[region.name] = to_nir(region.work, meta)
    varying = _varying(folded)
    dtypes = element_types(folded)
    initializers = {t.name: t for t in folded.graph.initializer}
    for stage in part.stages:
        if stage in part.regions:
            stages.append({"kind": "region", "name": stage.name, "file": f"regions/{stage.name}.nir",
                           "inputs": [_port(p) for p in stage.inputs], "outputs": [_port(p) for p in stage.outputs],
                           "onnx_nodes": stage.onnx_nodes})
        else:
            model, state = _host_model(folded, stage, varying, dtypes, initializers, compensation)
            hosts[stage.name] = model
            stages.append({"kind": "host", "name": stage.name, "file": f"host/{stage.name}.onnx",
                           "inputs": [n for n in stage.inputs if n not in initializers],
                           "outputs": list(stage.outputs), "state": state,
                           "ops": [{"node": node_label(n), "op": n.op_type} for n in stage.nodes]})
    outputs = []
    for name in part.graph_outputs:
        where = next((s["name"] for s in stages if name in [p["tensor"] if isinstance(p, dict) else p
                                                              for p in s["outputs"]]), None)
        outputs.append({"tensor": name, "stage": where})
    manifest = {
        "format": FORMAT, "nir_version": nir.__version__ if hasattr(nir, "__version__") else "1.0.8",
        "dialect": dialect.KEY, "timesteps": int(timesteps), "compensation": bool(compensation),
        "source": source_name, "source_sha256": source_sha256,
        "data_input": {"tensor": part.data_input, "shape": list(part.data_shape),
                       "batch": _batch_of(folded, part.data_input)},
        "readout": "mean", "outputs": outputs, "stages": stages,
        "host_reasons": {k: {"op": op, "why": why} for k, (op, why) in part.host_reasons.items()},
        "summary": summary,
    }
    return Deployment(manifest, regions, hosts)


def _batch_of(model: onnx.ModelProto, name: str):
    """The fixed batch size of the data input (the host models run that many samples), or None."""
    for vi in model.graph.input:
        if vi.name == name and vi.type.tensor_type.shape.dim:
            d = vi.type.tensor_type.shape.dim[0]
            return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
    return None


def _port(p) -> dict:
    return {"node": p.node, "tensor": p.tensor, "shape": [int(d) for d in p.shape],
            "layout": [int(a) for a in p.layout]}


def _varying(network: onnx.ModelProto) -> set[str]:
    varying: set[str] = set()
    for node in network.graph.node:
        reads = [n for n in node.input if n] + sorted(implicit_inputs(node))
        if is_neuron(node) or (node.op_type not in ("Shape", "Size") and any(n in varying for n in reads)):
            varying.update(o for o in node.output if o)
    return varying


def _host_model(folded: onnx.ModelProto, stage, varying: set[str], dtypes: dict, initializers: dict,
                compensation: bool) -> tuple[onnx.ModelProto, list]:
    """One host stage as a standard ONNX model of one timestep (module docstring)."""
    for node in stage.nodes:
        if is_neuron(node) or node.domain == NEURON_DOMAIN:
            raise BadInputError(f"neuron '{node_label(node)}' cannot be placed in a NIR region; a host stage "
                                "cannot hold a neuron")
    names = Names(folded)
    nodes = []
    for node in stage.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        nodes.append(copy)
    state = []
    extra_inputs = [helper.make_tensor_value_info(STEP_INPUT, TensorProto.INT64, [])]
    inits = []
    if compensation:
        done = compensate(nodes, varying, dtypes, STEP_INPUT, names)
        nodes = done.nodes
        for s_in, s_out, initial in done.state:
            init = onnx.TensorProto()
            init.CopyFrom(initial)
            init.name = s_in
            inits.append(init)
            extra_inputs.append(helper.make_tensor_value_info(s_in, initial.data_type, None))
            state.append({"input": s_in, "output": s_out})
    used = {n for node in nodes for n in list(node.input) + sorted(implicit_inputs(node)) if n}
    made = {o for node in nodes for o in node.output if o}
    data_inputs = [n for n in stage.inputs if n not in initializers]
    inits += [initializers[n] for n in sorted(used) if n in initializers and n not in made]
    inputs = [helper.make_tensor_value_info(n, dtypes.get(n, TensorProto.FLOAT), None) for n in data_inputs]
    outputs = [helper.make_tensor_value_info(n, dtypes.get(n, TensorProto.FLOAT), None) for n in stage.outputs]
    outputs += [helper.make_tensor_value_info(s["output"], TensorProto.FLOAT, None) for s in state]
    graph = helper.make_graph(nodes, stage.name, inputs + extra_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[o for o in folded.opset_import if o.domain != NEURON_DOMAIN])
    model.ir_version = folded.ir_version
    return model, state


# -- the archive ---------------------------------------------------------------------------------


def archive_bytes(deployment: Deployment) -> bytes:
    """The archive of ``deployment``; every member's bytes kept on it (``files``)."""
    files = {}
    with tempfile.TemporaryDirectory(prefix="pmsm-deploy-") as folder:
        for name, graph in deployment.regions.items():
            path = os.path.join(folder, f"{name}.nir")
            write_nir(graph, path)
            with open(path, "rb") as handle:
                files[f"regions/{name}.nir"] = handle.read()
    for name, model in deployment.hosts.items():
        files[f"host/{name}.onnx"] = model.SerializeToString()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        members = {MANIFEST: json.dumps(deployment.manifest, indent=1, sort_keys=False).encode(), **files}
        for member, data in members.items():
            archive.writestr(_entry(member), data)
    deployment.files = files
    return buffer.getvalue()


def _entry(member: str) -> zipfile.ZipInfo:
    """A member with a fixed date (the zip format's earliest) and mode: the same network gives the
    same archive, byte for byte, whenever it is converted."""
    entry = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = 0o644 << 16
    return entry


def write_deployment(deployment: Deployment, path: str) -> None:
    atomic_write_bytes(path, archive_bytes(deployment))


def read_deployment_bytes(data: bytes, label: str = "<deployment>") -> Deployment:
    """Read an archive: the manifest checked, every region read by nir.read with type checking
    and the dialect's checks, every host model by the ONNX checker."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        manifest = json.loads(archive.read(MANIFEST))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BadInputError(f"{label}: not a PMSM NIR deployment archive ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BadInputError(f"{label}: unsupported deployment format {manifest.get('format')!r}; expected {FORMAT}")
    regions, hosts = {}, {}
    with tempfile.TemporaryDirectory(prefix="pmsm-deploy-") as folder:
        for stage in manifest["stages"]:
            member = archive.read(stage["file"])
            if stage["kind"] == "region":
                path = os.path.join(folder, f"{stage['name']}.nir")
                with open(path, "wb") as handle:
                    handle.write(member)
                regions[stage["name"]] = read_nir(path)
            else:
                hosts[stage["name"]] = onnx.load_from_string(member)
    return Deployment(manifest, regions, hosts)


def read_deployment(path: str) -> Deployment:
    with open(path, "rb") as handle:
        return read_deployment_bytes(handle.read(), path)


def read_target_file(path: str):
    """What the nir target wrote at ``path``: a NIR graph, or a :class:`Deployment`."""
    with open(path, "rb") as handle:
        data = handle.read()
    return (read_deployment_bytes(data, path) if is_deployment(data) else read_nir(path)), data


# -- running -------------------------------------------------------------------------------------


class _Region:
    def __init__(self, graph: nir.NIRGraph, stage: dict, engine: str = "interpreter"):
        self.interp = NirInterpreter(graph, stage["name"])
        self.engine = engine
        self.modules = _torch_modules(graph, stage["name"]) if engine == "torch" else {}
        self.stage = stage
        self.inputs = [(p["node"], p["tensor"], tuple(p["layout"])) for p in stage["inputs"]]
        self.outputs = [(p["node"], p["tensor"], tuple(p["layout"])) for p in stage["outputs"]]
        self.layouts = self.interp.layouts
        self._ops = {"value": self.interp.ops}
        if engine == "torch":
            self._ops["value"] = {k: _torch_op(self.modules[k]) for k in self.interp.ops}

    def fire(self, name: str, z: np.ndarray, membrane):
        """One step of neuron ``name``: ``(membrane, spikes)``; the torch engine runs the torch
        runtime's neuron module, the interpreter the numpy neuron."""
        if self.engine == "torch":
            import torch  # the torch extra: only the torch engine runs here

            spikes, membrane = self.modules[name](torch.from_numpy(z), membrane)
            return membrane, spikes.numpy()
        params = self.interp.neurons[name]
        return neuron.step(membrane if membrane is not None else neuron.initial_membrane(z.shape, params), z, params)

    def ops(self, mode: str) -> dict:
        if mode not in self._ops:
            if mode == "absolute":
                self._ops[mode] = {k: _linear_op(self.interp.graph.nodes[k], k, absolute=True) for k in self.interp.ops}
            else:  # indicator: every non-zero parameter counts 1
                graph = self.interp.graph
                self._ops[mode] = {k: _linear_op(_indicator(graph.nodes[k]), k) for k in self.interp.ops}
        return self._ops[mode]


def _torch_modules(graph: nir.NIRGraph, label: str) -> dict:
    from pmsm.targets.torch.network import node_map  # the torch extra: only the torch engine needs it

    mapping = node_map(graph, label)
    return {name: mapping[type(node)](node).double() for name, node in graph.nodes.items()
            if not isinstance(node, nir.Input)}


def _torch_op(module):
    import torch  # the torch extra: only the torch engine runs here

    def run(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(z))).numpy()
    return run


def _indicator(node):
    import copy

    if not isinstance(node, (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
        return node
    clone = copy.copy(node)
    for attr in ("weight", "bias", "scale"):
        if getattr(node, attr, None) is not None:
            setattr(clone, attr, (np.asarray(getattr(node, attr)) != 0).astype(np.float32))
    return clone


class DeploymentRunner:
    """Runs a deployment step by step: regions by the NIR interpreter's arithmetic (docs/nir.md
    §4), host stages by ONNX Runtime (unoptimised sessions, as the spiking ONNX is verified)."""

    def __init__(self, deployment: Deployment, engine: str = "interpreter"):
        """``engine``: what runs the regions: ``interpreter`` (the numpy NIR interpreter) or
        ``torch`` (the torch runtime's modules, float64: pmsm.targets.torch)."""
        self.deployment = deployment
        m = deployment.manifest
        self.stages = []
        for stage in m["stages"]:
            if stage["kind"] == "region":
                self.stages.append(_Region(deployment.regions[stage["name"]], stage, engine))
            else:
                self.stages.append((stage, inference_session(deployment.hosts[stage["name"]])))
        self.data_input = m["data_input"]["tensor"]
        self.input_shape = tuple(m["data_input"]["shape"])
        self.outputs = [o["tensor"] for o in m["outputs"]]
        self.batch = m["data_input"].get("batch")

    def run(self, x: np.ndarray, timesteps: int, collect_spikes: bool = False, replay: dict | None = None,
            modes: tuple = ("value",), steps: list | None = None, watch=None) -> tuple[np.ndarray, dict, dict]:
        """``(mean output [N, ...], spikes by neuron [T, N, ...], neuron inputs by mode and neuron)``.

        ``replay``: spikes (keyed like the result) the neurons emit instead of running; the inputs
        returned are then what each neuron receives from those spikes. ``modes``: besides the
        ``value``, ``absolute`` (every region parameter, input and spike by its magnitude: the sum
        of the magnitudes of the terms each neuron input adds up) and ``indicator`` (1 for every
        non-zero parameter, input and spike: how many terms it adds up); host stages run on the
        values, regions read the magnitude or indicator of what the host gives them. ``watch``:
        called as ``watch(tensor, value)`` with every tensor a stage writes, at every step."""
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            raise BadInputError(f"deployment: input of shape {x.shape} does not match [N, {self.input_shape}]")
        n = x.shape[0]
        chunk = self.batch or n
        outs, spikes, inputs = [], {}, {mode: {} for mode in modes}
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            xb = x[start:stop]
            if self.batch and stop - start < chunk:
                xb = np.concatenate([xb, np.zeros((chunk - (stop - start),) + xb.shape[1:], np.float32)])
            r = None if replay is None else (replay, start, stop, chunk)
            out, s, z, per_step = self._run_chunk(xb, int(timesteps), r, modes, watch)
            outs.append(out[: stop - start])
            if steps is not None:  # each step's first graph output, [T, n, ...]
                steps.append(per_step[:, : stop - start])
            for store, values in [(spikes, s)] + [(inputs[mode], z[mode]) for mode in modes]:
                for key, per_step_values in values.items():
                    a = np.stack(per_step_values)
                    store.setdefault(key, []).append(a[:, : stop - start] if a.ndim > 1 and a.shape[1] == chunk
                                                      else a[:, None])
        cat = {k: np.concatenate(v, axis=1) for k, v in spikes.items()}
        return (np.concatenate(outs), cat,
                {mode: {k: np.concatenate(v, axis=1) for k, v in inputs[mode].items()} for mode in modes})

    def _run_chunk(self, x: np.ndarray, timesteps: int, replay, modes: tuple, watch=None):
        membranes: dict = {}
        state: dict = {}
        sums = {name: None for name in self.outputs}
        spikes: dict = {}
        inputs: dict = {mode: {} for mode in modes}
        per_step = []
        for t in range(timesteps):
            values = {self.data_input: x}
            links = {mode: {} for mode in modes}  # region-to-region tensors, per mode
            for stage in self.stages:
                if isinstance(stage, _Region):
                    for mode in modes:
                        self._region_step(stage, values, links[mode], membranes, spikes if mode == "value" else {},
                                          inputs[mode], t, replay, mode)
                else:
                    self._host_step(stage, values, state, t)
                if watch is not None:
                    written = stage.outputs if isinstance(stage, _Region) else [(None, n, None) for n in stage[0]["outputs"]]
                    for _, tensor, _ in written:
                        watch(tensor, values[tensor])
            for name in self.outputs:
                sums[name] = dialect.readout_add(sums[name], values[name])
            per_step.append(values[self.outputs[0]].astype(np.float32))
        return dialect.readout_mean(sums[self.outputs[0]], timesteps), spikes, inputs, np.stack(per_step)

    def _region_step(self, region: _Region, values: dict, links: dict, membranes: dict, spikes: dict, inputs: dict,
                     t: int, replay, mode: str) -> None:
        interp = region.interp
        local = {}
        for node, tensor, layout in region.inputs:
            if tensor.startswith(LINK_PREFIX) and mode != "value":
                v = links[tensor]
            else:
                v = np.asarray(values[tensor], np.float64)
                v = np.abs(v) if mode == "absolute" else (v != 0).astype(np.float64) if mode == "indicator" else v
                v = np.ascontiguousarray(dialect.to_nir_layout(v, layout))
            local[node] = v
        ops = region.ops(mode)
        for name in interp.order:
            if name in local:
                continue
            z = interp._input_of(name, local)
            if name in interp.neurons:
                key = interp.key(name)
                layout = interp.layouts.get(name, ())
                inputs.setdefault(key, []).append(dialect.to_onnx_layout(z, layout))
                if replay is not None:
                    s = dialect.to_nir_layout(_replayed(replay, key, t, z.shape[0]), layout)
                    s = np.abs(s) if mode == "absolute" else (s != 0).astype(np.float64) if mode == "indicator" else s
                else:
                    where = (region.stage["name"], name)
                    membranes[where], s = region.fire(name, z, membranes.get(where))
                    s = np.asarray(s, np.float64)
                if mode == "value":
                    spikes.setdefault(key, []).append(dialect.to_onnx_layout(s.astype(np.float32), layout))
                local[name] = s
            else:
                local[name] = ops[name](z)
        for node, tensor, layout in region.outputs:
            if mode == "value":
                values[tensor] = np.ascontiguousarray(dialect.to_onnx_layout(local[node].astype(np.float32), layout))
            if tensor.startswith(LINK_PREFIX):
                links[tensor] = local[node]

    def _host_step(self, stage, values: dict, state: dict, t: int) -> None:
        spec, session = stage
        feeds = {name: values[name] for name in spec["inputs"]}
        declared = {i.name for i in session.get_inputs()}
        if STEP_INPUT in declared:
            feeds[STEP_INPUT] = np.array(t, np.int64)
        for s in spec["state"]:  # keyed by stage: two host models may name their state alike
            if (spec["name"], s["input"]) in state:
                feeds[s["input"]] = state[(spec["name"], s["input"])]
        names = list(spec["outputs"]) + [s["output"] for s in spec["state"]]
        for name, value in zip(names, session.run(names, feeds)):
            values[name] = value
        for s in spec["state"]:
            state[(spec["name"], s["input"])] = values.pop(s["output"])


def _replayed(replay, key: str, t: int, rows: int) -> np.ndarray:
    """Step ``t`` of the given spikes of neuron ``key`` for the chunk being run: ``[T, N, ...]``
    when the tensor has the batch first, else one entry per run (as the spiking ONNX reports them)."""
    spikes, start, stop, chunk = replay
    a = np.asarray(spikes[key][t], np.float64)
    if rows == chunk and a.shape[0] >= stop and (chunk > 1 or a.shape[0] > start):
        part = a[start:stop]
        if part.shape[0] < chunk:
            part = np.concatenate([part, np.zeros((chunk - part.shape[0],) + part.shape[1:])])
        return part
    return a[start // chunk]


class DeploymentBackend:
    """A deployment as a backend of ``--verify``: regions by the project's NIR interpreter (or,
    ``engine="torch"``, by the torch runtime), host stages by ONNX Runtime; its spikes are explained
    per layer against the spiking ONNX."""

    reference = "onnx"
    sample_limit = None
    explained = True

    def __init__(self, deployment: Deployment, engine: str = "interpreter"):
        self.name = "torch" if engine == "torch" else "nir"
        self.runner = DeploymentRunner(deployment, engine)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        output, spikes, _ = self.runner.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=output, spikes=spikes)


def summarise(folded: onnx.ModelProto, part: Partition) -> dict:
    """What runs where: per region its neuron layers, neurons, synapses (weights) and MACs per
    sample; the host ops by type; the share of the network's MACs that run in regions."""
    layers = {layer.name: layer for layer in synaptic_layers(folded)}
    shares = mac_share(folded)
    rows = []
    in_regions = 0
    for region in part.regions:
        nodes = region.work.nodes.values()
        macs = sum(layers[k].macs or 0 for k in region.onnx_nodes if k in layers)
        in_regions += macs
        rows.append({
            "region": region.name, "stage": region.stage,
            "neuron_layers": sum(1 for n in nodes if n.kind == "if"),
            "neurons": int(sum(int(np.prod(n.out_shape)) for n in nodes if n.kind == "if")),
            "synapses": int(sum(int(np.size(n.params["weight"])) for n in nodes if "weight" in n.params)),
            "macs": int(macs),
            "inputs": [p.tensor for p in region.inputs], "outputs": [p.tensor for p in region.outputs],
        })
    ops: dict[str, int] = {}
    for host in part.hosts:
        for node in host.nodes:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    host_macs = sum(layer.macs or 0 for name, layer in layers.items()
                    if not any(name in r.onnx_nodes for r in part.regions))
    total = shares["macs_per_sample"] or 0
    return {
        "regions": rows, "host_stages": len(part.hosts), "host_ops": dict(sorted(ops.items())),
        "region_macs": int(in_regions), "host_weight_macs": int(host_macs),
        "activation_product_macs": int(shares["activation_products"] or 0), "macs_per_sample": int(total),
        "region_mac_share": in_regions / total if total else None,
        "spiking_mac_share": shares["spiking_share"],
    }


def summary_lines(manifest: dict) -> list[str]:
    """What runs where, in a few lines (the command's notes)."""
    s = manifest["summary"]
    regions = s["regions"]
    share = s["region_mac_share"]
    lines = [f"hybrid NIR deployment ({FORMAT}): {len(regions)} NIR region(s) with "
             f"{sum(r['neuron_layers'] for r in regions)} neuron layer(s), {sum(r['neurons'] for r in regions)} "
             f"neurons, {sum(r['synapses'] for r in regions)} synapses; {s['host_stages']} host stage(s)",
             f"MACs on neuromorphic cores: {s['region_macs']} of {s['macs_per_sample']} per sample"
             + (f" ({100 * share:.1f} %)" if share is not None else ""),
             "host ops: " + ", ".join(f"{op} x{n}" for op, n in s["host_ops"].items())]
    return lines


def report_section(manifest: dict) -> dict:
    """The report's ``deployment`` section: the summary, and the schedule of one timestep."""
    section = dict(manifest["summary"])
    section["format"] = manifest["format"]
    section["schedule"] = [{"stage": s["name"], "kind": s["kind"],
                            "ops": [o["op"] for o in s.get("ops", [])]} for s in manifest["stages"]]
    section["host_reasons"] = manifest["host_reasons"]
    return section
