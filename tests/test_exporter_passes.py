"""Each exporter pass alone, on tiny hand-built graphs.

The passes (pmsm.exporter.convert.NORMALISATION_PASSES, REWRITE_PASSES, the Relu absorption) take an onnx-graphsurgeon graph and edit it in place. These tests build the smallest
graph that shows one behaviour, run one pass, and check the graph it leaves; where numbers matter,
the whole conversion runs in ONNX Runtime and is compared with the source.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.exporter import normalise, preflight, quantizers
from pmsm.exporter.convert import check, to_spiking_onnx
from pmsm.exporter.quantizers import NEURON_OP, QuantizerError
from pmsm.runtime.execute import AnnRunner, SpikingModel
from pmsm.runtime.neuron import NeuronParams, run

RNG = np.random.default_rng(0)
X = RNG.normal(0, 1, (32, 6)).astype(np.float32)  # 32 samples, 6 features

# --------------------------------------------------------------------------------- helpers


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def model(nodes, initializers=(), *, inputs=None, outputs=None, batch="N", features=6, opset=17,
          domains=()) -> onnx.ModelProto:
    """A graph ``x [batch, features] -> ... -> y`` (names ``x``/``y`` unless given), IR version 10."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def node(op, inputs, outputs, name=None, domain=None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or outputs[0], domain=domain, **attrs)


def ops(graph: gs.Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def neurons(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if n.op == NEURON_OP]


def neuron_bounds(graph: gs.Graph) -> list[tuple[int, int, float, str]]:
    return [(n.attrs["lo"], n.attrs["hi"], n.attrs["v_init"], n.attrs["rounding"]) for n in neurons(graph)]


def run_source(m: onnx.ModelProto, x=X) -> np.ndarray:
    return AnnRunner(m).run(x)[0]


def run_spiking(m: onnx.ModelProto, timesteps: int, x=X) -> np.ndarray:
    spiking, _ = to_spiking_onnx(m)
    return SpikingModel(spiking).run(x, timesteps).output


def assert_t1_bit_exact(m: onnx.ModelProto, x=X) -> None:
    source, spiking = run_source(m, x), run_spiking(m, 1, x)
    assert np.array_equal(source, spiking), f"max_abs_diff {np.abs(source - spiking).max()}"


def ort_run(m: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


# ------------------------------------------------------------------- drop_initializer_inputs


def test_initializers_listed_as_graph_inputs_are_treated_as_weights():
    m = model([node("MatMul", ["x", "w"], ["y"])], [const("w", RNG.normal(size=(6, 3)))],
              inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                      helper.make_tensor_value_info("w", TensorProto.FLOAT, [6, 3])])
    graph = normalise.drop_initializer_inputs(gs.import_onnx(m))
    assert [t.name for t in graph.inputs] == ["x"]
    assert isinstance(graph.nodes[0].inputs[1], gs.Constant)


# ---------------------------------------------------------------------------- fold_constants


def test_constant_nodes_become_constants():
    m = model([
        node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        node("Mul", ["x", "two"], ["y"]),
    ])
    graph = normalise.fold_constants(gs.import_onnx(m))
    assert ops(graph) == ["Mul"]
    assert float(graph.nodes[0].inputs[1].values) == 2.0


def _float_weight_qdq_model(w):
    return model([
        node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"]),
        node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"]),
        node("MatMul", ["x", "wd"], ["y"]),
    ], [const("w", w), const("w_scale", 0.01), const("w_zp", 0, np.int8)])


def test_weight_quantizers_stay_as_the_source_computes_them_in_the_spiking_graph():
    """ONNX Runtime prepacks initializer weights and then takes other GEMM kernels than for run-time
    weights; int8 weights behind DequantizeLinear also stay int8 on disk."""
    graph = normalise.fold_constants(gs.import_onnx(_float_weight_qdq_model(RNG.normal(0, 0.5, (6, 3)))))
    assert ops(graph) == ["QuantizeLinear", "DequantizeLinear", "MatMul"]


def test_a_constant_subgraph_read_as_a_weight_is_not_folded_but_one_read_as_a_scale_is():
    m = model([
        node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        node("MatMul", ["x", "wt"], ["h"]),
        node("Div", ["one", "four"], ["quarter"]),
        node("Mul", ["h", "quarter"], ["y"]),
    ], [const("w", RNG.normal(size=(3, 6))), const("one", 1.0), const("four", 4.0)])
    graph = normalise.fold_constants(gs.import_onnx(m))
    assert ops(graph) == ["Transpose", "MatMul", "Mul"]
    assert float(graph.nodes[2].inputs[1].values) == 0.25


def test_float_weight_quantize_dequantize_pair_is_folded_for_targets_to_the_float_weights_ort_computes():
    w = RNG.normal(0, 0.5, (6, 3)).astype(np.float32)
    m = _float_weight_qdq_model(w)
    graph = normalise.fold_for_targets(gs.import_onnx(m))
    assert ops(graph) == ["MatMul"]
    folded = graph.nodes[0].inputs[1]
    assert isinstance(folded, gs.Constant) and folded.values.dtype == np.float32
    expected = (np.clip(np.rint(w / np.float32(0.01)), -128, 127) * np.float32(0.01)).astype(np.float32)
    assert np.array_equal(folded.values, expected)
    folded_model = gs.export_onnx(graph)
    folded_model.ir_version = 10
    assert np.array_equal(ort_run(folded_model, {"x": X})[0], ort_run(m, {"x": X})[0])


def test_per_channel_int8_weights_and_int32_bias_dequantization_is_folded_for_targets():
    """What onnxruntime's quantize_static writes for a Gemm: int8 weights with one scale per output
    channel, an int32 bias with scale input_scale * weight_scale."""
    wq = RNG.integers(-127, 128, (3, 6)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.005], np.float32)
    bq = np.array([100, -2000, 37], np.int32)
    b_scale = (w_scale * np.float32(0.1)).astype(np.float32)
    m = model([
        node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["w"], axis=0),
        node("DequantizeLinear", ["bq", "b_scale", "b_zp"], ["b"], axis=0),
        node("Gemm", ["x", "w", "b"], ["y"], transB=1),
    ], [const("wq", wq, np.int8), const("w_scale", w_scale), const("w_zp", np.zeros(3), np.int8),
        const("bq", bq, np.int32), const("b_scale", b_scale), const("b_zp", np.zeros(3), np.int32)])
    graph = normalise.fold_for_targets(gs.import_onnx(m))
    assert ops(graph) == ["Gemm"]
    weights, bias = (t.values for t in graph.nodes[0].inputs[1:])
    assert np.array_equal(weights, wq.astype(np.float32) * w_scale[:, None])
    assert np.array_equal(bias, bq.astype(np.float32) * b_scale)


