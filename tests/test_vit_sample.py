"""The bundled digits ViT (samples/digits_vit_pmsm_L4.onnx) as a spiking network: it converts, its
nonlinear ops get temporal compensation by default, and at T = 1 it is the quantized ANN bit for bit."""
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from pmsm.exporter.convert import convert
from pmsm.runtime.execute import AnnRunner, SpikingModel

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "digits_vit_pmsm_L4.onnx"
IMAGES = 24  # of the test split, run one at a time as exported
# Two encoder blocks: LayerNorm before attention and before the MLP in each, one final LayerNorm;
# per block two MatMuls of two activations (Q K^T and weights V), one Softmax, one GELU.
NONLINEAR_NODES = {"LayerNormalization": 5, "MatMul": 4, "Softmax": 2, "Gelu": 2}
QUANTIZERS = 10  # embedded tokens, head input, and per block: two LayerNorm outputs, attention output, GELU


@pytest.fixture(scope="module")
def source():
    return onnx.load(str(SAMPLE))


@pytest.fixture(scope="module")
def conversion(source):
    return convert(source)


@pytest.fixture(scope="module")
def images():
    return np.load(SAMPLES / "digits_test.npz")["x"][:IMAGES]


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def test_vit_sample_is_a_quantized_transformer_exported_at_batch_1(source):
    ops = Counter(node.op_type for node in source.graph.node)
    assert ops["Floor"] == QUANTIZERS
    assert {op: ops[op] for op in ("LayerNormalization", "Softmax", "Gelu")} == {
        op: NONLINEAR_NODES[op] for op in ("LayerNormalization", "Softmax", "Gelu")}
    assert [d.dim_value for d in source.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]


def test_vit_sample_converts_with_temporal_compensation_of_its_nonlinear_ops_by_default(source, conversion):
    assert len(conversion.neurons) == QUANTIZERS
    assert Counter(op for _, op in conversion.compensated) == NONLINEAR_NODES
    assert conversion.uncompensated == []
    assert metadata(conversion.spiking)["pmsm.compensation"] == "on"

    switched_off = convert(source, compensation=False)
    assert switched_off.compensated == [] and metadata(switched_off.spiking)["pmsm.compensation"] == "off"


def test_vit_sample_spiking_onnx_is_bit_exact_at_t1_with_the_custom_op_and_with_the_portable_body(
        source, conversion, images):
    ann = AnnRunner(source).run(images)[0]
    assert len(np.unique(ann.argmax(axis=1))) > 5, "a degenerate source proves nothing"
    for portable in (False, True):
        snn = SpikingModel(conversion.spiking, portable=portable).run(images, 1).output
        assert snn.dtype == ann.dtype == np.float32
        assert np.array_equal(snn.view(np.uint32), ann.view(np.uint32)), f"portable={portable}"


def test_vit_sample_portable_body_equals_the_custom_op_at_t2_and_compensation_changes_the_result(
        source, conversion, images):
    x = images[:6]
    reference = SpikingModel(conversion.spiking).run(x, 2).output
    body = SpikingModel(conversion.spiking, portable=True).run(x, 2).output
    assert np.array_equal(reference.view(np.uint32), body.view(np.uint32))
    uncompensated = SpikingModel(convert(source, compensation=False).spiking).run(x, 2).output
    assert not np.array_equal(reference, uncompensated)
