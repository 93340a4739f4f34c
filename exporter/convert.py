"""Source quantized ANN -> spiking ONNX, as a sequence of small named passes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from pmsm.errors import BadInputError, UnsupportedModelError
from pmsm.exporter import normalise, quantizers, timefold
from pmsm.exporter.preflight import unsupported_for_onnx
from pmsm.exporter.quantizers import NEURON_DOMAIN, NeuronRecord

FORMAT = "spiking-onnx/1"
IR_VERSION = 10

NORMALISATION_PASSES: tuple[tuple[str, Callable[[gs.Graph], gs.Graph]], ...] = (
    ("drop initializer inputs", normalise.drop_initializer_inputs),
    ("fold QONNX weight quantizers", normalise.fold_qonnx_weight_quantizers),
    ("fold constants", normalise.fold_constants),
    ("remove identities", normalise.remove_identities),
    ("reduce straight-through idioms", normalise.reduce_straight_through_idioms),
    ("make reshapes batch-agnostic", normalise.make_reshapes_batch_agnostic),
)
REWRITE_PASSES = (
    ("QDQ/QCDQ quantizers", quantizers.rewrite_qdq),
    ("QONNX quantizers", quantizers.rewrite_qonnx),
    ("rounding chains", quantizers.rewrite_rounding_chains),
)


@dataclass
class Conversion:
    """A rewritten (not yet time-folded) graph, its neurons, and what could not be converted."""

    graph: gs.Graph
    neurons: list[NeuronRecord] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)


def rewrite(model: onnx.ModelProto) -> Conversion:
    """Normalise the graph and replace every activation quantizer's rounding core with a neuron."""
    graph = gs.import_onnx(model)
    for _name, run_pass in NORMALISATION_PASSES:
        graph = run_pass(graph)
    conversion = Conversion(graph)
    for _name, run_pass in REWRITE_PASSES:
        conversion.neurons += run_pass(graph, conversion.problems)
    conversion.neurons = quantizers.absorb_relus(graph, conversion.neurons)
    return conversion


def check(model: onnx.ModelProto, path: str = "model") -> Conversion:
    """Pre-flight for the onnx target: raise UnsupportedModelError listing every offending node."""
    conversion = rewrite(model)
    problems = _unique(conversion.problems + unsupported_for_onnx(conversion.graph))
    if problems:
        raise UnsupportedModelError(path, "onnx", problems)
    if not conversion.neurons:
        raise BadInputError(
            f"{path}: no activation quantizer found; expected QuantizeLinear/DequantizeLinear pairs, QONNX Quant, "
            "or a Floor/Round with Clip (PyTorch PMSM/QCFS layers); a float model has nothing to map to spikes"
        )
    return conversion


def to_spiking_onnx(model: onnx.ModelProto, *, path: str = "model", source_sha256: str = "",
                    default_timesteps: int = 1) -> tuple[onnx.ModelProto, list[NeuronRecord]]:
    """The spiking ONNX model (docs/spiking-onnx.md) and the neuron layers it contains."""
    conversion = check(model, path)
    graph = conversion.graph
    timefold.forget_batch_shapes(graph)
    timefold.fold_time_into_batch(graph)
    timefold.mean_readout(graph)
    graph.cleanup().toposort()
    spiking = gs.export_onnx(graph, do_type_check=False)
    _finish_model(spiking, model, source_sha256, default_timesteps)
    return spiking, conversion.neurons


def _finish_model(spiking: onnx.ModelProto, source: onnx.ModelProto, source_sha256: str, timesteps: int) -> None:
    spiking.ir_version = IR_VERSION
    imports = {op.domain: op.version for op in spiking.opset_import}
    for op in source.opset_import:
        imports.setdefault(op.domain, op.version)
    imports[NEURON_DOMAIN] = 1
    used = {node.domain for node in spiking.graph.node} | {""}
    del spiking.opset_import[:]
    spiking.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(imports.items()) if d in used)
    spiking.producer_name = "pmsm-export"
    from pmsm import __version__

    spiking.producer_version = __version__
    onnx.helper.set_model_props(spiking, {
        "pmsm.format": FORMAT,
        "pmsm.source_sha256": source_sha256,
        "pmsm.default_timesteps": str(timesteps),
    })


def _unique(problems):
    seen, unique = set(), []
    for problem in problems:
        if problem[0] not in seen:
            seen.add(problem[0])
            unique.append(problem)
    return unique
