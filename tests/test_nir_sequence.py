"""NIR and Lava targets on networks over one axis: a keyword-spotting-style 1-D CNN (``Conv`` over
``[N, C, L]`` as NIR ``Conv1d``) and a token MLP (``MatMul`` on the last axis of ``[N, T, F]`` as
``Conv1d`` of kernel 1 over ``(F, T)``), trained on the digits and exported by torch, quantized with
the PMSM layer and by onnxruntime's ``quantize_static`` (tests/sequence_models.py).

Each converts with ``--target nir`` into one plain NIR 1.0.8 file that ``nir.read`` type-checks,
and ``--verify`` runs it in the NIR interpreter and the torch runtime against the spiking ONNX at
T = 1, 2, 4 on the 360 digits test sequences: every prediction equal, every differing spike count
explained (docs/nir.md §6).
"""
from __future__ import annotations

import json

import nir
import numpy as np
import onnx
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
             for arch in ("kws", "token") for producer in ("pmsm", "qdq")}
    return folder, paths, save_data(folder, data, len(data.x_test))


def _verify(models, arch, producer, target="nir", data=None, timesteps=TIMESTEPS):
    folder, paths, all_data = models
    stem = folder / f"{arch}_{producer}_{target}"
    code = main([str(paths[arch, producer]), "--target", target, "-o", f"{stem}.nir", "--verify",
                 "--data", str(data or all_data), "--timesteps", ",".join(timesteps), "--report", f"{stem}.json"])
    return code, json.loads(stem.with_suffix(".json").read_text()), f"{stem}.nir"


def _agreement(report, backend):
    rows = report["verification"]["backends"][backend]
    return ({t: rows[t]["argmax_agreement"] for t in rows},
            {t: sum(r["unexplained"] for r in rows[t]["mismatch_by_layer"]) for t in rows})


@pytest.mark.parametrize("arch,producer", [("kws", "pmsm"), ("token", "pmsm"), ("token", "qdq")])
def test_nir_interpreter_and_torch_agree_with_the_spiking_onnx_on_every_prediction_at_t_1_2_4(
        models, arch, producer):
    code, report, path = _verify(models, arch, producer)
    assert code == 0
    for backend in ("nir", "torch"):
        agreement, unexplained = _agreement(report, backend)
        assert agreement == {t: 1.0 for t in TIMESTEPS}, backend
        assert unexplained == {t: 0 for t in TIMESTEPS}, backend
    graph = nir.read(path)  # type checking on (nir.read's default)
    assert {type(n).__name__ for n in graph.nodes.values()} <= STANDARD_NODES
    assert any(isinstance(n, nir.Conv1d) for n in graph.nodes.values())


def test_qdq_1d_cnn_agrees_at_t_1_2_and_every_spike_difference_is_a_float_rounding_boundary(models):
    """onnxruntime's QDQ average pool divides float32 products by 2 in ONNX; NIR sums the counts and
    folds the factor, exactly: a membrane on a tie (0.5) rounds half to even in NIR and wherever the
    float32 noise puts it in the spiking ONNX. Every such count is explained as a boundary; at
    T = 4 two of the 360 predictions (near-ties of the logits) differ, measured, not hidden."""
    code, report, _ = _verify(models, "kws", "qdq")
    for backend in ("nir", "torch"):
        agreement, unexplained = _agreement(report, backend)
        assert agreement["1"] == agreement["2"] == 1.0
        assert agreement["4"] >= 0.99
        assert unexplained == {t: 0 for t in TIMESTEPS}
    assert code == (0 if all(_agreement(report, b)[0]["4"] == 1.0 for b in ("nir", "torch")) else 1)


@pytest.mark.parametrize("arch,producer", [("kws", "pmsm"), ("kws", "qdq"), ("token", "pmsm"), ("token", "qdq")])
def test_t1_nir_is_the_quantized_ann_on_the_digits_sequences(models, arch, producer):
    _, report, _ = _verify(models, arch, producer, timesteps=("1",))
    ann = report["accuracy"]["ann"]
    assert report["verification"]["backends"]["nir"]["1"]["accuracy"] == ann
    assert report["verification"]["backends"]["onnx"]["1"]["max_abs_diff"] == 0


def test_token_layers_are_conv1d_of_kernel_one_over_features_first_and_the_input_says_so(models):
    _, _, path = _verify(models, "token", "pmsm", timesteps=("1",))
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
