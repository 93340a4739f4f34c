"""Source quantized ANN -> spiking ONNX, as a sequence of small named passes.

1. Normalisation (:mod:`pmsm.exporter.normalise`): bring every producer's way of writing a
   quantized network to one shape, changing no number the network computes. Weights stay as the
   source computes them (int8 behind ``DequantizeLinear`` stays int8).
2. Rewrite (:mod:`pmsm.exporter.quantizers`, one rule per quantizer pattern run by
   :mod:`pmsm.exporter.rules`): each activation quantizer's rounding core becomes an
   ``ai.pmsm::MultiSpikeNeuron``; its pre-scaling and de-quantization stay as the source wrote them.
   The result is the *untimed network*: what the NIR target reads.
3. Pre-flight (:mod:`pmsm.exporter.preflight`): every node left must be deterministic ONNX.
4. Time (:mod:`pmsm.exporter.timeloop`): the network inside a ``Loop`` over timesteps, with
   temporal compensation of nonlinear ops (:mod:`pmsm.exporter.compensation`) unless switched off.

Inference-mode ``BatchNormalization`` is kept as the standard op the source wrote. Folding it into
the neighbouring weights would re-associate float arithmetic and lose T = 1 exactness; targets that
cannot express it (NIR, Lava) fold it themselves, where float re-association is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from pmsm.exporter import normalise, quantizers
from pmsm.exporter.degenerate import DegenerateQuantizerError
from pmsm.exporter.preflight import unsupported_for_onnx
from pmsm.exporter.proof import prove
from pmsm.exporter.quantizers import NEURON_DOMAIN, NeuronRecord
from pmsm.exporter.timeloop import TimedModel, loop_over_time
from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.runtime.base.version import __version__
from pmsm.runtime.portable import attach_neuron_function
from pmsm.runtime.schema import NEURON_DOMAIN_VERSION, SPIKING_ONNX_FORMAT

IR_VERSION = 10

NORMALISATION_PASSES: tuple[tuple[str, Callable[[gs.Graph], gs.Graph]], ...] = (
    ("drop initializer inputs", normalise.drop_initializer_inputs),
    ("QONNX weight quantizers as standard ops", normalise.expand_qonnx_weight_quantizers),
    ("fold constants", normalise.fold_constants),
    ("remove identities", normalise.remove_identities),
    ("reduce straight-through idioms", normalise.reduce_straight_through_idioms),
)


@dataclass
class Conversion:
    """A rewritten (not yet time-folded) graph, its neurons, and what could not be converted."""

    graph: gs.Graph
    neurons: list[NeuronRecord] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)


def rewrite(model: onnx.ModelProto) -> Conversion:
    """Normalise the graph and replace every activation quantizer's rounding core with a neuron."""
    graph = gs.import_onnx(_with_inferred_shapes(model))
    for _name, run_pass in NORMALISATION_PASSES:
        graph = run_pass(graph)
    conversion = Conversion(graph)
    conversion.neurons = quantizers.recognise(graph, conversion.problems)
    if not conversion.problems:
        rewritten = gs.export_onnx(graph, do_type_check=False)
        conversion.problems += prove(model, rewritten, conversion.neurons)
    return conversion


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ONNX shape inference's value infos (per-channel quantizers need ranks)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help; the passes work without shapes
        return model


def check(model: onnx.ModelProto, path: str = "model") -> Conversion:
    """Pre-flight for the onnx target: raise UnsupportedModelError listing every offending node."""
    try:
        conversion = rewrite(model)
    except DegenerateQuantizerError as error:
        raise error.at(path) from None
    problems = _unique(conversion.problems + unsupported_for_onnx(conversion.graph))
    if problems:
        raise UnsupportedModelError(path, "onnx", problems)
    if not conversion.neurons:
        raise BadInputError(
            f"{path}: no activation quantizer found; expected QuantizeLinear/DequantizeLinear pairs, QONNX Quant, "
            "or a Floor/Round with Clip (PyTorch PMSM/QCFS layers); a float model has nothing to map to spikes"
        )
    return conversion


@dataclass
class SpikingConversion:
    """The spiking model of one source, and what went into it."""

    spiking: onnx.ModelProto
    network: onnx.ModelProto  # the untimed network (neurons in place, no time): what NIR reads
    neurons: list[NeuronRecord]
    compensated: list[tuple[str, str]] = field(default_factory=list)  # (node, op)
    uncompensated: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, why)


def untimed_network(model: onnx.ModelProto, path: str = "model") -> tuple[onnx.ModelProto, list[NeuronRecord]]:
    """The source with every activation quantizer's rounding core replaced by a neuron, no time."""
    conversion = check(model, path)
    graph = conversion.graph
    graph.cleanup().toposort()
    network = gs.export_onnx(graph, do_type_check=False)
    network.ir_version = IR_VERSION
    _set_opsets(network, model)
    return network, conversion.neurons


def convert(model: onnx.ModelProto, *, path: str = "model", source_sha256: str = "", default_timesteps: int = 1,
            compensation: bool = True) -> SpikingConversion:
    """The spiking ONNX model (docs/spiking-onnx.md) of ``model``, with its untimed network."""
    network, neurons = untimed_network(model, path)
    timed = spiking_from_network(network, source_sha256=source_sha256, default_timesteps=default_timesteps,
                                 compensation=compensation)
    return SpikingConversion(timed.model, network, neurons, timed.compensated, timed.uncompensated)


def spiking_from_network(network: onnx.ModelProto, *, source_sha256: str = "", default_timesteps: int = 1,
                         compensation: bool = True) -> TimedModel:
    """The spiking ONNX model of an untimed network: its time loop, neuron body and metadata."""
    timed = loop_over_time(network, compensation=compensation)
    _finish_model(timed.model, source_sha256, default_timesteps, compensation)
    return timed


def network_for_targets(network: onnx.ModelProto) -> onnx.ModelProto:
    """The untimed network with every constant folded (weights included) and no batch in its
    reshapes: what targets that fold coefficients themselves (NIR, Lava) read."""
    graph = normalise.fold_for_targets(gs.import_onnx(network))
    graph.cleanup().toposort()
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.ir_version = network.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(network.opset_import)
    return folded


def to_spiking_onnx(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, list[NeuronRecord]]:
    """``(spiking ONNX model, neuron layers)``; see :func:`convert` for the options."""
    conversion = convert(model, **options)
    return conversion.spiking, conversion.neurons


def _set_opsets(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    imports = {op.domain: op.version for op in model.opset_import}
    for op in source.opset_import:
        imports.setdefault(op.domain, op.version)
    imports[NEURON_DOMAIN] = NEURON_DOMAIN_VERSION
    used = {node.domain for node in model.graph.node} | {""}
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(imports.items()) if d in used)


def _finish_model(spiking: onnx.ModelProto, source_sha256: str, timesteps: int, compensation: bool) -> None:
    spiking.ir_version = IR_VERSION
    attach_neuron_function(spiking)  # the standard-ONNX body ORT runs when no ai.pmsm kernel is registered
    spiking.producer_name = "pmsm-export"

    spiking.producer_version = __version__
    onnx.helper.set_model_props(spiking, {
        "pmsm.format": SPIKING_ONNX_FORMAT,
        "pmsm.source_sha256": source_sha256,
        "pmsm.default_timesteps": str(timesteps),
        "pmsm.compensation": "on" if compensation else "off",
    })


def _unique(problems):
    seen, unique = set(), []
    for problem in problems:
        if problem[0] not in seen:
            seen.add(problem[0])
            unique.append(problem)
    return unique