def test_weight_quantizer_with_clip_between_q_and_dq_is_folded_for_targets():
    """Brevitas QCDQ writes low-bit weights as QuantizeLinear -> Clip(int) -> DequantizeLinear."""
    w = RNG.normal(0, 1, (6, 3)).astype(np.float32)
    m = model([
        node("QuantizeLinear", ["w", "s", "zp"], ["wq"]),
        node("Clip", ["wq", "qmin", "qmax"], ["wc"]),
        node("DequantizeLinear", ["wc", "s", "zp"], ["wd"]),
        node("MatMul", ["x", "wd"], ["y"]),
    ], [const("w", w), const("s", 0.25), const("zp", 0, np.int8), const("qmin", -7, np.int8),
        const("qmax", 7, np.int8)])
    graph = normalise.fold_for_targets(gs.import_onnx(m))
    assert ops(graph) == ["MatMul"]
    assert np.array_equal(graph.nodes[0].inputs[1].values, np.clip(np.rint(w / 0.25), -7, 7) * np.float32(0.25))


def test_a_constant_subgraph_onnx_runtime_cannot_evaluate_does_not_stop_the_others_folding():
    m = model([
        node("DequantizeLinear", ["wq", "w_scale"], ["w"]),
        node("MatMul", ["x", "w"], ["h"]),
        node("NotAnOnnxOp", ["c"], ["odd"]),  # constant input, but no kernel anywhere
        node("Add", ["h", "odd"], ["y"]),
    ], [const("wq", RNG.integers(-5, 5, (6, 3)), np.int8), const("w_scale", 0.5), const("c", 1.0)])
    graph = normalise.fold_for_targets(gs.import_onnx(m))
    assert sorted(ops(graph)) == ["Add", "MatMul", "NotAnOnnxOp"]
    matmul = next(n for n in graph.nodes if n.op == "MatMul")
    assert isinstance(matmul.inputs[1], gs.Constant)


def test_activation_quantizers_are_not_folded():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"]),
    ], [const("s", 0.1), const("zp", 0, np.uint8)])
    graph = normalise.fold_constants(gs.import_onnx(m))
    assert ops(graph) == ["QuantizeLinear", "DequantizeLinear"]


# ------------------------------------------------------------------------- remove_identities


def test_identity_and_inference_dropout_are_removed():
    m = model([
        node("Identity", ["x"], ["a"]),
        node("Dropout", ["a"], ["b"]),
        node("Relu", ["b"], ["y"]),
    ])
    graph = normalise.remove_identities(gs.import_onnx(m))
    assert ops(graph) == ["Relu"]
    assert graph.nodes[0].inputs[0].name == "x"


def test_dropout_whose_mask_is_used_stays():
    m = model([
        node("Dropout", ["x"], ["a", "mask"]),
        node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        node("Add", ["a", "mask_f"], ["y"]),
    ])
    graph = normalise.remove_identities(gs.import_onnx(m))
    assert "Dropout" in ops(graph)


def test_training_mode_dropout_stays_and_the_preflight_refuses_it():
    m = model([node("Dropout", ["x", "ratio", "training"], ["y"], name="dropout")],
              [const("ratio", 0.5), const("training", True, np.bool_)])
    graph = normalise.remove_identities(gs.import_onnx(m))
    assert ops(graph) == ["Dropout"]
    assert [(name, op) for name, op, _ in preflight.unsupported_for_onnx(graph)] == [("dropout", "Dropout")]


# ------------------------------------------------------------ reduce_straight_through_idioms


@pytest.mark.parametrize("x_first", [True, False], ids=["add(x,diff)", "add(diff,x)"])
def test_detached_straight_through_round_reduces_to_round(x_first):
    """``x + (round(x) - x).detach()`` exports as ``Add(x, Sub(Round(x), x))``."""
    add_inputs = ["x", "diff"] if x_first else ["diff", "x"]
    m = model([
        node("Round", ["x"], ["r"]),
        node("Sub", ["r", "x"], ["diff"]),
        node("Add", add_inputs, ["y"]),
    ])
    graph = normalise.reduce_straight_through_idioms(gs.import_onnx(m))
    assert ops(graph) == ["Round"]
    assert graph.outputs[0] is graph.nodes[0].outputs[0]


