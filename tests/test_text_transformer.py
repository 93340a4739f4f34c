"""A three-input transformer from real producers: trained in torch, exported by both of torch's
exporters, quantized by onnxruntime's ``quantize_static`` (tests/text_models.py).

``input_ids``, ``attention_mask`` and ``token_type_ids`` are int64 ``[N, 32]``; the padding mask is
``Where(mask, 0, -inf)`` added to the attention scores. The network and its files are built once
per module (about 20 s, most of it training); the dynamo export (another 12 s) runs with
``-m slow``.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import text_models
from hostile import assert_refused, run_command, snapshot
from pmsm.exporter.convert import to_spiking_onnx
from pmsm.runtime.execute import AnnRunner, SpikingModel

pytestmark = pytest.mark.torch

EXPORTERS = ("legacy", pytest.param("dynamo", marks=pytest.mark.slow))
BATCH_ONE_SAMPLES = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("text")


@pytest.fixture(scope="module")
def built(folder):
    return text_models.build(folder)


@pytest.fixture(scope="module")
def exported(built, folder):
    """exporter -> (quantized source path, its spiking ONNX), made on first request."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            path = text_models.add_export(built, folder, kind)
            cache[kind] = path, to_spiking_onnx(onnx.load(str(path)))[0]
        return cache[kind]

    return get


@pytest.fixture
def three_npz(built, tmp_path):
    path = tmp_path / "three.npz"
    np.savez(path, y=built.data.y_test, **built.data.test)
    return path


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_the_quantized_transformer_is_a_real_classifier_in_onnx_runtime(built, exported, exporter):
    path, _ = exported(exporter)
    logits = AnnRunner(str(path)).run(built.data.test)[0]
    assert np.mean(logits.argmax(axis=1) == built.data.y_test) > 0.45  # 10 classes: chance is 0.1


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_the_export_writes_the_mask_as_where_with_an_infinite_constant(exported, exporter):
    model = onnx.load(str(exported(exporter)[0]))
    assert [vi.name for vi in model.graph.input] == list(text_models.INPUTS)
    assert any(node.op_type == "Where" for node in model.graph.node)
    constants = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    constants += [onnx.numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
                  for a in n.attribute if a.name == "value"]
    assert any(c.dtype.kind == "f" and np.any(np.isneginf(c)) for c in constants)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("portable", [False, True], ids=["custom_op", "standard_op_body"])
def test_t1_spiking_onnx_is_bit_exact_on_three_int64_inputs_at_batch_n_and_one(built, exported, exporter, portable):
    path, spiking = exported(exporter)
    source = AnnRunner(str(path))
    runner = SpikingModel(spiking, portable=portable)
    test = built.data.test
    assert np.array_equal(runner.run(test, 1).output, source.run(test)[0])
    first = {name: array[:BATCH_ONE_SAMPLES] for name, array in test.items()}
    assert np.array_equal(runner.run(first, 1, batch_size=1).output, source.run(first, batch_size=1)[0])


def test_pmsm_export_verify_with_an_npz_of_the_three_arrays_passes(built, exported, three_npz, tmp_path, capfd):
    report = tmp_path / "report.json"
    outcome = run_command([exported("legacy")[0], "--verify", "--data", three_npz, "--timesteps", "1,2,4",
                           "--report", report, "-o", tmp_path / "text.spiking.onnx"], capfd)
    assert outcome.code == 0, outcome.err
    document = json.loads(report.read_text())
    verification = document["verification"]
    assert verification["samples"] == len(built.data.y_test)
    assert verification["backends"]["onnx"]["1"]["max_abs_diff"] == 0
    assert verification["backends"]["onnx_batch1"]["1"]["max_abs_diff"] == 0
    ann = document["accuracy"]["ann"]
    for timesteps in ("2", "4"):
        assert abs(document["accuracy"]["snn"][timesteps] - ann) < 0.05
    assert all(layer["macs"] for layer in document["energy"]["layers"])


@pytest.mark.parametrize("change, mentions", [
    (lambda a: a.pop("attention_mask"), "no array 'attention_mask' for the model input 'attention_mask'"),
    (lambda a: a.update(input_ids=a["input_ids"].astype(np.float32)),
     "'input_ids' holds float32 values; the model input 'input_ids' takes int64"),
])
def test_a_missing_or_mistyped_array_is_exit_2_naming_it(built, exported, tmp_path, capfd, change, mentions):
    arrays = dict(built.data.test)
    change(arrays)
    data = tmp_path / "bad.npz"
    np.savez(data, **arrays)
    before = snapshot(tmp_path)
    outcome = run_command([exported("legacy")[0], "--verify", "--data", data, "-o", tmp_path / "t.onnx"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path), mentions)


def test_the_mask_add_quantized_gets_scale_inf_and_stays_refused(built, tmp_path, capfd):
    before = snapshot(tmp_path)
    outcome = run_command([built.mask_quantized, "-o", tmp_path / "t.onnx"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path), "is infinite (inf); scales must be finite and positive")
