"""NIR and Lava targets on networks over one axis: a keyword-spotting-style 1-D CNN (``Conv`` over
``[N, C, L]`` as NIR ``Conv1d``) and token MLPs (``MatMul`` on the last axis of ``[N, T, F]`` as
``Conv1d`` of kernel 1 over ``(F, T)``; classifying the mean of the tokens, or all tokens flattened),
trained on the digits and exported by torch, quantized with the PMSM layer and by onnxruntime's
``quantize_static`` (tests/sequence_models.py).

Each converts with ``--target nir`` into one plain NIR 1.0.8 file that ``nir.read`` type-checks,
and ``--verify`` runs it in the NIR interpreter and the torch runtime against the spiking ONNX at
T = 1, 2, 4 on the 360 digits test sequences: every prediction equal, every differing spike count
explained (docs/nir.md §6).
"""
from __future__ import annotations

import json

import nir
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.cli import main
from pmsm.targets.nir import NirInterpreter, network_to_nir, unsupported_nodes

pytestmark = pytest.mark.torch

TIMESTEPS = ("1", "2", "4")
STANDARD_NODES = {"Input", "Output", "IF", "Conv1d", "Affine", "Flatten", "Scale"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from sequence_models import build, digits_as_sequences, save_data

    folder = tmp_path_factory.mktemp("sequences")
    data = digits_as_sequences()
    paths = {(arch, producer): build(arch, producer, folder, data)
             for arch in ("kws", "token", "token_flat") for producer in ("pmsm", "qdq")}
    return folder, paths, save_data(folder, data, len(data.x_test))


def _verify(models, arch, producer, target="nir", data=None, timesteps=TIMESTEPS):
    folder, paths, all_data = models
    stem = folder / f"{arch}_{producer}_{target}"
    code = main([str(paths[arch, producer]), "--target", target, "-o", f"{stem}.nir", "--verify",
                 "--data", str(data or all_data), "--timesteps", ",".join(timesteps), "--report", f"{stem}.json"])
    return code, json.loads(stem.with_suffix(".json").read_text()), f"{stem}.nir"


@pytest.fixture(scope="module")
def verified(models):
    """``--target nir --verify`` of each model on the 360 test sequences at T = 1, 2, 4, run once."""
    cache = {}

    def get(arch, producer):
        if (arch, producer) not in cache:
            cache[arch, producer] = _verify(models, arch, producer)
        return cache[arch, producer]
    return get


def _agreement(report, backend):
    rows = report["verification"]["backends"][backend]
    return ({t: rows[t]["argmax_agreement"] for t in rows},
            {t: sum(r["unexplained"] for r in rows[t]["mismatch_by_layer"]) for t in rows})


@pytest.mark.slow
@pytest.mark.parametrize("arch,producer", [("kws", "pmsm"), ("kws", "qdq"), ("token", "pmsm"), ("token", "qdq"),
                                           ("token_flat", "pmsm"), ("token_flat", "qdq")])
def test_nir_interpreter_and_torch_agree_with_the_spiking_onnx_on_every_prediction_at_t_1_2_4(
        verified, arch, producer):
    code, report, path = verified(arch, producer)
    assert code == 0
    for backend in ("nir", "torch"):
        agreement, unexplained = _agreement(report, backend)
        assert agreement == {t: 1.0 for t in TIMESTEPS}, backend
        assert unexplained == {t: 0 for t in TIMESTEPS}, backend
    graph = nir.read(path)  # type checking on (nir.read's default)
    assert {type(n).__name__ for n in graph.nodes.values()} <= STANDARD_NODES
    assert any(isinstance(n, nir.Conv1d) for n in graph.nodes.values())


@pytest.mark.slow
def test_qdq_1d_cnn_average_pool_is_onnx_runtimes_float32_op_so_no_count_after_it_differs_at_t1(verified):
    """onnxruntime's QDQ average pool rounds the de-quantized counts, their sum and the two divisions
    to float32; the exact window sum lands on ties (.5) that this moves by one ulp either way (1,342
    counts of the layer after the pool differed at T = 1 when NIR summed exactly, and 2 of 360
    predictions at T = 4). The pool is written as ONNX's float32 op (docs/nir.md §5a): at T = 1 no
    count differs anywhere; at T = 2 and 4 the remaining differences are float32 convolution sums
    at a boundary, explained."""
    code, report, path = verified("kws", "qdq")
    assert code == 0
    graph = nir.read(path)
    assert [n for n in graph.nodes.values() if (n.metadata or {}).get("pmsm", {}).get("op") == "avg_pool1d_float32"]
    for backend in ("nir", "torch"):
        rows = report["verification"]["backends"][backend]
        assert sum(r["mismatched"] for r in rows["1"]["mismatch_by_layer"]) == 0
        assert {t: rows[t]["argmax_agreement"] for t in TIMESTEPS} == {t: 1.0 for t in TIMESTEPS}


@pytest.mark.slow
@pytest.mark.parametrize("arch,producer", [("kws", "pmsm"), ("kws", "qdq"), ("token", "pmsm"), ("token", "qdq"),
                                           ("token_flat", "pmsm"), ("token_flat", "qdq")])
def test_t1_nir_is_the_quantized_ann_on_the_digits_sequences(verified, arch, producer):
    _, report, _ = verified(arch, producer)
    assert report["verification"]["backends"]["onnx"]["1"]["max_abs_diff"] == 0
    assert report["verification"]["backends"]["nir"]["1"]["accuracy"] == report["accuracy"]["ann"]


@pytest.mark.slow
def test_token_layers_are_conv1d_of_kernel_one_over_features_first_and_the_input_says_so(verified):
    _, _, path = verified("token", "pmsm")
    graph = nir.read(path)
    inputs = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    assert list(inputs[0].input_type["input"]) == [8, 8]
    assert list(inputs[0].metadata["pmsm"]["layout"]) == [2, 1]  # NIR axis 0 = ONNX axis 2 (features)
    token_convs = [n for n in graph.nodes.values() if isinstance(n, nir.Conv1d) and n.weight.shape[2] == 1]
    assert token_convs and all(int(n.stride) == 1 and int(n.padding) == 0 for n in token_convs)
    neurons = [n for n in graph.nodes.values() if isinstance(n, nir.IF) and "layout" in n.metadata["pmsm"]]
    assert neurons and all(list(n.metadata["pmsm"]["layout"]) == [2, 1] for n in neurons)


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize("producer", ["pmsm", "qdq"])
def test_lava_runs_the_1d_cnn_spike_for_spike_with_the_nir_file(models, producer, tmp_path):
    folder, _, all_data = models
    with np.load(all_data) as d:
        np.savez(tmp_path / "few.npz", x=d["x"][:16], y=d["y"][:16])
    code, report, _ = _verify(models, "kws", producer, target="lava", data=tmp_path / "few.npz")
    assert code == 0
    rows = report["verification"]["backends"]["lava"]
    for t in TIMESTEPS:
        assert rows[t]["argmax_agreement"] == 1.0
        assert sum(r["unexplained"] for r in rows[t]["mismatch_by_layer"]) == 0


@pytest.mark.lava
@pytest.mark.slow
def test_lava_runs_the_token_mlp(models, tmp_path):
    folder, _, all_data = models
    with np.load(all_data) as d:
        np.savez(tmp_path / "few.npz", x=d["x"][:16], y=d["y"][:16])
    code, report, _ = _verify(models, "token", "pmsm", target="lava", data=tmp_path / "few.npz")
    assert code == 0
    assert all(report["verification"]["backends"]["lava"][t]["spike_mismatch"] == 0 for t in TIMESTEPS)


# ---------------------------------------------------------------- hand-built graphs: edge cases


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _untimed(nodes, inits, x_shape, out_shape):
    nodes = [helper.make_node("Identity", ["x"], ["xt"], name="input")] + nodes
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape]),
         helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])], initializer=inits)
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.pmsm", 2)])


