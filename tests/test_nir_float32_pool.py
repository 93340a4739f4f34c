"""ONNX's 1-D average pool of de-quantized counts, as NIR writes it (docs/nir.md §5a).

onnxruntime's QDQ puts ``DequantizeLinear -> AveragePool -> QuantizeLinear`` around a pool; in the
untimed network that is ``neuron -> Mul(theta) -> AveragePool(2) -> Div(theta) -> neuron``. The
exact window sum ``(c0 + c1) / 2`` lands on ties ``.5`` that onnxruntime's float32 products and sum
move by one ulp either way, so the next neuron rounds them differently. The writer marks the pool as
ONNX's float32 op (``avg_pool1d_float32``), and the interpreter, the torch runtime and Lava compute
it as onnxruntime does: the same spikes as the spiking ONNX on every pair of counts.
"""
from __future__ import annotations

import nir
import numpy as np
import pytest
from onnx import helper
from test_nir_sequence import _c, _spiking, _untimed

from pmsm.targets.nir import NirInterpreter, network_to_nir

QDQ_SCALE = 0.03148566  # add_scale of the QDQ keyword-spotting CNN (tests/sequence_models.py), measured


def _u8(z, s, name, hi=255):
    return helper.make_node("MultiSpikeNeuron", [z, "timesteps"], [s], name=name, domain="ai.pmsm",
                            lo=0, hi=hi, v_init=0.0, rounding="half_even")


def _pool_model(scale=QDQ_SCALE, pads=0, count_include_pad=1, prescale_op="Div", hi=255):
    """[N, 2, L] counts -> neuron -> Mul(scale) -> AveragePool(2, stride 2) -> Div(scale) (or Mul(1/scale))
    -> neuron -> Mul(scale) -> output: onnxruntime's QDQ around a 1-D average pool."""
    pre = scale if prescale_op == "Div" else np.float32(1 / np.float32(scale))
    nodes = [_u8("xt", "c", "/q_in", hi),
             helper.make_node("Mul", ["c", "s"], ["a"], name="/dequant"),
             helper.make_node("AveragePool", ["a"], ["p"], name="/pool", kernel_shape=[2], strides=[2],
                              pads=[pads, pads], count_include_pad=count_include_pad),
             helper.make_node(prescale_op, ["p", "pre"], ["z"], name="/pre_scale"),
             _u8("z", "q", "/q_pool", hi),
             helper.make_node("Mul", ["q", "s"], ["y"], name="/out")]
    return nodes, [_c("s", scale), _c("pre", pre)]


def _every_pair(channels=2):
    """All 65,536 pairs of counts in [0, 255], as windows of a [N, channels, 2*64] input."""
    c = np.arange(256, dtype=np.float32)
    pairs = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)  # [65536, 2]
    return np.ascontiguousarray(pairs.reshape(-1, channels, 64, 2).reshape(-1, channels, 128))


def _model(**kw):
    nodes, inits = _pool_model(**kw)
    length = 128
    out = length // 2 + (kw.get("pads", 0) > 0)
    return _untimed(nodes, inits, (2, length), (2, out))


def _marked(graph):
    return [n for n in graph.nodes.values() if isinstance(n, nir.Conv1d)
            and (n.metadata or {}).get("pmsm", {}).get("op") == "avg_pool1d_float32"]


@pytest.mark.parametrize("prescale_op", ["Div", "Mul"])
@pytest.mark.parametrize("timesteps", [1, 3])
def test_every_pair_of_counts_pools_to_the_spiking_onnx_spikes_where_the_exact_sum_lands_on_ties(
        prescale_op, timesteps):
    model = _model(prescale_op=prescale_op)
    x = _every_pair()
    graph = network_to_nir(model, timesteps=timesteps)
    assert len(_marked(graph)) == 1
    ours = NirInterpreter(graph).run(x, timesteps, collect_spikes=True)
    ref = _spiking(model).run(x, timesteps, collect_spikes=True)
    for name, s in ref.spikes.items():
        assert int(np.sum(ours.spikes[name] != s)) == 0, name
    assert np.array_equal(ours.output, ref.outputs[0] if hasattr(ref, "outputs") else ref.output)
    # the test can fail: the exact form (a window sum times 1/2) rounds thousands of these ties the other way
    exact = np.rint(x.reshape(-1, 2, 64, 2).sum(-1) / 2.0).reshape(ref.spikes["/q_pool"][0].shape)
    assert int(np.sum(exact != ref.spikes["/q_pool"][0])) > 1000


