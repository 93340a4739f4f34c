"""Linear layers on the last axis of ``[N, H, W, C]`` (ConvNeXt's pointwise MLP, ``nn.Linear`` on
channels-last features) in NIR: a ``Conv2d`` with a 1x1 kernel over ``(C, H, W)``, the rank-4
counterpart of the token-wise ``Conv1d`` of kernel 1 over ``(F, T)`` (docs/nir.md §3a). A
``Transpose`` only changes the recorded layout; an input that is channels-last already is held
channels first from the start.

The hand-built graphs are untimed networks (a neuron in place of each rounding core), checked spike
for spike against the spiking ONNX built from them; the torch models are exported by torch and
quantized by onnxruntime's ``quantize_static``, as a user would get them.
"""
from __future__ import annotations

import json
import zipfile

import nir
import numpy as np
import onnx
import pytest
from onnx import helper
from test_nir_sequence import _c, _neuron, _same_spikes_as_the_spiking_onnx, _untimed

from pmsm.targets.nir import NirInterpreter, network_to_nir, unsupported_nodes


def _pointwise_convs(graph):
    return [n for n in graph.nodes.values() if isinstance(n, nir.Conv2d) and n.weight.shape[2:] == (1, 1)]


def _channels_last_mlp(perm=(0, 2, 3, 1), bias_after_quantizer=False):
    """[N, 3, 5, 6] -> Conv 3x3 -> neuron -> Transpose(perm) -> MatMul W1 (+ b1) -> neuron -> MatMul
    W2 -> residual Add -> neuron -> Transpose back -> ReduceMean over H, W -> Gemm (transB)."""
    rng = np.random.default_rng(20)
    back = [int(i) for i in np.argsort(perm)]
    nodes = [helper.make_node("Conv", ["xt", "w0", "b0"], ["c"], name="/stem", pads=[1, 1, 1, 1]),
             _neuron("c", "s0", "/q0"),
             helper.make_node("Mul", ["s0", "theta"], ["a0"], name="/q0/Mul"),
             helper.make_node("Transpose", ["a0"], ["t0"], name="/permute", perm=list(perm)),
             helper.make_node("MatMul", ["t0", "w1"], ["h1"], name="/up")]
    if bias_after_quantizer:  # onnxruntime's QDQ: MatMul -> Q/DQ -> Add(bias) -> Q/DQ
        nodes += [_neuron("h1", "s1", "/q1"),
                  helper.make_node("Mul", ["s1", "theta"], ["a1q"], name="/q1/Mul"),
                  helper.make_node("Add", ["a1q", "b1"], ["a1b"], name="/up/Add"),
                  helper.make_node("Div", ["a1b", "theta"], ["z1b"], name="/q1b/Div"),
                  _neuron("z1b", "s1b", "/q1b"),
                  helper.make_node("Mul", ["s1b", "theta"], ["a1"], name="/q1b/Mul")]
    else:
        nodes += [helper.make_node("Add", ["h1", "b1"], ["h1b"], name="/up/Add"),
                  _neuron("h1b", "s1", "/q1"),
                  helper.make_node("Mul", ["s1", "theta"], ["a1"], name="/q1/Mul")]
    nodes += [helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="/down"),
              helper.make_node("Add", ["h2", "t0"], ["r"], name="/residual"),
              _neuron("r", "s2", "/q2"),
              helper.make_node("Transpose", ["s2"], ["t2"], name="/permute_back", perm=back),
              helper.make_node("ReduceMean", ["t2"], ["m"], name="/mean", axes=[2, 3], keepdims=0),
              helper.make_node("Gemm", ["m", "w3", "b3"], ["y"], name="/head", transB=1)]
    inits = [_c("w0", rng.normal(size=(4, 3, 3, 3)) * 0.5), _c("b0", rng.normal(size=4)), _c("theta", 0.5),
             _c("w1", rng.normal(size=(4, 7))), _c("b1", rng.normal(size=7)), _c("w2", rng.normal(size=(7, 4)) * 0.5),
             _c("w3", rng.normal(size=(3, 4))), _c("b3", rng.normal(size=3))]
    return _untimed(nodes, inits, (3, 5, 6), (3,))