def _neuron(z, s, name):
    return helper.make_node("MultiSpikeNeuron", [z, "timesteps"], [s], name=name, domain="ai.pmsm",
                            lo=-2, hi=2, v_init=0.5, rounding="floor")


def test_max_pooling_over_one_axis_is_refused_with_the_reason_nir_has_no_1d_pool():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["xt", "w"], ["c"], name="/conv", pads=[1, 1]),
             _neuron("c", "s", "/q"),
             helper.make_node("MaxPool", ["s"], ["y"], name="/pool", kernel_shape=[2], strides=[2])]
    model = _untimed(nodes, [_c("w", rng.normal(size=(4, 3, 3)))], (3, 8), (4, 4))
    problems = unsupported_nodes(model)
    assert [(p[0], p[1]) for p in problems] == [("/pool", "MaxPool")]
    assert "no 1-D pooling node" in problems[0][2]


def test_a_transpose_between_conv1d_and_a_token_matmul_costs_no_node_and_no_rounding():
    """[N, C, L] -> Conv1d -> neuron -> Transpose -> [N, L, C] @ W (+ b) -> neuron -> Transpose back:
    both transposes only change the recorded layout; the MatMul is a Conv1d of kernel 1."""
    rng = np.random.default_rng(1)
    w, m, b = rng.normal(size=(6, 3, 3)) * 0.5, rng.normal(size=(6, 5)) * 0.5, rng.normal(size=5)
    nodes = [helper.make_node("Conv", ["xt", "w"], ["c"], name="/conv", pads=[1, 1]),
             _neuron("c", "s", "/q1"),
             helper.make_node("Transpose", ["s"], ["st"], name="/t1", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["st", "m"], ["h"], name="/fc"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="/fc/bias"),
             _neuron("hb", "s2", "/q2"),
             helper.make_node("Transpose", ["s2"], ["y"], name="/t2", perm=[0, 2, 1])]
    model = _untimed(nodes, [_c("w", w), _c("m", m), _c("b", b)], (3, 7), (5, 7))
    graph = network_to_nir(model)
    assert sorted(type(n).__name__ for n in graph.nodes.values()) == ["Conv1d", "Conv1d", "IF", "IF", "Input",
                                                                      "Output"]
    x = rng.normal(size=(4, 3, 7)).astype(np.float32)
    result = NirInterpreter(graph).run(x, timesteps=2, collect_spikes=True)
    # the same network in numpy, step by step, in ONNX's layout
    from pmsm.runtime.neuron import NeuronParams, initial_membrane, step

    p = NeuronParams(-2, 2, 0.5, "floor")
    from pmsm.targets.nir import ops
    c = ops.conv1d(x.astype(np.float64), w, None, 1, 1, 1, 1).astype(np.float32)
    u1, u2, total = initial_membrane(c.shape, p), initial_membrane((4, 7, 5), p), 0.0
    for t in range(2):
        u1, s1 = step(u1, c, p)
        assert np.array_equal(result.spikes["/q1"][t], s1)
        h = (s1.transpose(0, 2, 1).astype(np.float64) @ m + b).astype(np.float32)
        u2, s2 = step(u2, h, p)
        assert np.array_equal(result.spikes["/q2"][t], s2)
        total = total + s2.transpose(0, 2, 1)
    assert np.array_equal(result.output, (total / 2).astype(np.float32))


