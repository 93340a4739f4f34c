"""Shared fixtures: small quantized models built directly in ONNX (fast, no training).

Tests that need an optional part of the package carry the marker of its extra:
``@pytest.mark.torch`` (``pmsm-export[torch]``: torch and its ONNX exporter), ``@pytest.mark.lava``
(``pmsm-export[lava]``, Python 3.10 only), ``@pytest.mark.producers`` (``pmsm-export[producers]``:
Brevitas and the onnxoptimizer its export needs, and the NIR consumer norse) or ``@pytest.mark.ray``
(``pmsm-export[ray]``). They are skipped, with the reason, where the extra is not installed.
``PMSM_TEST_EXTRAS=torch,lava,producers`` names the extras a run must have: then a missing one
fails the run at once instead of skipping its tests silently (``make test`` sets it per
environment).
"""
from __future__ import annotations

import functools
import importlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "samples")
REQUIRED_EXTRAS_VARIABLE = "PMSM_TEST_EXTRAS"
# extra -> the modules its tests import; their ImportError says how to install the extra
EXTRA_MODULES = {
    "torch": ("pmsm.exporter.quant", "onnxscript"),
    "lava": ("pmsm.targets.lava",),
    "producers": ("brevitas", "onnxoptimizer", "norse"),
    "ray": ("ray",),
}


@functools.lru_cache(maxsize=None)
def missing_extra(extra: str) -> str | None:
    """Why ``extra`` cannot be used here, or None when it can."""
    for module in EXTRA_MODULES[extra]:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"needs pmsm-export[{extra}]: {error}"
    return None


def pytest_configure(config):
    for extra in EXTRA_MODULES:
        config.addinivalue_line("markers", f"{extra}: needs pmsm-export[{extra}]; skipped where it is not installed")
    required = [e.strip() for e in os.environ.get(REQUIRED_EXTRAS_VARIABLE, "").split(",") if e.strip()]
    unknown = sorted(set(required) - set(EXTRA_MODULES))
    if unknown:
        raise pytest.UsageError(f"{REQUIRED_EXTRAS_VARIABLE}: unknown extra(s) {', '.join(unknown)}; "
                                f"known: {', '.join(EXTRA_MODULES)}")
    for extra in required:
        reason = missing_extra(extra)
        if reason:
            raise pytest.UsageError(f"{REQUIRED_EXTRAS_VARIABLE} requires {extra!r} but it {reason}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for extra in EXTRA_MODULES:
            if item.get_closest_marker(extra):
                reason = missing_extra(extra)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


def build_qdq_mlp(seed: int = 0, hidden: int = 16, batch=1) -> onnx.ModelProto:
    """``x [N,1,8,8] -> Flatten -> QDQ(u8) -> Gemm -> Relu -> QDQ(u8) -> Gemm -> y [N,10]``,
    the shape onnxruntime's ``quantize_static`` gives a small MLP."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (hidden, 64)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (10, hidden)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "s_in"),
        numpy_helper.from_array(np.array(0, np.uint8), "zp_in"),
        numpy_helper.from_array(np.array(0.02, np.float32), "s_h"),
        numpy_helper.from_array(np.array(0, np.uint8), "zp_h"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], name="flatten", axis=1),
        helper.make_node("QuantizeLinear", ["xf", "s_in", "zp_in"], ["xq"], name="input_quant"),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "zp_in"], ["xd"], name="input_dequant"),
        helper.make_node("Gemm", ["xd", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("QuantizeLinear", ["hr", "s_h", "zp_h"], ["hq"], name="hidden_quant"),
        helper.make_node("DequantizeLinear", ["hq", "s_h", "zp_h"], ["hd"], name="hidden_dequant"),
        helper.make_node("Gemm", ["hd", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "qdq_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.fixture
def qdq_mlp_path(tmp_path):
    path = tmp_path / "mlp_qdq.onnx"
    onnx.save(build_qdq_mlp(), str(path))
    return str(path)


@pytest.fixture
def digits_npz(tmp_path):
    """A few real digits images (scikit-learn's copy of the UCI set) with labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:40] / 16.0).astype(np.float32)[:, None]
    path = tmp_path / "digits.npz"
    np.savez(path, x=x, y=digits.target[:40].astype(np.int64))
    return str(path)


@pytest.fixture
def conversion_with_a_wrong_bound(monkeypatch):
    """``pmsm.pipeline.convert`` whose spiking model clips every neuron at ``hi = 3``, far below
    the source's quantizer: a model that is not exact at T = 1, so ``--verify`` must exit 1."""
    from pmsm import pipeline
    from pmsm.runtime.execute import SpikingModel

    real_convert = pipeline.convert

    def convert_with_a_wrong_bound(*args, **kwargs):
        export = real_convert(*args, **kwargs)
        for node in SpikingModel(export.spiking).neurons.values():  # the nodes inside the time loop
            for attribute in node.attribute:
                if attribute.name == "hi":
                    attribute.i = 3
        return export

    monkeypatch.setattr(pipeline, "convert", convert_with_a_wrong_bound)
