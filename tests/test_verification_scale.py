"""Verification at data set scale: chunked data (files, shards, memory maps), the standard-op body on
every sample with the custom op on a subset, worker processes and Ray, JUnit and Markdown outputs.

Every sharded or chunked run is compared with one process reading one file: the reports must be
equal, times and where it ran aside (pmsm.report.comparable)."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from conftest import SAMPLES

from pmsm.cli import main
from pmsm.report import comparable

MLP = os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx")
CNN = os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx")
DIGITS = os.path.join(SAMPLES, "digits_test.npz")


def digits():
    with np.load(DIGITS) as data:
        return data["x"], data["y"]


def verify(model, data, tmp_path, name, *extra, timesteps="1,2") -> tuple[int, dict]:
    report = tmp_path / f"{name}.json"
    code = main([model, "--verify", "--data", str(data), "--timesteps", timesteps, "-o", str(tmp_path / f"{name}.out"),
                 "--report", str(report), *extra])
    return code, json.loads(report.read_text()) if report.exists() else None


def same_except_where_it_ran(a: dict, b: dict) -> None:
    a, b = comparable(a), comparable(b)
    for document in (a, b):
        document["data"].pop("path"), document["data"].pop("kind"), document.pop("output")
    assert a == b


@pytest.fixture(scope="module")
def single_file_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    code, report = verify(MLP, DIGITS, folder, "single")
    assert code == 0
    return report


def test_the_body_runs_on_every_sample_and_the_custom_op_on_the_first_reference_samples(single_file_report):
    backends = single_file_report["verification"]["backends"]
    for t in ("1", "2"):
        assert backends["onnx"][t]["samples"] == 360
        assert backends["onnx_custom_op"][t]["samples"] == 256
        assert backends["onnx_custom_op"][t]["reference"] == "onnx"
        assert backends["onnx_custom_op"][t]["bits_differ"] == 0 and backends["onnx_custom_op"][t]["spike_mismatch"] == 0
    assert backends["onnx"]["1"]["max_abs_diff"] == 0 and backends["onnx_batch1"]["1"]["samples"] == 32


def test_reference_samples_all_runs_the_custom_op_on_every_sample(tmp_path):
    code, report = verify(MLP, DIGITS, tmp_path, "all", "--reference-samples", "all", timesteps="1")
    assert code == 0
    assert report["verification"]["backends"]["onnx_custom_op"]["1"]["samples"] == 360


def test_a_folder_of_npz_and_npy_shards_gives_the_report_of_the_single_file(single_file_report, tmp_path):
    x, y = digits()
    folder = tmp_path / "shards"
    folder.mkdir()
    np.savez_compressed(folder / "a_000.npz", x=x[:100], y=y[:100])
    np.savez(folder / "a_001.npz", x=x[100:250], y=y[100:250])
    np.save(folder / "x_002.npy", x[250:])
    np.save(folder / "y_002.npy", y[250:])
    code, report = verify(MLP, folder, tmp_path, "folder")
    assert code == 0 and report["data"] == {"path": str(folder), "kind": "folder", "samples": 360}
    same_except_where_it_ran(report, single_file_report)


def test_an_npy_file_of_samples_is_memory_mapped_and_verified_without_labels(tmp_path):
    x, _ = digits()
    np.save(tmp_path / "x.npy", x[:40])
    code, report = verify(MLP, tmp_path / "x.npy", tmp_path, "npy", timesteps="1")
    assert code == 0 and report["data"]["kind"] == "npy" and report["verification"]["samples"] == 40
    assert report["accuracy"]["ann"] is None


def test_small_chunks_give_the_report_of_one_chunk(single_file_report, tmp_path, monkeypatch):
    from pmsm.runtime.base import memory

    monkeypatch.setattr(memory, "MAX_CHUNK_SAMPLES", 7)  # 52 chunks, cut at the reference boundary 256
    code, report = verify(MLP, DIGITS, tmp_path, "chunks")
    assert code == 0 and report["verification"]["execution"]["chunk_samples"] == 7
    same_except_where_it_ran(report, single_file_report)


def test_two_worker_processes_give_the_report_of_one_process(single_file_report, tmp_path, monkeypatch):
    from pmsm.runtime.base import memory

    monkeypatch.setattr(memory, "MAX_CHUNK_SAMPLES", 64)  # several chunks per worker
    code, report = verify(MLP, DIGITS, tmp_path, "workers", "--workers", "2")
    assert code == 0 and report["verification"]["execution"]["kind"] == "processes"
    assert report["verification"]["execution"]["workers"] == 2
    same_except_where_it_ran(report, single_file_report)


@pytest.mark.ray
def test_ray_with_two_workers_gives_the_report_of_one_process(single_file_report, tmp_path, monkeypatch):
    from pmsm.runtime.base import memory

    monkeypatch.setattr(memory, "MAX_CHUNK_SAMPLES", 64)
    code, report = verify(MLP, DIGITS, tmp_path, "ray", "--ray", "--workers", "2")
    assert code == 0 and report["verification"]["execution"] == {"kind": "ray", "workers": 2, "chunk_samples": 64}
    same_except_where_it_ran(report, single_file_report)


@pytest.fixture
def custom_op_one_spike_off(monkeypatch):
    """After conversion (whose proofs run the kernel), the custom op's kernel emits one spike more
    on the last element of every call: the standard-op body is untouched."""
    from pmsm import pipeline
    from pmsm.runtime import ortop

    real_convert, real_step = pipeline.convert, ortop.step

    def one_spike_more_on_the_last_element(u, z, params):
        u_next, s = real_step(u, z, params)
        s = s.copy()
        s.reshape(-1)[-1] += 1
        return u_next, s

    def convert_then_break_the_kernel(*args, **kwargs):
        export = real_convert(*args, **kwargs)
        monkeypatch.setattr(ortop, "step", one_spike_more_on_the_last_element)
        return export

    monkeypatch.setattr(pipeline, "convert", convert_then_break_the_kernel)


def test_a_custom_op_that_differs_from_the_standard_op_body_fails_bit_equality(tmp_path, custom_op_one_spike_off,
                                                                               capfd):
    code, report = verify(MLP, DIGITS, tmp_path, "broken", timesteps="1")
    assert code == 1
    assert any(f.startswith("onnx_custom_op at T=1 is not bit-equal to onnx") for f in report["verification"]["failures"])
    assert "onnx_custom_op at T=1 is not bit-equal" in capfd.readouterr().err


def test_junit_and_markdown_outputs_carry_every_backend_and_the_failed_criterion(tmp_path, custom_op_one_spike_off):
    from junitparser import JUnitXml

    junit, markdown = tmp_path / "j.xml", tmp_path / "s.md"
    code, report = verify(MLP, DIGITS, tmp_path, "ci", "--junit", str(junit), "--summary-md", str(markdown),
                          timesteps="1,2")
    assert code == 1
    suites = JUnitXml.fromfile(str(junit))
    cases = {case.name: case for suite in suites for case in suite}
    assert set(cases) == {f"{b} T={t}" for b, by_t in report["verification"]["backends"].items() for t in by_t}
    failed = {name for name, case in cases.items() if not case.is_passed}
    assert {"onnx_custom_op T=1", "onnx_custom_op T=2"} <= failed
    message = cases["onnx_custom_op T=1"].result[0].message
    assert message.startswith("onnx_custom_op at T=1 is not bit-equal to onnx")
    ElementTree.parse(junit)  # well-formed XML for any parser
    text = markdown.read_text()
    assert "**FAILED**" in text and "| onnx_custom_op | 2 | onnx | 256 |" in text and message in text


def test_passing_runs_write_junit_without_failures(tmp_path):
    from junitparser import JUnitXml

    junit = tmp_path / "j.xml"
    code, _ = verify(MLP, DIGITS, tmp_path, "ok", "--junit", str(junit), timesteps="1")
    assert code == 0
    suite = next(iter(JUnitXml.fromfile(str(junit))))
    assert suite.tests >= 4 and suite.failures == 0 and all(case.is_passed for case in suite)


@pytest.mark.parametrize("problem", ["labels in one shard only", "labels without samples", "empty folder",
                                     "NaN in the last shard", "shards of different shapes"])
def test_a_bad_data_folder_exits_2_and_writes_nothing(problem, tmp_path, capfd):
    x, y = digits()
    folder = tmp_path / "data"
    folder.mkdir()
    if problem == "labels in one shard only":
        np.savez(folder / "a.npz", x=x[:10], y=y[:10])
        np.savez(folder / "b.npz", x=x[10:20])
    elif problem == "labels without samples":
        np.save(folder / "x_0.npy", x[:10])
        np.save(folder / "y_1.npy", y[:10])
    elif problem == "NaN in the last shard":
        np.savez(folder / "a.npz", x=x[:10], y=y[:10])
        bad = x[10:20].copy()
        bad[3, 0, 0, 0] = np.nan
        np.savez(folder / "b.npz", x=bad, y=y[10:20])
    elif problem == "shards of different shapes":
        np.savez(folder / "a.npz", x=x[:10])
        np.savez(folder / "b.npz", x=x[10:20, :, :4])
    before = sorted(os.listdir(tmp_path))
    code = main([MLP, "--verify", "--data", str(folder), "--timesteps", "1", "-o", str(tmp_path / "o.onnx"),
                 "--report", str(tmp_path / "r.json"), "--junit", str(tmp_path / "j.xml")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_verification_flags_need_verify(capfd):
    assert main([MLP, "--workers", "2", "--junit", "j.xml"]) == 2
    assert "--junit and --workers need --verify" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.lava
def test_lava_in_two_worker_processes_gives_the_report_of_one_process(tmp_path, monkeypatch):
    from pmsm.runtime.base import memory

    monkeypatch.setattr(memory, "MAX_CHUNK_SAMPLES", 16)
    x, y = digits()
    np.savez(tmp_path / "d.npz", x=x[:48], y=y[:48])
    one = verify(CNN, tmp_path / "d.npz", tmp_path, "one", "--target", "lava", timesteps="1")
    two = verify(CNN, tmp_path / "d.npz", tmp_path, "two", "--target", "lava", "--workers", "2", timesteps="1")
    assert one[0] == two[0] == 0
    same_except_where_it_ran(one[1], two[1])


def peak_rss_of_verify(model, data, folder) -> int:
    """Peak resident memory (bytes) of ``pmsm-export --verify`` in a fresh process."""
    import subprocess
    import sys

    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), str(model), "--verify", "--data",
               str(data), "--timesteps", "1", "-o", str(folder / "out.onnx"), "--max-data-elements", str(1 << 40)]
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe] + command, capture_output=True, text=True, timeout=600)
    code, peak = result.stdout.split()
    assert code == "0", result.stderr
    return int(peak) * 1024


@pytest.mark.slow
def test_peak_memory_of_verify_does_not_grow_with_the_data(tmp_path):
    import onnx

    from big_inputs import pool_linear_model, write_images

    model = tmp_path / "pool_linear.onnx"
    onnx.save(pool_linear_model(64), str(model))
    peaks = []
    for size in (150 << 20, 600 << 20):
        folder = tmp_path / f"data-{size}"
        write_images(str(folder), size, side=64)
        peaks.append(peak_rss_of_verify(model, folder, tmp_path))
        for name in os.listdir(folder):
            os.remove(folder / name)
    assert peaks[1] < peaks[0] + (100 << 20), [p >> 20 for p in peaks]
