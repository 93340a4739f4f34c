"""Hybrid NIR deployments (docs/nir.md §7): a network NIR does not express whole is written as NIR
regions in the PMSM dialect, host ops as standard ONNX and a manifest, and verified step by step
against the spiking ONNX with temporal compensation on.

The models are real: torchvision's VisionTransformer and a ConvNeXt-style block, exported by torch
and quantized by onnxruntime's ``quantize_static`` (the builders of tests/test_architectures.py).
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import nir
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pmsm.pipeline import Request, run
from pmsm.targets.nir.deployment import FORMAT, Deployment, DeploymentRunner, read_deployment

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
import test_architectures as arch  # noqa: E402

pytestmark = pytest.mark.producers


class EfficientNetBlock(torch.nn.Module):
    """An MBConv block as EfficientNet builds it: 1x1 expansion, depthwise 3x3, squeeze-excite
    (global mean, two 1x1 convolutions, sigmoid gate), SiLU activations, 1x1 projection, residual."""

    def __init__(self, channels=8, expand=4):
        super().__init__()
        wide = channels * expand
        self.stem = torch.nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.expand = torch.nn.Conv2d(channels, wide, 1)
        self.depthwise = torch.nn.Conv2d(wide, wide, 3, padding=1, groups=wide)
        self.squeeze, self.excite = torch.nn.Conv2d(wide, channels // 2, 1), torch.nn.Conv2d(channels // 2, wide, 1)
        self.project = torch.nn.Conv2d(wide, channels, 1)
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x):
        silu = torch.nn.functional.silu
        x = silu(self.stem(x))
        y = silu(self.depthwise(silu(self.expand(x))))
        gate = torch.sigmoid(self.excite(silu(self.squeeze(y.mean(dim=(2, 3), keepdim=True)))))
        y = self.project(y * gate)
        return self.head((x + y).mean(dim=(2, 3)))


def _model(kind: str, op_types: str, folder) -> str:
    """The model quantized with the calibration data of a fresh seed: the same model whichever tests
    ran before (the builders share one random generator)."""
    arch.RNG = np.random.default_rng(0)
    if kind == "vit":
        model, shape = arch.vit()
    elif kind == "efficientnet":
        model, shape = EfficientNetBlock().eval(), (3, 16, 16)
    else:
        model, shape = arch.ConvNeXtBlock().eval(), (3, 16, 16)
    path = folder / f"{kind}_{op_types}.onnx"
    onnx.save(arch.export_quantized(model, shape, 1, op_types, folder), str(path))
    return str(path)


def test_a_qdq_vision_transformer_is_written_as_regions_nir_reads_and_host_models_onnx_runtime_runs(tmp_path):
    path = _model("vit", "default", tmp_path)
    out = tmp_path / "vit.nir"
    outcome = run(Request(model=path, target="nir", output=str(out), progress=False))
    assert outcome.code == 0
    data = out.read_bytes()
    assert data[:4] == b"PK\x03\x04"  # a deployment archive, not an HDF5 NIR file
    archive = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["format"] == FORMAT and manifest["compensation"] is True
    for stage in manifest["stages"]:
        member = tmp_path / stage["file"].replace("/", "_")
        member.write_bytes(archive.read(stage["file"]))
        if stage["kind"] == "region":
            graph = nir.read(str(member), type_check=True)  # standard NIR 1.0.8, type checked
            assert any(isinstance(n, nir.IF) for n in graph.nodes.values())
        else:
            session = ort.InferenceSession(str(member), providers=["CPUExecutionProvider"])  # plain ONNX Runtime
            assert {i.name for i in session.get_inputs()} >= set(stage["inputs"])
    summary = manifest["summary"]
    assert summary["host_weight_macs"] == 0  # every layer with weights runs in a region
    # what stays on the host is what NIR has no node for: layer norm, softmax, GELU, products of two activations
    assert {"LayerNormalization", "Softmax", "Gelu", "MatMul"} <= set(summary["host_ops"])
    assert summary["region_macs"] + summary["activation_product_macs"] == summary["macs_per_sample"]
    assert summary["region_mac_share"] >= 0.9  # measured 91.9 %: the rest is attention's products of activations
    # the report's section and its picture, next to the report
    from pmsm.plots import write_pictures
    from pmsm.targets.nir.deployment import report_section

    section = report_section(manifest)
    assert [s["kind"] for s in section["schedule"]].count("region") == len(summary["regions"])
    drawn = write_pictures({"deployment": section, "model": {"path": path}}, str(tmp_path), "r")
    assert [os.path.basename(p) for p in drawn] == ["r-partition.png"]


def test_a_deployment_runner_reproduces_the_spiking_onnx_predictions_at_t_1_and_2(tmp_path):
    path = _model("convnext", "default", tmp_path)
    out = tmp_path / "convnext.nir"
    outcome = run(Request(model=path, target="nir", output=str(out), progress=False))
    deployment = read_deployment(str(out))
    assert isinstance(deployment, Deployment) and deployment.regions and deployment.hosts
    from pmsm.runtime.execute import SpikingModel

    x = np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)
    for t in (1, 2):
        mine, _, _ = DeploymentRunner(deployment).run(x, t)
        reference = SpikingModel(outcome.export.spiking).run(x, t).outputs[0]
        assert np.array_equal(mine.argmax(-1), reference.argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("kind,op_types", [("vit", "default"), ("vit", "all"), ("convnext", "default"),
                                            ("efficientnet", "default")])
def test_hybrid_deployments_verify_against_the_compensated_spiking_onnx_at_t_1_2_4(kind, op_types, tmp_path):
    path = _model(kind, op_types, tmp_path)
    report = tmp_path / "report.json"
    outcome = run(Request(model=path, target="nir", output=str(tmp_path / "out.nir"), timesteps=(1, 2, 4),
                          verify=True, report=str(report), pictures=False, progress=False))
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    for t, tally in outcome.report["verification"]["backends"]["nir"].items():
        assert tally["argmax_agreement"] == 1.0
        assert sum(row["unexplained"] for row in tally["mismatch_by_layer"]) == 0


DIGITS = os.path.join(os.path.dirname(__file__), "..", "samples")


def _digits_vit_deployment(tmp_path):
    model = os.path.join(DIGITS, "digits_vit_pmsm_L4.onnx")
    outcome = run(Request(model=model, target="nir", output=str(tmp_path / "vit.nir"), progress=False))
    return outcome.export


def test_the_digits_vit_deployment_is_spike_for_spike_the_spiking_onnx_at_t1(tmp_path):
    from pmsm.runtime.execute import SpikingModel

    export = _digits_vit_deployment(tmp_path)
    x = np.load(os.path.join(DIGITS, "digits_test.npz"))["x"][:24]
    output, spikes, _ = DeploymentRunner(export.nir_graph).run(x, 1)
    reference = SpikingModel(export.spiking).run(x, 1, collect_spikes=True)
    assert set(spikes) == set(reference.spikes)
    assert all(np.array_equal(spikes[k], reference.spikes[k]) for k in spikes)
    assert np.array_equal(output.argmax(-1), reference.outputs[0].argmax(-1))


@pytest.mark.slow
def test_the_digits_vit_accuracy_through_the_deployment_equals_the_spiking_onnx_at_t_1_2_4(tmp_path):
    model = os.path.join(DIGITS, "digits_vit_pmsm_L4.onnx")
    outcome = run(Request(model=model, target="nir", output=str(tmp_path / "vit.nir"), timesteps=(1, 2, 4),
                          verify=True, data=os.path.join(DIGITS, "digits_test.npz"), progress=False))
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    backends = outcome.report["verification"]["backends"]
    for t in ("1", "2", "4"):
        assert backends["nir"][t]["accuracy"] == backends["onnx"][t]["accuracy"]
        assert backends["nir"][t]["argmax_agreement"] == 1.0
