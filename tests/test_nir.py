"""NIR target: spiking ONNX -> PMSM-dialect NIR, file round trip, pre-flight, interpreter."""
import os
import subprocess
import sys

import nir
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.nir import (
    NirInterpreter, read_nir, network_to_nir, unsupported_nodes, write_nir,
)
from pmsm.targets.nir import ops

RNG = np.random.default_rng(7)
FLOOR = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
HALF_EVEN = NeuronParams(lo=-8, hi=7, v_init=0.0, rounding="half_even")


def _c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _neuron(name, z, s, p: NeuronParams):
    return helper.make_node("MultiSpikeNeuron", [z, "timesteps"], [s], name=name, domain="ai.pmsm",
                            lo=p.lo, hi=p.hi, v_init=p.v_init, rounding=p.rounding)


def spiking(nodes, inits, x_shape, out, out_shape, opset=17):
    """The untimed network (docs/spiking-onnx.md) of network nodes reading ``xt`` and producing ``out``."""
    nodes = [helper.make_node("Identity", ["x"], ["xt"], name="input")] + nodes
    nodes.append(helper.make_node("Identity", [out], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape]),
         helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape])], initializer=inits)
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.pmsm", 2)])


def _w(*shape, scale=0.5):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def mlp_model():
    """x[12] -> Div(s) neuron Mul(s) -> Gemm(transB=1) -> Div(up) Mul(L) neuron Div(L) Mul(up)
    -> MatMul + Add(b) -> Div(s2) neuron Mul(s2) -> Gemm(transB=0, alpha, beta) -> logits[5]."""
    w1, b1, w2, b2, w3, b3 = _w(10, 12), _w(10), _w(10, 8), _w(8), _w(8, 5), _w(5)
    nodes = [
        helper.make_node("Div", ["xt", "s_in"], ["z0"], name="/q0/Div"),
        _neuron("/q0/neuron", "z0", "s0", HALF_EVEN),
        helper.make_node("Mul", ["s_in", "s0"], ["a0"], name="/q0/Mul"),  # constant first
        helper.make_node("Gemm", ["a0", "w1", "b1"], ["h1"], name="/fc1/Gemm", transB=1),
        helper.make_node("Div", ["h1", "up"], ["h1u"], name="/q1/Div"),
        helper.make_node("Mul", ["h1u", "L"], ["z1"], name="/q1/Mul"),
        _neuron("/q1/neuron", "z1", "s1", FLOOR),
        helper.make_node("Div", ["s1", "L"], ["a1l"], name="/q1/Div_1"),
        helper.make_node("Mul", ["a1l", "up"], ["a1"], name="/q1/Mul_1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="/fc2/MatMul"),
        helper.make_node("Add", ["b2", "h2"], ["h2b"], name="/fc2/Add"),
        helper.make_node("Div", ["h2b", "s2"], ["z2"], name="/q2/Div"),
        _neuron("/q2/neuron", "z2", "s2o", HALF_EVEN),
        helper.make_node("Mul", ["s2o", "s2"], ["a2"], name="/q2/Mul"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["logits"], name="/fc3/Gemm", alpha=0.5, beta=2.0),
    ]
    inits = [_c("s_in", 0.25), _c("w1", w1), _c("b1", b1), _c("up", 1.5), _c("L", 2.0), _c("w2", w2),
             _c("b2", b2), _c("s2", 0.3), _c("w3", w3), _c("b3", b3)]
    return spiking(nodes, inits, (12,), "logits", (5,)), (w1, b1, w2, b2, w3, b3)


def mlp_numpy(x, timesteps, weights):
    """The MLP evaluated directly, step by step, with the runtime's neuron."""
    w1, b1, w2, b2, w3, b3 = weights
    n = x.shape[0]
    u = [initial_membrane((n, 12), HALF_EVEN), initial_membrane((n, 10), FLOOR), initial_membrane((n, 8), HALF_EVEN)]
    outs, spikes = [], {"/q0/neuron": [], "/q1/neuron": [], "/q2/neuron": []}
    for _ in range(timesteps):
        u[0], s0 = step(u[0], x / np.float32(0.25), HALF_EVEN)
        h1 = (s0 * np.float32(0.25)) @ w1.T + b1
        u[1], s1 = step(u[1], h1 / np.float32(1.5) * np.float32(2.0), FLOOR)
        h2 = (s1 / np.float32(2.0) * np.float32(1.5)) @ w2 + b2
        u[2], s2 = step(u[2], h2 / np.float32(0.3), HALF_EVEN)
        outs.append(np.float32(0.5) * ((s2 * np.float32(0.3)) @ w3) + np.float32(2.0) * b3)
        for k, s in zip(spikes, (s0, s1, s2)):
            spikes[k].append(s)
    return np.mean(outs, axis=0), {k: np.stack(v) for k, v in spikes.items()}


def cnn_model(*, asymmetric=False, global_pool=False, count_include_pad=0):
    """Conv -> neuron_a -> [Conv -> neuron_b -> Mul] + skip(Mul) -> neuron_c -> MaxPool -> Conv(3x1)
    -> neuron_d -> AveragePool / GlobalAveragePool -> Flatten -> Gemm."""
    ca, cb, cd = _w(4, 1, 3, 3), _w(4, 4, 3, 3, scale=0.3), _w(6, 4, 3, 1, scale=0.4)
    # With stride 2 the bottom padding row is never read: [1, 0, 0, 0] equals symmetric [1, 0, 1, 0].
    pads_d, strides_d = ([1, 0, 0, 0], [2, 1]) if asymmetric else ([1, 0, 1, 0], [1, 1])
    if global_pool:
        pool = helper.make_node("GlobalAveragePool", ["ad"], ["p"], name="/gap/GlobalAveragePool")
        features = 6
    else:
        pool = helper.make_node("AveragePool", ["ad"], ["p"], name="/avg/AveragePool", kernel_shape=[3, 3],
                                strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=count_include_pad)
        features = 6 * 2 * 2
    wf, bf = _w(3, features), _w(3)
    nodes = [
        helper.make_node("Conv", ["xt", "wa", "ba"], ["ha"], name="/conv_a/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["ha", "sa"], ["za"], name="/qa/Div"),
        _neuron("/qa/neuron", "za", "sa_o", HALF_EVEN),
        helper.make_node("Mul", ["sa_o", "sa"], ["aa"], name="/qa/Mul"),
        helper.make_node("Conv", ["aa", "wb"], ["hb"], name="/conv_b/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["hb", "sb"], ["zb"], name="/qb/Div"),
        _neuron("/qb/neuron", "zb", "sb_o", HALF_EVEN),
        helper.make_node("Mul", ["sb_o", "sb"], ["ab"], name="/qb/Mul"),
        helper.make_node("Add", ["ab", "aa"], ["res"], name="/res/Add"),
        helper.make_node("Div", ["res", "sc"], ["zc"], name="/qc/Div"),
        _neuron("/qc/neuron", "zc", "sc_o", FLOOR),
        helper.make_node("Mul", ["sc_o", "sc"], ["ac"], name="/qc/Mul"),
        helper.make_node("MaxPool", ["ac"], ["mp"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["mp", "wd", "bd"], ["hd"], name="/conv_d/Conv", pads=pads_d, strides=strides_d),
        helper.make_node("Div", ["hd", "sd"], ["zd"], name="/qd/Div"),
        _neuron("/qd/neuron", "zd", "sd_o", HALF_EVEN),
        helper.make_node("Mul", ["sd_o", "sd"], ["ad"], name="/qd/Mul"),
        pool,
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits = [_c("wa", ca), _c("ba", _w(4)), _c("sa", 0.2), _c("wb", cb), _c("sb", np.float32(0.15)),
             _c("sc", 0.25), _c("wd", cd), _c("bd", _w(6)), _c("sd", [[[0.2]], [[0.1]], [[0.3]], [[0.2]], [[0.1]], [[0.25]]]),
             _c("wf", wf), _c("bf", bf)]
    return spiking(nodes, inits, (1, 8, 8), "logits", (3,))


def misc_model():
    """Sub(per-channel) on the input -> Conv(VALID) -> neuron(lo=0) -> Relu -> Mul(per-channel) -> Identity
    -> grouped strided Conv -> neuron -> ReduceMean(H, W) -> Reshape[0, -1] -> MatMul + Add.
    Scalars come from Constant nodes, as legacy torch exports write them."""
    unsigned = NeuronParams(lo=0, hi=3, v_init=0.5, rounding="floor")
    nodes = [
        helper.make_node("Constant", [], ["s1"], name="c_s1", value=_c("v", 0.3)),
        helper.make_node("Constant", [], ["s2"], name="c_s2", value=_c("v", 0.2)),
        helper.make_node("Sub", ["xt", "mean"], ["xc"], name="/norm/Sub"),
        helper.make_node("Conv", ["xc", "w1", "b1"], ["h1"], name="/c1/Conv", auto_pad="VALID"),
        helper.make_node("Div", ["h1", "s1"], ["z1"], name="/q1/Div"),
        _neuron("/q1/neuron", "z1", "n1", unsigned),
        helper.make_node("Relu", ["n1"], ["r1"], name="/q1/Relu"),
        helper.make_node("Mul", ["r1", "theta"], ["a1"], name="/q1/Mul"),
        helper.make_node("Identity", ["a1"], ["a1i"], name="/id/Identity"),
        helper.make_node("Conv", ["a1i", "w2"], ["h2"], name="/c2/Conv", group=2, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Div", ["h2", "s2"], ["z2"], name="/q2/Div"),
        _neuron("/q2/neuron", "z2", "n2", HALF_EVEN),
        helper.make_node("Mul", ["n2", "s2"], ["a2"], name="/q2/Mul"),
        helper.make_node("ReduceMean", ["a2"], ["m"], name="/gap/ReduceMean", axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "flat"], ["f"], name="/flat/Reshape"),
        helper.make_node("MatMul", ["f", "w3"], ["o"], name="/fc/MatMul"),
        helper.make_node("Add", ["o", "b3"], ["logits"], name="/fc/Add"),
    ]
    inits = [_c("mean", [[[0.1]], [[-0.2]]]), _c("w1", _w(4, 2, 2, 2)), _c("b1", _w(4)),
             _c("theta", [[[0.3]], [[0.5]], [[0.2]], [[0.4]]]), _c("w2", _w(4, 2, 3, 3)),
             _c("flat", [0, -1], np.int64), _c("w3", _w(4, 3)), _c("b3", _w(3))]
    return spiking(nodes, inits, (2, 5, 5), "logits", (3,))


def _spiking_model(network):
    from pmsm.exporter.convert import spiking_from_network
    from pmsm.runtime.execute import SpikingModel

    return SpikingModel(spiking_from_network(network, compensation=False).model)


def _compare(model, x, timesteps):
    graph = network_to_nir(model, timesteps=timesteps)
    ours = NirInterpreter(graph).run(x, timesteps, collect_spikes=True)
    ref = _spiking_model(model).run(x, timesteps, collect_spikes=True)
    assert set(ours.spikes) == set(ref.spikes)
    for name, s in ref.spikes.items():
        assert ours.spikes[name].shape == s.shape
        mismatch = int(np.sum(ours.spikes[name] != s))
        assert mismatch == 0, f"{name}: {mismatch} spike counts differ"
    np.testing.assert_allclose(ours.output, ref.output, rtol=1e-5, atol=1e-5)
    return graph


def test_mlp_matches_direct_numpy_evaluation():
    model, weights = mlp_model()
    x = RNG.normal(size=(9, 12)).astype(np.float32)
    graph = network_to_nir(model)
    for t in (1, 3):
        res = NirInterpreter(graph).run(x, t, collect_spikes=True)
        want, spikes = mlp_numpy(x, t, weights)
        for k in spikes:
            np.testing.assert_array_equal(res.spikes[k], spikes[k])
        np.testing.assert_allclose(res.output, want, rtol=1e-5, atol=1e-5)
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    # Input scale before the first neuron needs a Scale node; every other factor is folded.
    assert kinds == ["Affine", "Affine", "Affine", "IF", "IF", "IF", "Input", "Output", "Scale"]


@pytest.mark.parametrize("timesteps", [1, 2, 4])
def test_mlp_matches_spiking_onnx(timesteps):
    model, _ = mlp_model()
    _compare(model, RNG.normal(size=(16, 12)).astype(np.float32), timesteps)


@pytest.mark.parametrize("variant", [dict(), dict(asymmetric=True, global_pool=True), dict(count_include_pad=1)])
@pytest.mark.parametrize("timesteps", [1, 3])
def test_cnn_residual_pools_match_spiking_onnx(variant, timesteps):
    model = cnn_model(**variant)
    x = (RNG.normal(size=(10, 1, 8, 8)) * 2).astype(np.float32)
    graph = _compare(model, x, timesteps)
    names = {type(n).__name__ for n in graph.nodes.values()}
    assert {"Conv2d", "Scale", "SumPool2d", "Flatten", "Affine"} <= names
    maxpools = [n for n in graph.nodes.values() if isinstance(n, nir.SumPool2d) and n.metadata]
    assert maxpools and maxpools[0].metadata["pmsm"] == {"op": "max_pool2d", "version": 1}
    # The residual sum is fan-in: the neuron after the Add has two incoming edges.
    assert sum(1 for _, dst in graph.edges if dst == "qc_neuron") == 2


@pytest.mark.parametrize("timesteps", [1, 3])
def test_offsets_relu_grouped_conv_reduce_mean_reshape_match_spiking_onnx(timesteps):
    graph = _compare(misc_model(), RNG.normal(size=(8, 2, 5, 5)).astype(np.float32), timesteps)
    kinds = sorted(type(n).__name__ for n in graph.nodes.values())
    # The input offset went into the first Conv's bias, theta into the grouped Conv: no Scale node;
    # the mean over H and W is a sum pool whose 1/(H*W) went into the Affine's weights.
    assert kinds == ["Affine", "Conv2d", "Conv2d", "Flatten", "IF", "IF", "Input", "Output", "SumPool2d"]


def test_if_metadata_and_graph_metadata():
    model, _ = mlp_model()
    graph = network_to_nir(model, source_sha256="ab" * 32, source_name="mlp.onnx", timesteps=4)
    assert graph.metadata["pmsm"] == {"version": 1, "format": "pmsm-nir/1", "timesteps": 4,
                                      "source_sha256": "ab" * 32, "source": "mlp.onnx", "readout": "mean"}
    node = graph.nodes["q1_neuron"]
    assert isinstance(node, nir.IF)
    assert node.metadata["pmsm"] == {"version": 1, "lo": -2, "hi": 2, "v_init": 0.5, "rounding": "floor",
                                     "reset": "subtract", "onnx_node": "/q1/neuron"}
    assert all("/" not in k and "." not in k for k in graph.nodes)


def _same_graph(a, b):
    assert set(a.nodes) == set(b.nodes) and a.edges == b.edges
    assert a.metadata == b.metadata
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other)
        assert node.metadata == other.metadata, name
        for field, value in vars(node).items():
            if field in ("metadata", "input_type", "output_type"):
                continue
            if isinstance(value, np.ndarray) or isinstance(value, (tuple, list)):
                np.testing.assert_array_equal(np.asarray(value), np.asarray(getattr(other, field)), err_msg=name)
            else:
                assert value == getattr(other, field), (name, field)


def test_write_read_round_trip(tmp_path):
    graph = network_to_nir(cnn_model(), source_name="cnn.onnx", timesteps=2)
    path = tmp_path / "cnn.nir"
    write_nir(graph, path)
    assert os.listdir(tmp_path) == ["cnn.nir"]  # no temporary file left
    back = read_nir(path)
    _same_graph(graph, back)
    assert isinstance(back.metadata["pmsm"]["timesteps"], int)
    assert list(back.nodes) == sorted(back.nodes)  # nir.read sorts nodes: nothing may depend on order
    x = RNG.normal(size=(4, 1, 8, 8)).astype(np.float32)
    a, b = NirInterpreter(graph).run(x, 2, True), NirInterpreter(back).run(x, 2, True)
    np.testing.assert_array_equal(a.output, b.output)
    plain = nir.read(str(path))  # nir's own reader, type checking on
    assert set(plain.nodes) == set(graph.nodes)


def test_failed_write_leaves_no_file(tmp_path):
    graph = network_to_nir(mlp_model()[0])
    graph.metadata = {"pmsm": {"bad": None}}  # NIR cannot write None
    with pytest.raises(Exception):
        write_nir(graph, tmp_path / "m.nir")
    assert os.listdir(tmp_path) == []


def test_plain_nir_reads_the_file_without_this_package(tmp_path):
    path = tmp_path / "mlp.nir"
    write_nir(network_to_nir(mlp_model()[0]), path)
    code = ("import sys, nir\n"
            "g = nir.read(sys.argv[1])\n"
            "assert not any(m.startswith('pmsm') for m in sys.modules), 'pmsm imported'\n"
            "print(len(g.nodes), g.nodes['q1_neuron'].metadata['pmsm']['rounding'])\n")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["9", "floor"]


def test_plain_if_without_pmsm_metadata_is_refused(tmp_path):
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([3])}),
               "lin": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
               "if": nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
               "output": nir.Output(output_type={"output": np.array([3])})},
        edges=[("input", "lin"), ("lin", "if"), ("if", "output")])
    path = tmp_path / "binary_if.nir"
    nir.write(str(path), graph)
    with pytest.raises(BadInputError, match="binary integrate-and-fire"):
        read_nir(path)
    with pytest.raises(BadInputError, match="'if'"):
        NirInterpreter(graph)