def test_straight_through_reduction_is_exact_in_float32():
    x = np.concatenate([RNG.normal(0, 1e3, 10000), RNG.normal(0, 1, 10000)]).astype(np.float32)
    r = np.rint(x)
    assert np.array_equal(x + (r - x), r)


def test_other_add_sub_patterns_are_left_alone():
    m = model([
        node("Round", ["x"], ["r"]),
        node("Sub", ["x", "r"], ["diff"]),  # x - round(x): not the idiom
        node("Add", ["x", "diff"], ["y"]),
    ])
    graph = normalise.reduce_straight_through_idioms(gs.import_onnx(m))
    assert ops(graph) == ["Round", "Sub", "Add"]


# ----------------------------------------------------------- make_reshapes_batch_agnostic


def _reshape_model(target, allowzero=None, batch=1, opset=17):
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    return model([node("Reshape", ["x", "shape"], ["y"], **attrs)], [const("shape", target, np.int64)],
                 inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 3, 4])], opset=opset)


def _reshape_target(graph):
    return graph.nodes[0].inputs[1].values.tolist(), graph.nodes[0].attrs.get("allowzero", 0)


def test_hard_coded_batch_in_reshape_becomes_minus_one():
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(_reshape_model([1, 24])))
    assert _reshape_target(graph) == ([-1, 24], 0)


def test_hard_coded_batch_with_allowzero_becomes_minus_one_and_keeps_allowzero():
    """torch's dynamo export writes ``Reshape(x, [1, 24], allowzero=1)``."""
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(_reshape_model([1, 24], allowzero=1)))
    assert _reshape_target(graph) == ([-1, 24], 1)


def test_hard_coded_batch_next_to_minus_one_copies_the_batch_with_allowzero_off():
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(_reshape_model([1, -1], allowzero=1)))
    assert _reshape_target(graph) == ([0, -1], 0)
    x = RNG.normal(size=(5, 2, 3, 4)).astype(np.float32)
    batched = gs.export_onnx(graph)
    batched.ir_version = 10
    batched.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert ort_run(batched, {"x": x})[0].shape == (5, 24)


def test_reshape_before_opset_14_gets_no_allowzero_attribute():
    """TorchScript exports of Brevitas models use opset 13, whose Reshape has no ``allowzero``."""
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(_reshape_model([1, -1], opset=13)))
    assert graph.nodes[0].inputs[1].values.tolist() == [0, -1] and "allowzero" not in graph.nodes[0].attrs
    batched = gs.export_onnx(graph)
    batched.ir_version = 10
    batched.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert ort_run(batched, {"x": np.zeros((3, 2, 3, 4), np.float32)})[0].shape == (3, 24)


def test_reshape_that_does_not_start_with_the_batch_size_is_left_alone():
    m = _reshape_model([2, 12], batch=1)  # folds the 2 channels into rows: not per-row
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(m))
    assert _reshape_target(graph) == ([2, 12], 0)


def test_reshapes_of_a_model_with_symbolic_batch_are_left_alone():
    graph = normalise.make_reshapes_batch_agnostic(gs.import_onnx(_reshape_model([-1, 24], batch="N")))
    assert _reshape_target(graph) == ([-1, 24], 0)


# ------------------------------------------------------------------------------ rewrite_qdq


def _qdq_model(zp, zp_dtype, scale=0.05, clip=None, relu=False):
    nodes = [node("Relu", ["x"], ["xr"])] if relu else []
    source = "xr" if relu else "x"
    nodes.append(node("QuantizeLinear", [source, "s", "zp"], ["q"], name="quant"))
    dq_input = "q"
    inits = [const("s", scale), const("zp", zp, zp_dtype)]
    if clip is not None:
        nodes.append(node("Clip", ["q", "qmin", "qmax"], ["qc"], name="clip"))
        inits += [const("qmin", clip[0], zp_dtype), const("qmax", clip[1], zp_dtype)]
        dq_input = "qc"
    nodes.append(node("DequantizeLinear", [dq_input, "s", "zp"], ["y"], name="dequant"))
    return model(nodes, inits)


@pytest.mark.parametrize("zp, zp_dtype, bounds", [
    (0, np.uint8, (0, 255)),
    (100, np.uint8, (-100, 155)),
    (0, np.int8, (-128, 127)),
    (-3, np.int8, (-125, 130)),
], ids=["u8", "u8-zero-point", "s8", "s8-zero-point"])
def test_qdq_pair_becomes_div_neuron_mul_with_bounds_relative_to_the_zero_point(zp, zp_dtype, bounds):
    m = _qdq_model(zp, zp_dtype)
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_qdq(graph)
    assert ops(graph) == ["Div", NEURON_OP, "Mul"]
    assert neuron_bounds(graph) == [(bounds[0], bounds[1], 0.0, "half_even")]
    assert [r.producer for r in records] == ["qdq"]
    x = RNG.normal(0, 4, (64, 6)).astype(np.float32)  # saturates both ends
    assert_t1_bit_exact(m, x)