def _channels_last_input():
    """[N, 5, 6, 3] (channels last from the start) -> Div, neuron, Mul -> MatMul -> neuron -> mean over
    H, W of [N, H, W, C] -> MatMul: NIR holds the input as (C, H, W)."""
    rng = np.random.default_rng(21)
    nodes = [helper.make_node("Div", ["xt", "s_in"], ["z0"], name="/q0/Div"),
             _neuron("z0", "s0", "/q0"),
             helper.make_node("Mul", ["s0", "s_in"], ["a0"], name="/q0/Mul"),
             helper.make_node("MatMul", ["a0", "w1"], ["h"], name="/pointwise"),
             _neuron("h", "s1", "/q1"),
             helper.make_node("ReduceMean", ["s1"], ["m"], name="/mean", axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "w2"], ["y"], name="/head")]
    inits = [_c("s_in", 0.25), _c("w1", rng.normal(size=(3, 8))), _c("w2", rng.normal(size=(8, 3)))]
    return _untimed(nodes, inits, (5, 6, 3), (3,))


@pytest.mark.parametrize("timesteps", [1, 3])
@pytest.mark.parametrize("bias_after_quantizer", [False, True])
@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 2, 1)])
def test_pointwise_matmuls_on_channels_last_features_are_1x1_conv2d_spike_for_spike_with_the_spiking_onnx(
        perm, bias_after_quantizer, timesteps):
    """[N, H, W, C] and [N, W, H, C] alike: a kernel of 1x1 reads each position alone, whatever
    order NIR holds the two spatial axes in; the QDQ bias after a quantizer rides on a 1x1 identity
    Conv2d."""
    model = _channels_last_mlp(perm, bias_after_quantizer)
    x = np.random.default_rng(22).normal(size=(5, 3, 5, 6)).astype(np.float32)
    graph = _same_spikes_as_the_spiking_onnx(model, x, timesteps)
    assert [type(n).__name__ for n in graph.nodes.values()].count("Affine") == 1  # the head only
    pointwise = _pointwise_convs(graph)
    assert len(pointwise) == 2 + bias_after_quantizer
    neurons = {n.metadata["pmsm"]["onnx_node"]: n for n in graph.nodes.values() if isinstance(n, nir.IF)}
    # NIR axis i holds ONNX axis layout[i]: the channels (ONNX axis 3 after either Transpose) first
    layout = {(0, 2, 3, 1): [3, 1, 2], (0, 3, 2, 1): [3, 2, 1]}[perm]
    assert list(neurons["/q1"].metadata["pmsm"]["layout"]) == layout
    assert "layout" not in neurons["/q0"].metadata["pmsm"]  # before the Transpose: ONNX's own order


@pytest.mark.parametrize("timesteps", [1, 2])
def test_a_channels_last_input_read_by_a_pointwise_matmul_is_held_channels_first(timesteps):
    x = np.random.default_rng(23).normal(size=(4, 5, 6, 3)).astype(np.float32)
    graph = _same_spikes_as_the_spiking_onnx(_channels_last_input(), x, timesteps)
    (inp,) = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    assert list(inp.input_type["input"]) == [3, 5, 6] and list(inp.metadata["pmsm"]["layout"]) == [3, 1, 2]
    assert len(_pointwise_convs(graph)) == 1


def test_pointwise_network_through_a_file_nir_reads_and_the_torch_runtime_in_onnx_axis_order(tmp_path):
    from pmsm.targets.nir import read_nir, write_nir
    from pmsm.targets.torch import to_torch

    write_nir(network_to_nir(_channels_last_mlp(bias_after_quantizer=True), timesteps=2), tmp_path / "p.nir")
    nir.read(str(tmp_path / "p.nir"))  # type-checked by nir itself
    graph = read_nir(tmp_path / "p.nir")
    x = np.random.default_rng(24).normal(size=(3, 3, 5, 6)).astype(np.float32)
    ours = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    torch_run = to_torch(graph).run(x, 2, collect_spikes=True)
    assert set(ours.spikes) == set(torch_run.spikes)
    for name in ours.spikes:
        assert np.array_equal(ours.spikes[name], torch_run.spikes[name]), name
    assert ours.spikes["/q1"].shape == (2, 3, 5, 6, 7)  # [T, N, H, W, C]: ONNX's order
    assert np.array_equal(ours.output, torch_run.output)


def test_a_linear_layer_on_the_last_axis_of_a_five_axis_activation_is_listed_with_the_reason():
    rng = np.random.default_rng(25)
    nodes = [_neuron("xt", "s", "/q"), helper.make_node("MatMul", ["s", "w"], ["y"], name="/fc")]
    model = _untimed(nodes, [_c("w", rng.normal(size=(3, 4)))], (2, 5, 6, 3), (2, 5, 6, 4))
    problems = unsupported_nodes(model)
    assert [(p[0], p[1]) for p in problems] == [("/fc", "MatMul")]
    assert "Conv1d and Conv2d only" in problems[0][2]


