"""A NIR file as the source: `pmsm-export model.nir --target lava`, for a team that received the NIR
file and not the ONNX model. Lava is verified against the project's NIR interpreter."""
from __future__ import annotations

import hashlib
import json
import os

import nir
import numpy as np
import pytest

import pmsm
from conftest import SAMPLES

from pmsm.cli import main
from pmsm.runtime.base.errors import BadInputError


@pytest.fixture
def nir_path(tmp_path):
    path = str(tmp_path / "mlp.nir")
    pmsm.export(os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx"), target="nir", output=path)
    return path


@pytest.fixture
def digits_16(tmp_path):
    with np.load(os.path.join(SAMPLES, "digits_test.npz")) as data:
        x, y = data["x"][:16], data["y"][:16]
    path = str(tmp_path / "digits16.npz")
    np.savez(path, x=x, y=y)
    return path


def sha256(path) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


@pytest.mark.lava
def test_nir_file_simulated_in_lava_agrees_with_the_nir_interpreter(nir_path, digits_16, tmp_path, capsys):
    before = sha256(nir_path)
    report_path = str(tmp_path / "report.json")
    code = main([nir_path, "--target", "lava", "--verify", "--data", digits_16, "--timesteps", "1,2",
                 "--report", report_path])
    assert code == 0, capsys.readouterr().err
    report = json.loads(open(report_path).read())
    backends = report["verification"]["backends"]
    assert report["verification"]["root"] == "nir" and report["model"]["sha256"] == before
    assert set(backends) == {"lava", "lava_fixed"}
    for t in ("1", "2"):
        assert backends["lava"][t]["reference"] == "nir"
        assert backends["lava"][t]["argmax_agreement"] == 1.0
        assert backends["lava"][t]["spike_total"] > 0
        assert backends["lava"][t]["accuracy"] == report["accuracy"]["snn"][t]
    assert report["accuracy"]["ann"] is None and report["energy"] == {}
    assert report["verification"]["passed"]
    assert sha256(nir_path) == before
    assert "lava_fixed_point" in report
    out = capsys.readouterr().out
    assert "verification passed" in out and f"\n  {'nir':<15}{'1':>3}" in out


@pytest.mark.lava
def test_python_api_verifies_a_nir_file_without_writing_anything_but_the_report(nir_path, digits_16, tmp_path):
    report = pmsm.verify(nir_path, target="lava", data=digits_16, timesteps=[1])
    assert report["verification"]["passed"]
    assert report["verification"]["backends"]["lava"]["1"]["argmax_agreement"] == 1.0
    assert sorted(os.listdir(tmp_path)) == ["digits16.npz", "mlp.nir"]


@pytest.mark.lava
def test_nir_file_without_verify_is_lowered_to_lava_and_nothing_is_written(nir_path, tmp_path, capsys):
    assert main([nir_path, "--target", "lava"]) == 0
    assert "lowered to Lava processes" in capsys.readouterr().out
    assert main([nir_path, "--target", "lava", "--check"]) == 0
    assert "ok for target 'lava': 2 neuron layer(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["mlp.nir"]


@pytest.mark.lava
def test_nir_file_without_the_pmsm_dialect_exits_2_in_one_line(tmp_path, capsys):
    path = str(tmp_path / "plain.nir")
    nir.write(path, nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([4])}),
        "fc": nir.Affine(weight=np.ones((2, 4), np.float32), bias=np.zeros(2, np.float32)),
        "lif": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
        "output": nir.Output(output_type={"output": np.array([2])}),
    }, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")]))
    assert main([path, "--target", "lava", "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pmsm-export: error: ") and path in err
    assert sorted(os.listdir(tmp_path)) == ["plain.nir"]


@pytest.mark.parametrize("target", ["onnx", "nir"])
def test_nir_file_for_another_target_than_lava_exits_2_saying_so(nir_path, target, capsys):
    assert main([nir_path, "--target", target]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"pmsm-export: error: {nir_path}: a NIR file can only be lowered to Lava (--target lava); "
                   f"target '{target}' takes the source ONNX model")


def test_nir_file_with_an_output_exits_2_as_there_is_nothing_to_write(nir_path, tmp_path, capsys):
    assert main([nir_path, "--target", "lava", "-o", str(tmp_path / "x.nir")]) == 2
    assert "-o has nothing to write for a NIR source" in capsys.readouterr().err
    with pytest.raises(BadInputError, match="nothing to write"):
        pmsm.verify(nir_path, target="lava", output=str(tmp_path / "x.nir"))
    assert sorted(os.listdir(tmp_path)) == ["mlp.nir"]


def test_report_equal_to_the_nir_file_is_refused_and_the_file_untouched(nir_path, capsys):
    before = sha256(nir_path)
    assert main([nir_path, "--target", "lava", "--verify", "--report", nir_path]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert sha256(nir_path) == before