def test_qcdq_clip_bounds_between_q_and_dq_become_the_neuron_bounds():
    """Brevitas QCDQ writes a 4-bit quantizer as uint8 Q -> Clip(0, 15) -> DQ."""
    m = _qdq_model(0, np.uint8, clip=(0, 15))
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_qdq(graph)
    assert ops(graph) == ["Div", NEURON_OP, "Mul"]
    assert neuron_bounds(graph) == [(0, 15, 0.0, "half_even")]
    assert records[0].producer == "qcdq"
    assert_t1_bit_exact(m, RNG.normal(0, 1, (64, 6)).astype(np.float32))


def test_signed_qcdq_clip_with_zero_point():
    m = _qdq_model(2, np.int8, clip=(-7, 7))
    graph = gs.import_onnx(m)
    quantizers.rewrite_qdq(graph)
    assert neuron_bounds(graph) == [(-9, 5, 0.0, "half_even")]
    assert_t1_bit_exact(m, RNG.normal(0, 1, (64, 6)).astype(np.float32))


def test_dequantized_activation_feeding_several_consumers_is_rewired_to_all_of_them():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dequant"),
        node("Relu", ["d"], ["a"]),
        node("Neg", ["d"], ["b"]),
        node("Add", ["a", "b"], ["y"]),
    ], [const("s", 0.1), const("zp", 0, np.int8)])
    graph = gs.import_onnx(m)
    quantizers.rewrite_qdq(graph)
    assert sorted(ops(graph)) == sorted(["Div", NEURON_OP, "Mul", "Relu", "Neg", "Add"])
    mul = next(n for n in graph.nodes if n.op == "Mul")
    assert sorted(c.op for c in mul.outputs[0].outputs) == ["Neg", "Relu"]
    assert_t1_bit_exact(m)


def test_one_quantize_feeding_two_dequantize_nodes_gives_one_neuron():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["a"], name="dequant_a"),
        node("DequantizeLinear", ["q", "s", "zp"], ["b"], name="dequant_b"),
        node("Sub", ["a", "b"], ["y"]),
    ], [const("s", 0.1), const("zp", 0, np.int8)])
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_qdq(graph)
    assert len(records) == 1 and ops(graph).count(NEURON_OP) == 1
    assert_t1_bit_exact(m)


def test_quantize_feeding_an_integer_operator_is_refused_naming_that_node():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("Cast", ["q"], ["y"], name="integer_consumer", to=TensorProto.FLOAT),
    ], [const("s", 0.1), const("zp", 0, np.uint8)])
    problems = []
    quantizers.rewrite_qdq(gs.import_onnx(m), problems)
    assert [(name, op) for name, op, _ in problems] == [("integer_consumer", "Cast")]
    assert "quant" in problems[0][2]
    with pytest.raises(QuantizerError, match="integer_consumer"):
        quantizers.rewrite_qdq(gs.import_onnx(m))


def test_quantized_graph_output_keeps_its_name():
    """onnxruntime's quantize_static puts a QDQ pair on the logits: the spiking model's output must
    still be called what the source called it."""
    m = _qdq_model(0, np.uint8)
    spiking, _ = to_spiking_onnx(m)
    assert [o.name for o in spiking.graph.output] == ["y"]


def test_unnamed_quantizers_get_distinct_neuron_names():
    m = model([
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s", "zp"], ["d1"]),
        helper.make_node("Relu", ["d1"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "zp"], ["y"]),
    ], [const("s", 0.1), const("zp", 0, np.int8)])
    spiking, records = to_spiking_onnx(m)
    assert len({r.name for r in records}) == 2
    assert [(r.params.lo, r.params.hi) for r in records] == [(-128, 127), (0, 127)]  # only the second had a Relu
    assert_t1_bit_exact(m)


# --------------------------------------------------------------------------- rewrite_qonnx

QONNX = "qonnx.custom_op.general"


def _qonnx_model(bits, signed, narrow, zeropt=0.0, rounding="ROUND", scale=0.1):
    return model([
        node("Quant", ["x", "s", "zp", "bits"], ["y"], name="quant", domain=QONNX,
             signed=signed, narrow=narrow, rounding_mode=rounding),
    ], [const("s", scale), const("zp", zeropt), const("bits", bits)], domains=[QONNX])


@pytest.mark.parametrize("bits, signed, narrow, bounds", [
    (4, 0, 0, (0, 15)),
    (4, 1, 0, (-8, 7)),
    (4, 1, 1, (-7, 7)),
    (8, 1, 0, (-128, 127)),
], ids=["u4", "s4", "s4-narrow", "s8"])
def test_qonnx_quant_becomes_div_neuron_mul_with_its_integer_range(bits, signed, narrow, bounds):
    m = _qonnx_model(bits, signed, narrow)
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_qonnx(graph)
    assert ops(graph) == ["Div", NEURON_OP, "Mul"]
    assert neuron_bounds(graph) == [(bounds[0], bounds[1], 0.0, "half_even")]
    assert records[0].producer == "qonnx"
    assert_t1_bit_exact(m)


def test_qonnx_zero_point_is_added_before_and_removed_after_the_neuron():
    m = _qonnx_model(4, 0, 0, zeropt=3.0)
    graph = gs.import_onnx(m)
    quantizers.rewrite_qonnx(graph)
    assert ops(graph) == ["Div", "Add", NEURON_OP, "Sub", "Mul"]
    assert_t1_bit_exact(m)