def _spiking(network):
    from pmsm.exporter.convert import spiking_from_network
    from pmsm.runtime.execute import SpikingModel

    return SpikingModel(spiking_from_network(network, compensation=False).model)


def _same_spikes_as_the_spiking_onnx(model, x, timesteps):
    graph = network_to_nir(model, timesteps=timesteps)
    ours = NirInterpreter(graph).run(x, timesteps, collect_spikes=True)
    ref = _spiking(model).run(x, timesteps, collect_spikes=True)
    assert set(ours.spikes) == set(ref.spikes)
    for name, s in ref.spikes.items():
        assert ours.spikes[name].shape == s.shape
        assert int(np.sum(ours.spikes[name] != s)) == 0, name
    np.testing.assert_allclose(ours.output, ref.output, rtol=1e-5, atol=1e-5)
    return graph


def _conv1d_model():
    """[N, 4, 11] -> Conv(groups 2, dilation 2, pads 2/2) -> neuron -> Conv(stride 2, pads 1/1) -> neuron
    -> AveragePool(3, stride 2, pads 1/1, count_include_pad 0) -> neuron -> GlobalAveragePool -> Flatten
    -> Gemm."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["xt", "w1", "b1"], ["c1"], name="/c1", group=2, dilations=[2],
                              kernel_shape=[3], pads=[2, 2]),
             _neuron("c1", "s1", "/q1"),
             helper.make_node("Mul", ["s1", "theta"], ["a1"], name="/q1/Mul"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="/c2", strides=[2], pads=[1, 1]),
             _neuron("c2", "s2", "/q2"),
             helper.make_node("AveragePool", ["s2"], ["p"], name="/pool", kernel_shape=[3], strides=[2],
                              pads=[1, 1], count_include_pad=0),
             helper.make_node("Mul", ["p", "four"], ["p4"], name="/pool/Mul"),
             _neuron("p4", "s3", "/q3"),
             helper.make_node("GlobalAveragePool", ["s3"], ["g"], name="/gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="/flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="/fc", transB=1)]
    inits = [_c("w1", rng.normal(size=(6, 2, 3))), _c("b1", rng.normal(size=6)), _c("theta", 0.375),
             _c("w2", rng.normal(size=(5, 6, 4)) * 0.5), _c("four", 4.0),
             _c("w3", rng.normal(size=(3, 5))), _c("b3", rng.normal(size=3))]
    return _untimed(nodes, inits, (4, 11), (3,))


@pytest.mark.parametrize("timesteps", [1, 3])
def test_conv1d_with_groups_dilation_stride_padding_and_1d_average_pooling_matches_the_spiking_onnx(timesteps):
    x = np.random.default_rng(4).normal(size=(6, 4, 11)).astype(np.float32)
    graph = _same_spikes_as_the_spiking_onnx(_conv1d_model(), x, timesteps)
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    assert kinds.count("Conv1d") == 4 and "Affine" in kinds  # two convolutions, two window sums, the Gemm


def _token_model(bias_after_quantizer: bool):
    """[N, 5, 6] tokens -> Div(s) neuron Mul(s) (input quantizer) -> MatMul W1 [+ b1] -> neuron -> Mul ->
    (+ b1 after the quantizer, as onnxruntime's QDQ places it) -> MatMul W2 -> residual Add -> neuron ->
    ReduceMean over tokens (keepdims 0) -> MatMul -> logits."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Div", ["xt", "s_in"], ["z0"], name="/q0/Div"),
             _neuron("z0", "s0", "/q0"),
             helper.make_node("Mul", ["s0", "s_in"], ["a0"], name="/q0/Mul"),
             helper.make_node("MatMul", ["a0", "w1"], ["h1"], name="/fc1")]
    if bias_after_quantizer:
        nodes += [_neuron("h1", "s1", "/q1"),
                  helper.make_node("Mul", ["s1", "theta"], ["a1q"], name="/q1/Mul"),
                  helper.make_node("Add", ["a1q", "b1"], ["a1b"], name="/fc1/Add"),
                  helper.make_node("Div", ["a1b", "theta"], ["z1b"], name="/q1b/Div"),
                  _neuron("z1b", "s1b", "/q1b"),
                  helper.make_node("Mul", ["s1b", "theta"], ["a1"], name="/q1b/Mul")]
    else:
        nodes += [helper.make_node("Add", ["b1", "h1"], ["h1b"], name="/fc1/Add"),
                  _neuron("h1b", "s1", "/q1"),
                  helper.make_node("Mul", ["s1", "theta"], ["a1"], name="/q1/Mul")]
    nodes += [helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="/fc2"),
              helper.make_node("Add", ["h2", "a1"], ["r"], name="/res"),
              _neuron("r", "s2", "/q2"),
              helper.make_node("ReduceMean", ["s2"], ["m"], name="/mean", axes=[1], keepdims=0),
              helper.make_node("MatMul", ["m", "w3"], ["y"], name="/head")]
    inits = [_c("s_in", 0.25), _c("w1", rng.normal(size=(6, 7))), _c("b1", rng.normal(size=7)), _c("theta", 0.5),
             _c("w2", rng.normal(size=(7, 7)) * 0.5), _c("w3", rng.normal(size=(7, 3)))]
    return _untimed(nodes, inits, (5, 6), (3,))


