"""Pre-flight check for the spiking ONNX target: every node must act on each batch row alone.

Time is folded into the batch dimension, so an op that mixes rows would mix timesteps and samples.
The check lists every offending node (name, op, reason); nothing is skipped or approximated.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm.exporter.graph import constant_value
from pmsm.exporter.normalise import QONNX_DOMAINS
from pmsm.exporter.quantizers import NEURON_DOMAIN, NEURON_OP

Problem = tuple[str, str, str]

ROW_WISE = {
    # element-wise and per-sample ops
    "Abs", "Add", "And", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Conv",
    "ConvTranspose", "Cos", "DepthToSpace", "Div", "Dropout", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid",
    "HardSwish", "Identity", "InstanceNormalization", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual",
    "Log", "LpNormalization", "LpPool", "LRN", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg",
    "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus",
    "Softsign", "SpaceToDepth", "Sqrt", "Sub", "Sum", "Tanh", "ThresholdedRelu", "Upsample", "Where", "Xor",
    "Resize", "Shape", "Size", "Constant", "ConstantOfShape", "Range",
}
AXIS_OPS = {"Concat", "Flatten", "Gather", "Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "Split",
            "LayerNormalization", "CumSum", "Compress", "GatherElements", "TopK"}
AXES_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze", "Slice"}


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
        if node.op == "BipolarQuant":
            return "binary (bipolar) activation quantizer: +-1 without a zero level has no PMSM neuron"
        return "QONNX op on an activation that is not a recognised quantizer"
    if node.domain not in ("", "ai.onnx", None):
        return f"custom op of domain '{node.domain}' is not known to act per batch row"
    if node.op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                   "MatMulInteger", "DynamicQuantizeLinear"):
        return "integer (QOperator) or unpaired quantization op: only QDQ/QCDQ pairs on activations are supported"
    if node.op in ROW_WISE:
        if node.op == "BatchNormalization" and int(node.attrs.get("training_mode", 0)):
            return "batch statistics in training mode mix batch rows"
        if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
            mode = constant_value(node.inputs[2])
            if mode is None or mode.size != 1 or bool(mode.reshape(())):
                return "dropout in training mode is random; export the model in eval mode"
        return None
    if node.op in ("Gemm",):
        return "transA=1 puts the batch on the wrong side" if int(node.attrs.get("transA", 0)) else None
    if node.op == "MatMul":
        return None if not isinstance(node.inputs[0], gs.Constant) else "batch is the right operand"
    if node.op == "Reshape":
        return _reshape_reason(node)
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        return None if perm is not None and perm[0] == 0 else "moves the batch axis"
    if node.op == "Pad":
        pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
        if pads is None:
            return "padding computed at run time may pad the batch axis"
        rank = len(pads) // 2
        return "pads the batch axis" if rank and (pads[0] or pads[rank]) else None
    if node.op in AXIS_OPS:
        axis = int(node.attrs.get("axis", 1 if node.op in ("Flatten", "Softmax", "LogSoftmax", "Hardmax") else 0))
        if node.op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization") and "axis" not in node.attrs:
            axis = -1
        return "acts along the batch axis" if axis == 0 else None
    if node.op in AXES_OPS:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            index = 3 if node.op == "Slice" else 1
            if len(node.inputs) > index and node.inputs[index].name:
                axes = constant_value(node.inputs[index])
                if axes is None:
                    return "axes computed at run time may include the batch axis"
        if axes is None:
            if node.op == "Slice":
                return "slices every axis, the batch axis included"
            if node.op.startswith("Reduce") and not int(node.attrs.get("noop_with_empty_axes", 0)):
                return "reduces over every axis, the batch axis included"
            return None if node.op != "Squeeze" else "may squeeze the batch axis"
        return "acts along the batch axis" if 0 in [int(a) for a in np.asarray(axes).reshape(-1)] else None
    return f"op '{node.op}' is not known to act per batch row"


def _reshape_reason(node: gs.Node) -> str | None:
    shape = constant_value(node.inputs[1])
    if shape is None:
        return None  # shapes computed from the input's own shape follow the folded batch
    shape = shape.reshape(-1)
    if shape.size and shape[0] == 0 and not int(node.attrs.get("allowzero", 0)):
        return None
    if shape.size > 1 and shape[0] == -1 and -1 not in shape[1:].tolist():
        return None  # the batch is what remains after the fixed per-row dimensions
    return f"target shape {shape.tolist()} fixes the batch size; use 0 or -1 for the batch dimension"