def test_qonnx_floor_rounding_gives_a_floor_neuron():
    m = _qonnx_model(4, 1, 0, rounding="FLOOR")
    graph = gs.import_onnx(m)
    quantizers.rewrite_qonnx(graph)
    assert neuron_bounds(graph) == [(-8, 7, 0.0, "floor")]
    assert_t1_bit_exact(m)


def test_qonnx_rounding_without_a_neuron_is_refused():
    problems = []
    quantizers.rewrite_qonnx(gs.import_onnx(_qonnx_model(4, 1, 0, rounding="CEIL")), problems)
    assert problems == [("quant", "Quant", "rounding_mode CEIL has no PMSM neuron (ROUND and FLOOR do)")]


@pytest.mark.parametrize("mode", ["ROUND", "FLOOR", "CEIL"])
def test_qonnx_weight_quantizers_become_standard_ops_computing_what_the_source_kernel_computes(mode):
    w = RNG.normal(0, 1, (6, 3)).astype(np.float32)
    w[0, :] = [0.125, -0.375, 0.625]  # exact ties of x / 0.25
    m = model([
        node("Quant", ["w", "ws", "wzp", "wbits"], ["wq"], name="weight_quant", domain=QONNX,
             signed=1, narrow=1, rounding_mode=mode),
        node("MatMul", ["x", "wq"], ["y"]),
    ], [const("w", w), const("ws", 0.25), const("wzp", 0.0), const("wbits", 4.0)], domains=[QONNX])
    graph = normalise.expand_qonnx_weight_quantizers(gs.import_onnx(m))
    assert not [n for n in graph.nodes if n.domain == QONNX]
    expanded = gs.export_onnx(graph, do_type_check=False)
    expanded.ir_version = 10
    assert np.array_equal(ort_run(expanded, {"x": X})[0], run_source(m))


# ----------------------------------------------------------------- rewrite_rounding_chains

LEVELS, LAM = 4.0, 1.5


def _chain_model(tail, *, shift=True, rounding="Floor", mul_constant_first=False):
    """``Div(x, lam) Mul(L) [Add(0.5)] Floor`` followed by ``tail`` (nodes reading ``r``, writing ``y``)."""
    nodes = [node("Div", ["x", "lam"], ["u0"]),
             node("Mul", ["levels", "u0"] if mul_constant_first else ["u0", "levels"], ["u1"])]
    if shift:
        nodes.append(node("Add", ["u1", "half"], ["u2"]))
    nodes.append(node(rounding, ["u2" if shift else "u1"], ["r"], name="round"))
    inits = [const("lam", LAM), const("levels", LEVELS), const("half", 0.5), const("lo", -LEVELS),
             const("hi", LEVELS), const("minus_one", -1.0), const("one", 1.0), const("quarter", 0.25),
             const("bad_lo", -1.1), const("bad_hi", 1.1)]
    return model(nodes + tail, inits)


CLIP_BEFORE_DIV = [node("Clip", ["r", "lo", "hi"], ["c"]), node("Div", ["c", "levels"], ["d"]),
                   node("Mul", ["d", "lam"], ["y"])]
CLIP_AFTER_DIV = [node("Div", ["r", "levels"], ["d"]), node("Clip", ["d", "minus_one", "one"], ["c"]),
                  node("Mul", ["c", "lam"], ["y"])]
CLIP_AFTER_MUL_CONSTANT_FIRST = [node("Mul", ["quarter", "r"], ["d"]),
                                 node("Clip", ["d", "minus_one", "one"], ["c"]), node("Mul", ["lam", "c"], ["y"])]


@pytest.mark.parametrize("tail", [CLIP_BEFORE_DIV, CLIP_AFTER_DIV, CLIP_AFTER_MUL_CONSTANT_FIRST],
                         ids=["clip-before-div", "clip-after-div", "mul(c,x)-then-clip"])
def test_floor_chain_becomes_a_floor_neuron_with_clip_bounds_in_levels(tail):
    m = _chain_model(tail)
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_rounding_chains(graph)
    assert neuron_bounds(graph) == [(-4, 4, 0.5, "floor")]
    assert "Clip" not in ops(graph) and "Floor" not in ops(graph) and "Add" not in ops(graph)
    assert records[0].producer == "floor-chain"
    assert_t1_bit_exact(m, RNG.normal(0, 2, (64, 6)).astype(np.float32))


@pytest.mark.parametrize("constant_first", [False, True], ids=["mul(x,L)", "mul(L,x)"])
def test_pre_scaling_operand_order_is_kept_as_written(constant_first):
    m = _chain_model(CLIP_BEFORE_DIV, mul_constant_first=constant_first)
    graph = gs.import_onnx(m)
    quantizers.rewrite_rounding_chains(graph)
    mul = next(n for n in graph.nodes if n.op == "Mul" and n.outputs[0].outputs[0].op == NEURON_OP)
    assert isinstance(mul.inputs[0 if constant_first else 1], gs.Constant)
    assert_t1_bit_exact(m)


def test_shift_written_as_add_constant_first_is_the_initial_membrane():
    m = model([
        node("Add", ["half", "x"], ["u"]), node("Floor", ["u"], ["r"], name="round"),
        node("Clip", ["r", "lo", "hi"], ["y"]),
    ], [const("half", 0.5), const("lo", -3.0), const("hi", 3.0)])
    graph = gs.import_onnx(m)
    quantizers.rewrite_rounding_chains(graph)
    assert ops(graph) == [NEURON_OP] and neuron_bounds(graph) == [(-3, 3, 0.5, "floor")]


