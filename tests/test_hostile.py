"""Hostile and broken input (issue "a clear exit 2, nothing lost, nothing overwritten"): one test
per kind of failure seen, each asserting exit 2, one line on stderr, no traceback, nothing
written and every input unchanged."""
from __future__ import annotations

import copy
import json
import os
import stat
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, build_qdq_mlp
from hostile import (DeviceGuard, assert_refused, build_qonnx_mlp, initializer, run_command, set_initializer,
                     snapshot, zip_bomb)
from pmsm.runtime.base.errors import BadInputError

SAMPLE = os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx")


@pytest.fixture
def work(tmp_path):
    """A folder holding a QDQ model and a small data file; returns (folder, model, data)."""
    model = tmp_path / "model.onnx"
    onnx.save(build_qdq_mlp(), str(model))
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8)).astype(np.float32),
             y=np.arange(8) % 10)
    return tmp_path, str(model), str(data)


def refused(argv, capfd, folder, mentions=None, extra_folders=()):
    before = snapshot(folder, *extra_folders)
    outcome = run_command(argv, capfd)
    assert_refused(outcome, before, snapshot(folder, *extra_folders), mentions)
    return outcome


# ---------------------------------------------------------------------------------------------
# 1. Every path checked before anything is written
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_an_output_naming_the_model_is_refused_and_the_model_is_untouched(flag, work, capfd):
    folder, model, _ = work
    argv = [model, "--verify", flag, model] + (["-o", str(folder / "o.onnx")] if flag == "--report" else [])
    refused(argv, capfd, folder, "would overwrite the input MODEL")


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_an_output_naming_the_data_file_is_refused_and_the_data_is_untouched(flag, work, capfd):
    folder, model, data = work
    argv = [model, "--verify", "--data", data, flag, data] + (["-o", str(folder / "o.onnx")] if flag == "--report"
                                                              else [])
    refused(argv, capfd, folder, "would overwrite the input --data")


def test_a_report_naming_the_spiking_output_is_refused(work, capfd):
    folder, model, _ = work
    out = str(folder / "out.onnx")
    refused([model, "-o", out, "--verify", "--report", out], capfd, folder, "is the same file as the output -o")


def test_a_picture_of_the_report_landing_on_the_output_is_refused(work, capfd):
    folder, model, _ = work
    out = str(folder / "r-energy.png")  # --report r.json draws r-energy.png next to it
    refused([model, "-o", out, "--verify", "--report", str(folder / "r.json")], capfd, folder,
            "picture of --report")


def test_an_output_hard_linked_to_the_model_is_refused(work, capfd):
    folder, model, _ = work
    os.link(model, folder / "alias.onnx")
    refused([model, "-o", str(folder / "alias.onnx")], capfd, folder, "is a hard link to the input MODEL")


def test_an_output_symlinked_to_the_model_is_refused(work, capfd):
    folder, model, _ = work
    os.symlink(model, folder / "link.onnx")
    refused([model, "-o", str(folder / "link.onnx")], capfd, folder, "is a symbolic link to the input MODEL")


def test_a_report_symlinked_to_the_data_is_refused(work, capfd):
    folder, model, data = work
    os.symlink(data, folder / "r.json")
    refused([model, "-o", str(folder / "o.onnx"), "--verify", "--data", data, "--report", str(folder / "r.json")],
            capfd, folder, "is a symbolic link to the input --data")


def test_an_output_that_is_a_symlink_elsewhere_is_refused_rather_than_written_through(work, tmp_path_factory,
                                                                                      capfd):
    folder, model, _ = work
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    victim = elsewhere / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, folder / "out.onnx")
    refused([model, "-o", str(folder / "out.onnx")], capfd, folder, "is a symbolic link", extra_folders=[elsewhere])
    assert victim.read_text() == "keep me"


