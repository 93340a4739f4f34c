"""The `pmsm-export` command: contract of the README's Exit codes (targets, flags, exit codes, no tracebacks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from pmsm.cli import main
from pmsm.runtime.execute import SpikingModel
from pmsm.runtime.schema import SPIKING_ONNX_FORMAT

PMSM_EXPORT = os.path.join(os.path.dirname(sys.executable), "pmsm-export")


def run_cli(*args, cwd=None):
    return subprocess.run([PMSM_EXPORT, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_documents_targets_flags_and_exit_codes():
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("--target", "onnx", "nir", "lava", "--verify", "--data", "--timesteps", "--report", "--check",
                 "exit codes", "0  success", "1  --verify found a mismatch", "2  bad input"):
        assert word in result.stdout


def test_onnx_target_writes_spiking_model_next_to_the_input(qdq_mlp_path):
    assert main([qdq_mlp_path]) == 0
    spiking = onnx.load(qdq_mlp_path.replace(".onnx", ".spiking.onnx"))
    assert len(SpikingModel(spiking).neurons) == 2
    assert {p.key: p.value for p in spiking.metadata_props}["pmsm.format"] == SPIKING_ONNX_FORMAT


def test_verify_is_exact_at_t1_and_writes_the_report(qdq_mlp_path, digits_npz, tmp_path):
    report_path = tmp_path / "report.json"
    code = main([qdq_mlp_path, "-o", str(tmp_path / "out.onnx"), "--verify", "--data", digits_npz,
                 "--timesteps", "1,2", "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["schema"] == "pmsm-report/1"
    assert report["timesteps"] == [1, 2]
    assert report["verification"]["samples"] == 40
    onnx_t1 = report["verification"]["backends"]["onnx"]["1"]
    assert onnx_t1["max_abs_diff"] == 0 and onnx_t1["argmax_agreement"] == 1.0
    assert set(report["accuracy"]["snn"]) == {"1", "2"}
    assert 0.0 <= report["accuracy"]["ann"] <= 1.0
    assert "ann_ort_opt" in report["verification"]["backends"]


def test_verify_without_data_uses_a_seeded_probe_batch(qdq_mlp_path, tmp_path):
    report_path = tmp_path / "r.json"
    assert main([qdq_mlp_path, "-o", str(tmp_path / "o.onnx"), "--verify", "--timesteps", "1",
                 "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["data"]["kind"] == "seeded probe batch" and report["accuracy"]["ann"] is None


def test_check_lists_nothing_for_a_convertible_model_and_writes_nothing(qdq_mlp_path, capsys):
    assert main([qdq_mlp_path, "--check"]) == 0
    assert "ok for target 'onnx'" in capsys.readouterr().out
    assert not os.path.exists(qdq_mlp_path.replace(".onnx", ".spiking.onnx"))


def bad_model_cases(tmp_path, qdq_mlp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(qdq_mlp_path, "rb").read()[:200])
    return {"missing file": str(tmp_path / "nope.onnx"), "a folder": str(tmp_path),
            "not ONNX": str(garbage), "truncated protobuf": str(truncated)}


@pytest.mark.parametrize("case", ["missing file", "a folder", "not ONNX", "truncated protobuf"])
def test_unreadable_model_exits_2_with_one_line_naming_the_file(case, tmp_path, qdq_mlp_path):
    path = bad_model_cases(tmp_path, qdq_mlp_path)[case]
    result = run_cli(path, "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert path in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out.onnx")


def test_missing_external_data_file_is_named(tmp_path):
    from conftest import build_qdq_mlp

    path = tmp_path / "external.onnx"
    onnx.save(build_qdq_mlp(hidden=64), str(path), save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    os.remove(tmp_path / "external.onnx.data")
    result = run_cli(str(path), "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2 and "external.onnx.data" in result.stderr and "Traceback" not in result.stderr


def test_external_data_is_loaded(tmp_path):
    from conftest import build_qdq_mlp

    path = tmp_path / "external.onnx"
    onnx.save(build_qdq_mlp(hidden=64), str(path), save_as_external_data=True, location="external.onnx.data",
              size_threshold=0)
    assert main([str(path), "-o", str(tmp_path / "out.onnx")]) == 0


def test_output_equal_to_input_is_refused_and_input_untouched(qdq_mlp_path):
    before = open(qdq_mlp_path, "rb").read()
    result = run_cli(qdq_mlp_path, "-o", qdq_mlp_path)
    assert result.returncode == 2 and "overwrite the input" in result.stderr
    assert open(qdq_mlp_path, "rb").read() == before


@pytest.mark.parametrize("problem", ["wrong shape", "NaN", "no x", "not npz", "labels mismatch"])
def test_bad_data_file_exits_2_before_anything_is_written(problem, qdq_mlp_path, tmp_path):
    data = tmp_path / "data.npz"
    if problem == "wrong shape":
        np.savez(data, x=np.zeros((3, 1, 7, 7), np.float32))
    elif problem == "NaN":
        np.savez(data, x=np.full((3, 1, 8, 8), np.nan, np.float32))
    elif problem == "no x":
        np.savez(data, images=np.zeros((3, 1, 8, 8), np.float32))
    elif problem == "not npz":
        data.write_text("hello")
    else:
        np.savez(data, x=np.zeros((3, 1, 8, 8), np.float32), y=np.zeros(2, np.int64))
    out = tmp_path / "out.onnx"
    result = run_cli(qdq_mlp_path, "-o", str(out), "--verify", "--data", str(data))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(data) in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [["--timesteps", "0"], ["--timesteps", "a,b"], ["--target", "loihi"],
                                  ["--report", "r.json"]])
def test_bad_arguments_exit_2(args, qdq_mlp_path):
    result = run_cli(qdq_mlp_path, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_float_model_without_quantizers_exits_2_saying_so(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"), helper.make_node("Gemm", ["f", "w"], ["y"],
                                                                                   name="fc", transB=1)],
        "float", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "float.onnx"
    onnx.save(model, str(path))
    result = run_cli(str(path))
    assert result.returncode == 2 and "no activation quantizer" in result.stderr


def test_verification_mismatch_exits_1(qdq_mlp_path, tmp_path, conversion_with_a_wrong_bound):
    """A spiking model that is not exact at T=1 must fail verification (exit 1), not pass silently."""
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (20, 1, 8, 8)).astype(np.float32))
    assert main([qdq_mlp_path, "-o", str(tmp_path / "o.onnx"), "--verify", "--data", str(data),
                 "--timesteps", "1"]) == 1


def test_nir_target_writes_what_nir_cannot_take_as_host_ops_and_the_standard_profile_lists_them(tmp_path):
    """The pmsm profile writes a hybrid deployment (docs/nir.md §11) whose host ops are the two
    nodes NIR has no node for; the standard profile takes only networks NIR expresses whole, so it
    still lists every such node and exits 2."""
    from conftest import build_qdq_mlp
    from onnx import helper

    model = build_qdq_mlp()
    model.graph.output[0].name = "logits"
    model.graph.node[-1].output[0] = "y_linear"
    model.graph.node.extend([
        helper.make_node("Sigmoid", ["y_linear"], ["y_squashed"], name="squash"),
        helper.make_node("Softmax", ["y_squashed"], ["logits"], name="probabilities", axis=1),
    ])
    path = tmp_path / "softmax.onnx"
    onnx.save(model, str(path))
    assert run_cli(str(path), "--check").returncode == 0  # fine for spiking ONNX: acts per row
    result = run_cli(str(path), "--target", "nir", "-o", str(tmp_path / "m.nir"))
    assert result.returncode == 0, result.stderr
    assert "host ops: Sigmoid x1, Softmax x1" in result.stdout
    assert (tmp_path / "m.nir").read_bytes()[:4] == b"PK\x03\x04"  # the deployment archive
    result = run_cli(str(path), "--target", "nir", "--nir-profile", "standard", "-o", str(tmp_path / "s.nir"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'squash' (Sigmoid)" in result.stderr and "'probabilities' (Softmax)" in result.stderr
    assert not (tmp_path / "s.nir").exists()


def test_nir_target_writes_a_file_plain_nir_reads(qdq_mlp_path, tmp_path):
    import nir

    out = tmp_path / "model.nir"
    assert main([qdq_mlp_path, "--target", "nir", "-o", str(out)]) == 0
    graph = nir.read(str(out))
    assert any(type(node).__name__ == "IF" and "pmsm" in node.metadata for node in graph.nodes.values())


def test_python_api_refuses_an_unknown_target_with_a_user_error(qdq_mlp_path):
    import pmsm
    from pmsm.runtime.base.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown target"):
        pmsm.export(qdq_mlp_path, target="loihi")


def test_python_api_export_returns_the_spiking_model_and_its_neurons(qdq_mlp_path, tmp_path):
    import pmsm

    result = pmsm.export(qdq_mlp_path, target="nir", output=str(tmp_path / "m.nir"))
    assert [n.producer for n in result.neurons] == ["qdq", "qdq"]
    assert result.output_path == str(tmp_path / "m.nir") and result.nir_graph is not None


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.6])
def test_a_ctrl_c_while_the_command_still_imports_its_code_ends_it_with_one_line(qdq_mlp_path, tmp_path, delay):
    """The console entry point imports only the standard library before the command's code: a
    Ctrl-C among those imports (a second or more) gives one line and status 130, not a traceback."""
    import signal
    import time

    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), qdq_mlp_path, "-o",
               str(tmp_path / "out.onnx")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    status = process.wait(60)
    stderr = process.stderr.read()
    assert "Traceback" not in stderr, stderr
    # killed by the signal before Python's handler existed, interrupted, or already done
    assert status in (-signal.SIGINT, 130, 0), (status, stderr)
    if status == 130:
        assert stderr.strip().splitlines() == ["pmsm-export: interrupted"], stderr


def test_a_ctrl_c_handled_inside_a_fork_hook_is_kept_for_the_code_that_forked_not_raised_there():
    """Raised inside an at-fork hook, Python prints the KeyboardInterrupt and drops it; the command's
    handler records it there and the forking code raises it once the fork is done."""
    import signal
    from types import SimpleNamespace

    from pmsm.runtime.base.children import ForkWindow, clear_pending, exit_on_signal, raise_pending

    clear_pending()
    try:
        for hook in (ForkWindow.leave, ForkWindow.enter):
            try:
                exit_on_signal(signal.SIGINT, SimpleNamespace(f_code=hook.__func__.__code__))
            except KeyboardInterrupt:
                pytest.fail(f"raised inside {hook.__name__}, where Python would print and drop it")
            assert ForkWindow.pending == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            raise_pending()
        with pytest.raises(KeyboardInterrupt):
            exit_on_signal(signal.SIGINT, SimpleNamespace(f_code=test_python_api_export_returns_the_spiking_model_and_its_neurons.__code__))
    finally:
        clear_pending()
