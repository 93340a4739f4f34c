"""Hybrid deployments in Lava (targets/lava/hybrid.py, docs/lava.md "Hybrid deployments"): the NIR
regions lowered to cores, the host stages as CPU processes running their ONNX every step, all in one
Lava network; checked spike for spike against the NIR interpreter's deployment runner, and through
the command against the spiking ONNX.

The networks are real: the digits ViT of the samples (PMSM quantizers, trained on the digits), and
torchvision's VisionTransformer, a ConvNeXt-style and an EfficientNet-style block exported by torch
and quantized by onnxruntime's ``quantize_static`` (tests/test_nir_deployment.py builds them).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("pmsm.targets.lava", exc_type=ImportError)  # the reason says how to get lava-nc

from pmsm.pipeline import Request, run  # noqa: E402
from pmsm.runtime.base.errors import BadInputError  # noqa: E402
from pmsm.targets.lava.hybrid import run_deployment  # noqa: E402
from pmsm.targets.nir.deployment import Deployment, DeploymentRunner, read_deployment  # noqa: E402

pytestmark = pytest.mark.lava

TESTS = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(os.path.dirname(TESTS), "samples")


@pytest.fixture(scope="module")
def digits_vit(tmp_path_factory):
    """The digits ViT as the nir target writes it: 10 regions (one neuron layer and a token-wise
    linear layer each), 10 host stages (layer norm, attention, GELU, residual adds)."""
    path = tmp_path_factory.mktemp("vit") / "vit.nir"
    outcome = run(Request(model=os.path.join(SAMPLES, "digits_vit_pmsm_L4.onnx"), target="nir", output=str(path),
                          progress=False))
    assert outcome.code == 0
    return str(path)


def digits(n: int) -> np.ndarray:
    return np.load(os.path.join(SAMPLES, "digits_test.npz"))["x"][:n]


@pytest.mark.parametrize("timesteps,lowering", [(1, "network"), (3, "layer")])
def test_lava_float_is_spike_for_spike_the_deployment_runner_on_the_digits_vit(digits_vit, timesteps, lowering):
    deployment = read_deployment(digits_vit)
    x = digits(6)
    reference, spikes, _ = DeploymentRunner(deployment).run(x, timesteps)
    result = run_deployment(deployment, x, timesteps, collect_spikes=True, lowering=lowering)
    assert np.array_equal(result.output, reference)
    assert set(result.spikes) == set(spikes)
    assert all(np.array_equal(result.spikes[k], spikes[k]) for k in spikes)
    stages = deployment.manifest["stages"]
    hosts = sum(1 for s in stages if s["kind"] == "host")
    data = deployment.manifest["data_input"]["tensor"]
    sources = sum(1 for s in stages if s["kind"] == "region" for p in s["inputs"] if p["tensor"] == data)
    # every region's core (one neuron layer each), every host stage, the data's sources and the readout
    assert result.processes == len(deployment.regions) + hosts + sources + 1
    assert result.host_seconds > 0


def test_fixed_point_regions_feed_the_float_host_and_report_per_layer(digits_vit):
    deployment = read_deployment(digits_vit)
    x = digits(8)
    reference, _, _ = DeploymentRunner(deployment).run(x, 2)
    result = run_deployment(deployment, x, 2, fixed_point=True, collect_spikes=True)
    assert result.output.shape == reference.shape and np.all(np.isfinite(result.output))
    assert np.mean(result.output.argmax(-1) == reference.argmax(-1)) >= 0.75
    kinds = {r.kind for r in result.fixed_point_report}
    assert {"input", "neuron"} <= kinds
    # one input record per region input port: the data's for the first region, host tensors' for the rest
    inputs = [r for r in result.fixed_point_report if r.kind == "input"]
    assert len(inputs) == sum(len(s["inputs"]) for s in deployment.manifest["stages"] if s["kind"] == "region")
    assert all(r.state_bits is not None for r in result.fixed_point_report if r.kind == "neuron")


def test_a_deployment_archive_is_a_source_the_lava_target_verifies(digits_vit, tmp_path):
    data = tmp_path / "d.npz"
    source = np.load(os.path.join(SAMPLES, "digits_test.npz"))
    np.savez(data, x=source["x"][:12], y=source["y"][:12])
    outcome = run(Request(model=digits_vit, target="lava", verify=True, data=str(data), timesteps=(1,),
                          progress=False))
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    assert isinstance(outcome.export.nir_graph, Deployment)
    backends = outcome.report["verification"]["backends"]
    for t in ("1",):
        assert backends["lava"][t]["argmax_agreement"] == 1.0
        assert backends["lava"][t]["max_abs_diff"] == 0.0
    assert "lava_fixed" in backends


def test_check_of_a_deployment_for_lava_names_its_regions_and_host_stages(digits_vit, capsys):
    outcome = run(Request(model=digits_vit, target="lava", check=True, progress=False), out=sys.stdout)
    assert outcome.code == 0
    assert "10 region(s), 10 host stage(s)" in capsys.readouterr().out


def test_a_deployment_of_a_source_with_a_fixed_batch_above_one_is_refused_with_a_reason(digits_vit):
    deployment = read_deployment(digits_vit)
    deployment.manifest["data_input"]["batch"] = 4
    with pytest.raises(BadInputError, match="fixed batch of 4"):
        run_deployment(deployment, digits(2), 1)


def test_the_lava_target_writes_a_deployment_and_agrees_with_the_spiking_onnx(tmp_path):
    out = tmp_path / "vit.nir"
    data = tmp_path / "d.npz"
    source = np.load(os.path.join(SAMPLES, "digits_test.npz"))
    np.savez(data, x=source["x"][:16], y=source["y"][:16])
    outcome = run(Request(model=os.path.join(SAMPLES, "digits_vit_pmsm_L4.onnx"), target="lava", output=str(out),
                          verify=True, data=str(data), timesteps=(1, 2), progress=False))
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    assert out.read_bytes()[:4] == b"PK\x03\x04"
    backends = outcome.report["verification"]["backends"]
    for t in ("1", "2"):
        assert backends["lava"][t]["argmax_agreement"] == 1.0
        assert sum(row["unexplained"] for row in backends["lava"][t]["mismatch_by_layer"]) == 0
    assert outcome.report["deployment"]["host_stages"] == 10


@pytest.mark.producers
def test_regions_with_two_inputs_or_two_outputs_run_spike_for_spike_in_lava(tmp_path):
    """The EfficientNet-style block: a region sends its spikes to a later region and its currents to
    the host (two outputs); the last region sums those spikes and the host's gated branch (two
    inputs)."""
    pytest.importorskip("torchvision")
    from test_nir_deployment import _model

    out = tmp_path / "effnet.nir"
    assert run(Request(model=_model("efficientnet", "default", tmp_path), target="nir", output=str(out),
                       progress=False)).code == 0
    deployment = read_deployment(str(out))
    regions = [s for s in deployment.manifest["stages"] if s["kind"] == "region"]
    assert any(len(s["inputs"]) == 2 for s in regions) and any(len(s["outputs"]) == 2 for s in regions)
    x = np.random.default_rng(2).normal(size=(6, 3, 16, 16)).astype(np.float32)
    reference, spikes, _ = DeploymentRunner(deployment).run(x, 2)
    result = run_deployment(deployment, x, 2, collect_spikes=True)
    assert np.array_equal(result.output, reference)
    assert all(np.array_equal(result.spikes[k], spikes[k]) for k in spikes)


# -- the held-out networks of the nir target, through the command ---------------------------------


@pytest.mark.slow
@pytest.mark.producers
@pytest.mark.parametrize("kind,op_types", [("vit", "default"), ("vit", "all"), ("convnext", "default"),
                                           ("efficientnet", "default")])
def test_held_out_hybrid_networks_verify_under_the_lava_target_at_t_1_and_2(kind, op_types, tmp_path):
    pytest.importorskip("torchvision")
    from test_nir_deployment import _model

    path = _model(kind, op_types, tmp_path)
    data = tmp_path / "d.npz"
    shape = (3, 16, 16)
    np.savez(data, x=np.random.default_rng(5).normal(size=(16, *shape)).astype(np.float32))
    outcome = run(Request(model=path, target="lava", output=str(tmp_path / "out.nir"), verify=True, data=str(data),
                          timesteps=(1, 2), pictures=False, progress=False))
    assert outcome.code == 0, outcome.report["verification"]["failures"]
    backends = outcome.report["verification"]["backends"]
    for t in ("1", "2"):
        assert backends["lava"][t]["argmax_agreement"] == 1.0
        assert sum(row["unexplained"] for row in backends["lava"][t]["mismatch_by_layer"]) == 0
        assert backends["lava_fixed"][t]["argmax_agreement"] is not None
    nir_runner, lava_float = backends["nir"], backends["lava"]
    for t in ("1", "2"):   # Lava float computes what the NIR interpreter computes, spike for spike
        assert lava_float[t]["spike_mismatch"] == nir_runner[t]["spike_mismatch"]


# -- stopping a hybrid run -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigterm"])
def test_a_signal_at_a_random_moment_of_a_hybrid_run_leaves_nothing_behind(digits_vit, tmp_path, how):
    """The digits ViT deployment: 21 Lava processes (10 regions, 10 host stages running ONNX
    Runtime, the readout); the signal falls while converting, compiling, forking or running."""
    from test_lava_shutdown import assert_stopped_cleanly, stop_during_start_up

    source = np.load(os.path.join(SAMPLES, "digits_test.npz"))
    np.savez(tmp_path / "d.npz", x=source["x"][:8], y=source["y"][:8])
    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), digits_vit,
               "--target", "lava", "--verify", "--data", str(tmp_path / "d.npz"), "--timesteps", "1"]
    rng = np.random.default_rng(21)
    moments = 0
    for _ in range(8):              # a moment drawn after the run's end is drawn again
        outcome = stop_during_start_up(command, tmp_path, rng, 21, how)
        if outcome is not None:
            assert_stopped_cleanly(outcome, how)
            moments += 1
            if moments == 3:
                break
    assert moments == 3


@pytest.mark.slow
def test_a_signal_at_any_of_30_random_moments_of_a_hybrid_vit_run_leaves_nothing_behind(digits_vit, tmp_path):
    from test_lava_shutdown import assert_stopped_cleanly, stop_during_start_up

    source = np.load(os.path.join(SAMPLES, "digits_test.npz"))
    np.savez(tmp_path / "d.npz", x=source["x"][:64], y=source["y"][:64])
    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"), digits_vit,
               "--target", "lava", "--verify", "--data", str(tmp_path / "d.npz"), "--timesteps", "1,2"]
    rng = np.random.default_rng(2121)
    outcomes = []
    for n in range(45):
        how = ("sigterm", "ctrl-c")[n % 2]
        outcome = stop_during_start_up(command, tmp_path, rng, 21, how)
        if outcome is not None:
            assert_stopped_cleanly(outcome, how)
            outcomes.append(outcome)
        if len(outcomes) == 30:
            break
    assert len(outcomes) == 30