@pytest.mark.parametrize("bias_after_quantizer", [False, True])
@pytest.mark.parametrize("timesteps", [1, 3])
def test_token_wise_matmuls_residual_and_token_mean_match_the_spiking_onnx(bias_after_quantizer, timesteps):
    x = np.random.default_rng(6).normal(size=(6, 5, 6)).astype(np.float32)
    graph = _same_spikes_as_the_spiking_onnx(_token_model(bias_after_quantizer), x, timesteps)
    (inp,) = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    assert list(inp.input_type["input"]) == [6, 5] and list(inp.metadata["pmsm"]["layout"]) == [2, 1]


def test_token_mlp_through_a_file_and_torch_runtime_in_onnx_axis_order(tmp_path):
    from pmsm.targets.nir import read_nir, write_nir
    from pmsm.targets.torch import to_torch

    x = np.random.default_rng(7).normal(size=(4, 5, 6)).astype(np.float32)
    write_nir(network_to_nir(_token_model(True), timesteps=2), tmp_path / "t.nir")
    nir.read(str(tmp_path / "t.nir"))  # type-checked by nir itself
    graph = read_nir(tmp_path / "t.nir")
    ours = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    torch_run = to_torch(graph).run(x, 2, collect_spikes=True)
    assert set(ours.spikes) == set(torch_run.spikes)
    for name in ours.spikes:
        assert np.array_equal(ours.spikes[name], torch_run.spikes[name])
    assert ours.spikes["/q1"].shape == (2, 4, 5, 7)  # [T, N, tokens, features]: ONNX's order
    assert np.array_equal(ours.output, torch_run.output)


