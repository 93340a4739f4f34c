"""The lean form of a spiking file (pmsm.runtime.lean): what ONNX Runtime runs without the custom op,
bit for bit the reference kernel at every T, spikes included; T = 1 without state (issue 23).
Speed is measured in benchmarks/lean.py, never asserted here."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.exporter.convert import spiking_from_network
from pmsm.runtime.execute import SpikingModel
from pmsm.runtime.lean import lean_model, lean_neuron_form
from pmsm.runtime.neuron import NeuronParams
from pmsm.runtime.schema import is_neuron

RNG = np.random.default_rng(2023)

# every lean form: QDQ to uint8 (256 levels, any zero point), and Round/Floor + Clip + 0.0 otherwise
PARAMS = {
    "qdq_uint8": NeuronParams(lo=0, hi=255, v_init=0.0, rounding="half_even"),
    "qdq_int8": NeuronParams(lo=-128, hi=127, v_init=0.0, rounding="half_even"),
    "qdq_zero_point_3": NeuronParams(lo=-3, hi=252, v_init=0.0, rounding="half_even"),
    "qdq_int16": NeuronParams(lo=-32768, hi=32767, v_init=0.0, rounding="half_even"),
    "qdq_uint16_zero_point_5": NeuronParams(lo=-5, hi=65530, v_init=0.0, rounding="half_even"),
    "round_4_bit": NeuronParams(lo=-8, hi=7, v_init=0.0, rounding="half_even"),
    "round_v_init": NeuronParams(lo=-128, hi=127, v_init=0.25, rounding="half_even"),
    "floor_pmsm": NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor"),
    "floor_relu": NeuronParams(lo=0, hi=3, v_init=0.5, rounding="floor"),
}
SCALE = np.float32(0.0373)


def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _network(params: NeuronParams, fused: bool = True) -> onnx.ModelProto:
    """``Div(x, s) -> neuron -> Mul(s) -> Softmax``: a quantizer as the exporter writes it, then a
    compensated op. ``fused=False``: the de-quantization by another scale (no fusion possible)."""
    attrs = dict(lo=params.lo, hi=params.hi, v_init=params.v_init, rounding=params.rounding)
    return helper.make_model(helper.make_graph(
        [helper.make_node("Div", ["x", "s"], ["z"], name="pre_scale"),
         helper.make_node("MultiSpikeNeuron", ["z", "timesteps"], ["q"], name="neuron", domain="ai.pmsm", **attrs),
         helper.make_node("Mul", ["q", "s" if fused else "s2"], ["a"], name="dequant"),
         helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12]),
                helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        initializer=[numpy_helper.from_array(np.array(SCALE), "s"),
                     numpy_helper.from_array(np.array(np.float32(0.5)), "s2")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.pmsm", 3)], ir_version=10)


def _hard_inputs(rows: int = 40) -> np.ndarray:
    """Ties of every level (k + 0.5) * scale and the floats next to them, signed zeros, values
    beyond both caps, and noise."""
    levels = RNG.integers(-140, 270, (rows, 12)).astype(np.float32)
    levels[-4:] = RNG.integers(-33000, 66000, (4, 12))  # the 16-bit ranges and beyond
    x = ((levels + np.float32(0.5)) * SCALE).astype(np.float32)
    nudge = RNG.integers(-1, 2, x.shape)
    x = np.where(nudge > 0, np.nextafter(x, np.float32(np.inf)), np.where(nudge < 0, np.nextafter(x, np.float32(-np.inf)), x))
    x[0, :4] = [0.0, -0.0, -0.4 * SCALE, 0.4 * SCALE]
    x[1, :2] = [1e6, -1e6]
    noise = (RNG.normal(size=(rows, 12)) * 4).astype(np.float32)
    return np.concatenate([x.astype(np.float32), noise])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("key", list(PARAMS))
def test_the_lean_form_equals_the_kernel_bit_for_bit_at_t1_t2_t4_spikes_included(key, fused):
    spiking = spiking_from_network(_network(PARAMS[key], fused)).model
    kernel, lean = SpikingModel(spiking), SpikingModel(spiking, portable=True)
    x = _hard_inputs()
    for t in (1, 2, 4):
        want, got = kernel.run(x, t, collect_spikes=True), lean.run(x, t, collect_spikes=True)
        assert same_bits(want.output, got.output), f"T={t}"
        assert same_bits(want.spikes["neuron"], got.spikes["neuron"]), f"T={t}"  # +0.0 zeros included
        plain = lean.run(x, t)  # without the spikes as outputs: another lean model
        assert same_bits(want.output, plain.output), f"T={t}"
    assert lean.lean  # it ran the lean form, not the function body it falls back to


def test_each_neuron_is_written_as_its_attributes_need():
    forms = {key: lean_neuron_form(_neuron_node(params), 17) for key, params in PARAMS.items()}
    assert forms == {"qdq_uint8": "qdq", "qdq_int8": "qdq", "qdq_zero_point_3": "qdq", "qdq_int16": "qdq16",
                     "qdq_uint16_zero_point_5": "qdq16", "round_4_bit": "round",
                     "round_v_init": "qdq", "floor_pmsm": "floor", "floor_relu": "floor"}
    assert lean_neuron_form(_neuron_node(PARAMS["qdq_uint8"]), 9) == "round"  # no QuantizeLinear before opset 10


def _neuron_node(params: NeuronParams) -> onnx.NodeProto:
    return helper.make_node("MultiSpikeNeuron", ["z", "u"], ["s", "u_next"], domain="ai.pmsm", lo=params.lo,
                            hi=params.hi, v_init=params.v_init, rounding=params.rounding)


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node if n.op_type != "Constant"]


def test_at_t1_a_qdq_neuron_is_the_source_quantizer_and_nothing_carries_state():
    lean = lean_model(spiking_from_network(_network(PARAMS["qdq_zero_point_3"])).model)
    assert not any(is_neuron(n) for n in lean.graph.node) and not lean.functions
    branch = next(n for n in lean.graph.node if n.op_type == "If")  # the first step: alone at T = 1
    first = next(a.g for a in branch.attribute if a.name == "then_branch")
    # Div, the neuron's Add/Round/Clip/Sub and Mul: two passes, as QuantizeLinear/DequantizeLinear by the scale
    assert _ops(first) == ["QuantizeLinear", "DequantizeLinear", "Softmax", "Unsqueeze"]
    quantize = next(n for n in first.node if n.op_type == "QuantizeLinear")
    assert list(quantize.input[:2]) == ["x", "s"]
    loop = next(n for n in lean.graph.node if n.op_type == "Loop")
    assert "QuantizeLinear" in _ops(loop.attribute[0].g) and "Round" not in _ops(loop.attribute[0].g)


def _loop_body(model: onnx.ModelProto) -> onnx.GraphProto:
    return next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g


def test_each_later_step_dequantizes_the_spikes_from_their_levels_where_the_scale_is_a_scalar():
    spiking = spiking_from_network(_network(PARAMS["qdq_int8"])).model
    body = _loop_body(lean_model(spiking))
    quantize = next(n for n in body.node if n.op_type == "QuantizeLinear")
    levels, spikes = quantize.output[0], next(n for n in body.node if n.input[:1] == [quantize.output[0]]).output[0]
    assert sorted(n.input[1] for n in body.node if n.op_type == "DequantizeLinear" and n.input[0] == levels)[-1] == "s"
    assert not [n for n in body.node if n.op_type == "Mul" and spikes in n.input]  # Mul(spikes, s) is gone
    assert "Size" not in _ops(body)  # a QDQ neuron needs no run-time zero


def test_a_dequantization_by_a_tensor_stays_a_mul_and_equals_the_kernel():
    network = _network(PARAMS["qdq_int8"], fused=False)
    network.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(12, 0.5, np.float32), "s2"))
    spiking = spiking_from_network(network).model
    assert "Mul" in _ops(_loop_body(lean_model(spiking)))
    x = _hard_inputs()
    for t in (2, 4):
        assert same_bits(SpikingModel(spiking).run(x, t).output, SpikingModel(spiking, portable=True).run(x, t).output)


def test_the_loop_runs_the_steps_after_the_first_without_a_branch_on_the_first_step():
    spiking = spiking_from_network(_network(PARAMS["qdq_uint8"])).model
    assert "If" in _ops(_loop_body(spiking))  # the compensated Softmax chooses its first-step branch each step
    lean = lean_model(spiking)
    assert "If" not in _ops(_loop_body(lean))
    kernel, portable = SpikingModel(spiking), SpikingModel(spiking, portable=True)
    x = _hard_inputs(8)
    for t in (2, 3, 5):  # one, two and four iterations of the loop after the first step
        want, got = kernel.run(x, t, collect_spikes=True), portable.run(x, t, collect_spikes=True)
        assert same_bits(want.output, got.output) and same_bits(want.spikes["neuron"], got.spikes["neuron"]), t


def _with_final_states_as_outputs(spiking: onnx.ModelProto) -> onnx.ModelProto:
    """``spiking`` whose every state after the loop (membrane, running sums) is also a graph output."""
    model = onnx.ModelProto()
    model.CopyFrom(spiking)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    for state in list(loop.output)[:len(loop.input) - 2]:
        model.graph.output.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("key", ["qdq_int8", "round_v_init", "floor_pmsm"])
def test_states_read_after_the_loop_equal_the_kernels_sign_of_zero_included(key):
    spiking = _with_final_states_as_outputs(spiking_from_network(_network(PARAMS[key])).model)
    kernel, portable = SpikingModel(spiking), SpikingModel(spiking, portable=True)
    x = _hard_inputs(8)
    for t in (1, 2, 4):
        want, got = kernel.run(x, t).outputs, portable.run(x, t).outputs
        assert len(want) == len(got) > 2 and all(same_bits(a, b) for a, b in zip(want, got)), t
    assert portable.lean


def _network_with_int8_weights() -> onnx.ModelProto:
    """``Div -> neuron -> Mul -> MatMul(DequantizeLinear(int8 W))``: weights de-quantized at run time,
    as a QDQ file has them."""
    params = PARAMS["qdq_int8"]
    weights = RNG.integers(-127, 128, (12, 5)).astype(np.int8)
    return helper.make_model(helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_int8", "w_scale"], ["w"], name="weights"),
         helper.make_node("Div", ["x", "s"], ["z"], name="pre_scale"),
         helper.make_node("MultiSpikeNeuron", ["z", "timesteps"], ["q"], name="neuron", domain="ai.pmsm",
                          lo=params.lo, hi=params.hi, v_init=params.v_init, rounding=params.rounding),
         helper.make_node("Mul", ["q", "s"], ["a"], name="dequant"),
         helper.make_node("MatMul", ["a", "w"], ["y"], name="matmul")],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12]),
                helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(np.array(SCALE), "s"), numpy_helper.from_array(weights, "w_int8"),
                     numpy_helper.from_array(np.array(np.float32(0.0117)), "w_scale")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.pmsm", 3)], ir_version=10)


@pytest.mark.parametrize("rows", [1, 7])
def test_the_weights_are_dequantized_in_the_first_step_as_the_ann_does_and_equal_the_kernel(rows):
    spiking = spiking_from_network(_network_with_int8_weights()).model
    before_loop = lambda model: [n.op_type for n in model.graph.node[:[n.op_type for n in model.graph.node].index("Loop")]]
    assert "DequantizeLinear" in before_loop(spiking)
    lean = lean_model(spiking)
    assert "DequantizeLinear" not in before_loop(lean)
    first_step = next(n for n in lean.graph.node if n.op_type == "If")
    assert all("DequantizeLinear" in _ops(branch.g) for branch in first_step.attribute)
    kernel, portable = SpikingModel(spiking), SpikingModel(spiking, portable=True)
    x = _hard_inputs(8)[:rows]
    for t in (1, 2, 4):
        assert same_bits(kernel.run(x, t).output, portable.run(x, t).output), t
    assert portable.lean


@pytest.mark.parametrize("domain, dtype, zero_point", [("", np.uint8, 100), ("com.microsoft", np.uint16, 30000)])
def test_quantize_linear_divides_by_its_scale_as_div_does_at_every_rounding_boundary(domain, dtype, zero_point):
    """The premise of the fused first step: ONNX Runtime's QuantizeLinear(x, c) is rint(x / c) with
    x / c the float32 quotient Div computes, so ties and their neighbours round alike (uint8, and
    uint16 through ONNX Runtime's own Q/DQ, which the lean form uses below opset 21)."""
    top = int(np.iinfo(dtype).max)
    scales = np.array([0.0373, 0.1, 1 / 3, 0.007843138, 2.5, 1e-3, 17.0], np.float32)
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "c", "zp"], ["q"], domain=domain or None),
         helper.make_node("Div", ["x", "c"], ["z"])],
        "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None]),
              helper.make_tensor_value_info("c", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("q", onnx_type, [None]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [None])],
        initializer=[numpy_helper.from_array(np.array(zero_point, dtype), "zp")])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString(),
                                   options)
    levels = np.concatenate([np.arange(-zero_point - 1, zero_point + 1, dtype=np.float32),
                             np.arange(top - zero_point - 300, top - zero_point + 2, dtype=np.float32)]) + np.float32(0.5)
    for c in scales:
        ties = (levels * c).astype(np.float32)
        x = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
                            (RNG.normal(size=4000) * 80 * c).astype(np.float32)]).astype(np.float32)
        q, z = session.run(None, {"x": x, "c": np.array(c)})
        want = np.clip(np.rint(z), -zero_point, top - zero_point).astype(np.int64)
        assert np.array_equal(q.astype(np.int64) - zero_point, want), c


def test_python_m_lean_writes_a_file_plain_onnx_runtime_runs_as_the_kernel(tmp_path):
    spiking = spiking_from_network(_network(PARAMS["qdq_int8"])).model
    path, out = tmp_path / "net.spiking.onnx", tmp_path / "net.lean.onnx"
    onnx.save(spiking, str(path))
    done = subprocess.run([sys.executable, "-m", "pmsm.runtime.lean", str(path), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(out), options)  # no custom op library
    x = _hard_inputs(8)
    for t in (1, 3):
        (y,) = session.run(None, {"x": x, "timesteps": np.array(t, np.int64)})
        assert same_bits(y, SpikingModel(spiking).run(x, t).output)
    bad = subprocess.run([sys.executable, "-m", "pmsm.runtime.lean", str(tmp_path / "missing.onnx"), str(tmp_path / "o.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such file" in bad.stderr
    assert not (tmp_path / "o.onnx").exists()