def test_an_output_on_the_models_external_data_file_is_refused(tmp_path, capfd):
    model = tmp_path / "external.onnx"
    onnx.save(build_qdq_mlp(hidden=64), str(model), save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    refused([str(model), "-o", str(tmp_path / "external.onnx.data")], capfd, tmp_path,
            "would overwrite the input external data of MODEL")


@pytest.mark.parametrize("flag, device", [("-o", "/dev/null"), ("-o", "/dev/full"), ("--report", "/dev/full"),
                                          ("--report", "/dev/null")])
def test_a_device_as_output_is_refused_and_stays_a_device(flag, device, work, capfd, monkeypatch):
    if not os.path.exists(device) or not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip(f"{device} is not a character device here")
    DeviceGuard(monkeypatch)
    folder, model, _ = work
    argv = [model, flag, device] + (["--verify", "-o", str(folder / "o.onnx")] if flag == "--report" else [])
    refused(argv, capfd, folder, "is a character device")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_fifo_as_output_is_refused_without_blocking(work, capfd, monkeypatch):
    DeviceGuard(monkeypatch)
    folder, model, _ = work
    os.mkfifo(folder / "pipe")
    refused([model, "-o", str(folder / "pipe")], capfd, folder, "is a FIFO")


def test_a_folder_as_output_is_refused(work, capfd):
    folder, model, _ = work
    (folder / "sub").mkdir()
    refused([model, "-o", str(folder / "sub")], capfd, folder, "is a folder")
    refused([model, "-o", str(folder / "new") + os.sep], capfd, folder, "names a folder")


def test_an_output_in_a_missing_folder_is_refused(work, capfd):
    folder, model, _ = work
    refused([model, "-o", str(folder / "missing" / "o.onnx")], capfd, folder, "does not exist")


def test_an_output_in_a_folder_nobody_can_write_is_refused(work, capfd):
    folder, model, _ = work  # /proc refuses new files even to root
    refused([model, "-o", "/proc/self/out.onnx"], capfd, folder, "cannot write in folder")


def test_an_output_in_a_read_only_folder_is_refused(work, capfd):
    folder, model, _ = work
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:  # root writes through permission bits: then this case cannot be shown here
            (locked / "probe").write_text("")
            (locked / "probe").unlink()
            pytest.skip("running as root: permission bits do not stop writes")
        except PermissionError:
            pass
        refused([model, "-o", str(locked / "o.onnx")], capfd, folder, "cannot write in folder")
    finally:
        locked.chmod(0o755)


def test_a_file_name_longer_than_the_file_system_takes_is_refused(work, capfd):
    folder, model, _ = work
    refused([model, "-o", str(folder / ("n" * 300 + ".onnx"))], capfd, folder, "the file name is 305 bytes long")


def test_a_report_whose_pictures_would_not_fit_the_name_limit_is_refused(work, capfd):
    folder, model, _ = work
    name = "r" * (255 - len(".json") - 2) + ".json"  # fits; "-accuracy.png" next to it does not
    refused([model, "-o", str(folder / "o.onnx"), "--verify", "--report", str(folder / name)], capfd, folder,
            "picture of --report")


@pytest.mark.parametrize("position", ["MODEL", "-o", "--data", "--report"])
def test_an_empty_path_is_an_error_not_the_default(position, work, capfd):
    folder, model, _ = work
    argv = {"MODEL": [""], "-o": [model, "-o", ""], "--data": [model, "--verify", "--data", ""],
            "--report": [model, "--verify", "--report", ""]}[position]
    refused(argv, capfd, folder, f"{position}: empty path")


@pytest.mark.parametrize("timesteps, mentions", [
    ("9223372036854775808", "above the maximum of 1024"),
    ("100000", "above the maximum"),
    (",".join(str(t) for t in range(1, 18)), "at most 16"),
    ("0", "positive integers"),
    ("-3", "positive integers"),
    ("1," + "9" * 5000, "positive integers"),
])
def test_timesteps_are_bounded(timesteps, mentions, work, capfd):
    folder, model, _ = work
    refused([model, "--timesteps", timesteps], capfd, folder, mentions)


def test_the_timestep_maximum_can_be_raised(work, capfd):
    folder, model, _ = work
    outcome = run_command([model, "-o", str(folder / "o.onnx"), "--timesteps", "2000", "--max-timesteps", "2000"],
                          capfd)
    assert outcome.code == 0, outcome.err


def test_verify_whose_memory_estimate_exceeds_free_memory_is_refused_before_running(work, capfd):
    folder, model, _ = work
    start = time.perf_counter()
    refused([model, "-o", str(folder / "o.onnx"), "--verify", "--timesteps", "100000000",
             "--max-timesteps", "100000000"], capfd, folder, "of memory but")
    assert time.perf_counter() - start < 120  # not the hours the run would take


def test_the_verification_estimate_counts_spikes_of_every_backend_at_the_largest_timestep():
    from pmsm.plan import INPUT_COPIES, SPIKING_BACKENDS, bytes_per_sample

    one = bytes_per_sample(64, 100, [1], "onnx")
    inputs = 4 * INPUT_COPIES * 64
    assert one == 4 * 100 * 1 * (SPIKING_BACKENDS["onnx"] + 1) + inputs
    # chunks hold one T at a time: the largest T counts, not the sum
    assert bytes_per_sample(64, 100, [1, 2, 4], "onnx") - inputs == 4 * (one - inputs)
    assert bytes_per_sample(64, 100, [4], "lava") > bytes_per_sample(64, 100, [4], "nir") \
        > bytes_per_sample(64, 100, [4], "onnx")


def test_chunks_fit_the_budget_and_a_quarter_of_free_memory():
    from pmsm.runtime.base.memory import CHUNK_BUDGET, MAX_CHUNK_SAMPLES, chunk_samples

    assert chunk_samples(1, free=1 << 40) == MAX_CHUNK_SAMPLES
    assert chunk_samples(CHUNK_BUDGET // 10, free=1 << 40) == 10
    assert chunk_samples(1 << 20, free=40 << 20) == 10
    assert chunk_samples(1 << 40, free=1 << 30) == 1


@pytest.mark.lava
def test_the_spiking_backend_count_of_the_estimate_matches_what_verification_runs(tmp_path):
    from pmsm.data import open_data
    from pmsm.plan import SPIKING_BACKENDS
    from pmsm.pipeline import convert, plan_for

    path = tmp_path / "m.onnx"
    onnx.save(build_qdq_mlp(), str(path))
    for target in ("onnx", "nir", "lava"):
        export = convert(str(path), target)
        plan = plan_for(export, open_data(None, [1, 12]))
        verifier = plan.verifier([1])
        assert len([b for b in verifier.backends if b.name != "ann"]) <= SPIKING_BACKENDS[target], target


def test_memory_that_does_not_fit_is_refused_with_the_estimate_and_what_is_free(monkeypatch):
    from pmsm.runtime.base import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 30)
    memory.check_fits(1 << 20, "a small run", "-")
    with pytest.raises(BadInputError, match=r"a big run needs about 2 GiB of memory but 1 GiB is free; less"):
        memory.check_fits(2 << 30, "a big run", "less")


# ---------------------------------------------------------------------------------------------
# 2. The source must be a model ONNX Runtime loads and runs; its numbers must be sane
# ---------------------------------------------------------------------------------------------


def external_model(folder) -> str:
    path = folder / "external.onnx"
    onnx.save(build_qdq_mlp(hidden=64), str(path), save_as_external_data=True, location="weights.data",
              size_threshold=0)
    return str(path)


def relocate(path: str, location: str, **entries) -> None:
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            elif entry.key in entries:
                entry.value = str(entries[entry.key])
    onnx.save(model, path)


@pytest.mark.parametrize("location, mentions", [
    ("../../../../etc/passwd", "climbs out with '..'"),
    ("/etc/passwd", "an absolute path"),
    ("sub/../../weights.data", "climbs out with '..'"),
    ("link.data", "reached through a symbolic link"),
    ("linked/weights.data", "reached through a symbolic link"),
    ("pipe.data", "not a regular file"),
    ("missing.data", "missing next to the model"),
    ("weights.data@offset", "the file has"),
    ("weights.data@length", "the file has"),
])
def test_external_data_must_stay_a_file_inside_the_models_folder(location, mentions, tmp_path, capfd,
                                                                 tmp_path_factory):
    model = external_model(tmp_path)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "weights.data").write_bytes((tmp_path / "weights.data").read_bytes())
    os.symlink(outside / "weights.data", tmp_path / "link.data")
    os.symlink(outside, tmp_path / "linked")
    os.mkfifo(tmp_path / "pipe.data")
    if "@" in location:
        key = location.split("@")[1]
        relocate(model, "weights.data", **{key: 10 ** 9})
    else:
        relocate(model, location)
    refused([model, "-o", str(tmp_path / "o.onnx")], capfd, tmp_path, mentions, extra_folders=[outside])


