"""The PMSM dialect of NIR (docs/nir.md): metadata schema, and the check that a graph follows it."""
from __future__ import annotations

import nir
import numpy as np

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.neuron import NeuronParams
from pmsm.targets.nir import float32_pool as onnx_float32_pool

KEY = "pmsm"
VERSION = 1
DIALECT_FORMAT = "pmsm-nir/1"
STANDARD_FORMAT = "pmsm-nir-standard/1"
READOUT = "mean"
RESET = "subtract"
MAX_POOL = {"op": "max_pool2d", "version": VERSION}

NODE_TYPES = (nir.Input, nir.Output, nir.IF, nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale,
              nir.Flatten, nir.AvgPool2d, nir.SumPool2d)


def graph_metadata(timesteps: int, source_sha256: str, source: str) -> dict:
    # NIR cannot write None: every value is a number or a string.
    return {"version": VERSION, "format": DIALECT_FORMAT, "timesteps": int(timesteps),
            "source_sha256": str(source_sha256 or ""), "source": str(source or ""), "readout": READOUT}


def neuron_metadata(params: NeuronParams, onnx_node: str, layout: tuple = ()) -> dict:
    meta = {"version": VERSION, "lo": int(params.lo), "hi": int(params.hi), "v_init": float(params.v_init),
            "rounding": params.rounding, "reset": RESET, "onnx_node": str(onnx_node)}
    if layout:
        meta["layout"] = [int(a) for a in layout]
    return meta


def layout_metadata(layout: tuple) -> dict:
    return {"version": VERSION, "layout": [int(a) for a in layout]}


def layout(node: nir.NIRNode) -> tuple:
    """``metadata["pmsm"]["layout"]`` of an Input, Output or IF node: NIR axis ``i`` holds ONNX axis
    ``layout[i]`` (the batch is ONNX axis 0); ``()`` when NIR keeps ONNX's order."""
    meta = normalise(node.metadata or {}).get(KEY)
    value = meta.get("layout") if isinstance(meta, dict) else None
    if value is None:
        return ()
    value = tuple(int(a) for a in (value if isinstance(value, list) else [value]))
    if sorted(value) != list(range(1, len(value) + 1)):
        raise BadInputError(f"metadata['{KEY}']['layout'] {list(value)} is not a permutation of the axes 1..n")
    return value


def to_onnx_shape(nir_shape: tuple, axes: tuple) -> tuple:
    out = list(nir_shape)
    for i, a in enumerate(axes):
        out[a - 1] = nir_shape[i]
    return tuple(out)


def to_nir_layout(x, axes: tuple, lead: int = 1):
    """An array ``[*lead axes, *ONNX axes]`` in NIR's axis order (numpy arrays and torch tensors)."""
    if not axes:
        return x
    order = list(range(lead)) + [lead + a - 1 for a in axes]
    return x.transpose(order) if isinstance(x, np.ndarray) else x.permute(order)


def to_onnx_layout(x, axes: tuple, lead: int = 1):
    """The inverse of :func:`to_nir_layout`."""
    if not axes:
        return x
    order = list(range(lead)) + [lead + int(i) for i in np.argsort(axes)]
    return x.transpose(order) if isinstance(x, np.ndarray) else x.permute(order)


def normalise(value):
    """Metadata as plain Python: h5py gives back numpy scalars, arrays for lists, bytes for strings."""
    if isinstance(value, dict):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return normalise(value.tolist()) if value.ndim else normalise(value.item())
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def neuron_params(node: nir.IF, name: str, label: str) -> NeuronParams:
    """The PMSM parameters of an IF node; BadInputError when it is not a PMSM neuron."""
    meta = normalise(node.metadata or {}).get(KEY)
    if not isinstance(meta, dict):
        raise BadInputError(
            f"{label}: IF node '{name}' has no metadata['{KEY}']: a plain NIR IF is a binary integrate-and-fire "
            "neuron (one spike at threshold 1, reset to 0), a different neuron from the PMSM multi-spike neuron; "
            "this graph was not written in the PMSM dialect (or its metadata was stripped)")
    missing = [k for k in ("version", "lo", "hi", "v_init", "rounding", "reset") if k not in meta]
    if missing:
        raise BadInputError(f"{label}: IF node '{name}': metadata['{KEY}'] lacks {', '.join(missing)}")
    if meta["version"] != VERSION or meta["reset"] != RESET:
        raise BadInputError(f"{label}: IF node '{name}': unsupported PMSM neuron version {meta['version']!r} "
                            f"or reset {meta['reset']!r} (this reader knows version {VERSION}, reset '{RESET}')")
    for field, want in (("r", 1.0), ("v_threshold", 1.0), ("v_reset", 0.0)):
        if not np.all(np.asarray(getattr(node, field)) == want):
            raise BadInputError(f"{label}: IF node '{name}': {field} must be {want:g} everywhere in the PMSM dialect")
    try:
        return NeuronParams(meta["lo"], meta["hi"], float(meta["v_init"]), meta["rounding"])
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"{label}: IF node '{name}': {exc}") from None


