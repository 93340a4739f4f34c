"""Every architecture: transformers and nonlinear ops convert, bit-exact at T = 1 at batch 1 and N.

The models are what users bring: torchvision's VisionTransformer and a ConvNeXt-style block
(depthwise convolution, LayerNorm, GELU, residual), exported by torch at a fixed batch size and
quantized by onnxruntime's ``quantize_static`` (QDQ), once with its default op types and once also
quantizing MatMul/Add/Softmax/Mul. Attention reshapes activations to sequence-first layouts and
computes shapes from the batch: the time loop runs them as the source does.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pmsm.exporter.convert import convert
from pmsm.runtime import ortop
from pmsm.runtime.execute import AnnRunner, SpikingModel

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.producers  # torchvision comes with the producers extra

RNG = np.random.default_rng(0)
OP_TYPES = {"default": None, "all": ["Conv", "MatMul", "Gemm", "Add", "Softmax", "Mul"]}


def vit(layers=1, hidden=48, heads=3, image=16, patch=4):
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                                                 num_heads=heads, hidden_dim=hidden, mlp_dim=2 * hidden,
                                                 num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts the head at zero
    return model.eval(), (3, image, image)


class ConvNeXtBlock(torch.nn.Module):
    """Depthwise 7x7 convolution, LayerNorm over channels, pointwise MLP with GELU, residual."""

    def __init__(self, channels=8):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 2, stride=2)
        self.depthwise = torch.nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = torch.nn.LayerNorm(channels)
        self.up, self.down = torch.nn.Linear(channels, 4 * channels), torch.nn.Linear(4 * channels, channels)
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.down(torch.nn.functional.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        return self.head((x + y).mean(dim=(2, 3)))


def export_quantized(model, shape, batch, op_types, folder, dynamo=True):
    torch.manual_seed(0)
    float_path, path = folder / f"float_b{batch}.onnx", folder / f"qdq_b{batch}_{op_types}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(batch, *shape),), str(float_path), dynamo=dynamo,
                          **({} if dynamo else {"opset_version": 17}))
    onnx.save(onnx.load(str(float_path)), str(float_path))  # weights inside the file
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({name: RNG.normal(size=(batch, *shape)).astype(np.float32)} for _ in range(4))

        def get_next(self):
            return next(self.feeds, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=OP_TYPES[op_types])
    return onnx.load(str(path))


def own_session_run(model, x, timesteps=None, threads=1):
    """The first output over ``x``, from a session built here, as many samples per run as the model's batch."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    if timesteps is not None:
        options.register_custom_ops_library(ortop.get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    feed_extra = {} if timesteps is None else {"timesteps": np.array(timesteps, np.int64)}
    return np.concatenate([session.run(None, {model.graph.input[0].name: x[i:i + batch], **feed_extra})[0]
                           for i in range(0, len(x), batch)])


def assert_t1_exact_at_its_batch(source, samples=8, threads=(1, 2)):
    conversion = convert(source)
    shape = [d.dim_value for d in source.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(size=(samples, *shape[1:])).astype(np.float32)
    for t in threads:
        ann = own_session_run(source, x, threads=t)
        snn = own_session_run(conversion.spiking, x, timesteps=1, threads=t)
        assert np.abs(ann).max() > 0, "a degenerate source proves nothing"
        assert np.array_equal(snn, ann), f"{t} thread(s): max diff {np.abs(snn - ann).max()}"
    return conversion, x


@pytest.mark.parametrize("op_types, batch", [("default", 1), ("all", 4),
                                             pytest.param("default", 4, marks=pytest.mark.slow),
                                             pytest.param("all", 1, marks=pytest.mark.slow)])
def test_t1_spiking_onnx_is_bit_exact_for_a_qdq_vision_transformer(op_types, batch, tmp_path):
    model, shape = vit()
    conversion, x = assert_t1_exact_at_its_batch(export_quantized(model, shape, batch, op_types, tmp_path))
    compensated = {op for _, op in conversion.compensated}
    assert {"Softmax", "LayerNormalization", "MatMul"} <= compensated
    assert compensated & {"Gelu", "Erf", "Mul"}
    outputs = [SpikingModel(conversion.spiking).run(x, t).output for t in (2, 4)]
    assert all(np.all(np.isfinite(o)) for o in outputs)


@pytest.mark.slow
def test_t1_spiking_onnx_is_bit_exact_for_a_vision_transformer_from_the_torchscript_exporter(tmp_path):
    model, shape = vit()
    assert_t1_exact_at_its_batch(export_quantized(model, shape, 1, "all", tmp_path, dynamo=False))


@pytest.mark.parametrize("batch", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_t1_spiking_onnx_is_bit_exact_for_a_convnext_block_with_layernorm_and_gelu(batch, tmp_path):
    torch.manual_seed(0)
    conversion, _ = assert_t1_exact_at_its_batch(
        export_quantized(ConvNeXtBlock().eval(), (3, 16, 16), batch, "all", tmp_path))
    assert {"LayerNormalization"} <= {op for _, op in conversion.compensated}


def test_compensation_makes_the_mean_over_time_of_a_nonlinear_op_its_value_at_the_mean_input(tmp_path):
    """At T steps, sum_t y(t) = T f(m_T): the readout is f of the mean input, not the mean of f."""
    from onnx import TensorProto, helper, numpy_helper

    scale = np.float32(0.25)
    network = helper.make_model(helper.make_graph(
        [helper.make_node("Div", ["x", "s"], ["z"]),
         helper.make_node("MultiSpikeNeuron", ["z", "timesteps"], ["q"], name="neuron", domain="ai.pmsm",
                          lo=-8, hi=8, v_init=0.0, rounding="half_even"),
         helper.make_node("Mul", ["q", "s"], ["a"]),
         helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
                helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(np.array(scale), "s")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.pmsm", 2)], ir_version=10)
    from pmsm.exporter.convert import spiking_from_network

    x = RNG.normal(size=(6, 5)).astype(np.float32)
    on = SpikingModel(spiking_from_network(network).model).run(x, 4, collect_spikes=True)
    off = SpikingModel(spiking_from_network(network, compensation=False).model).run(x, 4, collect_spikes=True)
    mean_input = (on.spikes["neuron"] * scale).mean(axis=0)
    softmax = np.exp(mean_input) / np.exp(mean_input).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(on.output, softmax, rtol=1e-5, atol=1e-6)
    per_step = np.exp(off.spikes["neuron"] * scale)
    np.testing.assert_allclose(off.output, (per_step / per_step.sum(axis=2, keepdims=True)).mean(axis=0), rtol=1e-5)
    assert not np.allclose(on.output, off.output)
    assert np.array_equal(SpikingModel(spiking_from_network(network).model).run(x, 1).output,
                          AnnRunner(network_as_source(network)).run(x)[0])


def network_as_source(network):
    """The quantized ANN the network was made from: the neuron as the quantizer it replaced."""
    from onnx import helper

    source = onnx.ModelProto()
    source.CopyFrom(network)
    nodes = list(source.graph.node)
    index = next(i for i, n in enumerate(nodes) if n.op_type == "MultiSpikeNeuron")
    nodes[index:index + 1] = [helper.make_node("Round", ["z"], ["r"]),
                              helper.make_node("Clip", ["r", "lo", "hi"], ["q"])]
    del source.graph.node[:]
    source.graph.node.extend(nodes)
    source.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(-8, np.float32), "lo"),
                                     onnx.numpy_helper.from_array(np.array(8, np.float32), "hi")])
    del source.graph.input[1:]
    del source.opset_import[1:]
    return source


@pytest.mark.slow
def test_mobilenet_v2_with_int8_activations_passes_the_nir_and_lava_preflight_and_is_exact(tmp_path):
    """Quantized with symmetric int8 activations, MobileNetV2 keeps ReLU6 as Clip(0, 6) next to its
    35 quantizers: absorbed into the neuron bounds, so NIR and Lava can take every node."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from pmsm.pipeline import convert as convert_for_target

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    float_path, path = tmp_path / "float.onnx", tmp_path / "mobilenet_v2_s8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(float_path), dynamo=False, opset_version=17,
                          input_names=["x"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({"x": RNG.normal(size=(1, 3, 32, 32)).astype(np.float32)} for _ in range(4))

        def get_next(self):
            return next(self.feeds, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        extra_options={"ActivationSymmetric": True})
    source = onnx.load(str(path))
    assert sum(n.op_type == "Clip" for n in source.graph.node) == 35
    for target in ("nir", "lava"):
        export = convert_for_target(str(path), target)
        assert export.nir_graph is not None and len(export.neurons) > 35
    assert_t1_exact_at_its_batch(source, samples=4, threads=(1,))