def mutated(work, change) -> str:
    folder, model, _ = work
    proto = onnx.load(model)
    change(proto)
    path = folder / "mutated.onnx"
    onnx.save(proto, str(path))
    return str(path)


def _retype(name, dtype):
    def change(m):
        value = numpy_helper.to_array(initializer(m, name))
        if dtype == "string":
            initializer(m, name).CopyFrom(helper.make_tensor(name, TensorProto.STRING, list(value.shape),
                                                             [b"a"] * value.size))
        else:
            set_initializer(m, name, value.astype(dtype))
    return change


def _add_constant_of_shape(m):
    m.graph.initializer.append(numpy_helper.from_array(np.array([10 ** 12], np.int64), "huge_shape"))
    m.graph.node.append(helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], name="huge_constant"))
    m.graph.output.append(helper.make_tensor_value_info("huge", TensorProto.FLOAT, [10 ** 12]))


ORT_CANNOT_RUN = {
    "initializer shape not its declaration": (lambda m: initializer(m, "w1").dims.__setitem__(0, 17), "raw_data size"),
    "scale of type int32": (_retype("s_h", np.int32), "hidden_quant"),
    "zero point of type float": (_retype("zp_h", np.float32), "hidden_quant"),
    "bias retyped to int64": (_retype("b1", np.int64), "fc1"),
    "bias retyped to float16": (_retype("b1", np.float16), "fc1"),
    "bias retyped to bool": (_retype("b1", bool), "fc1"),
    "bias retyped to string": (_retype("b1", "string"), "fc1"),
    "opset 999 appended": (lambda m: m.opset_import.append(helper.make_opsetid("", 999)), "imported more than once"),
    "opset 999": (lambda m: setattr(m.opset_import[0], "version", 999), "opset 999"),
    "graph output listed twice": (lambda m: m.graph.output.append(copy.deepcopy(m.graph.output[0])),
                                  "listed more than once"),
    "input dimension 0": (lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 0),
                          "invalid ONNX model"),
    "input dimension 2^62": (lambda m: m.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 2 ** 62),
                             "invalid ONNX model"),
    "ConstantOfShape of 10^12 elements": (_add_constant_of_shape, "node 'huge_constant' (ConstantOfShape)"),
}


