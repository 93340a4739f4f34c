"""Fast and lean: the first step without compensation arithmetic, a start-up without torch, reports
whose size does not grow with the bit width (issue 23). Speed itself is measured in
``benchmarks/lean.py``, never asserted here."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from pmsm.spike_stats import EXACT_LEVELS, merge_spike_stats, spike_stats
from pmsm.exporter.convert import convert
from pmsm.runtime.execute import AnnRunner, SpikingModel

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "digits_mlp_pmsm_L2.onnx"
RNG = np.random.default_rng(23)


def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# Compensation: the first step is the op itself
# ---------------------------------------------------------------------------------------------


def _efficientnet_style(batch: int, folder: Path):
    """An MBConv block as EfficientNet writes it: 1x1 expansion, depthwise 3x3, SiLU (x * sigmoid),
    squeeze-and-excitation (pool, 1x1, SiLU, 1x1, sigmoid, product), 1x1 projection, residual."""
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    nn = torch.nn

    class MBConv(nn.Module):
        def __init__(self, c=8, expand=4):
            super().__init__()
            h = c * expand
            self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
            self.expand, self.depthwise = nn.Conv2d(c, h, 1), nn.Conv2d(h, h, 3, padding=1, groups=h)
            self.squeeze, self.excite = nn.Conv2d(h, 4, 1), nn.Conv2d(4, h, 1)
            self.project, self.head = nn.Conv2d(h, c, 1), nn.Linear(c, 10)

        def forward(self, x):
            x = nn.functional.silu(self.stem(x))
            y = nn.functional.silu(self.depthwise(nn.functional.silu(self.expand(x))))
            gate = torch.sigmoid(self.excite(nn.functional.silu(self.squeeze(y.mean(dim=(2, 3), keepdim=True)))))
            return self.head((x + self.project(y * gate)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    float_path, path = folder / "mbconv.float.onnx", folder / "mbconv.qdq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MBConv().eval(), (torch.randn(batch, 3, 16, 16),), str(float_path), dynamo=False,
                          opset_version=17, input_names=["x"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({"x": RNG.normal(size=(batch, 3, 16, 16)).astype(np.float32)} for _ in range(4))

        def get_next(self):
            return next(self.feeds, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm", "Add", "Mul", "Sigmoid"])
    return onnx.load(str(path))


def _vision_transformer(batch: int, folder: Path):
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(REPO / "tests"))
    import test_architectures

    model, shape = test_architectures.vit()
    return test_architectures.export_quantized(model, shape, batch, "all", folder)


@pytest.mark.producers
@pytest.mark.parametrize("architecture", ["vision_transformer", "efficientnet_style"])
def test_standard_op_body_equals_the_custom_op_bit_for_bit_at_t1_t2_t4_with_compensation(architecture, tmp_path):
    build = {"vision_transformer": _vision_transformer, "efficientnet_style": _efficientnet_style}[architecture]
    source = build(2, tmp_path)
    conversion = convert(source)
    assert conversion.compensated, "a network without compensated ops proves nothing here"
    x = RNG.normal(size=(4, *[d.dim_value for d in source.graph.input[0].type.tensor_type.shape.dim][1:]))
    x = x.astype(np.float32)
    ann = AnnRunner(source).run(x)[0]
    kernel, body = SpikingModel(conversion.spiking), SpikingModel(conversion.spiking, portable=True)
    for t in (1, 2, 4):
        want, got = kernel.run(x, t, collect_spikes=True), body.run(x, t, collect_spikes=True)
        assert all(same_bits(a, b) for a, b in zip(want.outputs, got.outputs)), f"T={t}: outputs differ"
        assert want.spikes.keys() == got.spikes.keys()
        assert all(same_bits(want.spikes[k], got.spikes[k]) for k in want.spikes), f"T={t}: spikes differ"
        if t == 1:
            assert np.array_equal(want.outputs[0], ann) and np.abs(ann).max() > 0
    assert body.lean  # the lean form ran (not the function body it falls back to)


def _softmax_network():
    from onnx import TensorProto, helper, numpy_helper

    return helper.make_model(helper.make_graph(
        [helper.make_node("Div", ["x", "s"], ["z"]),
         helper.make_node("MultiSpikeNeuron", ["z", "timesteps"], ["q"], name="neuron", domain="ai.pmsm",
                          lo=-8, hi=8, v_init=0.0, rounding="half_even"),
         helper.make_node("Mul", ["q", "s"], ["a"]),
         helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
                helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(np.array(np.float32(0.25)), "s")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.pmsm", 2)], ir_version=10)


def test_the_first_step_of_a_compensated_op_computes_the_op_and_no_running_mean():
    from pmsm.exporter.convert import spiking_from_network

    timed = spiking_from_network(_softmax_network())
    assert timed.compensated == [("softmax", "Softmax")]
    loop = next(n for n in timed.model.graph.node if n.op_type == "Loop")
    (branch,) = [n for n in loop.attribute[0].g.node if n.op_type == "If"]
    first = next(a.g for a in branch.attribute if a.name == "then_branch")
    later = next(a.g for a in branch.attribute if a.name == "else_branch")
    # the first step: the op, and the state handed on as it is (sum = x, t * f = f): no arithmetic
    assert sorted(n.op_type for n in first.node) == ["Identity", "Identity", "Softmax"]
    assert sorted(n.op_type for n in later.node) == ["Add", "Div", "Mul", "Softmax", "Sub"]


def test_compensated_steps_give_the_running_mean_formula_step_by_step():
    """y(t) = t f(m(t)) - (t - 1) f(m(t - 1)) at every step, computed from the spikes in numpy."""
    from pmsm.exporter.convert import spiking_from_network

    x = RNG.normal(size=(6, 5)).astype(np.float32)
    model = SpikingModel(spiking_from_network(_softmax_network()).model)
    scale = np.float32(0.25)
    for t in (1, 2, 3, 4):
        result = model.run(x, t, collect_spikes=True)
        a = result.spikes["neuron"] * scale  # [T, N, 5], what the softmax reads at each step
        f = [None]
        running = np.float32(-0.0) * a[0]
        for step in range(t):
            running = (running + a[step]).astype(np.float32)
            mean = running / np.float32(step + 1)
            e = np.exp(mean - mean.max(axis=1, keepdims=True))
            f.append(e / e.sum(axis=1, keepdims=True))
        assert np.allclose(result.output, f[t], rtol=1e-5, atol=1e-6)  # the mean over T of y is f(m(T))


# ---------------------------------------------------------------------------------------------
# Start-up: no torch unless the run needs it
# ---------------------------------------------------------------------------------------------


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.torch
def test_check_conversion_and_both_neuron_paths_do_not_import_torch(tmp_path):
    pytest.importorskip("torch")  # the point: torch is installed, and still not imported
    out = _run_python(f"""
        import sys
        import numpy as np
        from pmsm.cli import main
        for argv in (["{SAMPLE}", "--check"], ["{SAMPLE}", "-o", "{tmp_path / 'mlp.spiking.onnx'}"]):
            assert main(argv) == 0, argv
        from pmsm.runtime.execute import SpikingModel
        x = np.load("{REPO / 'samples' / 'digits_test.npz'}")["x"][:4]
        kernel = SpikingModel("{tmp_path / 'mlp.spiking.onnx'}").run(x, 2).output
        body = SpikingModel("{tmp_path / 'mlp.spiking.onnx'}", portable=True).run(x, 2).output
        assert np.array_equal(kernel, body)
        print("torch imported:", "torch" in sys.modules)
    """)
    assert "torch imported: False" in out


@pytest.mark.torch
def test_the_whole_extensions_package_is_still_there_for_code_that_asks_for_it():
    out = _run_python("""
        import sys
        from pmsm.runtime import ortop  # the custom-op part only
        import onnxruntime_extensions
        assert "torch" not in sys.modules
        assert callable(onnxruntime_extensions.OrtPyFunction)  # runs the package's own __init__ now
        assert onnxruntime_extensions.get_library_path() == ortop.get_library_path()
        print("ok")
    """)
    assert "ok" in out


# ---------------------------------------------------------------------------------------------
# Reports bounded in the number of levels
# ---------------------------------------------------------------------------------------------


def test_spike_statistics_of_16_bit_levels_are_binned_and_merge_exactly():
    levels = RNG.integers(-40000, 25000, size=(2, 6, 50)).astype(np.float32)
    levels[0, 0, :3] = [-40000, 24999, 0]
    whole = spike_stats(levels)
    merged = merge_spike_stats(spike_stats(levels[:, :2]), spike_stats(levels[:, 2:]))
    assert whole == merged
    assert all(abs(level) <= EXACT_LEVELS for level in whole.histogram)
    assert len(whole.histogram) + len(whole.bins) <= 2 * EXACT_LEVELS + 1 + 2 * 16
    counted = sum(whole.histogram.values()) + sum(whole.bins.values())
    assert counted == levels.size
    flat = levels.reshape(-1)
    assert whole.extremes == {int(flat.min()): int((flat == flat.min()).sum()), int(flat.max()): int((flat == flat.max()).sum())}
    for (first, last), count in whole.bins.items():
        assert count == int(((flat >= first) & (flat <= last)).sum())


def _uint16_cnn(folder: Path) -> Path:
    """A small CNN with 16-bit activations: onnxruntime's quantize_static, QUInt16, at opset 21 (standard
    QuantizeLinear with uint16 zero points)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    sys.path.insert(0, str(REPO / "tests"))
    from cifar_models import _Builder

    b = _Builder(0)
    x = b.relu(b.conv("x", 3, 8, 3, stride=2))
    x = b.relu(b.conv(x, 8, 16, 3, stride=2))
    b.classifier(x, 16)
    model = b.model("cnn16", 1)
    model.opset_import[0].version = 21
    onnx.save(model, str(folder / "float.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(RNG.uniform(0, 1, (8, 1, 3, 32, 32)).astype(np.float32))

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"x": image}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(folder / "float.onnx"), str(folder / "cnn16.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt16, weight_type=QuantType.QInt8)
    return folder / "cnn16.onnx"


def test_report_of_a_16_bit_network_stays_small_and_its_histograms_binned(tmp_path):
    from pmsm.cli import main

    model = _uint16_cnn(tmp_path)
    np.savez(tmp_path / "data.npz", x=RNG.uniform(0, 1, (24, 3, 32, 32)).astype(np.float32),
             y=RNG.integers(0, 10, 24))
    report = tmp_path / "report.json"
    code = main([str(model), "-o", str(tmp_path / "out.onnx"), "--verify", "--data", str(tmp_path / "data.npz"),
                 "--timesteps", "1,2", "--report", str(report)])
    assert code == 0
    assert report.stat().st_size < 1_000_000
    layers = json.loads(report.read_text())["energy"]["neuron_layers"]
    assert any(layer["hi"] - layer["lo"] >= 65535 for layer in layers)  # 16-bit levels indeed
    for layer in layers:
        for stats in layer["per_T"].values():
            assert len(stats["histogram"]) + len(stats.get("histogram_bins", {})) <= 2 * EXACT_LEVELS + 1 + 2 * 16
            assert sum(stats["histogram"].values()) + sum(stats.get("histogram_bins", {}).values()) == stats["entries"]
    assert any(stats.get("histogram_bins") for layer in layers for stats in layer["per_T"].values())
    assert (tmp_path / "report-spikes.png").stat().st_size < 1_000_000