@pytest.mark.lava
@pytest.mark.parametrize("which", ["transpose", "input"])
def test_every_lava_lowering_gives_the_interpreters_spikes_on_pointwise_graphs(which):
    from pmsm.targets.lava import run_lava

    model, shape = {"transpose": (_channels_last_mlp(bias_after_quantizer=True), (3, 5, 6)),
                    "input": (_channels_last_input(), (5, 6, 3))}[which]
    graph = network_to_nir(model, timesteps=2)
    # data on a 1/16 grid: Lava's own Conv/Dense models (synapse lowering) sum in float32
    x = (np.round(np.random.default_rng(26).normal(size=(2,) + shape) * 16) / 16).astype(np.float32)
    ref = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    for lowering in ("layer", "network", "synapse"):
        run = run_lava(graph, x, 2, collect_spikes=True, lowering=lowering)
        assert set(run.spikes) == set(ref.spikes)
        for name in ref.spikes:
            assert np.array_equal(run.spikes[name], ref.spikes[name]), (lowering, name)
        np.testing.assert_allclose(run.output, ref.output, rtol=0, atol=1e-6)


def _channels_last_mlp_module(channels=8):
    """ConvNeXt's pointwise MLP without its layer norm and GELU: a strided stem, then ``nn.Linear``
    on channels-last features (``permute(0, 2, 3, 1)``), ReLU, ``nn.Linear``, back to channels first,
    a residual sum, the spatial mean and a classifier."""
    torch = pytest.importorskip("torch")

    class ChannelsLastMlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, channels, 2, stride=2)
            self.up, self.down = torch.nn.Linear(channels, 4 * channels), torch.nn.Linear(4 * channels, channels)
            self.head = torch.nn.Linear(channels, 10)

        def forward(self, x):
            x = self.stem(x)
            y = self.down(torch.relu(self.up(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
            return self.head((x + y).mean(dim=(2, 3)))

    torch.manual_seed(0)
    return ChannelsLastMlp()


def _qdq(model, tmp_path, name):
    """``model`` exported by torch and quantized by onnxruntime's quantize_static (QDQ), as
    tests/test_architectures.py does, with the calibration data of a fresh seed."""
    import test_architectures as arch  # needs torch: imported where a test runs

    arch.RNG = np.random.default_rng(0)
    path = tmp_path / f"{name}.onnx"
    onnx.save(arch.export_quantized(model.eval(), (3, 16, 16), 1, "default", tmp_path), str(path))
    return str(path)


def _verified(path, out, tmp_path):
    from pmsm.pipeline import Request, run

    return run(Request(model=path, target="nir", output=str(out), timesteps=(1, 2, 4), verify=True,
                       report=str(tmp_path / "report.json"), pictures=False, progress=False))


@pytest.mark.producers
def test_a_qdq_network_with_linear_layers_on_channels_last_features_is_one_plain_nir_file_that_verifies(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / "mlp.nir"
    outcome = _verified(_qdq(_channels_last_mlp_module(), tmp_path, "mlp"), out, tmp_path)
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    assert out.read_bytes()[:4] == b"\x89HDF"  # one plain NIR file, not a deployment archive
    graph = nir.read(str(out))
    assert len(_pointwise_convs(graph)) >= 2 and not any(isinstance(n, nir.Affine) and n.weight.shape[0] != 10
                                                         for n in graph.nodes.values())
    for backend in ("nir", "torch"):
        for t, tally in outcome.report["verification"]["backends"][backend].items():
            assert tally["argmax_agreement"] == 1.0, (backend, t)
            assert sum(row["unexplained"] for row in tally["mismatch_by_layer"]) == 0, (backend, t)


@pytest.mark.producers
def test_the_convnext_blocks_pointwise_mlp_runs_in_nir_regions_leaving_only_layer_norm_and_gelu_to_the_host(
        tmp_path):
    """Before 1x1 Conv2d expressed them, both pointwise MatMuls and their bias Adds ran on the host:
    48.9 % of the block's MACs were in regions; now all of them are."""
    import test_nir_deployment

    from pmsm.pipeline import Request, run

    path = test_nir_deployment._model("convnext", "default", tmp_path)
    out = tmp_path / "convnext.nir"
    assert run(Request(model=path, target="nir", output=str(out), progress=False)).code == 0
    summary = json.loads(zipfile.ZipFile(out).read("manifest.json"))["summary"]
    assert summary["region_mac_share"] == 1.0 and summary["host_weight_macs"] == 0
    assert summary["host_ops"] == {"Gelu": 1, "LayerNormalization": 1}