@pytest.mark.parametrize("case", list(ORT_CANNOT_RUN))
def test_a_model_onnx_runtime_cannot_load_or_run_is_refused_before_converting(case, work, capfd):
    change, mentions = ORT_CANNOT_RUN[case]
    refused([mutated(work, change), "-o", str(work[0] / "o.onnx")], capfd, work[0], mentions)


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, 0.0, -0.02])
def test_a_qdq_scale_must_be_finite_and_positive_and_the_node_is_named(scale, work, capfd):
    path = mutated(work, lambda m: set_initializer(m, "s_h", np.array(scale, np.float32)))
    outcome = refused([path, "--verify", "-o", str(work[0] / "o.onnx")], capfd, work[0],
                      "node 'hidden_quant' (QuantizeLinear): scale 's_h'")
    assert "finite and positive" in outcome.err


@pytest.mark.parametrize("dtype, value", [(TensorProto.UINT8, 256), (TensorProto.UINT8, -1), (TensorProto.INT8, 128)])
def test_a_zero_point_outside_its_dtype_in_int32_data_is_refused_not_wrapped(dtype, value, work, capfd):
    def change(m):
        zero_point = initializer(m, "zp_h")
        zero_point.Clear()
        zero_point.name, zero_point.data_type = "zp_h", dtype
        zero_point.int32_data.append(value)  # helper.make_tensor would wrap it first
        initializer(m, "zp_in").data_type = dtype  # the pair's other zero point agrees in type
        if dtype == TensorProto.INT8:
            initializer(m, "zp_in").CopyFrom(numpy_helper.from_array(np.array(0, np.int8), "zp_in"))

    refused([mutated(work, change), "-o", str(work[0] / "o.onnx")], capfd, work[0],
            f"tensor 'zp_h' stores {value} in int32_data")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_weights_must_be_finite_and_the_node_is_named(bad, work, capfd):
    def change(m):
        weights = numpy_helper.to_array(initializer(m, "w1")).copy()
        weights[3, 5] = bad
        set_initializer(m, "w1", weights)

    refused([mutated(work, change), "-o", str(work[0] / "o.onnx")], capfd, work[0],
            "node 'fc1' (Gemm): tensor 'w1' holds 1 NaN or infinite value(s)")


