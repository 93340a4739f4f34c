"""Whole runs on the bundled samples and the real digits test split (360 images)."""
from __future__ import annotations

import glob
import json
import os

import pytest

import pmsm
from conftest import SAMPLES

DIGITS = os.path.join(SAMPLES, "digits_test.npz")
SAMPLE_MODELS = sorted(glob.glob(os.path.join(SAMPLES, "digits_*.onnx")))


CONVOLUTIONAL = [m for m in SAMPLE_MODELS if "_vit_" not in m]  # NIR takes no attention


@pytest.mark.parametrize("model", SAMPLE_MODELS, ids=os.path.basename)
def test_every_sample_is_exact_at_t1_one_sample_at_a_time_and_batched(model, tmp_path):
    report = pmsm.verify(model, target="onnx", data=DIGITS, timesteps=[1, 2], output=str(tmp_path / "m.onnx"))
    backends = report["verification"]["backends"]
    assert backends["onnx"]["1"]["max_abs_diff"] == 0 and backends["onnx_batch1"]["1"]["max_abs_diff"] == 0
    assert report["accuracy"]["snn"]["1"] == report["accuracy"]["ann"]
    assert report["verification"]["passed"]


@pytest.mark.parametrize("model", CONVOLUTIONAL, ids=os.path.basename)
def test_every_convolutional_sample_is_exact_at_t1_and_nir_agrees_on_every_prediction(model, tmp_path):
    report = pmsm.verify(model, target="nir", data=DIGITS, timesteps=[1, 2], output=str(tmp_path / "m.nir"))
    backends = report["verification"]["backends"]
    assert report["verification"]["samples"] == 360
    assert backends["onnx"]["1"]["max_abs_diff"] == 0
    assert backends["onnx"]["1"]["argmax_agreement"] == 1.0
    for timesteps in ("1", "2"):
        assert backends["nir"][timesteps]["argmax_agreement"] == 1.0
        # float re-association in folded weights may move a rare value across a rounding edge
        assert backends["nir"][timesteps]["spike_mismatch"] <= 1e-4 * backends["nir"][timesteps]["spike_total"]
    assert report["accuracy"]["snn"]["1"] == report["accuracy"]["ann"]
    assert report["verification"]["passed"]


@pytest.mark.lava
def test_lava_float_agrees_with_the_reference_on_every_digits_test_image_at_t1_and_t2(tmp_path):
    """The headline run: residual CNN with max and average pooling, PMSM L=2, through Lava."""
    report_path = tmp_path / "report.json"
    report = pmsm.verify(os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx"), target="lava", data=DIGITS,
                         timesteps=[1, 2], output=str(tmp_path / "cnn.nir"), report=str(report_path), pictures=True)
    backends = report["verification"]["backends"]
    for timesteps in ("1", "2"):
        assert backends["lava"][timesteps]["argmax_agreement"] == 1.0
        assert backends["lava"][timesteps]["accuracy"] == backends["onnx"][timesteps]["accuracy"]
        assert backends["lava_fixed"][timesteps]["argmax_agreement"] >= 0.95  # reported, not a criterion
    assert report["verification"]["passed"]
    fixed = report["lava_fixed_point"]["1"]
    assert any(r["kind"] == "neuron" and not r["overflow"] for r in fixed)
    assert json.loads(report_path.read_text())["schema"] == "pmsm-report/1"
    for suffix in ("accuracy", "energy", "spikes"):
        assert (tmp_path / f"report-{suffix}.png").stat().st_size > 1000


def test_report_has_energy_and_spike_statistics_for_every_layer(tmp_path):
    report = pmsm.verify(os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx"), data=DIGITS, timesteps=[1, 2, 4],
                         output=str(tmp_path / "m.onnx"))
    energy = report["energy"]
    assert [layer["op"] for layer in energy["layers"]] == ["Gemm", "Gemm", "Gemm"]
    assert energy["layers"][0]["inputs"] == ["analog input"]
    assert len(energy["neuron_layers"]) == 2
    for t in ("1", "2", "4"):
        totals = energy["totals"]["snn"][t]
        assert 0 < totals["graded_pj"] <= totals["binary_pj"]
    # more timesteps, more events
    assert energy["totals"]["snn"]["4"]["binary_pj"] > energy["totals"]["snn"]["1"]["binary_pj"]
