"""Models with several inputs and integer inputs, and the infinite constants of attention masks.

A text model takes ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64 ``[N, S]``
each) and masks padding with ``-inf`` added to its attention scores. The models here are written
directly in ONNX (tests/masked_attention.py); the three-input transformer trained and quantized
by real producers is in tests/test_text_transformer.py.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hostile import run_command, snapshot, assert_refused
from masked_attention import MASKS, VOCABULARY, build_masked_attention, text_batch
from pmsm.runtime.base.errors import BadInputError
from pmsm.exporter import validation
from pmsm.runtime.execute import AnnRunner, SpikingModel
from pmsm.runtime.inputs import InputSpec, Samples, index_bounds, probe_batch, specs_of


@pytest.fixture
def text_model(tmp_path):
    """The three-input model with Hugging Face's ``Where(mask, 0, -inf)`` and 24 samples of data."""
    path = tmp_path / "text.onnx"
    onnx.save(build_masked_attention("where"), str(path))
    data = tmp_path / "three.npz"
    arrays = text_batch(24)
    np.savez(data, y=np.arange(24) % 10, **arrays)
    return tmp_path, str(path), str(data), arrays


def _spiking(model: onnx.ModelProto) -> onnx.ModelProto:
    from pmsm.exporter.convert import convert

    return convert(model).spiking


# ---------------------------------------------------------------------------------------------
# Masking constants are not weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", MASKS)
def test_an_infinite_attention_mask_is_not_taken_for_a_broken_weight(mask):
    assert validation.problems(build_masked_attention(mask)) == []


@pytest.mark.parametrize("mask", MASKS)
def test_t1_spiking_onnx_with_an_infinite_mask_is_bit_exact_at_batch_one_and_n_custom_op_and_body(mask):
    model = build_masked_attention(mask)
    feeds = text_batch(16, mask=mask != "causal")
    spiking = _spiking(model)
    source = AnnRunner(model)
    for portable in (False, True):
        runner = SpikingModel(spiking, portable=portable)
        assert np.array_equal(runner.run(feeds, 1).output, source.run(feeds)[0])
        assert np.array_equal(runner.run(feeds, 1, batch_size=1).output, source.run(feeds, batch_size=1)[0])
        assert np.all(np.isfinite(runner.run(feeds, 4).output))  # compensation keeps -inf scores masked