def test_an_unknown_attribute_is_refused_naming_the_node_even_where_onnxs_checker_lets_it_pass(tmp_path, capfd):
    # onnx's checker skips the attribute check on LayerNormalization's schema (alone at opset 20)
    model = onnx.load(os.path.join(SAMPLES, "digits_vit_pmsm_L4.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    node.attribute.append(helper.make_attribute("epsilon_typo", 3))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "vit.onnx"
    onnx.save(model, str(path))
    refused([str(path), "-o", str(tmp_path / "o.onnx")], capfd, tmp_path,
            f"node '{node.name}' (LayerNormalization): unrecognized attribute 'epsilon_typo'")


@pytest.mark.parametrize("bits", [128.0, 1e30, 0.0, -4.0, 2.5, np.nan])
def test_a_qonnx_bit_width_must_be_a_whole_number_of_sane_size(bits, tmp_path, capfd):
    path = tmp_path / "qonnx.onnx"
    onnx.save(build_qonnx_mlp(bits=bits), str(path))
    refused([str(path), "-o", str(tmp_path / "o.onnx")], capfd, tmp_path,
            "node 'hidden_quant' (Quant): bit width 'bits_h'")


def test_a_sane_qonnx_model_converts(tmp_path, capfd):
    path = tmp_path / "qonnx.onnx"
    onnx.save(build_qonnx_mlp(bits=4.0), str(path))
    assert run_command([str(path), "-o", str(tmp_path / "o.onnx")], capfd).code == 0


def test_every_bundled_sample_passes_the_source_checks(tmp_path):
    from pmsm.exporter.loading import load_source

    for name in sorted(os.listdir(SAMPLES)):
        if name.endswith(".onnx"):
            load_source(os.path.join(SAMPLES, name))


def test_the_source_is_loaded_by_onnx_runtime_within_the_time_bound(work, capfd):
    folder, model, _ = work
    refused([model, "-o", str(folder / "o.onnx"), "--max-load-seconds", "0.000001"], capfd, folder,
            "did not finish within 1e-06 s; raise the limit with --max-load-seconds")


def test_a_call_in_the_child_process_reports_its_error_its_crash_and_its_time_out():
    from pmsm.runtime.base.isolation import call_isolated

    assert call_isolated(lambda: {"spikes": 3}, 30, "m", "loading", "-") == {"spikes": 3}
    with pytest.raises(BadInputError, match=r"^m: division by zero$"):
        call_isolated(lambda: 1 / 0, 30, "m", "loading", "-")
    with pytest.raises(BadInputError, match=r"^m: loading crashed \(killed by signal SIGSEGV\)$"):
        call_isolated(lambda: os.kill(os.getpid(), 11), 30, "m", "loading", "-")
    start = time.perf_counter()
    with pytest.raises(BadInputError, match=r"^m: loading did not finish within 0.5 s; raise it$"):
        call_isolated(lambda: time.sleep(60), 0.5, "m", "loading", "raise it")
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------------------------------
# Post-flight: the spiking output must load in ONNX Runtime before it is written
# ---------------------------------------------------------------------------------------------


def _broken_spiking_output(monkeypatch):
    from pmsm import pipeline

    real_convert = pipeline.convert

    def convert_to_a_model_ort_refuses(*args, **kwargs):
        export = real_convert(*args, **kwargs)
        export.spiking.graph.node[-1].op_type = "NoSuchOp"
        return export

    monkeypatch.setattr(pipeline, "convert", convert_to_a_model_ort_refuses)


def test_a_spiking_output_onnx_runtime_cannot_load_is_not_written(work, capfd, monkeypatch):
    _broken_spiking_output(monkeypatch)
    folder, model, _ = work
    refused([model, "-o", str(folder / "o.onnx")], capfd, folder, "NoSuchOp")


def test_the_python_api_post_flights_before_writing_too(work, monkeypatch):
    import pmsm

    _broken_spiking_output(monkeypatch)
    folder, model, _ = work
    before = snapshot(folder)
    with pytest.raises(BadInputError, match="NoSuchOp"):
        pmsm.export(model, output=str(folder / "o.onnx"))
    assert snapshot(folder) == before


def test_the_post_flight_is_bounded_in_time(tmp_path):
    from pmsm.pipeline import convert
    from pmsm.exporter.postflight import check_spiking_model

    path = tmp_path / "m.onnx"
    onnx.save(build_qdq_mlp(), str(path))
    spiking = convert(str(path)).spiking
    assert check_spiking_model(spiking, "m") == 16 + 64  # spike values per sample and step: both neurons
    with pytest.raises(BadInputError, match="spiking model did not finish within 1e-06 s"):
        check_spiking_model(spiking, "m", seconds=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. Outputs appear only on success; exit 1 keeps them and says so; exit 2 leaves nothing
# ---------------------------------------------------------------------------------------------


def test_a_successful_run_writes_the_output_the_report_and_its_pictures_and_nothing_else(work, capfd):
    folder, model, data = work
    before = set(snapshot(folder))
    outcome = run_command([model, "--target", "nir", "-o", str(folder / "m.nir"), "--verify", "--data", data,
                           "--timesteps", "1,2", "--report", str(folder / "r.json")], capfd)
    assert outcome.code == 0, outcome.err
    new = {os.path.basename(p) for p in set(snapshot(folder)) - before}
    assert new == {"m.nir", "r.json", "r-accuracy.png", "r-energy.png", "r-spikes.png"}
    report = json.loads((folder / "r.json").read_text())
    assert report["output"] == str(folder / "m.nir")  # the final path, not the staged one


def test_a_late_bad_input_leaves_nothing_behind(work, capfd, monkeypatch):
    from pmsm import pipeline

    def verification_finds_bad_input(*args, **kwargs):
        raise BadInputError("late: the data turned out bad")

    monkeypatch.setattr(pipeline, "run_verification", verification_finds_bad_input)
    folder, model, data = work
    refused([model, "-o", str(folder / "o.onnx"), "--verify", "--data", data, "--report", str(folder / "r.json")],
            capfd, folder, "late: the data turned out bad")


def test_an_interrupted_run_leaves_nothing_behind(work, capfd, monkeypatch):
    from pmsm import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_verification", interrupted)
    folder, model, _ = work
    before = snapshot(folder)
    assert run_command([model, "-o", str(folder / "o.onnx"), "--verify", "--report", str(folder / "r.json")],
                       capfd).code == 130
    assert snapshot(folder) == before


def test_a_verification_mismatch_keeps_the_outputs_as_evidence_and_says_so(work, capfd,
                                                                          conversion_with_a_wrong_bound):
    folder, model, data = work
    outcome = run_command([model, "-o", str(folder / "o.onnx"), "--verify", "--data", data, "--timesteps", "1",
                           "--report", str(folder / "r.json")], capfd)
    assert outcome.code == 1
    assert (folder / "o.onnx").exists() and (folder / "r.json").exists()
    assert "the outputs are kept as the evidence of the mismatch" in outcome.err
    assert str(folder / "o.onnx") in outcome.err and str(folder / "r.json") in outcome.err


def test_the_staging_folder_is_removed_whatever_happens(tmp_path):
    from pmsm.outputs import Staging

    final = str(tmp_path / "a.txt")
    with pytest.raises(RuntimeError):
        with Staging([final]) as staging:
            open(staging.path(final), "w").write("x")
            raise RuntimeError
    assert os.listdir(tmp_path) == []
    with Staging([final]) as staging:
        open(staging.path(final), "w").write("x")
        assert staging.commit() == [final]
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_final_path_that_became_a_device_or_folder_while_working_is_not_replaced(tmp_path):
    from pmsm.outputs import Staging

    final = str(tmp_path / "a.txt")
    with Staging([final]) as staging:
        open(staging.path(final), "w").write("x")
        os.mkdir(final)
        with pytest.raises(BadInputError, match="is a folder"):
            staging.commit()
    assert os.path.isdir(final) and os.listdir(tmp_path) == ["a.txt"]


# ---------------------------------------------------------------------------------------------
# 4. Bounded work
# ---------------------------------------------------------------------------------------------


def test_a_graph_over_the_node_limit_is_refused_at_once_and_the_limit_can_be_raised(tmp_path, capfd):
    nodes, previous = [], "x"
    for i in range(20_000):
        nodes.append(helper.make_node("Relu", [previous], [f"t{i}"], name=f"relu{i}"))
        previous = f"t{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    start = time.perf_counter()
    refused([str(path)], capfd, tmp_path, "the graph has 20000 nodes, more than the 10000 allowed; raise the limit "
                                          "with --max-nodes")
    assert time.perf_counter() - start < 60
    # raised, the run goes on to the next check (here a time bound nothing can meet)
    refused([str(path), "--max-nodes", "30000", "--max-load-seconds", "1e-6"], capfd, tmp_path, "did not finish")


def test_weights_over_the_limit_are_refused_and_the_limit_can_be_raised(work, capfd):
    folder, model, _ = work
    refused([model, "--max-weight-bytes", "1K"], capfd, folder, "more than the 1 KiB allowed; raise the limit with "
                                                                 "--max-weight-bytes")
    assert run_command([model, "--max-weight-bytes", "1M", "-o", str(folder / "o.onnx")], capfd).code == 0


def test_a_file_far_larger_than_the_weight_limit_is_refused_before_it_is_parsed():
    from pmsm.runtime.base.limits import Limits, check_file_size

    check_file_size("m.onnx", 100 << 20, Limits(max_weight_bytes=64 << 20))
    with pytest.raises(BadInputError, match="the file is 3 GiB, more than the 64 MiB of weights allowed"):
        check_file_size("m.onnx", 3 << 30, Limits(max_weight_bytes=64 << 20))


def test_a_zip_bomb_as_data_is_refused_from_its_header_before_decompressing(work, capfd):
    folder, model, _ = work
    bomb = folder / "bomb.npz"
    zip_bomb(bomb, declared_rows=10 ** 9 // 64)
    assert bomb.stat().st_size < 1 << 20
    start = time.perf_counter()
    refused([model, "--verify", "--data", str(bomb), "-o", str(folder / "o.onnx")], capfd, folder,
            "declares 1000000000 values ('x' [15625000, 1, 8, 8]), more than the 268435456 allowed; raise the limit "
            "with --max-data-elements")
    assert time.perf_counter() - start < 60


def test_the_data_limit_can_be_lowered_and_raised(work, capfd):
    folder, model, data = work
    refused([model, "--verify", "--data", data, "--max-data-elements", "100", "-o", str(folder / "o.onnx")], capfd,
            folder, "--max-data-elements")
    assert run_command([model, "--verify", "--data", data, "--max-data-elements", "1000",
                        "-o", str(folder / "o.onnx"), "--timesteps", "1"], capfd).code == 0


@pytest.mark.parametrize("problem", ["object dtype", "strings", "truncated", "a plain .npy"])
def test_a_data_file_of_the_wrong_kind_is_refused(problem, work, capfd):
    folder, model, _ = work
    data = folder / "bad.npz"
    if problem == "object dtype":
        np.savez(data, x=np.array([{"a": 1}, None], dtype=object))
    elif problem == "strings":
        np.savez(data, x=np.array(["a", "b"]))
    elif problem == "truncated":
        np.savez(data, x=np.zeros((8, 1, 8, 8), np.float32))
        data.write_bytes(data.read_bytes()[:300])
    else:
        np.save(folder / "plain.npy", np.zeros((8, 1, 8, 8), np.float32))
        os.replace(folder / "plain.npy", data)
    refused([model, "--verify", "--data", str(data), "-o", str(folder / "o.onnx")], capfd, folder, str(data))


@pytest.mark.slow
def test_a_graph_too_deep_for_the_converter_is_refused_in_one_line(tmp_path, capfd):
    nodes, inits, previous = [], [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                                  numpy_helper.from_array(np.array(0, np.uint8), "zp")], "x"
    for i in range(400):
        nodes += [helper.make_node("QuantizeLinear", [previous, "s", "zp"], [f"q{i}"], name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", "zp"], [f"d{i}"], name=f"d{i}"),
                  helper.make_node("Relu", [f"d{i}"], [f"r{i}"], name=f"r{i}")]
        previous = f"r{i}"
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 4])], inits)
    path = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    refused([str(path), "-o", str(tmp_path / "o.onnx")], capfd, tmp_path, "too deep for the converter")


def test_the_real_command_answers_a_hostile_path_in_one_line(work):
    import subprocess

    folder, model, _ = work
    before = snapshot(folder)
    command = os.path.join(os.path.dirname(sys.executable), "pmsm-export")
    result = subprocess.run([command, model, "-o", model], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(folder) == before


def test_the_python_api_refuses_a_report_on_the_model_before_writing(work):
    import pmsm

    folder, model, _ = work
    before = snapshot(folder)
    with pytest.raises(BadInputError, match="would overwrite the input MODEL"):
        pmsm.verify(model, output=str(folder / "o.onnx"), report=model, timesteps=[1])
    assert snapshot(folder) == before
