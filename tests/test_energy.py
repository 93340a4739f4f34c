"""Energy estimate and spike statistics (README: Verification and report), checked against hand computations."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.energy import ANALOG_INPUT, MAC_PJ, SOP_PJ, energy_report, synaptic_layers
from pmsm.exporter.convert import spiking_from_network
from pmsm.runtime.execute import SpikingModel

NEURON = dict(domain="ai.pmsm", lo=-2, hi=2, v_init=0.5, rounding="floor")


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _untimed(body_nodes, last, features, input_shape, inits):
    """The untimed network of ``body_nodes`` (reading ``xt``, writing ``last``): what the energy
    estimate reads."""
    nodes = [helper.make_node("Identity", ["x"], ["xt"], name="input"), *body_nodes,
             helper.make_node("Identity", [last], ["y"], name="output")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape[1:]]),
         helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.pmsm", 2)],
                             ir_version=10)


def spiking(network) -> SpikingModel:
    """The spiking model of an untimed network, on the reference backend."""
    return SpikingModel(spiking_from_network(network).model)


# ---------------------------------------------------------------------------------------------
# x [N,4] -> Tile -> Gemm(4->3) -> Div(0.5) -> neuron(lo=-2, hi=2, floor) -> Mul(0.5) -> Gemm(3->2)
# ---------------------------------------------------------------------------------------------

W1 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)  # z = x[:, :3] / 0.5
W2 = np.array([[1, -1], [2, 0], [0, 1]], np.float32)
X = np.array([[1.0, -1.0, 0.0, 3.0], [0.0625, 0.625, 0.875, -3.0]], np.float32)
# z = [[2, -2, 0], [0.125, 1.25, 1.75]]; u starts at 0.5, s = clip(floor(u), -2, 2), u -= s:
SPIKES = {
    1: np.array([[[2, -2, 0], [0, 1, 2]]], np.float32),
    2: np.array([[[2, -2, 0], [0, 1, 2]],      # step 0
                 [[2, -2, 0], [0, 2, 2]]], np.float32),  # step 1: 0.125+0.125+0.5 < 1; 0.75+1.25 = 2; 0.25+1.75 = 2
}


def tiny_mlp():
    body = [
        helper.make_node("Gemm", ["xt", "w1"], ["h"], name="fc1"),
        helper.make_node("Div", ["h", "scale"], ["z"], name="pre"),
        helper.make_node("MultiSpikeNeuron", ["z", "timesteps"], ["s"], name="neuron", **NEURON),
        helper.make_node("Mul", ["s", "scale"], ["a"], name="dequant"),
        helper.make_node("Gemm", ["a", "w2"], ["o"], name="fc2"),
    ]
    return _untimed(body, "o", 2, [1, 4], [_const("w1", W1), _const("w2", W2), _const("scale", 0.5)])


@pytest.fixture(scope="module")
def tiny_report():
    model = tiny_mlp()
    runner = spiking(model)
    spikes = {t: runner.run(X, t, collect_spikes=True).spikes for t in (1, 2)}
    for t in (1, 2):
        np.testing.assert_array_equal(spikes[t]["neuron"], SPIKES[t])
    return energy_report(model, spikes, samples=2)


def test_report_is_plain_json(tiny_report):
    assert json.loads(json.dumps(tiny_report)) == tiny_report
    assert tiny_report["constants"] == {"mac_pj": 4.6, "sop_pj": 0.9}
    assert "fan-out" in tiny_report["convention"] and "graded" in tiny_report["convention"]
    assert tiny_report["timesteps"] == [1, 2] and tiny_report["samples"] == 2
    assert tiny_report["warnings"] == []


def test_layers_macs_inputs_and_fan_out(tiny_report):
    fc1, fc2 = tiny_report["layers"]
    assert (fc1["name"], fc1["op"], fc1["macs"], fc1["inputs"]) == ("fc1", "Gemm", 4 * 3, [ANALOG_INPUT])
    assert (fc2["name"], fc2["op"], fc2["macs"], fc2["inputs"]) == ("fc2", "Gemm", 3 * 2, ["neuron"])
    assert fc2["fan_out"] == 2.0  # 6 MACs over 3 input elements
    assert fc1["energy_ann_pj"] == pytest.approx(12 * 4.6)
    assert fc2["energy_ann_pj"] == pytest.approx(6 * 4.6)


def test_layer_energy_by_hand(tiny_report):
    fc1, fc2 = tiny_report["layers"]
    # first layer: analog input, the same at every step: 12 MACs once per sample, no events
    for t in ("1", "2"):
        e = fc1["per_T"][t]
        assert e["events_binary"] == 0 and e["sops_binary"] == 0 and e["mac_ops"] == 12
        assert e["energy_binary_pj"] == pytest.approx(12 * 4.6) == e["energy_graded_pj"]
        assert e["ratio_binary"] == pytest.approx(1.0)
    # T=1: |s| = (2+2+0) + (0+1+2) = 7 spikes over 2 samples; non-zero: 2 + 2 = 4
    e = fc2["per_T"]["1"]
    assert e["events_binary"] == pytest.approx(7 / 2) and e["events_graded"] == pytest.approx(4 / 2)
    assert e["sops_binary"] == pytest.approx(3.5 * 2) and e["sops_graded"] == pytest.approx(2.0 * 2)
    assert e["mac_ops"] == 0
    assert e["energy_binary_pj"] == pytest.approx(7 * 0.9) and e["energy_graded_pj"] == pytest.approx(4 * 0.9)
    assert e["ratio_binary"] == pytest.approx(7 * 0.9 / (6 * 4.6))
    assert e["ratio_graded"] == pytest.approx(4 * 0.9 / (6 * 4.6))
    # T=2: |s| = (4 + 4 + 0) + (0 + 3 + 4) = 15; non-zero = (2 + 2) + (0 + 2 + 2) ... = 8
    e = fc2["per_T"]["2"]
    assert e["events_binary"] == pytest.approx(15 / 2) and e["events_graded"] == pytest.approx(8 / 2)
    assert e["sops_binary"] == pytest.approx(7.5 * 2) and e["sops_graded"] == pytest.approx(4 * 2)
    assert e["energy_binary_pj"] == pytest.approx(15 * 0.9) and e["energy_graded_pj"] == pytest.approx(8 * 0.9)


def test_totals_by_hand(tiny_report):
    totals = tiny_report["totals"]
    ann = (12 + 6) * 4.6
    assert totals["ann_pj"] == pytest.approx(ann)
    assert set(totals["snn"]) == {"1", "2"}
    for t, (binary, graded) in {"1": (12 * 4.6 + 7 * 0.9, 12 * 4.6 + 4 * 0.9),
                                "2": (12 * 4.6 + 15 * 0.9, 12 * 4.6 + 8 * 0.9)}.items():
        e = totals["snn"][t]
        assert e["binary_pj"] == pytest.approx(binary) and e["graded_pj"] == pytest.approx(graded)
        assert e["ratio_binary"] == pytest.approx(binary / ann) and e["ratio_graded"] == pytest.approx(graded / ann)
    assert MAC_PJ == 4.6 and SOP_PJ == 0.9


def test_neuron_statistics_by_hand(tiny_report):
    (layer,) = tiny_report["neuron_layers"]
    assert (layer["name"], layer["lo"], layer["hi"], layer["neurons"]) == ("neuron", -2, 2, 3)
    one, two = layer["per_T"]["1"], layer["per_T"]["2"]
    # T=1: levels 2, -2, 0 | 0, 1, 2 (6 entries)
    assert one["histogram"] == {"-2": 1, "0": 2, "1": 1, "2": 2}
    assert one["mean_abs_spikes_per_step"] == pytest.approx(7 / 6)
    assert one["silent_fraction"] == pytest.approx(2 / 6)  # sample 0 unit 2, sample 1 unit 0
    assert one["cap_hit_fraction_lo"] == pytest.approx(1 / 6) and one["cap_hit_fraction_hi"] == pytest.approx(2 / 6)
    assert one["max_abs_spikes"] == 2
    assert one["payload_bits"] == {"observed": 1 + 2, "bounds": 1 + 2}  # 1 + ceil(log2(2 + 1))
    # T=2: 12 entries, levels 2,-2,0,0,1,2 then 2,-2,0,0,2,2
    assert two["histogram"] == {"-2": 2, "0": 4, "1": 1, "2": 5}
    assert two["mean_abs_spikes_per_step"] == pytest.approx(15 / 12)
    assert two["silent_fraction"] == pytest.approx(2 / 6)
    assert two["cap_hit_fraction_lo"] == pytest.approx(2 / 12) and two["cap_hit_fraction_hi"] == pytest.approx(5 / 12)


def test_cap_fractions_are_none_for_a_zero_bound_and_bits_follow_the_observed_maximum():
    model = tiny_mlp()
    for node in model.graph.node:
        if node.op_type == "MultiSpikeNeuron":
            for a in node.attribute:
                if a.name == "lo":
                    a.i = 0
                if a.name == "hi":
                    a.i = 7
    spikes = spiking(model).run(np.abs(X) * 0.25, 1, collect_spikes=True).spikes  # z <= 0.5: s in {0, 1}
    (layer,) = energy_report(model, {1: spikes}, 2)["neuron_layers"]
    stats = layer["per_T"]["1"]
    assert stats["cap_hit_fraction_lo"] is None and stats["cap_hit_fraction_hi"] == 0.0
    assert stats["payload_bits"] == {"observed": 2, "bounds": 4}  # 1 + ceil(log2(2)); 1 + ceil(log2(8))


def test_without_spikes_the_report_still_has_macs():
    report = energy_report(tiny_mlp(), {}, 0)
    assert [layer["macs"] for layer in report["layers"]] == [12, 6]
    assert report["totals"] == {"ann_pj": pytest.approx(18 * 4.6), "snn": {}}
    json.dumps(report)


# ---------------------------------------------------------------------------------------------
# Conv, grouped conv, residual Add, max pooling, an unquantized layer feeding a Gemm
# ---------------------------------------------------------------------------------------------
#   x [N,1,6,6] -> conv1 (1->2, 3x3, pad 1) -> neuron_a -> Mul -> a
#   a -> conv2 (2->2, 3x3, pad 1, groups 2) -> neuron_b -> Mul -> b
#   Add(a, b) -> MaxPool 2x2 -> [N,2,3,3] -> conv3 (2->3, 2x2) -> [N,3,2,2] -> Flatten -> fc (12->4)


def conv_residual():
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["xt", "k1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["c1", "scale"], ["z1"], name="pre_a"),
        helper.make_node("MultiSpikeNeuron", ["z1", "timesteps"], ["s1"], name="neuron_a", **NEURON),
        helper.make_node("Mul", ["scale", "s1"], ["a"], name="deq_a"),  # constant first: both orders
        helper.make_node("Conv", ["a", "k2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], group=2),
        helper.make_node("Div", ["c2", "scale"], ["z2"], name="pre_b"),
        helper.make_node("MultiSpikeNeuron", ["z2", "timesteps"], ["s2"], name="neuron_b", **NEURON),
        helper.make_node("Mul", ["s2", "scale"], ["b"], name="deq_b"),
        helper.make_node("Add", ["a", "b"], ["r"], name="residual"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "k3"], ["c3"], name="conv3"),
        helper.make_node("Flatten", ["c3"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w4"], ["o"], name="fc", transB=1),
    ]
    inits = [
        _const("k1", rng.normal(size=(2, 1, 3, 3))), _const("b1", [0.1, -0.1]),
        _const("k2", rng.normal(size=(2, 1, 3, 3)) * 0.5), _const("k3", rng.normal(size=(3, 2, 2, 2))),
        _const("w4", rng.normal(size=(4, 12))), _const("scale", 0.25),
    ]
    return _untimed(nodes, "o", 4, [1, 1, 6, 6], inits)


@pytest.fixture(scope="module")
def conv_case():
    model = conv_residual()
    x = np.random.default_rng(2).normal(size=(3, 1, 6, 6)).astype(np.float32)
    spikes = {t: spiking(model).run(x, t, collect_spikes=True).spikes for t in (1, 3)}
    return model, spikes, energy_report(model, spikes, 3)


def test_conv_macs_from_shapes(conv_case):
    model, _, report = conv_case
    macs = {layer["name"]: layer["macs"] for layer in report["layers"]}
    # Conv: Cout * Hout * Wout * Cin / groups * kh * kw; Gemm: K * M
    assert macs == {
        "conv1": 2 * 6 * 6 * 1 * 3 * 3,
        "conv2": 2 * 6 * 6 * (2 // 2) * 3 * 3,
        "conv3": 3 * 2 * 2 * 2 * 2 * 2,
        "fc": 12 * 4,
    }
    assert [layer.macs for layer in synaptic_layers(model)] == list(macs.values())


def test_conv_inputs_traced_through_add_pool_and_flatten(conv_case):
    _, spikes, report = conv_case
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["conv1"]["inputs"] == [ANALOG_INPUT]
    assert layers["conv2"]["inputs"] == ["neuron_a"]
    assert layers["conv3"]["inputs"] == ["neuron_a", "neuron_b"]  # through MaxPool, Add (both operands), Mul
    assert layers["fc"]["inputs"] == ["analog output of 'conv3' (Conv)"]
    # conv3: 96 MACs over its 2x3x3 input; 2x2 max pooling (stride 2): each neuron in one window
    assert layers["conv3"]["fan_out"] == pytest.approx(96 / 18)
    assert layers["conv3"]["fan_out_by_input"] == {"neuron_a": pytest.approx(96 / 18),
                                                   "neuron_b": pytest.approx(96 / 18)}
    assert layers["conv2"]["fan_out"] == pytest.approx(648 / 72)
    for t in ("1", "3"):
        s_a, s_b = spikes[int(t)]["neuron_a"], spikes[int(t)]["neuron_b"]
        e = layers["conv3"]["per_T"][t]
        binary = (np.abs(s_a).sum() + np.abs(s_b).sum()) / 3
        graded = (np.count_nonzero(s_a) + np.count_nonzero(s_b)) / 3
        assert e["events_binary"] == pytest.approx(binary) and e["events_graded"] == pytest.approx(graded)
        assert e["energy_binary_pj"] == pytest.approx(binary * 96 / 18 * 0.9)
        assert e["energy_graded_pj"] == pytest.approx(graded * 96 / 18 * 0.9)
        # fc reads the unquantized conv3 output, which changes every step: 48 MACs at each of T steps
        assert layers["fc"]["per_T"][t]["mac_ops"] == 48 * int(t)
        assert layers["fc"]["per_T"][t]["energy_binary_pj"] == pytest.approx(48 * int(t) * 4.6)
        assert layers["conv1"]["per_T"][t]["mac_ops"] == 72 * 9
    assert binary > graded  # some neurons sent more than one spike in a step
    assert [n["name"] for n in report["neuron_layers"]] == ["neuron_a", "neuron_b"]
    assert report["neuron_layers"][0]["neurons"] == 72


def test_average_pooling_with_overlap_multiplies_the_fan_out():
    model = conv_residual()
    for node in model.graph.node:
        if node.op_type == "MaxPool":  # 3x3 windows, stride 1, pad 1: every element in 9 windows
            node.op_type = "AveragePool"
            del node.attribute[:]
            node.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]),
                                   helper.make_attribute("strides", [1, 1]),
                                   helper.make_attribute("pads", [1, 1, 1, 1])])
    layers = {layer.name: layer for layer in synaptic_layers(model)}
    conv3 = layers["conv3"]
    assert conv3.macs == 3 * 5 * 5 * 2 * 2 * 2 and conv3.input_elements == 2 * 6 * 6
    assert {s.name: s.multiplicity for s in conv3.sources} == {"neuron_a": 9.0, "neuron_b": 9.0}


def test_shapes_fall_back_to_one_onnx_runtime_run(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no shape inference")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    layers = synaptic_layers(conv_residual())
    assert [layer.macs for layer in layers] == [648, 648, 96, 48]
    assert [layer.input_elements for layer in layers] == [36, 72, 18, 12]


def test_matmul_with_a_constant_weight_is_a_synaptic_layer():
    model = tiny_mlp()
    for node in model.graph.node:
        if node.name == "fc2":
            node.op_type = "MatMul"
    layers = synaptic_layers(model)
    assert [(layer.name, layer.op, layer.macs, layer.fan_out) for layer in layers] == [
        ("fc1", "Gemm", 12, 3.0), ("fc2", "MatMul", 6, 2.0)]


def test_missing_spikes_are_reported_not_fatal():
    model = tiny_mlp()
    report = energy_report(model, {1: {}}, 2)
    assert any("no spikes of neuron 'neuron'" in w for w in report["warnings"])
    fc2 = report["layers"][1]["per_T"]["1"]
    assert fc2["energy_binary_pj"] is None and fc2["ratio_binary"] is None
    json.dumps(report)
