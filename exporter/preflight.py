"""Pre-flight check for the spiking ONNX target: every node left after the rewrite must be a
deterministic standard ONNX op (or a neuron).

Time is an ONNX ``Loop`` whose body runs the source's own nodes at the source's batch size, so any
deterministic op works, shape arithmetic and batch axis included. What cannot work is listed with
the reason (name, op, reason); nothing is skipped or approximated.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from pmsm.exporter.graph import computed_from_constants, constant_value
from pmsm.exporter.quantizers import CONTRIB_DOMAIN, NEURON_DOMAIN, NEURON_OP, QDQ_HINT
from pmsm.runtime.qonnx import QONNX_DOMAINS

Problem = tuple[str, str, str]

RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
                 "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat"}


def unsupported_for_onnx(graph: gs.Graph) -> list[Problem]:
    problems = []
    for node in graph.nodes:
        reason = _reason(node)
        if reason:
            problems.append((node.name or node.outputs[0].name, node.op, reason))
    return problems


def _reason(node: gs.Node) -> str | None:
    if node.domain == NEURON_DOMAIN and node.op == NEURON_OP:
        return None
    if node.domain in QONNX_DOMAINS:
        return "QONNX op on an activation that is not a recognised quantizer"
    if node.domain == CONTRIB_DOMAIN and node.op in _QDQ_OPS:
        # ONNX Runtime's contrib Q/DQ compute what the standard ones do: on weights they stay as
        # written (ONNX Runtime runs them), on activations they must have become neurons
        return _qdq_reason(node)
    if node.domain not in ("", "ai.onnx", None):
        if node.op in QOPERATOR_OPS:
            return QDQ_HINT
        return f"custom op of domain '{node.domain}': only standard ONNX ops run in the spiking model"
    if node.op in QOPERATOR_OPS:
        return QDQ_HINT
    if node.op in _QDQ_OPS:
        return _qdq_reason(node)
    if node.op in RANDOM_OPS:
        return "random: a spiking model must compute the same thing at every timestep"
    if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
        mode = constant_value(node.inputs[2])
        if mode is None or mode.size != 1 or bool(mode.reshape(())):
            return "dropout in training mode is random; export the model in eval mode"
    return None


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _qdq_reason(node: gs.Node) -> str | None:
    if not all(computed_from_constants(t) for t in node.inputs):
        return "quantization op on an activation that is not a QuantizeLinear -> DequantizeLinear pair"
    return None