def _set(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return model


@pytest.mark.parametrize("case, change, mentions", [
    ("a NaN mask", lambda m: _set(m, "minus_infinity", np.nan), "'minus_infinity'"),
    ("an infinite weight", lambda m: _set(m, "wq", np.full((8, 8), -np.inf)), "'wq' holds 64"),
    ("an infinite embedding row", lambda m: _set(m, "token_table", np.full((VOCABULARY, 8), np.inf)), "'token_table'"),
    ("an infinite bias", lambda m: _set(m, "bc", np.full(10, -np.inf)), "'bc'"),
    ("an infinite score scale", lambda m: _set(m, "score_scale", np.inf), "'score_scale'"),
    ("an infinite quantizer scale", lambda m: _set(m, "s_qkv", np.inf), "scale 's_qkv' is infinite"),
])
def test_non_finite_weights_scales_and_nan_stay_refused(case, change, mentions):
    found = validation.problems(change(build_masked_attention("where")))
    assert any(mentions in problem for problem in found), found


def test_an_infinity_added_to_values_no_softmax_normalises_is_refused():
    model = build_masked_attention("causal")
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    softmax.op_type = "Relu"
    del softmax.attribute[:]
    found = validation.problems(model)
    assert any("'causal_mask' holds 28 NaN or infinite value(s); weights must be finite" in p for p in found), found


def test_a_quantized_mask_with_an_infinite_scale_stays_refused(tmp_path, capfd):
    model = build_masked_attention("where")
    masked = next(node for node in model.graph.node if node.name == "masked_scores")
    model.graph.initializer.extend([numpy_helper.from_array(np.array(np.inf, np.float32), "s_masked"),
                                    numpy_helper.from_array(np.array(255, np.uint8), "zp_masked")])
    masked.output[0] = "masked_raw"
    at = list(model.graph.node).index(masked) + 1
    for offset, node in enumerate([
            helper.make_node("QuantizeLinear", ["masked_raw", "s_masked", "zp_masked"], ["masked_q"], name="mask_quant"),
            helper.make_node("DequantizeLinear", ["masked_q", "s_masked", "zp_masked"], ["masked"], name="mask_dequant")]):
        model.graph.node.insert(at + offset, node)
    path = tmp_path / "mask_quantized.onnx"
    onnx.save(model, str(path))
    before = snapshot(tmp_path)
    outcome = run_command([path, "-o", tmp_path / "out.onnx"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path), "node 'mask_quant' (QuantizeLinear): scale 's_masked' is infinite")


# ---------------------------------------------------------------------------------------------
# Runners take one array per input
# ---------------------------------------------------------------------------------------------


def test_runners_take_one_array_per_input_name_as_a_mapping_or_samples():
    model = build_masked_attention("where")
    feeds = text_batch(8)
    source = AnnRunner(model)
    assert [spec.name for spec in source.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert np.array_equal(source.run(feeds)[0], source.run(Samples(feeds))[0])
    halves = [source.run(Samples(feeds)[:4])[0], source.run(Samples(feeds)[4:])[0]]
    assert np.array_equal(np.concatenate(halves), source.run(feeds)[0])


@pytest.mark.parametrize("change, mentions", [
    (lambda f: f.pop("attention_mask"), "no array for input 'attention_mask'"),
    (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "input 'input_ids' expects int64"),
    (lambda f: f.update(extra=f["input_ids"]), "'extra' is not an input of the model"),
    (lambda f: f.update(token_type_ids=f["token_type_ids"][:3]), "different numbers of samples"),
])
def test_a_runner_names_the_input_that_is_missing_mistyped_or_unknown(change, mentions):
    feeds = text_batch(8)
    change(feeds)
    with pytest.raises(BadInputError, match=mentions):
        AnnRunner(build_masked_attention("where")).run(feeds)


def test_a_model_with_several_inputs_does_not_take_one_bare_array():
    with pytest.raises(BadInputError, match="takes 3 inputs"):
        AnnRunner(build_masked_attention("where")).run(text_batch(4)["input_ids"])


# ---------------------------------------------------------------------------------------------
# The seeded probe batch
# ---------------------------------------------------------------------------------------------


def test_the_probe_batch_draws_ids_below_each_table_and_attends_to_every_token():
    model = build_masked_attention("where")
    assert index_bounds(model, ["input_ids", "attention_mask", "token_type_ids"]) == {
        "input_ids": VOCABULARY, "token_type_ids": 2}
    probe = probe_batch(model, specs_of(model, "model"))
    assert isinstance(probe, Samples) and len(probe) == 64
    ids, types, mask = probe["input_ids"], probe["token_type_ids"], probe["attention_mask"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < VOCABULARY and len(np.unique(ids)) > 10
    assert set(np.unique(types)) == {0, 1}
    assert np.all(mask == 1)
    assert np.all(np.isfinite(AnnRunner(model).run(probe)[0]))


def test_the_probe_finds_the_table_behind_a_dequantized_embedding_in_the_spiking_model():
    model = build_masked_attention("where")
    table = next(t for t in model.graph.initializer if t.name == "token_table")
    values = numpy_helper.to_array(table)
    table.CopyFrom(numpy_helper.from_array(np.round(values / 0.01).astype(np.int8), "token_table_q"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "token_scale"))
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["token_table_q", "token_scale"], ["token_table"],
                                                name="token_table_dequant"))
    spiking = _spiking(model)  # the Gather runs inside the time loop's body
    assert index_bounds(spiking, ["input_ids", "token_type_ids"]) == {"input_ids": VOCABULARY, "token_type_ids": 2}


def test_a_float_model_keeps_its_probe_batch():
    from conftest import build_qdq_mlp

    model = build_qdq_mlp()
    probe = probe_batch(model, specs_of(model, "model"))
    expected = np.random.default_rng(0).uniform(0.0, 1.0, size=[64, 1, 8, 8]).astype(np.float32)
    assert np.array_equal(probe, expected)


@pytest.mark.parametrize("elem_type, dims, mentions", [
    (TensorProto.STRING, ["N", 8], "input 'names' takes string values"),
    (TensorProto.FLOAT, [], "input 'names' is a scalar: it has no batch axis"),
])
def test_an_input_no_data_file_can_feed_is_named_before_converting(elem_type, dims, mentions, tmp_path, capfd):
    model = build_masked_attention("where")
    model.graph.input.append(helper.make_tensor_value_info("names", elem_type, dims))
    model.graph.output.append(helper.make_tensor_value_info("names_out", elem_type, dims))
    model.graph.node.append(helper.make_node("Identity", ["names"], ["names_out"], name="names_through"))
    path = tmp_path / "unfeedable.onnx"
    onnx.save(model, str(path))
    before = snapshot(tmp_path)
    outcome = run_command([path, "--check"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path), mentions)


def test_a_bool_input_is_fed_with_bool_arrays_and_probed_with_true(tmp_path):
    spec = InputSpec("keep", np.dtype(bool), ("N", 4))
    assert spec.takes(np.dtype(bool)) and not spec.takes(np.dtype(np.int64))
    with pytest.raises(BadInputError, match="input 'keep' expects bool"):
        spec.check(np.ones((2, 4), np.int64))
    probe = probe_batch(onnx.ModelProto(), [spec], samples=3)
    assert probe.dtype == bool and probe.all()


# ---------------------------------------------------------------------------------------------
# --data: one array per input name
# ---------------------------------------------------------------------------------------------


def test_verify_takes_an_npz_with_one_array_per_input_and_passes(text_model, capfd):
    folder, model, data, _ = text_model
    report = folder / "report.json"
    outcome = run_command([model, "--verify", "--data", data, "--timesteps", "1,2", "--report", report,
                           "-o", folder / "text.spiking.onnx"], capfd)
    assert outcome.code == 0, outcome.err
    document = json.loads(report.read_text())
    backends = document["verification"]["backends"]
    assert document["verification"]["samples"] == 24
    assert backends["onnx"]["1"]["max_abs_diff"] == 0
    assert backends["onnx_batch1"]["1"]["max_abs_diff"] == 0
    assert backends["onnx_custom_op"]["1"]["bits_differ"] == 0
    assert all(layer["macs"] for layer in document["energy"]["layers"])


def test_verify_without_data_probes_every_input_with_valid_values(text_model, capfd):
    folder, model, _, _ = text_model
    outcome = run_command([model, "--verify", "--timesteps", "1", "-o", folder / "text.spiking.onnx"], capfd)
    assert outcome.code == 0, outcome.err
    assert "verification on 64 samples" in outcome.out


def test_verify_reads_a_folder_of_npz_shards_for_several_inputs(text_model, capfd):
    folder, model, _, arrays = text_model
    shards = folder / "shards"
    shards.mkdir()
    for index, start in enumerate(range(0, 24, 10)):
        np.savez_compressed(shards / f"part{index}.npz", **{k: v[start:start + 10] for k, v in arrays.items()})
    outcome = run_command([model, "--verify", "--data", shards, "--timesteps", "1", "-o", folder / "t.onnx"], capfd)
    assert outcome.code == 0, outcome.err
    assert "verification on 24 samples" in outcome.out


@pytest.mark.parametrize("change, mentions", [
    (lambda a: a.pop("token_type_ids"), "no array 'token_type_ids' for the model input 'token_type_ids'"),
    (lambda a: a.update(input_ids=a["input_ids"].astype(np.float32)),
     "'input_ids' holds float32 values; the model input 'input_ids' takes int64"),
    (lambda a: a.update(attention_mask=a["attention_mask"].astype(bool)),
     "'attention_mask' holds bool values; the model input 'attention_mask' takes int64"),
    (lambda a: a.update(input_idz=a["input_ids"]), "array 'input_idz' is not an input of the model"),
    (lambda a: a.update(attention_mask=a["attention_mask"][:5]), "the arrays hold different numbers of samples"),
    (lambda a: a.update(token_type_ids=a["token_type_ids"][:, :4]),
     "'token_type_ids' has shape [24, 4], the model input 'token_type_ids' expects [N, 8]"),
    (lambda a: a.update(input_ids=a["input_ids"].astype(np.uint64) + np.uint64(2 ** 63)),
     "outside the int64 range of the model input 'input_ids'"),
])
def test_a_missing_mistyped_or_unknown_array_is_exit_2_naming_it(change, mentions, text_model, capfd):
    folder, model, _, arrays = text_model
    arrays = dict(arrays)
    change(arrays)
    data = folder / "bad.npz"
    np.savez(data, **arrays)
    before = snapshot(folder)
    outcome = run_command([model, "--verify", "--data", data, "-o", folder / "t.onnx"], capfd)
    assert_refused(outcome, before, snapshot(folder), mentions)


def test_narrower_integer_arrays_are_widened_to_the_inputs_type(text_model, capfd):
    folder, model, _, arrays = text_model
    data = folder / "int32.npz"
    np.savez(data, **{k: v.astype(np.int32) for k, v in arrays.items()})
    outcome = run_command([model, "--verify", "--data", data, "--timesteps", "1", "-o", folder / "t.onnx"], capfd)
    assert outcome.code == 0, outcome.err


def test_an_npy_file_cannot_feed_a_model_with_several_inputs(text_model, capfd):
    folder, model, _, arrays = text_model
    data = folder / "x.npy"
    np.save(data, arrays["input_ids"])
    before = snapshot(folder)
    outcome = run_command([model, "--verify", "--data", data, "-o", folder / "t.onnx"], capfd)
    assert_refused(outcome, before, snapshot(folder), "the model takes 3 inputs")


@pytest.mark.parametrize("name", ["x", "input_ids"])
def test_a_model_with_one_integer_input_reads_int64_ids_as_x_or_by_its_name(name, tmp_path, capfd):
    model = tmp_path / "ids.onnx"
    onnx.save(build_masked_attention("causal", token_types=False), str(model))
    data = tmp_path / "ids.npz"
    np.savez(data, y=np.arange(12) % 10, **{name: text_batch(12, token_types=False, mask=False)["input_ids"]})
    outcome = run_command([model, "--verify", "--data", data, "--timesteps", "1", "-o", tmp_path / "t.onnx"], capfd)
    assert outcome.code == 0, outcome.err
    assert "verification on 12 samples" in outcome.out


def test_a_model_with_one_input_refuses_both_x_and_its_name(tmp_path, capfd):
    model = tmp_path / "ids.onnx"
    onnx.save(build_masked_attention("causal", token_types=False), str(model))
    ids = text_batch(4, token_types=False, mask=False)["input_ids"]
    data = tmp_path / "both.npz"
    np.savez(data, x=ids, input_ids=ids)
    before = snapshot(tmp_path)
    outcome = run_command([model, "--verify", "--data", data, "-o", tmp_path / "t.onnx"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path), "holds both 'x' and 'input_ids'")


def _report(model, data, folder, name, capfd, *flags) -> dict:
    report = folder / f"{name}.json"
    outcome = run_command([model, "--verify", "--data", data, "--timesteps", "1,2", "--report", report,
                           "-o", folder / "text.spiking.onnx", *flags], capfd)
    assert outcome.code == 0, outcome.err
    return json.loads(report.read_text())


@pytest.mark.parametrize("where, flags", [
    ("processes", ("--workers", "2")),
    pytest.param("ray", ("--ray", "--workers", "2"), marks=[pytest.mark.ray, pytest.mark.slow]),
])
def test_sharded_verification_of_several_inputs_gives_the_report_of_one_process(where, flags, text_model, capfd,
                                                                                monkeypatch):
    from pmsm.runtime.base import memory
    from pmsm.report import comparable

    folder, model, data, _ = text_model
    single = _report(model, data, folder, "single", capfd)
    monkeypatch.setattr(memory, "MAX_CHUNK_SAMPLES", 8)  # several chunks per worker
    sharded = _report(model, data, folder, where, capfd, *flags)
    assert sharded["verification"]["execution"]["kind"] == where
    assert comparable(sharded) == comparable(single)
