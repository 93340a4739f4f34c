"""The Lava lowerings on CIFAR-size networks people deploy (slow: built, quantized and run here).

ResNet-18 and MobileNetV2 (tests/cifar_models.py: torchvision's architectures, random weights,
onnxruntime QDQ u8), converted by the pipeline: every lowering gives the same spikes, the fixed
point report covers every layer at this size.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pmsm.targets.lava", exc_type=ImportError)  # the reason says how to get lava-nc

from cifar_models import ARCHITECTURES, INPUT_SHAPE, quantized  # noqa: E402
from pmsm.targets.lava import NeuronQuantization, SynapseQuantization, run_lava  # noqa: E402
from test_lava import _check_equal_runs  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.lava]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from pmsm.pipeline import convert

    folder = tmp_path_factory.mktemp("cifar")
    return {arch: convert(str(quantized(arch, folder)), "lava").nir_graph for arch in ARCHITECTURES}


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(3).uniform(0.0, 1.0, (count, *INPUT_SHAPE)).astype(np.float32)


@pytest.mark.parametrize("arch, layer_processes", [("resnet18", 35), ("mobilenet_v2", 68)])
def test_cifar_size_networks_give_the_same_spikes_in_every_lowering(graphs, arch, layer_processes):
    x = _images(3)
    per_layer = run_lava(graphs[arch], x, 2, collect_spikes=True)
    assert per_layer.processes == layer_processes
    assert sum(int(np.abs(s).sum()) for s in per_layer.spikes.values()) > 1e6
    whole = run_lava(graphs[arch], x, 2, collect_spikes=True, lowering="network")
    assert whole.processes == 3
    _check_equal_runs(whole, per_layer)
    # Lava's own Conv takes about a minute a step here: the per-synapse reference uses Sparse
    per_synapse = run_lava(graphs[arch], x, 2, collect_spikes=True, lowering="synapse", conv_synapse="sparse")
    assert per_synapse.processes > 2 * layer_processes
    _check_equal_runs(per_synapse, per_layer)
    fixed = run_lava(graphs[arch], x, 2, collect_spikes=True, fixed_point=True)
    _check_equal_runs(run_lava(graphs[arch], x, 2, collect_spikes=True, fixed_point=True, lowering="network"), fixed)


def test_fixed_point_report_of_resnet18_covers_every_layer_and_finds_no_overflow(graphs):
    report = run_lava(graphs["resnet18"], _images(4), 1, fixed_point=True).fixed_point_report
    neurons = [r for r in report if isinstance(r, NeuronQuantization)]
    synapses = [r for r in report if isinstance(r, SynapseQuantization)]
    assert len(neurons) == 33 and sum(r.kind == "conv" for r in synapses) == 20
    assert all(r.state_bits <= 24 and not r.overflow and r.overflow_count == 0 for r in neurons)
    assert all(r.output_bits <= 24 and r.overflow_count == 0 for r in synapses)
    assert all(0 < r.max_rel_error < 0.05 for r in synapses if r.kind == "conv")
