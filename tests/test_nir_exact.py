"""The NIR dialect's defined arithmetic (docs/nir.md §4), the torch runtime, the mismatch attribution
against the spiking ONNX, and the standard-only profile run by a third-party executor (nirtorch)."""
from __future__ import annotations

import os
import sys
import warnings
from importlib.metadata import version

import nir
import numpy as np
import pytest
import torch

from conftest import SAMPLES, build_qdq_mlp
from pmsm import pipeline
from pmsm.runtime.base.errors import UnsupportedModelError
from pmsm.runtime.execute import SpikingModel
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.nir import NirInterpreter, arithmetic, write_nir
from pmsm.targets.nir.literal import LiteralInterpreter
from pmsm.mismatch import explain, failures
from pmsm.targets.nir.standard import MAX_UNITS, to_standard, units
from pmsm.targets.torch import NIRTORCH_VERSION, to_torch

sys.path.insert(0, os.path.dirname(__file__))
DIGITS = np.load(os.path.join(SAMPLES, "digits_test.npz"))
L2_SAMPLES = ["digits_mlp_pmsm_L2", "digits_cnn_pmsm_L2", "digits_mlp_unsigned_L2", "digits_cnn_unsigned_L2"]
ALL_SAMPLES = L2_SAMPLES + [s.replace("L2", "L4") for s in L2_SAMPLES]


def _export(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.convert(os.path.join(SAMPLES, name + ".onnx"), "nir")


def _same_spikes(a: dict, b: dict) -> int:
    assert a.keys() == b.keys()
    return sum(int(np.count_nonzero(a[k] != b[k])) for k in a)


def test_step_on_torch_tensors_is_the_numpy_step_bit_for_bit():
    rng = np.random.default_rng(0)
    for p in (NeuronParams(-3, 3, 0.0, "half_even"), NeuronParams(-2, 2, 0.5, "floor")):
        u, ut = initial_membrane((500,), p), initial_membrane((500,), p, like=torch.zeros(1))
        for t in range(4):
            z = rng.normal(0, 2, 500)
            z[:8] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 1 - 2.0 ** -25]  # ties and float32 edges
            u, s = step(u, z, p)
            ut, st = step(ut, torch.tensor(z), p)  # float64 in: rounded to float32 like numpy
            assert np.array_equal(s, st.numpy()) and np.array_equal(u, ut.numpy())


def test_writer_puts_every_channel_on_one_grid_and_float64_is_provably_exact():
    export = _export("digits_cnn_pmsm_L2")
    for node in export.nir_graph.nodes.values():
        if isinstance(node, (nir.Conv2d, nir.Affine)):
            exponents = arithmetic.grid_exponents(node.weight)
            w = np.asarray(node.weight, np.float64).reshape(len(exponents), -1)
            assert np.all(w / 2.0 ** exponents[:, None] == np.rint(w / 2.0 ** exponents[:, None]))
    assert not any(isinstance(n, nir.AvgPool2d) for n in export.nir_graph.nodes.values())  # sum pools
    certificate = arithmetic.certify(export.nir_graph)
    assert not certificate.problems and certificate.data_dependent  # the first conv reads the data
    assert arithmetic.certify(export.nir_graph, DIGITS["x"]).exact  # digits are multiples of 1/16


def test_certificate_names_what_float64_cannot_do_exactly():
    avg = nir.NIRGraph.from_list(nir.Input(input_type={"input": np.array([1, 3, 3])}),
                                 nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([1, 1]),
                                               padding=np.array([0, 0])),
                                 nir.Output(output_type={"output": np.array([1, 1, 1])}))
    problems = arithmetic.certify(avg, np.ones((1, 1, 3, 3), np.float32)).problems
    assert any("divides by 9" in why for _, why in problems)
    # float32 data with 24 significant bits at very different magnitudes, summed: not exact
    dense = nir.NIRGraph.from_list(nir.Input(input_type={"input": np.array([2])}),
                                   nir.Affine(weight=np.array([[1.0, 1.0]], np.float32), bias=np.zeros(1, np.float32)),
                                   nir.Output(output_type={"output": np.array([1])}))
    x = np.array([[1e20, np.float32(1.0 + 2.0 ** -23) * 1e-20]], np.float32)
    assert arithmetic.certify(dense, x).problems