def test_constant_added_before_the_floor_that_is_not_a_rounding_offset_stays_a_bias():
    """A shift in [0, 1) is the rounding offset (the initial membrane, first step only); a larger
    constant is a bias the neuron must receive at every step."""
    m = model([
        node("Add", ["x", "bias"], ["u"]), node("Floor", ["u"], ["r"], name="round"),
        node("Clip", ["r", "lo", "hi"], ["y"]),
    ], [const("bias", 2.0), const("lo", -3.0), const("hi", 3.0)])
    graph = gs.import_onnx(m)
    quantizers.rewrite_rounding_chains(graph)
    assert ops(graph) == ["Add", NEURON_OP] and neuron_bounds(graph) == [(-3, 3, 0.0, "floor")]
    assert_t1_bit_exact(m)


def test_clip_off_the_level_grid_after_the_dequantization_stays_a_standard_op():
    """A ReLU6-style Clip(0, 6) of the next layer reads the de-quantized value; it is not part of
    the quantizer once the quantizer has its own bounds."""
    m = _chain_model(CLIP_BEFORE_DIV[:-1] + [node("Mul", ["d", "lam"], ["a"]),
                                             node("Clip", ["a", "zero", "six"], ["y"], name="relu6")])
    m.graph.initializer.extend([const("zero", 0.0), const("six", 1.3)])
    graph = gs.import_onnx(m)
    quantizers.rewrite_rounding_chains(graph)
    assert neuron_bounds(graph) == [(-4, 4, 0.5, "floor")]
    assert [n.name for n in graph.nodes if n.op == "Clip"] == ["relu6"]
    assert_t1_bit_exact(m, RNG.normal(0, 2, (64, 6)).astype(np.float32))


def test_round_without_shift_becomes_a_half_even_neuron():
    m = _chain_model(CLIP_BEFORE_DIV, shift=False, rounding="Round")
    graph = gs.import_onnx(m)
    quantizers.rewrite_rounding_chains(graph)
    assert neuron_bounds(graph) == [(-4, 4, 0.0, "half_even")]
    assert_t1_bit_exact(m)


def test_clip_bounds_that_are_not_whole_levels_are_refused():
    tail = [node("Div", ["r", "levels"], ["d"]), node("Clip", ["d", "bad_lo", "bad_hi"], ["c"]),
            node("Mul", ["c", "lam"], ["y"])]
    problems = []
    quantizers.rewrite_rounding_chains(gs.import_onnx(_chain_model(tail)), problems)
    assert len(problems) == 1 and problems[0][:2] == ("c", "Clip")
    assert "not an exact quantization level" in problems[0][2]


def test_rounding_without_clip_is_refused():
    tail = [node("Div", ["r", "levels"], ["d"]), node("Mul", ["d", "lam"], ["y"])]
    problems = []
    quantizers.rewrite_rounding_chains(gs.import_onnx(_chain_model(tail)), problems)
    assert len(problems) == 1 and problems[0][:2] == ("round", "Floor")
    assert "no lower clip bound" in problems[0][2]


def test_floor_of_a_constant_is_not_a_quantizer():
    m = model([node("Floor", ["c"], ["fc"]), node("Add", ["x", "fc"], ["y"])], [const("c", 2.5)])
    graph = gs.import_onnx(m)
    assert quantizers.rewrite_rounding_chains(graph) == [] and "Floor" in ops(graph)


# ---------------------------------------------------------------------------- absorb_clamps


def _relu_qdq_graph(extra_reader=False):
    nodes = [
        node("Relu", ["x"], ["r"], name="relu"),
        node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dequant"),
    ]
    if extra_reader:
        nodes += [node("Neg", ["r"], ["n"]), node("Add", ["d", "n"], ["y"])]
    else:
        nodes.append(node("Identity", ["d"], ["y"]))
    return model(nodes, [const("s", 0.05), const("zp", 0, np.int8)])


def test_relu_in_front_of_a_neuron_is_absorbed_as_lo_zero():
    m = _relu_qdq_graph()
    graph = gs.import_onnx(m)
    records = quantizers.absorb_clamps(graph, quantizers.rewrite_qdq(graph))
    assert "Relu" not in ops(graph)
    assert neuron_bounds(graph) == [(0, 127, 0.0, "half_even")]
    assert records[0].params.lo == 0 and "relu" in records[0].source_nodes
    assert_t1_bit_exact(m)


def test_relu_whose_output_is_also_read_elsewhere_stays():
    m = _relu_qdq_graph(extra_reader=True)
    graph = gs.import_onnx(m)
    quantizers.absorb_clamps(graph, quantizers.rewrite_qdq(graph))
    assert "Relu" in ops(graph) and neuron_bounds(graph)[0][:2] == (-128, 127)
    assert_t1_bit_exact(m)


# ------------------------------------------------------------------------- time as a Loop