def test_non_nir_files_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        read_nir(tmp_path / "missing.nir")
    text = tmp_path / "model.nir"
    text.write_text("not hdf5")
    with pytest.raises(BadInputError, match="not a NIR file"):
        read_nir(text)
    import h5py
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(BadInputError, match="not a readable NIR graph"):
        read_nir(other)


def _with_nodes(model, extra_nodes, replace_output):
    """Insert ``extra_nodes`` before the output and make the output read ``replace_output``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    nodes[-1:-1] = extra_nodes
    nodes[-1].input[0] = replace_output
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def test_preflight_lists_every_offending_node():
    model, _ = mlp_model()
    # logits[5] -> Softmax; a1 @ a1^T style product of activations; a Sigmoid on the way.
    extra = [
        helper.make_node("Sigmoid", ["a2"], ["sig"], name="/act/Sigmoid"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/head/Softmax", axis=1),
        helper.make_node("Transpose", ["probs"], ["probs_t"], name="/head/Transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["probs", "probs_t"], ["gram"], name="/head/MatMul"),
        helper.make_node("Add", ["gram", "sig_sum"], ["y_net"], name="/head/Add"),
        helper.make_node("ReduceSum", ["sig"], ["sig_sum"], name="/act/ReduceSum", keepdims=1, axes=[1]),
    ]
    extra = extra[:4] + [extra[5], extra[4]]
    extra.append(helper.make_node("Gemm", ["a2", "a2"], ["unused"], name="/side/Gemm", transB=1))  # a dead end
    model = _with_nodes(model, extra, "y_net")
    problems = unsupported_nodes(model)
    names = [p[0] for p in problems]
    assert names == ["/act/Sigmoid", "/head/Softmax", "/head/Transpose", "/head/MatMul", "/act/ReduceSum",
                     "/side/Gemm"]
    reasons = dict((p[0], p[2]) for p in problems)
    assert "two activations" in reasons["/head/MatMul"]
    assert "not a constant" in reasons["/side/Gemm"]
    assert "Softmax" in reasons["/head/Softmax"]
    with pytest.raises(UnsupportedModelError) as err:
        network_to_nir(model, source_name="bad.onnx")
    assert err.value.problems == problems and err.value.target == "nir"


def _edit(model, name, **changes):
    for n in model.graph.node:
        if n.name == name:
            if "op_type" in changes:
                n.op_type = changes["op_type"]
            if "pads" in changes:
                n.attribute.remove(next(a for a in n.attribute if a.name == "pads"))
                n.attribute.append(helper.make_attribute("pads", changes["pads"]))
    return model


def test_preflight_reports_padding_that_nir_cannot_hold():
    problems = unsupported_nodes(_edit(cnn_model(), "/conv_d/Conv", pads=[0, 0, 2, 0]))
    assert [p[:2] for p in problems] == [("/conv_d/Conv", "Conv")]
    assert "symmetric" in problems[0][2]
    assert unsupported_nodes(cnn_model()) == []


@pytest.mark.parametrize("where", ["/qc/Mul"])
def test_preflight_reports_offsets_no_linear_layer_can_absorb(where):
    # /qc/Mul -> Add: offset after a neuron, then MaxPool and a zero-padded Conv (not one value per channel).
    problems = unsupported_nodes(_edit(cnn_model(), where, op_type="Add"))
    assert [p[:2] for p in problems] == [(where, "Add")]
    assert "constant offset" in problems[0][2]


@pytest.mark.parametrize("timesteps", [1, 3])
def test_a_per_channel_offset_with_no_layer_to_absorb_it_rides_on_a_1x1_identity_conv2d(timesteps):
    """/qb/Mul -> Add: an offset on a residual branch from a neuron straight into the sum (as
    onnxruntime's QDQ adds a pointwise layer's bias after its quantizer). Once refused; now a Conv2d
    1x1 with identity weights carries it, exactly (the offset is one value per channel)."""
    model = _edit(cnn_model(), "/qb/Mul", op_type="Add")
    x = RNG.normal(size=(3, 1, 8, 8)).astype(np.float32)
    graph = _compare(model, x, timesteps)
    carriers = [n for n in graph.nodes.values() if isinstance(n, nir.Conv2d) and n.weight.shape[2:] == (1, 1)]
    assert len(carriers) == 1 and np.array_equal(carriers[0].weight[:, :, 0, 0], np.eye(4, dtype=np.float32))


def test_interpreter_kernels_match_onnx_runtime():
    ort = pytest.importorskip("onnxruntime")
    x = RNG.normal(size=(2, 4, 7, 6)).astype(np.float32)
    w = RNG.normal(size=(6, 2, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 1], pads=[1, 1, 1, 1], dilations=[1, 2])
    m = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, None)],
                                            [helper.make_tensor_value_info("y", 1, None)], [_c("w", w)]),
                          ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(ops.conv2d(x, w, None, (2, 1), (1, 1), (1, 2), 2), want, rtol=1e-5, atol=1e-5)


def test_bad_run_arguments():
    interp = NirInterpreter(network_to_nir(mlp_model()[0]))
    with pytest.raises(BadInputError, match="does not match"):
        interp.run(np.zeros((2, 11), np.float32), 1)
    with pytest.raises(BadInputError, match="timesteps"):
        interp.run(np.zeros((2, 12), np.float32), 0)