@pytest.mark.parametrize("sample", L2_SAMPLES)
def test_torch_runtime_is_spike_exact_with_the_interpreter(sample):
    export = _export(sample)
    x = DIGITS["x"][:120]
    net = to_torch(export.nir_graph)
    for timesteps in (1, 2):
        ours = NirInterpreter(export.nir_graph).run(x, timesteps, collect_spikes=True)
        theirs = net.run(x, timesteps, collect_spikes=True)
        assert _same_spikes(ours.spikes, theirs.spikes) == 0
        assert np.array_equal(ours.output, theirs.output)


def test_torch_module_steps_with_explicit_state(tmp_path):
    export = _export("digits_mlp_pmsm_L2")
    path = tmp_path / "m.nir"
    write_nir(export.nir_graph, path)
    net = to_torch(str(path))
    x = torch.tensor(DIGITS["x"][:5])
    out1, state = net(x)
    out2, state = net(x, state)
    total = out1.to(torch.float32).double() + out2.to(torch.float32).double()
    assert np.array_equal((total / 2).float().numpy(), net.run(x, 2).output)
    assert isinstance(net, torch.nn.Module)


def test_nirtorch_is_the_pinned_version_and_its_affine_bias_bug_is_worked_around():
    from nirtorch.nir_interpreter import DEFAULT_MAP

    assert version("nirtorch") == NIRTORCH_VERSION
    node = nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.array([1.0, 2.0, 3.0], np.float32))
    graph = nir.NIRGraph.from_list(nir.Input(input_type={"input": np.array([3])}), node,
                                   nir.Output(output_type={"output": np.array([3])}))
    default = DEFAULT_MAP[nir.Affine](node)
    assert not torch.equal(default.bias.data, torch.tensor(node.bias))  # the upstream bug, still there
    graph.nodes["if"] = nir.IF(r=np.ones(3, np.float32), v_threshold=np.ones(3, np.float32),
                               v_reset=np.zeros(3, np.float32),
                               metadata={"pmsm": {"version": 1, "lo": -4, "hi": 4, "v_init": 0.0,
                                                  "rounding": "half_even", "reset": "subtract"}})
    graph.edges = [("input", "affine"), ("affine", "if"), ("if", "output")]
    out = to_torch(graph).run(np.zeros((1, 3), np.float32), 1).output
    assert out.tolist() == [[1.0, 2.0, 3.0]]


def test_mismatch_attribution_separates_rounding_propagation_and_bugs():
    export = _export("digits_cnn_pmsm_L2")
    x = DIGITS["x"][:40]
    nir_run = NirInterpreter(export.nir_graph).run(x, 2, collect_spikes=True, collect_inputs=True)
    reference = SpikingModel(export.spiking).run(x, 2, collect_spikes=True).spikes
    rows = explain(export.nir_graph, x, reference, nir_run.spikes)
    assert sum(r.unexplained for r in rows) == 0 and not failures(rows, "nir", 2)
    # A count flipped far from any boundary is a bug; everything downstream of it is propagated.
    first = rows[0].layer
    broken = {k: v.copy() for k, v in reference.items()}
    z = nir_run.inputs[first][0]
    far = np.unravel_index(np.argmin(np.abs(np.abs(z - np.round(z)) - 0.5) + 10.0 * (np.abs(z) > 1.0)), z.shape)
    broken[first][(0,) + far] += 1
    rows = explain(export.nir_graph, x, broken, nir_run.spikes)
    by_layer = {r.layer: r for r in rows}
    assert by_layer[first].unexplained == 1
    assert "differ from the spiking ONNX" in failures(rows, "nir", 2)[0]


