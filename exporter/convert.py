"""Source quantized ANN -> spiking ONNX, as a sequence of small named passes.

1. Normalisation (:mod:`pmsm.exporter.normalise`): bring every producer's way of writing a
   quantized network to one shape, changing no number the network computes.
2. Rewrite (:mod:`pmsm.exporter.quantizers`): each activation quantizer's rounding core becomes an
   ``ai.pmsm::MultiSpikeNeuron``; its pre-scaling and de-quantization stay as the source wrote them.
3. Pre-flight (:mod:`pmsm.exporter.preflight`): every node left must act on each batch row alone.
4. Time folding (:mod:`pmsm.exporter.timefold`): repeat the input over T in the batch dimension and
   read out the mean over T.

Inference-mode ``BatchNormalization`` is kept as the standard op the source wrote (it acts on each
row alone, so time folding does not disturb it). Folding it into the neighbouring weights would
re-associate float arithmetic and lose T = 1 exactness; targets that cannot express it (NIR, Lava)
fold it themselves, where float re-association is reported rather than forbidden.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm.errors import BadInputError, UnsupportedModelError
from pmsm.exporter import normalise, quantizers, timefold
from pmsm.exporter.preflight import unsupported_for_onnx
from pmsm.exporter.quantizers import NEURON_DOMAIN, NeuronRecord
from pmsm.runtime.schema import FORMAT

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


def batch_agnostic_source(model: onnx.ModelProto) -> onnx.ModelProto:
    """The source ANN, unchanged except that it runs on any number of rows at once.

    Torch and Brevitas export at batch 1. ONNX Runtime's CPU ``Gemm`` takes a different MLAS
    kernel for a single row when its weight operand is computed at run time (weights behind
    ``DequantizeLinear`` or a QONNX ``Quant`` in the source): the ANN run one sample at a time and
    the same ANN run on a batch can then differ in the last bit. The spiking model always runs
    batched (time is folded into the batch), so its T = 1 output is bit-exact with the source run
    batched; this copy is that source. Only the graph's batch bookkeeping changes: initializers
    leave the input list, hard-coded batch sizes in Reshape targets become ``-1``/``0``, and the
    batch dimension of the input and output becomes symbolic. The arithmetic is untouched (no
    folding of weights or quantizers).
    """
    graph = gs.import_onnx(model)
    normalise.drop_initializer_inputs(graph)
    for node in graph.nodes:  # Reshape targets written as Constant nodes (TorchScript exports)
        if node.op == "Reshape" and not isinstance(node.inputs[1], gs.Constant):
            target = node.inputs[1]
            maker = target.inputs[0] if len(target.inputs) == 1 else None
            if maker is not None and maker.op == "Constant" and "value" in maker.attrs:
                node.inputs[1] = gs.Constant(target.name + "_value", np.asarray(maker.attrs["value"].values))
    normalise.make_reshapes_batch_agnostic(graph)
    timefold.forget_batch_shapes(graph)
    for tensor in list(graph.inputs) + list(graph.outputs):
        if tensor.shape:
            tensor.shape = [timefold.BATCH_DIM] + list(tensor.shape[1:])
    graph.cleanup()
    batched = gs.export_onnx(graph, do_type_check=False)
    batched.ir_version = model.ir_version
    del batched.opset_import[:]
    batched.opset_import.extend(model.opset_import)
    return batched


def _finish_model(spiking: onnx.ModelProto, source: onnx.ModelProto, source_sha256: str, timesteps: int) -> None:
    spiking.ir_version = IR_VERSION
    imports = {op.domain: op.version for op in spiking.opset_import}
    for op in source.opset_import:
        imports.setdefault(op.domain, op.version)
    imports[NEURON_DOMAIN] = 1
    used = {node.domain for node in spiking.graph.node} | {""}
    del spiking.opset_import[:]
    spiking.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(imports.items()) if d in used)
    from pmsm.exporter.portable import attach_neuron_function

    attach_neuron_function(spiking)  # the standard-ONNX body ORT runs when no ai.pmsm kernel is registered
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