def test_the_loop_runs_the_neuron_over_timesteps_and_reads_out_the_mean():
    w = RNG.normal(0, 1, (6, 3)).astype(np.float32)
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dequant"),
        node("MatMul", ["d", "w"], ["y"]),
    ], [const("s", 0.5), const("zp", 0, np.int8), const("w", w)])
    spiking, _ = to_spiking_onnx(m)
    assert [i.name for i in spiking.graph.input] == ["x", "timesteps"]
    x = RNG.normal(0, 1, (10, 6)).astype(np.float32)
    params = NeuronParams(lo=-128, hi=127, v_init=0.0, rounding="half_even")
    for timesteps in (1, 3):
        result = SpikingModel(spiking).run(x, timesteps, collect_spikes=True)
        z = np.broadcast_to(x / np.float32(0.5), (timesteps,) + x.shape)
        spikes = run(z, params)
        assert np.array_equal(result.spikes["quant"], spikes)
        per_step = np.stack([(s * np.float32(0.5)) @ w for s in spikes])
        np.testing.assert_allclose(result.output, per_step.mean(axis=0), rtol=1e-6, atol=1e-6)
    assert np.array_equal(SpikingModel(spiking).run(x, 1).output, run_source(m, x))


def test_the_spiking_model_keeps_a_fixed_batch_and_shape_arithmetic_that_touches_it():
    """What torch writes at batch 1: the Reshape hard-codes the batch; every step runs at it."""
    m = model([
        node("Shape", ["x"], ["shape"]),
        node("Reshape", ["x", "flat"], ["r"]),
        node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        node("Reshape", ["d", "shape"], ["y"]),
    ], [const("flat", [1, 6], np.int64), const("s", 0.1), const("zp", 0, np.int8)],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])])
    spiking, _ = to_spiking_onnx(m)
    x = RNG.normal(size=(5, 2, 3)).astype(np.float32)
    assert np.array_equal(SpikingModel(spiking).run(x, 1).output, run_source(m, x))


# ------------------------------------------------------------------------------- BatchNorm
# ------------------------------------------------------------------------------- BatchNorm


def test_batch_normalization_stays_a_standard_op_and_t1_stays_exact():
    """Inference-mode BatchNormalization acts on each row alone, so it stays as the source wrote
    it; folding it into the weights would change float rounding and break T = 1 exactness."""
    channels = 6
    m = model([
        node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["b"], name="bn"),
        node("QuantizeLinear", ["b", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant"),
    ], [const("gamma", RNG.uniform(0.5, 2, channels)), const("beta", RNG.normal(size=channels)),
        const("mean", RNG.normal(size=channels)), const("var", RNG.uniform(0.1, 3, channels)),
        const("s", 0.03), const("zp", 0, np.int8)])
    spiking, _ = to_spiking_onnx(m)
    assert "BatchNormalization" in [n.op_type for n in spiking.graph.node]
    assert_t1_bit_exact(m, RNG.normal(0, 2, (256, 6)).astype(np.float32))


# ------------------------------------------------------------------------------- pre-flight


def test_preflight_lists_every_node_the_onnx_target_cannot_take():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dequant"),
        node("Softmax", ["d"], ["soft"], name="softmax_over_batch", axis=0),
        node("RandomNormalLike", ["soft"], ["noise"], name="noise"),
        node("Add", ["soft", "noise"], ["r"], name="add_noise"),
        node("Mystery", ["r"], ["y"], name="custom", domain="com.example"),
    ], [const("s", 0.1), const("zp", 0, np.uint8)], domains=["com.example"])
    with pytest.raises(UnsupportedModelError) as error:
        check(m, "model.onnx")
    listed = {(name, op) for name, op, _ in error.value.problems}
    assert listed == {("noise", "RandomNormalLike"), ("custom", "Mystery")}
    text = str(error.value)
    assert "model.onnx" in text and "random" in text and "com.example" in text


def test_preflight_refuses_integer_operators_with_the_hint_to_export_qdq():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
        node("QLinearMatMul", ["q", "s", "zp", "wq", "ws", "wzp", "s", "zp"], ["yq"], name="qmatmul"),
        node("DequantizeLinear", ["yq", "s", "zp"], ["y"], name="dequant"),
    ], [const("s", 0.1), const("zp", 0, np.uint8), const("wq", RNG.integers(0, 255, (6, 6)), np.uint8),
        const("ws", 0.01), const("wzp", 128, np.uint8)])
    with pytest.raises(UnsupportedModelError) as error:
        check(m, "model.onnx")
    reasons = {name: reason for name, _, reason in error.value.problems}
    assert "QuantFormat.QDQ" in reasons["qmatmul"]


def test_preflight_refuses_a_float_model_with_no_quantizer():
    m = model([node("MatMul", ["x", "w"], ["h"]), node("Relu", ["h"], ["y"])],
              [const("w", RNG.normal(size=(6, 3)))])
    with pytest.raises(BadInputError, match="no activation quantizer"):
        check(m, "float.onnx")


def test_preflight_accepts_a_supported_model_and_returns_its_neurons():
    conversion = check(_qdq_model(0, np.uint8))
    assert [r.name for r in conversion.neurons] == ["quant"]


# ------------------------------------------------------------------ more producer idioms


def test_relu6_written_as_clip_in_front_of_an_int8_quantizer_becomes_the_neuron_bounds():
    """MobileNetV2 quantized with int8 activations keeps ReLU6 as Clip(0, 6) before each quantizer."""
    m = model([
        node("Clip", ["x", "zero", "six"], ["r"], name="relu6"),
        node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant"),
    ], [const("zero", 0.0), const("six", 6.0), const("s", 0.05), const("zp", 0, np.int8)])
    graph = gs.import_onnx(m)
    quantizers.absorb_clamps(graph, quantizers.rewrite_qdq(graph))
    assert "Clip" not in ops(graph)
    assert neuron_bounds(graph) == [(0, 120, 0.0, "half_even")]  # rint(6 / 0.05) = 120
    assert_t1_bit_exact(m, RNG.normal(0, 4, (256, 6)).astype(np.float32))