@pytest.mark.parametrize("sample", L2_SAMPLES + ["digits_cnn_pmsm_L4"])
def test_standard_profile_is_exact_at_t1_when_nir_if_is_followed_literally(sample):
    export = _export(sample)
    x, y = DIGITS["x"], DIGITS["y"]
    standard, growth = to_standard(export.nir_graph)
    assert not any(n.metadata.get("pmsm") for n in standard.nodes.values() if isinstance(n, nir.IF))
    assert growth.neurons_standard >= growth.neurons_pmsm * (growth.max_units // 2)
    pmsm = NirInterpreter(export.nir_graph).run(x, 1, collect_spikes=True)
    literal = LiteralInterpreter(standard).run(x, 1, collect_spikes=True)
    assert _same_spikes(pmsm.spikes, literal.spikes) == 0
    assert np.array_equal(pmsm.output, literal.output)
    # and the PMSM file read as plain NIR (metadata ignored) is a different network
    plain = LiteralInterpreter(export.nir_graph).run(x, 1)
    assert np.mean(plain.output.argmax(1) == y) < np.mean(pmsm.output.argmax(1) == y) - 0.1


def test_unit_thresholds_reproduce_the_neuron_on_every_float32_edge():
    for p in (NeuronParams(-2, 2, 0.5, "floor"), NeuronParams(0, 4, 0.0, "half_even"), NeuronParams(-8, 7, 0.0, "half_even")):
        sign, threshold = units(p)
        z = np.concatenate([np.arange(-20, 20, 0.5, dtype=np.float32),
                            np.nextafter(np.arange(-20, 20, 0.5, dtype=np.float32), np.float32(np.inf)),
                            np.nextafter(np.arange(-20, 20, 0.5, dtype=np.float32), np.float32(-np.inf))])
        counts = step(initial_membrane(z.shape, p), z, p)[1]
        fired = (sign[:, None] * z[None, :] > threshold[:, None]).astype(np.float32)
        assert np.array_equal((sign[:, None] * fired).sum(axis=0), counts)


def test_standard_profile_runs_exactly_in_nirtorch_with_its_own_node_maps(tmp_path):
    """A third-party executor: nirtorch's graph wiring and its default Conv2d, Flatten and SumPool2d
    modules (float32), with NIR's IF written from the spec; batch 1 (its Flatten counts the batch)."""
    import nirtorch

    class SpecIF(torch.nn.Module):  # NIR IF: v += r * I; spike when v > v_threshold; v = v_reset
        def __init__(self, node):
            super().__init__()
            self.r, self.th, self.reset = (torch.tensor(np.asarray(a)) for a in (node.r, node.v_threshold, node.v_reset))

        def forward(self, x, state=None):
            v = (torch.zeros_like(x) if state is None else state) + self.r * x
            z = (v > self.th).to(x.dtype)
            return z, torch.where(z > 0, self.reset, v)

    def affine(node):  # nirtorch 2.6's own Affine leaves the bias uninitialised
        m = torch.nn.Linear(node.weight.shape[1], node.weight.shape[0])
        m.weight.data, m.bias.data = torch.tensor(node.weight), torch.tensor(node.bias)
        return m

    export = _export("digits_cnn_pmsm_L2")
    path = tmp_path / "standard.nir"
    write_nir(to_standard(export.nir_graph)[0], path)
    net = nirtorch.nir_to_torch(nir.read(str(path)), {nir.IF: SpecIF, nir.Affine: affine})
    x = DIGITS["x"][:100]
    with torch.no_grad():
        theirs = np.stack([net(torch.tensor(x[i:i + 1]))[0].numpy().reshape(-1) for i in range(len(x))])
    ours = NirInterpreter(export.nir_graph).run(x, 1).output
    assert np.array_equal(theirs.argmax(1), ours.argmax(1))
    assert np.max(np.abs(theirs - ours)) < 1e-4  # float32 sums of the same values


def _norse_outputs(path: str, x: np.ndarray, through_nir_to_torch: bool) -> np.ndarray:
    """A third-party consumer, pinned in the producers extra: norse's own NIR import (its IAF is NIR's IF
    as written: ``v += I``, a spike when ``v > v_threshold``, ``v = v_reset``), float32, one image at
    a time (its Flatten(start_dim=0) flattens the batch axis too)."""
    import logging
    from functools import partial

    import nirtorch
    import norse.torch

    graph = nir.read(path)
    logging.disable(logging.WARNING)  # norse warns about r (which is 1) through the root logger
    try:
        if through_nir_to_torch:  # norse's node map on nirtorch's current executor (sums fan-in)
            from norse.torch.utils.import_nir import _import_norse_module

            norse_map = partial(_import_norse_module, ignore_warnings=True)
            net = nirtorch.nir_to_torch(graph, {type(n): norse_map for n in graph.nodes.values()
                                                if not isinstance(n, (nir.Input, nir.Output))})
        else:
            net = norse.torch.from_nir(graph)
        with torch.no_grad():
            return np.stack([net(torch.tensor(image[None]))[0].numpy().reshape(-1) for image in x])
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.producers
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside norse
@pytest.mark.parametrize("sample, through_nir_to_torch", [
    ("digits_mlp_pmsm_L2", False),  # a chain: norse.torch.from_nir as documented
    ("digits_cnn_pmsm_L2", True),  # a residual sum: from_nir's executor evaluates it before one branch
])
def test_standard_profile_of_an_l2_sample_runs_exactly_at_t1_in_norse(tmp_path, sample, through_nir_to_torch):
    export = _export(sample)
    path = str(tmp_path / "standard.nir")
    write_nir(to_standard(export.nir_graph)[0], path)
    x = DIGITS["x"][:120]
    theirs = _norse_outputs(path, x, through_nir_to_torch)
    ours = NirInterpreter(export.nir_graph).run(x, 1).output
    assert np.array_equal(theirs.argmax(1), ours.argmax(1))
    assert np.max(np.abs(theirs - ours)) <= 2.0 ** -17 * np.max(np.abs(ours))  # float32 sums in another order
    # the PMSM file itself, run by the same consumer, is the binary-IF network: wrong
    pmsm_path = str(tmp_path / "pmsm.nir")
    write_nir(export.nir_graph, pmsm_path)
    if through_nir_to_torch:
        scale = next(n for n, node in export.nir_graph.nodes.items() if isinstance(node, nir.Scale))
        with pytest.raises(KeyError, match=scale):  # norse maps no Scale node: it is missing from the module
            _norse_outputs(pmsm_path, x, through_nir_to_torch)
    else:
        assert np.mean(_norse_outputs(pmsm_path, x, through_nir_to_torch).argmax(1) == ours.argmax(1)) < 0.9


def test_standard_profile_refuses_8_bit_neurons_and_says_why():
    from pmsm.exporter.convert import network_for_targets, untimed_network
    from pmsm.targets.nir import network_to_nir

    network, _ = untimed_network(build_qdq_mlp(batch=1), path="mlp.onnx")
    graph = network_to_nir(network_for_targets(network), source_name="mlp.onnx")
    with pytest.raises(UnsupportedModelError) as info:
        to_standard(graph, "mlp.onnx")
    text = str(info.value)
    assert f"limit of {MAX_UNITS}" in text and "K = 255" in text and "pmsm profile" in text


@pytest.mark.slow
@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_lava_float_torch_and_interpreter_are_spike_exact_on_every_sample(sample):
    from pmsm.targets.lava import run_lava

    export = _export(sample)
    x = DIGITS["x"]
    for timesteps in (1, 2):
        ours = NirInterpreter(export.nir_graph).run(x, timesteps, collect_spikes=True)
        lava = run_lava(export.nir_graph, x, timesteps, collect_spikes=True)
        torch_run = to_torch(export.nir_graph).run(x, timesteps, collect_spikes=True)
        assert _same_spikes(ours.spikes, lava.spikes) == 0
        assert _same_spikes(ours.spikes, torch_run.spikes) == 0
        assert np.array_equal(ours.output, lava.output) and np.array_equal(ours.output, torch_run.output)


@pytest.mark.slow
def test_qdq_resnet18_torch_lava_and_interpreter_agree_and_every_difference_to_onnx_is_explained(tmp_path_factory):
    from resnet_qdq import build_qdq_resnet18, images

    from pmsm.targets.lava import run_lava

    path = build_qdq_resnet18(tmp_path_factory.mktemp("resnet"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export = pipeline.convert(str(path), "nir")
    x = images(4)
    assert arithmetic.certify(export.nir_graph, x).exact
    ours = NirInterpreter(export.nir_graph).run(x, 1, collect_spikes=True)
    assert _same_spikes(ours.spikes, to_torch(export.nir_graph).run(x, 1, collect_spikes=True).spikes) == 0
    lava = run_lava(export.nir_graph, x[:2], 1, collect_spikes=True)
    assert _same_spikes({k: v[:, :2] for k, v in ours.spikes.items()}, lava.spikes) == 0
    reference = SpikingModel(export.spiking).run(x, 1, collect_spikes=True).spikes
    rows = explain(export.nir_graph, x, reference, ours.spikes)
    assert sum(r.unexplained for r in rows) == 0