def test_a_pool_with_a_different_divisor_at_the_borders_keeps_the_exact_form():
    """count_include_pad=0 with padding: the border windows divide by 1, the others by 2; one divisor
    is what the op carries, so the writer keeps the exact window sum and a Scale there."""
    graph = network_to_nir(_model(pads=1, count_include_pad=0))
    assert not _marked(graph)
    assert network_to_nir(_model(pads=1, count_include_pad=1)) and _marked(network_to_nir(_model(pads=1)))


def test_the_marked_pool_reads_back_type_checked_and_runs_in_the_torch_runtime_as_in_the_interpreter(tmp_path):
    from pmsm.targets.nir import read_nir, write_nir
    from pmsm.targets.torch import to_torch

    write_nir(network_to_nir(_model(), timesteps=2), tmp_path / "p.nir")
    nir.read(str(tmp_path / "p.nir"))  # type checking on
    graph = read_nir(tmp_path / "p.nir")
    (pool,) = _marked(graph)
    assert list(pool.metadata["pmsm"]["dequant"]) == [np.float32(QDQ_SCALE)] * 2
    # a consumer ignoring the metadata runs the real-number factor 1/2 on the diagonal
    assert np.allclose(pool.weight[[0, 1], [0, 1]], 0.5) and pool.weight[0, 1].sum() == 0
    x = _every_pair()[:128]
    ours = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    torch_run = to_torch(graph).run(x, 2, collect_spikes=True)
    for name in ours.spikes:
        assert np.array_equal(ours.spikes[name], torch_run.spikes[name]), name
    assert np.array_equal(ours.output, torch_run.output)


def test_the_standard_profile_refuses_the_float32_pool_with_the_reason():
    from pmsm.runtime.base.errors import UnsupportedModelError
    from pmsm.targets.nir.standard import to_standard

    with pytest.raises(UnsupportedModelError) as err:
        to_standard(network_to_nir(_model(hi=3)))  # counts 0..3: what the standard profile takes
    assert "float32 average pool" in str(err.value.problems)


def test_the_readout_sums_the_steps_in_float32_as_the_spiking_onnx_reduce_mean_does():
    """At T = 4 a float64 sum of four float32 outputs differs from onnxruntime's float32 ReduceMean in
    the last bit in about a third of the means: enough to flip an argmax between two logits one ulp
    apart (one of the 360 digits at T = 4 on the QDQ 1-D CNN did). The dialect's readout is the float32
    sum in time order divided by T in float32, bit for bit the spiking ONNX's."""
    model = _model()
    x = np.random.default_rng(30).integers(0, 256, size=(64, 2, 128)).astype(np.float32)
    ours = NirInterpreter(network_to_nir(model, timesteps=4)).run(x, 4)
    ref = _spiking(model).run(x, 4)
    assert np.array_equal(ours.output, ref.outputs[0] if hasattr(ref, "outputs") else ref.output)


@pytest.mark.lava
def test_every_lava_lowering_runs_the_float32_pool_spike_for_spike_with_the_interpreter():
    from pmsm.targets.lava import run_lava

    graph = network_to_nir(_model(), timesteps=2)
    x = _every_pair()[:24]
    ref = NirInterpreter(graph).run(x, 2, collect_spikes=True)
    for lowering in ("layer", "network", "synapse"):
        run = run_lava(graph, x, 2, collect_spikes=True, lowering=lowering)
        for name in ref.spikes:
            assert np.array_equal(run.spikes[name], ref.spikes[name]), (lowering, name)
        assert np.array_equal(run.output, ref.output), lowering
