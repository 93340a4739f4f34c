"""Which ONNX ops commute with the mean over timesteps (docs/spiking-onnx.md, "Temporal compensation").

A spiking network runs every op once per timestep and reads out the mean over time. For an op that
is linear (or affine) in the inputs that change over time, the mean of its outputs is the op of the
mean of its inputs, so it needs nothing. Any other op of time-varying inputs (max pooling, softmax,
layer normalisation, GELU, the product of two activations in attention, ...) does not commute, and
gets temporal compensation instead.

The classification is conservative: an op missing here is treated as nonlinear, which is still
correct (compensation of a linear op gives back the op itself, up to float rounding at T > 1).
"""
from __future__ import annotations

import onnx

# Linear in every input (the others, when time-invariant, only select, move or reshape elements).
LINEAR_IN_EVERY_INPUT = {
    "Add", "Sub", "Neg", "Sum", "Mean", "Identity", "Concat", "Split", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Transpose", "Expand", "Tile", "Slice", "DepthToSpace", "SpaceToDepth", "ReduceSum",
    "ReduceMean", "AveragePool", "GlobalAveragePool", "Pad", "Dropout", "CumSum",
}
# Linear in their data input(s) alone: every other input must be time-invariant.
LINEAR_IN_DATA = {
    "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "Compress": (0,), "Resize": (0,), "Upsample": (0,),
    "ScatterND": (0, 2), "ScatterElements": (0, 2), "Where": (1, 2), "BatchNormalization": (0,),
    "Div": (0,), "Cast": (0,), "CastLike": (0,),
}
# Multilinear: linear as long as at most one of these inputs varies over time (the rest are additive).
MULTILINEAR = {
    "Mul": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1), "ConvTranspose": (0, 1), "Einsum": None,
}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def commutes_with_time_mean(node: onnx.NodeProto, varying: set[str], dtypes: dict[str, int]) -> bool:
    """Whether the mean over time of ``node``'s outputs is ``node`` applied to the mean of its inputs.

    ``varying``: names of the tensors whose value changes over timesteps.
    """
    if node.domain not in ("", "ai.onnx"):
        return False
    moving = [i for i, name in enumerate(node.input) if name and name in varying]
    op = node.op_type
    if op == "Cast" or op == "CastLike":
        target = _cast_target(node, dtypes)
        return target in FLOAT_TYPES  # a float to float cast keeps the value (up to rounding)
    if op in LINEAR_IN_EVERY_INPUT:
        if op == "Pad":
            mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
            return set(moving) <= {0} or mode == b"constant" and set(moving) <= {0, 2}
        return True
    if op in LINEAR_IN_DATA:
        return set(moving) <= set(LINEAR_IN_DATA[op])
    if op in MULTILINEAR:
        positions = MULTILINEAR[op]
        factors = moving if positions is None else [i for i in moving if i in positions]
        return len(factors) <= 1
    return False


def _cast_target(node: onnx.NodeProto, dtypes: dict[str, int]) -> int | None:
    if node.op_type == "Cast":
        return next((a.i for a in node.attribute if a.name == "to"), None)
    return dtypes.get(node.input[1]) if len(node.input) > 1 else None