def is_standard_profile(graph: nir.NIRGraph) -> bool:
    """A standard-profile file (binary IF units only, pmsm.targets.nir.standard)."""
    meta = normalise(graph.metadata or {}).get(KEY)
    return isinstance(meta, dict) and meta.get("format") == STANDARD_FORMAT


def readout_add(total, value):
    """The readout's running sum (docs/nir.md §4a): each step's output rounded to float32, added in
    time order in float32, as the spiking ONNX's ``ReduceMean`` over the steps adds them
    (onnxruntime, measured: a float64 sum differs in the last bit in a third of the means at T = 4,
    enough to flip an argmax between two logits one ulp apart). Numpy arrays or torch tensors;
    ``total`` is None before the first step."""
    if isinstance(value, np.ndarray) or np.isscalar(value):
        step = np.asarray(value).astype(np.float32)
        return step if total is None else (total + step).astype(np.float32)
    import torch

    step = value.to(torch.float32)
    return step if total is None else total + step


def readout_mean(total, timesteps: int):
    """The readout: the float32 running sum divided by ``T`` in float32 (:func:`readout_add`)."""
    if isinstance(total, np.ndarray):
        return (total / np.float32(timesteps)).astype(np.float32)
    return total / float(timesteps)  # a float32 tensor divided by a Python scalar stays float32


def float32_pool(node: nir.NIRNode, name: str = "?", label: str = "<nir graph>"):
    """The ONNX float32 average pool a ``Conv1d`` is marked as (docs/nir.md §5a), or None."""
    if not isinstance(node, nir.Conv1d):
        return None
    meta = normalise(node.metadata or {}).get(KEY, {})
    op = meta.get("op", "conv1d") if isinstance(meta, dict) else None
    if op not in ("conv1d", "sum_pool1d", onnx_float32_pool.OP):
        raise BadInputError(f"{label}: Conv1d node '{name}' has unknown metadata['{KEY}']['op'] {op!r}")
    try:
        return onnx_float32_pool.of_node(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{label}: Conv1d node '{name}': metadata['{KEY}'] of {onnx_float32_pool.OP}: {exc}") from None


def is_max_pool(node: nir.NIRNode) -> bool:
    return isinstance(node, nir.SumPool2d) and normalise(node.metadata or {}).get(KEY, {}).get("op") == "max_pool2d"


def check(graph: nir.NIRGraph, label: str) -> None:
    """Raise BadInputError unless ``graph`` is a PMSM-dialect graph this package can execute."""
    meta = normalise(graph.metadata or {}).get(KEY)
    if meta is not None:
        if not isinstance(meta, dict) or meta.get("format") != DIALECT_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else meta
            raise BadInputError(f"{label}: graph metadata['{KEY}'] has format {got!r}; this reader knows '{DIALECT_FORMAT}'")
        if meta.get("readout", READOUT) != READOUT:
            raise BadInputError(f"{label}: unknown readout {meta.get('readout')!r} (expected '{READOUT}')")
    for name, node in graph.nodes.items():
        if not isinstance(node, NODE_TYPES):
            raise BadInputError(f"{label}: node '{name}' has NIR type {type(node).__name__}, which the PMSM dialect "
                                "does not use")
        if isinstance(node, nir.IF):
            neuron_params(node, name, label)
        if isinstance(node, nir.SumPool2d):
            op = normalise(node.metadata or {}).get(KEY, {}).get("op", "sum_pool2d")
            if op not in ("max_pool2d", "sum_pool2d"):
                raise BadInputError(f"{label}: SumPool2d node '{name}' has unknown metadata['{KEY}']['op'] {op!r}")
        if isinstance(node, nir.Conv1d):
            float32_pool(node, name, label)
    inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    region = isinstance(normalise(graph.metadata or {}).get(KEY), dict) and \
        "deployment_region" in normalise(graph.metadata or {})[KEY]
    if len(inputs) != 1 and not (region and inputs):  # a region of a deployment: one Input per tensor it reads
        raise BadInputError(f"{label}: expected exactly one Input node, found {len(inputs)}")
    if not any(isinstance(node, nir.Output) for node in graph.nodes.values()):
        raise BadInputError(f"{label}: the graph has no Output node")