def test_a_token_matmul_over_the_wrong_axis_is_listed_with_the_reason():
    """MLP-Mixer token mixing: Transpose to [N, F, T] and MatMul over the tokens. NIR holds the
    features first for the first MatMul; the second would need the tokens first: no transpose. Of
    the two input layouts, each fails one MatMul; the writer keeps the one that converts more of
    the network before its first problem."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("MatMul", ["xt", "w1"], ["h"], name="/channel_mix"),
             _neuron("h", "s", "/q"),
             helper.make_node("Transpose", ["s"], ["st"], name="/t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["st", "w2"], ["y"], name="/token_mix")]
    model = _untimed(nodes, [_c("w1", rng.normal(size=(6, 4))), _c("w2", rng.normal(size=(5, 5)))], (5, 6), (4, 5))
    problems = unsupported_nodes(model)
    assert [(p[0], p[1]) for p in problems] == [("/token_mix", "MatMul")]
    assert "no transpose" in problems[0][2]


@pytest.mark.lava
@pytest.mark.parametrize("which", ["conv1d", "token", "flatten"])
def test_every_lava_lowering_gives_the_interpreters_spikes_on_1d_and_token_graphs(which):
    from pmsm.targets.lava import run_lava

    model, shape = {"conv1d": (_conv1d_model(), (4, 11)), "token": (_token_model(True), (5, 6)),
                    "flatten": (_flatten_model(True), (5, 6))}[which]
    graph = network_to_nir(model, timesteps=2)
    # data on a 1/16 grid, as the digits: Lava's own Conv/Dense models (synapse lowering) sum in float32
    x = (np.round(np.random.default_rng(9).normal(size=(3,) + shape) * 16) / 16).astype(np.float32)
    ref = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    for lowering in ("layer", "network", "synapse"):
        run = run_lava(graph, x, 2, collect_spikes=True, lowering=lowering)
        assert set(run.spikes) == set(ref.spikes)
        for name in ref.spikes:
            assert np.array_equal(run.spikes[name], ref.spikes[name]), (lowering, name)
        np.testing.assert_allclose(run.output, ref.output, rtol=0, atol=1e-6)


def test_exactness_certificate_reads_token_data_in_onnx_order():
    from pmsm.targets.nir import arithmetic

    graph = network_to_nir(_token_model(False), timesteps=1)
    x = (np.round(np.random.default_rng(10).normal(size=(3, 5, 6)) * 16) / 16).astype(np.float32)
    assert arithmetic.certify(graph, x).exact


def test_standard_profile_of_a_token_network_is_exact_at_t1_in_onnx_axis_order():
    """Binary units stacked along the features axis, the recombination in kernel-1 Conv1d weights."""
    from pmsm.targets.nir.literal import LiteralInterpreter
    from pmsm.targets.nir.standard import to_standard

    graph = network_to_nir(_token_model(False), timesteps=1)
    std, growth = to_standard(graph)
    assert {type(n).__name__ for n in std.nodes.values()} <= STANDARD_NODES
    x = np.random.default_rng(11).normal(size=(5, 5, 6)).astype(np.float32)
    pmsm_run = NirInterpreter(graph).run(x, 1, collect_spikes=True)
    literal = LiteralInterpreter(std).run(x, 1, collect_spikes=True)
    for name, s in pmsm_run.spikes.items():
        assert np.array_equal(literal.spikes[name], s), name
    np.testing.assert_allclose(literal.output, pmsm_run.output, rtol=0, atol=1e-5)


def _flatten_model(quantized_flatten: bool):
    """[N, 5, 6] tokens -> MatMul -> neuron -> Flatten [-> Mul, neuron] -> Gemm."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("MatMul", ["xt", "w1"], ["h"], name="/fc1"),
             _neuron("h", "s", "/q1"),
             helper.make_node("Flatten", ["s"], ["f"], name="/flatten", axis=1)]
    if quantized_flatten:
        nodes += [helper.make_node("Mul", ["f", "half"], ["fh"], name="/qf/Mul"),
                  _neuron("fh", "fs", "/qf"),
                  helper.make_node("Gemm", ["fs", "w2", "b2"], ["y"], name="/head", transB=1)]
    else:
        nodes += [helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="/head", transB=1)]
    inits = [_c("w1", rng.normal(size=(6, 4))), _c("half", 0.5), _c("w2", rng.normal(size=(3, 20))),
             _c("b2", rng.normal(size=3))]
    return _untimed(nodes, inits, (5, 6), (3,))


@pytest.mark.parametrize("quantized_flatten", [False, True])
def test_flattening_tokens_for_a_classifier_puts_them_back_in_onnx_order_exactly(quantized_flatten):
    """A token network ending in Flatten -> Gemm (and, as onnxruntime's QDQ does, a quantizer on the
    flattened value): NIR flattens (F, T), a permutation Affine restores ONNX's order."""
    x = np.random.default_rng(13).normal(size=(4, 5, 6)).astype(np.float32)
    for timesteps in (1, 3):
        graph = _same_spikes_as_the_spiking_onnx(_flatten_model(quantized_flatten), x, timesteps)
    assert sum(isinstance(n, nir.Affine) for n in graph.nodes.values()) == 2  # the permutation, the head