def test_a_clip_off_the_level_grid_in_front_of_a_quantizer_is_absorbed_exactly():
    m = model([
        node("Max", ["x", "low"], ["a"], name="floor_clamp"),
        node("Min", ["a", "high"], ["r"], name="ceiling_clamp"),
        node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="quant"),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant"),
    ], [const("low", -0.33), const("high", 0.77), const("s", 0.1), const("zp", 0, np.int8)])
    graph = gs.import_onnx(m)
    quantizers.absorb_clamps(graph, quantizers.rewrite_qdq(graph))
    assert not {"Min", "Max"} & set(ops(graph))
    assert neuron_bounds(graph) == [(-3, 8, 0.0, "half_even")]
    assert_t1_bit_exact(m, RNG.normal(0, 1, (512, 6)).astype(np.float32))


def test_per_channel_activation_quantizer_gets_one_scale_per_channel_and_stays_exact():
    scales = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.5], np.float32)
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant", axis=1),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant", axis=1),
    ], [const("s", scales), const("zp", np.zeros(6), np.int8)])
    conversion = check(m)
    assert [r.params.lo for r in conversion.neurons] == [-128]
    x = (RNG.normal(size=(256, 6)) * scales * 60).astype(np.float32)
    x[0] = scales * np.float32(2.5)  # ties in every channel
    assert_t1_bit_exact(m, x)


def test_per_channel_zero_points_that_differ_are_refused_with_the_reason():
    m = model([
        node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant", axis=1),
        node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant", axis=1),
    ], [const("s", np.full(6, 0.1)), const("zp", np.arange(6), np.uint8)])
    with pytest.raises(UnsupportedModelError, match="same for every channel"):
        check(m)


def test_qonnx_bipolar_activations_become_a_two_level_neuron_and_stay_exact():
    m = model([node("BipolarQuant", ["x", "s"], ["y"], name="binary", domain=QONNX)], [const("s", 0.5)],
              domains=[QONNX])
    conversion = check(m)
    assert [(r.params.lo, r.params.hi, r.producer) for r in conversion.neurons] == [(-1, 0, "bipolar")]
    x = RNG.normal(size=(64, 6)).astype(np.float32)
    x[0] = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38]  # zeros of both signs and the smallest floats
    assert_t1_bit_exact(m, x)


@pytest.mark.parametrize("order", ["a + (f - a)", "(f - a) + a", "a - (a - f)"])
def test_straight_through_floor_with_a_shift_in_any_operand_order_becomes_a_neuron(order):
    """The QCFS way: ``q = z + (floor(z + 0.5) - z).detach()`` then a clamp."""
    nodes = [node("Div", ["x", "up"], ["v"]), node("Mul", ["v", "levels"], ["z"]),
             node("Add", ["z", "half"], ["zs"]), node("Floor", ["zs"], ["f"], name="floor")]
    if order == "a + (f - a)":
        nodes += [node("Sub", ["f", "z"], ["d"]), node("Add", ["z", "d"], ["q"])]
    elif order == "(f - a) + a":
        nodes += [node("Sub", ["f", "z"], ["d"]), node("Add", ["d", "z"], ["q"])]
    else:
        nodes += [node("Sub", ["z", "f"], ["d"]), node("Sub", ["z", "d"], ["q"])]
    nodes += [node("Clip", ["q", "lo", "levels"], ["c"]), node("Div", ["c", "levels"], ["l"]),
              node("Mul", ["l", "up"], ["y"])]
    m = model(nodes, [const("up", 1.5), const("levels", 4.0), const("half", 0.5), const("lo", 0.0)])
    conversion = check(m)
    assert [(r.params.lo, r.params.hi, r.params.rounding, r.params.v_init) for r in conversion.neurons] == \
        [(0, 4, "floor", 0.5)]
    assert_t1_bit_exact(m, RNG.normal(0, 1.5, (512, 6)).astype(np.float32))


def test_a_derived_neuron_that_does_not_compute_the_source_quantizer_is_refused_by_the_proof():
    from pmsm.exporter.proof import prove

    m = _qdq_model(0, np.int8, scale=0.1)
    conversion = check(m)
    rewritten = gs.export_onnx(conversion.graph, do_type_check=False)
    neuron = next(n for n in rewritten.graph.node if n.op_type == NEURON_OP)
    next(a for a in neuron.attribute if a.name == "hi").i = 100  # the source saturates at 127
    problems = prove(m, rewritten, conversion.neurons)
    assert len(problems) == 1 and problems[0][0] == "quant"
    assert "lo=-128, hi=127" in problems[0][2] and "differs from the source quantizer" in problems[0][2]
    rounding = next(a for a in neuron.attribute if a.name == "rounding")
    next(a for a in neuron.attribute if a.name == "hi").i = 127
    rounding.s = b"floor"  # half-even is what QuantizeLinear does
    assert prove(m, rewritten, conversion.neurons)
    rounding.s = b"half_even"
    assert prove(m, rewritten, conversion.neurons) == []
