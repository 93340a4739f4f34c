"""Lava lowering of PMSM NIR graphs (docs/lava.md), checked against a direct numpy evaluation,
against the project's NIR interpreter, and lowering against lowering.

The graphs are built by hand in the PMSM dialect with dyadic weights and inputs (multiples of
1/8, 1/4), so every sum is exact in float32 and in Lava's float64: the comparison is bit for
bit, no float re-association tolerance is needed. Each Lava run starts one OS process per
Lava process, so the graphs and batches are small.
"""
import nir
import numpy as np
import pytest

pytest.importorskip("pmsm.targets.lava", exc_type=ImportError)  # the reason says how to get lava-nc
pytestmark = pytest.mark.lava

from lava.proc.conv import utils as conv_utils  # noqa: E402

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError  # noqa: E402
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step  # noqa: E402
from pmsm.targets.lava import Network, NeuronQuantization, SynapseQuantization, check_graph, run_lava  # noqa: E402
from pmsm.targets.lava.kernels import Convolution  # noqa: E402
from pmsm.targets.lava.lowering import lower, ungroup  # noqa: E402
from pmsm.targets.lava.partition import partition  # noqa: E402
from pmsm.targets.lava.plan import INPUT  # noqa: E402
from pmsm.targets.nir import NirInterpreter  # noqa: E402

RNG = np.random.default_rng(7)


def _meta(lo, hi, v_init=0.5, rounding="floor", onnx_node=None):
    pmsm = {"version": 1, "lo": lo, "hi": hi, "v_init": v_init, "rounding": rounding, "reset": "subtract"}
    if onnx_node:
        pmsm["onnx_node"] = onnx_node
    return {"pmsm": pmsm}


def _if(shape, lo=-2, hi=2, **kw):
    return nir.IF(r=np.ones(shape), v_threshold=np.ones(shape), v_reset=np.zeros(shape),
                  metadata=_meta(lo, hi, **kw))


def _dyadic(shape, k=8, denom=8):
    return (RNG.integers(-k, k + 1, size=shape) / denom).astype(np.float32)


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def mlp_graph():
    return _graph({
        "input": nir.Input(input_type={"input": np.array([6])}),
        "fc1": nir.Affine(weight=_dyadic((5, 6)), bias=_dyadic(5, 4, 4)),
        "q1": _if(5, lo=-2, hi=2, onnx_node="onnx_q1"),
        "fc2": nir.Affine(weight=_dyadic((3, 5)), bias=_dyadic(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, [("input", "fc1"), ("fc1", "q1"), ("q1", "fc2"), ("fc2", "output")])


def conv_graph():
    """Non-square image and kernels, asymmetric stride/padding, groups, all pool kinds (the
    average pool padded: padding counts in its divisor), a flatten."""
    return _graph({
        "input": nir.Input(input_type={"input": np.array([2, 7, 9])}),
        "conv1": nir.Conv2d(input_shape=(7, 9), weight=_dyadic((4, 2, 3, 2)), stride=(1, 2),
                            padding=(1, 0), dilation=1, groups=1, bias=_dyadic(4, 4, 4)),
        "q1": _if((4, 7, 4), lo=-3, hi=3),
        "maxpool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]),
                                 padding=np.array([0, 0]), metadata={"pmsm": {"op": "max_pool2d", "version": 1}}),
        "conv2": nir.Conv2d(input_shape=(6, 3), weight=_dyadic((4, 2, 3, 3)), stride=1, padding=(1, 1),
                            dilation=1, groups=2, bias=_dyadic(4)),
        "q2": _if((4, 6, 3), lo=0, hi=3, rounding="half_even", v_init=0.0),
        "avgpool": nir.AvgPool2d(kernel_size=np.array([2, 1]), stride=np.array([2, 1]), padding=np.array([1, 0])),
        "sumpool": nir.SumPool2d(kernel_size=np.array([1, 3]), stride=np.array([1, 3]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 1])}, start_dim=0),
        "fc": nir.Affine(weight=_dyadic((3, 16)), bias=_dyadic(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, [("input", "conv1"), ("conv1", "q1"), ("q1", "maxpool"), ("maxpool", "conv2"), ("conv2", "q2"),
        ("q2", "avgpool"), ("avgpool", "sumpool"), ("sumpool", "flat"), ("flat", "fc"), ("fc", "output")])


def residual_graph():
    """A skip branch (Scale, zero synapses) joins a two-convolution branch: delays needed."""
    return _graph({
        "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
        "conv0": nir.Conv2d(input_shape=(4, 4), weight=_dyadic((2, 1, 3, 3)), stride=1, padding=1,
                            dilation=1, groups=1, bias=np.zeros(2, np.float32)),
        "qa": _if((2, 4, 4)),
        "conv1": nir.Conv2d(input_shape=(4, 4), weight=_dyadic((2, 2, 3, 3)), stride=1, padding=1,
                            dilation=1, groups=1, bias=_dyadic(2)),
        "qb": _if((2, 4, 4)),
        "conv2": nir.Conv2d(input_shape=(4, 4), weight=_dyadic((2, 2, 1, 1)), stride=1, padding=0,
                            dilation=1, groups=1, bias=_dyadic(2)),
        "skip": nir.Scale(scale=np.array([0.5, -0.25], np.float32).reshape(2, 1, 1)),
        "qc": _if((2, 4, 4), lo=-4, hi=4),
        "flat": nir.Flatten(input_type={"input": np.array([2, 4, 4])}, start_dim=0),
        "fc": nir.Affine(weight=_dyadic((3, 32)), bias=_dyadic(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, [("input", "conv0"), ("conv0", "qa"), ("qa", "conv1"), ("conv1", "qb"), ("qb", "conv2"),
        ("conv2", "qc"), ("qa", "skip"), ("skip", "qc"), ("qc", "flat"), ("flat", "fc"), ("fc", "output")])


# ----------------------------------------------------------------- numpy reference
def _pair(v):
    a = np.ravel(v)
    return (int(a[0]), int(a[-1]))


def _conv(x, node):
    w = np.asarray(node.weight, np.float32)
    (sh, sw), (ph, pw), (dh, dw) = _pair(node.stride), _pair(node.padding), _pair(node.dilation)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    o_ch, i_ch, kh, kw = w.shape
    ho = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    per_group = o_ch // node.groups
    out = np.zeros((o_ch, ho, wo), np.float32)
    for o in range(o_ch):
        src = xp[(o // per_group) * i_ch:(o // per_group + 1) * i_ch]
        for i in range(ho):
            for j in range(wo):
                patch = src[:, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[o, i, j] = np.sum(patch * w[o])
    return out + np.asarray(node.bias, np.float32).reshape(-1, 1, 1)


def _pool(x, node, mode):
    (kh, kw), (sh, sw), (ph, pw) = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf if mode == "max" else 0)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo), np.float32)
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, i, j] = win.max(axis=(1, 2)) if mode == "max" else win.sum(axis=(1, 2))
    return out / np.float32(kh * kw) if mode == "avg" else out


def reference(graph, x, timesteps):
    """Evaluate the dialect directly: per timestep, topological order, fan-in sums."""
    preds = {n: [s for s, d in graph.edges if d == n] for n in graph.nodes}
    order, seen = [], set()
    while len(order) < len(graph.nodes):
        for n in graph.nodes:
            if n not in seen and all(p in seen for p in preds[n]):
                order.append(n)
                seen.add(n)
    outputs, spikes = [], {}
    for sample in x:
        state, per_t = {}, []
        for t in range(timesteps):
            val = {}
            for name in order:
                node = graph.nodes[name]
                inp = sample if isinstance(node, nir.Input) else sum(val[p] for p in preds[name])
                if isinstance(node, (nir.Input, nir.Output)):
                    val[name] = np.asarray(inp, np.float32)
                elif isinstance(node, nir.Affine):
                    val[name] = node.weight @ inp + node.bias
                elif isinstance(node, nir.Linear):
                    val[name] = node.weight @ inp
                elif isinstance(node, nir.Conv2d):
                    val[name] = _conv(inp, node)
                elif isinstance(node, nir.AvgPool2d):
                    val[name] = _pool(inp, node, "avg")
                elif isinstance(node, nir.SumPool2d):
                    val[name] = _pool(inp, node, "max" if node.metadata.get("pmsm") else "sum")
                elif isinstance(node, nir.Flatten):
                    val[name] = inp.reshape(-1)
                elif isinstance(node, nir.Scale):
                    val[name] = inp * node.scale
                elif isinstance(node, nir.IF):
                    m = node.metadata["pmsm"]
                    params = NeuronParams(m["lo"], m["hi"], m["v_init"], m["rounding"])
                    u = state.get(name, initial_membrane(inp.shape, params))
                    state[name], val[name] = step(u, inp, params)
                    key = m.get("onnx_node", name)
                    spikes.setdefault(key, {}).setdefault(len(outputs), []).append(val[name])
            per_t.append(val[[n for n in order if isinstance(graph.nodes[n], nir.Output)][0]])
        outputs.append(np.mean(per_t, axis=0))
    spikes = {k: np.stack([np.stack(v[n]) for n in range(len(x))], axis=1) for k, v in spikes.items()}
    return np.stack(outputs).astype(np.float32), spikes


def _check_equal_runs(a, b):
    assert set(a.spikes) == set(b.spikes)
    for name, s in b.spikes.items():
        np.testing.assert_array_equal(a.spikes[name], s, err_msg=name)
    np.testing.assert_array_equal(a.output, b.output)


def _check_same(result, graph, x, timesteps):
    """Lava equals the reference above and the project's NIR interpreter, bit for bit."""
    ref_out, ref_spikes = reference(graph, x, timesteps)
    interp = NirInterpreter(graph).run(x, timesteps, collect_spikes=True)
    for expected_out, expected_spikes in ((ref_out, ref_spikes), (interp.output, interp.spikes)):
        assert set(result.spikes) == set(expected_spikes)
        for name, s in expected_spikes.items():
            np.testing.assert_array_equal(result.spikes[name], s, err_msg=name)
        np.testing.assert_array_equal(result.output, expected_out)


# ------------------------------------------------------------------------ tests
def test_signed_multi_spikes_survive_dense_synapses():
    graph = mlp_graph()
    x = (RNG.integers(-12, 13, size=(4, 6)) / 4).astype(np.float32)
    result = run_lava(graph, x, timesteps=3, collect_spikes=True)
    spikes = result.spikes["onnx_q1"]
    assert spikes.shape == (3, 4, 5)
    assert (spikes < 0).any() and (spikes <= -2).any() and (spikes >= 2).any()
    _check_same(result, graph, x, 3)


@pytest.mark.parametrize("lowering, conv_synapse", [("layer", "conv"), ("synapse", "conv"), ("synapse", "sparse")])
def test_conv_layout_flip_pools_and_flatten_match_reference(lowering, conv_synapse):
    graph = conv_graph()
    x = (RNG.integers(-8, 9, size=(2, 2, 7, 9)) / 4).astype(np.float32)
    seen = []
    result = run_lava(graph, x, timesteps=2, collect_spikes=True, lowering=lowering, conv_synapse=conv_synapse,
                      progress=lambda done, total: seen.append((done, total)))
    _check_same(result, graph, x, 2)
    assert seen[0] == (0, 2) and seen[-1] == (2, 2)       # started, then done


@pytest.mark.parametrize("lowering", ["layer", "synapse"])
def test_residual_branches_of_unequal_depth_are_aligned(lowering):
    graph = residual_graph()
    plan = lower(check_graph(graph))
    # the skip branch skips two convolutions: its Scale step also delays by two steps
    assert [(s.node, s.params["delay"]) for s in plan.steps if s.kind == "elementwise"] == [("skip", 2), ("output", 0)]
    x = (RNG.integers(-8, 9, size=(3, 1, 4, 4)) / 4).astype(np.float32)
    result = run_lava(graph, x, timesteps=3, collect_spikes=True, lowering=lowering)
    _check_same(result, graph, x, 3)


def test_each_neuron_layer_gets_a_core_and_cores_align_branches_with_held_messages():
    plan = lower(check_graph(residual_graph()), synapse_latency=0)
    assert not any(s.params.get("delay") for s in plan.steps if s.kind == "elementwise")
    cores = partition(plan, layers_per_core=1)
    assert [c.name for c in cores.cores] == ["core:qa", "core:qb", "core:qc"]
    qa, qb, qc = cores.cores
    assert [(i.source, i.delay) for i in qa.inputs] == [(INPUT, 0)]
    assert [(i.source, i.delay) for i in qb.inputs] == [(0, 0)]
    # qc sums qb's branch (one hop later) and qa's skip: qa's spikes are held back one step
    assert (qa.latency, qb.latency, qc.latency) == (0, 1, 2)
    assert [(i.source, i.delay) for i in qc.inputs] == [(0, 1), (1, 0)]
    # cores exchange spikes only: every synapse, scale and bias lives with the neuron it feeds
    kinds = {plan.steps[i].node: plan.steps[i].kind for i in qc.steps}
    assert kinds == {"conv2": "conv", "skip": "elementwise", "qc": "neuron", "fc": "dense", "output": "elementwise"}
    assert qc.has_output and cores.depth == 3
    whole = partition(plan, layers_per_core=10)
    assert len(whole.cores) == 1 and whole.cores[0].inputs[0].source == INPUT and whole.depth == 1


def test_a_tree_shared_by_two_cores_is_computed_in_both():
    graph = _graph({
        "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
        "conv": nir.Conv2d(input_shape=(4, 4), weight=_dyadic((2, 1, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=1, bias=np.zeros(2, np.float32)),
        "qa": _if((2, 4, 4)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]),
                              metadata={"pmsm": {"op": "max_pool2d", "version": 1}}),
        "conv_b": nir.Conv2d(input_shape=(2, 2), weight=_dyadic((2, 2, 1, 1)), stride=1, padding=0,
                             dilation=1, groups=1, bias=_dyadic(2)),
        "qb": _if((2, 2, 2)),
        "qc": _if((2, 2, 2), lo=-4, hi=4),
        "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=0),
        "fc": nir.Affine(weight=_dyadic((3, 8)), bias=_dyadic(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, [("input", "conv"), ("conv", "qa"), ("qa", "pool"), ("pool", "conv_b"), ("conv_b", "qb"),
        ("qb", "qc"), ("pool", "qc"), ("qc", "flat"), ("flat", "fc"), ("fc", "output")])
    plan = lower(check_graph(graph), synapse_latency=0)
    cores = partition(plan).cores
    pool = next(i for i, s in enumerate(plan.steps) if s.kind == "pool")
    assert [c.name for c in cores if pool in c.steps] == ["core:qb", "core:qc"]
    x = (RNG.integers(-8, 9, size=(2, 1, 4, 4)) / 4).astype(np.float32)
    _check_same(run_lava(graph, x, timesteps=2, collect_spikes=True), graph, x, 2)


@pytest.mark.parametrize("make_graph, shape", [(mlp_graph, (3, 6)), (conv_graph, (2, 2, 7, 9)),
                                               (residual_graph, (3, 1, 4, 4))])
def test_layer_and_network_lowerings_are_spike_exact_with_the_synapse_lowering(make_graph, shape):
    graph = make_graph()
    x = (RNG.integers(-8, 9, size=shape) / 4).astype(np.float32)
    per_synapse = run_lava(graph, x, timesteps=2, collect_spikes=True, lowering="synapse")
    for lowering in ("layer", "network"):
        _check_equal_runs(run_lava(graph, x, timesteps=2, collect_spikes=True, lowering=lowering), per_synapse)


def test_fixed_point_cores_are_spike_exact_with_the_fixed_point_synapse_lowering():
    graph = conv_graph()
    graph.nodes["conv1"].weight = RNG.normal(size=(4, 2, 3, 2)).astype(np.float32)   # rounded to 8 bits
    x = (RNG.integers(-8, 9, size=(2, 2, 7, 9)) / 4).astype(np.float32)
    per_synapse = run_lava(graph, x, timesteps=2, collect_spikes=True, lowering="synapse", fixed_point=True)
    per_layer = run_lava(graph, x, timesteps=2, collect_spikes=True, lowering="layer", fixed_point=True)
    _check_equal_runs(per_layer, per_synapse)
    assert per_layer.processes == 4 and per_synapse.processes == 11


def test_lava_convolution_as_matrix_products_equals_lavas_own():
    cases = [((9, 7, 2), (4, 3, 2, 2), (2, 1), (0, 1), (1, 1), 1), ((8, 8, 6), (6, 3, 3, 1), (1, 2), (1, 1), (1, 1), 6),
             ((8, 8, 6), (12, 3, 3, 2), (2, 2), (1, 1), (1, 1), 3), ((10, 9, 4), (5, 3, 2, 4), (1, 2), (2, 1), (2, 1), 1),
             ((5, 5, 8), (16, 1, 1, 8), (2, 2), (0, 0), (1, 1), 1), ((1, 1, 4), (4, 3, 3, 1), (1, 1), (1, 1), (1, 1), 4)]
    for in_shape, w_shape, stride, padding, dilation, groups in cases:
        x, w = RNG.integers(-3, 4, in_shape).astype(float), RNG.integers(-5, 6, w_shape).astype(float)
        ours = Convolution(w, in_shape, stride, padding, dilation, groups)(x)
        np.testing.assert_array_equal(ours, conv_utils.conv(x, w, w_shape[1:3], stride, padding, dilation, groups))
        x, w = RNG.normal(size=in_shape), RNG.normal(size=w_shape)
        ours = Convolution(w, in_shape, stride, padding, dilation, groups)(x)
        np.testing.assert_allclose(ours, conv_utils.conv(x, w, w_shape[1:3], stride, padding, dilation, groups),
                                   rtol=0, atol=1e-12)


def test_a_grouped_convolution_written_dense_gets_its_groups_back():
    depthwise = RNG.normal(size=(6, 1, 3, 3))
    dense = np.zeros((6, 6, 3, 3))
    dense[np.arange(6), np.arange(6)] = depthwise[:, 0]
    kernel, groups = ungroup(dense, 1)
    assert groups == 6 and np.array_equal(kernel, depthwise)
    pairs = np.zeros((4, 4, 1, 1))
    pairs[:2, :2], pairs[2:, 2:] = 1.0, 2.0
    assert ungroup(pairs, 1)[1] == 2
    assert ungroup(RNG.normal(size=(4, 4, 3, 3)), 1)[1] == 1


def test_streaming_with_resets_equals_one_sample_at_a_time():
    graph = residual_graph()
    x = (RNG.integers(-8, 9, size=(3, 1, 4, 4)) / 4).astype(np.float32)
    streamed = run_lava(graph, x, timesteps=2, collect_spikes=True, samples_per_chunk=2)
    for n in range(len(x)):
        alone = run_lava(graph, x[n:n + 1], timesteps=2, collect_spikes=True)
        np.testing.assert_array_equal(streamed.output[n], alone.output[0])
        for name, s in alone.spikes.items():
            np.testing.assert_array_equal(streamed.spikes[name][:, n], s[:, 0])


def test_fixed_point_is_exact_on_representable_weights_and_reports_each_layer():
    graph = conv_graph()
    x = (RNG.integers(-8, 9, size=(2, 2, 7, 9)) / 4).astype(np.float32)
    floating = run_lava(graph, x, timesteps=2, collect_spikes=True)
    fixed = run_lava(graph, x, timesteps=2, fixed_point=True, collect_spikes=True)
    report = fixed.fixed_point_report
    assert floating.fixed_point_report is None and report[0].kind == "input"
    assert report[0].max_abs_error == 0.0
    synapses = {r.node: r for r in report if isinstance(r, SynapseQuantization)}
    neurons = {r.node: r for r in report if isinstance(r, NeuronQuantization)}
    assert {"conv1", "conv2", "fc"} <= set(synapses) and set(neurons) == {"q1", "q2"}
    assert all(r.max_rel_error == 0.0 for r in synapses.values())
    assert all(not r.overflow and r.state_bits <= 24 for r in neurons.values())
    assert neurons["q1"].payload_bits == 3 and neurons["q2"].payload_bits == 2
    np.testing.assert_array_equal(fixed.output, floating.output)
    for name, s in floating.spikes.items():
        np.testing.assert_array_equal(fixed.spikes[name], s)


def test_fixed_point_reports_the_error_of_unrepresentable_weights():
    graph = mlp_graph()
    graph.nodes["fc1"].weight = RNG.normal(size=(5, 6)).astype(np.float32) * 1e-3
    graph.nodes["fc1"].weight[0, 0] = 1.0      # one large weight leaves the small ones coarse
    x = (RNG.integers(-12, 13, size=(3, 6)) / 4).astype(np.float32)
    report = run_lava(graph, x, timesteps=2, fixed_point=True).fixed_point_report
    fc1 = next(r for r in report if r.node == "fc1")
    # rounding to the grid set by the largest weight: at most half a step (max |w| = 1) ...
    assert 0 < fc1.max_rel_error <= fc1.weight_step / 2
    # ... which wipes out the small weights: a large error relative to the typical weight
    assert fc1.mean_rel_error > 0.01
    assert fc1.payload_bits == 8      # the 8-bit quantized input


def test_every_unsupported_node_is_listed_before_any_process_is_built(monkeypatch):
    graph = _graph({
        "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
        "binary_if": nir.IF(r=np.ones((1, 4, 4)), v_threshold=np.ones((1, 4, 4)), v_reset=np.zeros((1, 4, 4))),
        "lif": nir.LIF(tau=np.ones(16), r=np.ones(16), v_leak=np.zeros(16), v_threshold=np.ones(16)),
        "half_flat": nir.Flatten(input_type={"input": np.array([1, 4, 4])}, start_dim=1),
        "odd_pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]),
                                  metadata={"pmsm": {"op": "median_pool2d", "version": 1}}),
        "q": _if(16),
        "output": nir.Output(output_type={"output": np.array([16])}),
    }, [("input", "binary_if"), ("binary_if", "odd_pool"), ("odd_pool", "half_flat"),
        ("half_flat", "lif"), ("lif", "q"), ("q", "output")])
    import pmsm.targets.lava.processes.network as network

    monkeypatch.setattr(network, "build", lambda *a, **k: pytest.fail("processes were built"))
    with pytest.raises(UnsupportedModelError) as err:
        Network(graph, timesteps=2)
    named = {name: op for name, op, _ in err.value.problems}
    assert named == {"binary_if": "IF", "lif": "LIF", "half_flat": "Flatten", "odd_pool": "SumPool2d"}
    assert err.value.target == "lava"
    assert "binary integrate-and-fire" in str(err.value)


@pytest.mark.slow
def test_trained_digits_cnn_agrees_with_the_nir_interpreter_in_every_lowering():
    """The bundled digits CNN, converted by the pipeline: the three lowerings give the same spikes,
    and float Lava agrees with the interpreter up to float re-association (Lava sums in float64,
    the interpreter in float32)."""
    from pathlib import Path

    from pmsm.pipeline import convert

    samples = Path(__file__).resolve().parent.parent / "samples"
    model, data = samples / "digits_cnn_pmsm_L2.onnx", samples / "digits_test.npz"
    if not model.exists() or not data.exists():
        pytest.skip("samples/digits_cnn_pmsm_L2.onnx or digits_test.npz is missing")
    graph = convert(str(model), "lava", timesteps=1).nir_graph
    x = np.load(data)["x"][:120]
    for timesteps in (1, 2):
        ref = NirInterpreter(graph).run(x, timesteps, collect_spikes=True)
        lava = run_lava(graph, x, timesteps, collect_spikes=True)
        mismatched = sum(int((lava.spikes[k] != s).sum()) for k, s in ref.spikes.items())
        total = sum(int(np.abs(s).sum()) for s in ref.spikes.values())
        assert mismatched <= 1e-4 * total
        assert (lava.output.argmax(1) == ref.output.argmax(1)).all()
        _check_equal_runs(run_lava(graph, x, timesteps, collect_spikes=True, lowering="network"), lava)
        _check_equal_runs(run_lava(graph, x, timesteps, collect_spikes=True, lowering="synapse",
                                   conv_synapse="sparse"), lava)
    fixed = run_lava(graph, x, 1, fixed_point=True, collect_spikes=True)
    assert (fixed.output.argmax(1) == ref.output.argmax(1)).mean() >= 0.95
    assert not any(getattr(r, "overflow", False) for r in fixed.fixed_point_report)
    _check_equal_runs(run_lava(graph, x, 1, fixed_point=True, collect_spikes=True, lowering="synapse"), fixed)


def test_fixed_point_reports_each_layer_whose_state_overflows_24_bits():
    """A neuron driven beyond its clip range keeps the excess in its state, step after step: the
    state outgrows the bound the state scale was chosen for (the input's, plus one spike)."""
    graph = _graph({
        "input": nir.Input(input_type={"input": np.array([64])}),
        "fc1": nir.Affine(weight=np.full((5, 64), 1 / 64, np.float32), bias=np.zeros(5, np.float32)),
        "q1": _if(5, lo=-2, hi=2),
        "fc2": nir.Affine(weight=_dyadic((3, 5)), bias=_dyadic(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, [("input", "fc1"), ("fc1", "q1"), ("q1", "fc2"), ("fc2", "output")])
    x = np.full((2, 64), 4.0, np.float32)          # q1 receives 4 levels a step, sends 2
    short = run_lava(graph, x, timesteps=2, fixed_point=True).fixed_point_report
    assert not any(getattr(r, "overflow", False) or getattr(r, "overflow_count", 0) for r in short)
    report = run_lava(graph, x, timesteps=48, fixed_point=True).fixed_point_report
    q1 = next(r for r in report if r.node == "q1")
    assert q1.overflow and q1.state_bits == 25 and q1.overflow_count > 0
    assert not next(r for r in report if r.node == "fc1").overflow_count


def test_the_compiler_is_told_every_model_and_discovers_none(monkeypatch):
    from lava.magma.compiler.compiler_graphs import ProcGroupDiGraphs

    def no_discovery(*args, **kwargs):
        raise AssertionError("Lava searched for a process model")

    monkeypatch.setattr(ProcGroupDiGraphs, "_find_proc_models", staticmethod(no_discovery))
    x = (RNG.integers(-8, 9, size=(2, 2, 7, 9)) / 4).astype(np.float32)
    for lowering in ("layer", "synapse"):
        for fixed in (False, True):
            run_lava(conv_graph(), x, timesteps=1, lowering=lowering, fixed_point=fixed)


def test_a_depthwise_convolution_beyond_lavas_group_limit_still_runs_in_lavas_conv():
    channels = 130                  # Lava's Conv keeps its group count in 8 signed bits
    weight = np.zeros((channels, channels, 3, 3), np.float32)
    weight[np.arange(channels), np.arange(channels)] = _dyadic((channels, 3, 3))
    graph = _graph({
        "input": nir.Input(input_type={"input": np.array([channels, 2, 2])}),
        "depthwise": nir.Conv2d(input_shape=(2, 2), weight=weight, stride=1, padding=1, dilation=1, groups=1,
                                bias=np.zeros(channels, np.float32)),
        "q": _if((channels, 2, 2)),
        "output": nir.Output(output_type={"output": np.array([channels, 2, 2])}),
    }, [("input", "depthwise"), ("depthwise", "q"), ("q", "output")])
    assert lower(check_graph(graph)).steps[0].params["groups"] == channels
    x = (RNG.integers(-8, 9, size=(2, channels, 2, 2)) / 4).astype(np.float32)
    _check_equal_runs(run_lava(graph, x, timesteps=1, collect_spikes=True, lowering="synapse"),
                      run_lava(graph, x, timesteps=1, collect_spikes=True))


# ----------------------------------------------------------------- regions of hybrid deployments
def two_port_graph():
    """Two inputs summed into one neuron layer; its spikes leave by one output, a linear layer of
    them by another (a region of a deployment reads a residual branch and a host tensor)."""
    return _graph({
        "a": nir.Input(input_type={"input": np.array([6])}),
        "b": nir.Input(input_type={"input": np.array([6])}),
        "fa": nir.Affine(weight=_dyadic((5, 6)), bias=_dyadic(5, 4, 4)),
        "fb": nir.Affine(weight=_dyadic((5, 6)), bias=np.zeros(5, np.float32)),
        "q": _if(5, lo=-2, hi=2),
        "fc": nir.Affine(weight=_dyadic((3, 5)), bias=_dyadic(3)),
        "spikes": nir.Output(output_type={"output": np.array([5])}),
        "current": nir.Output(output_type={"output": np.array([3])}),
    }, [("a", "fa"), ("b", "fb"), ("fa", "q"), ("fb", "q"), ("q", "spikes"), ("q", "fc"), ("fc", "current")])


def test_a_graph_with_two_inputs_and_two_outputs_gets_a_port_for_each_and_one_core_reads_both():
    from pmsm.targets.lava.graph import analyse
    from pmsm.targets.lava.plan import input_key

    view = analyse(two_port_graph())
    assert view.inputs == ("a", "b") and view.outputs == ("spikes", "current")
    plan = lower(view, synapse_latency=0)
    assert [p.node for p in plan.inputs] == ["a", "b"] and [p.node for p in plan.outputs] == ["spikes", "current"]
    cores = partition(plan, 1)
    assert set(cores.cores[0].reads) == {input_key(0), input_key(1)}
    assert [i.source for i in cores.cores[0].inputs] == [input_key(1), input_key(0)]
    with pytest.raises(BadInputError, match="one Input and one Output"):
        run_lava(two_port_graph(), RNG.normal(size=(2, 6)), 1)


def test_a_core_with_rows_computes_every_row_as_a_sample_of_its_own(tmp_path):
    """A region applied to every token of a sequence: one core, each message carrying the rows one
    after another, each row with its own membranes: the same as one core per row."""
    from pmsm.targets.lava.build import build_cores
    from pmsm.targets.lava.graph import analyse
    from pmsm.targets.lava.program import FloatRunner

    view = analyse(mlp_graph())
    plan = lower(view, synapse_latency=0)
    programs = {}
    for rows in (1, 3):
        folder = tmp_path / str(rows)
        folder.mkdir()
        lowered = build_cores(view, plan, None, partition(plan, 1 << 30), 2, str(folder), rows=rows)
        programs[rows] = lowered.processes[0].proc_params["program"]
    together = FloatRunner(programs[3])
    apart = [FloatRunner(programs[1]) for _ in range(3)]
    x = RNG.normal(size=(6, 3, 6))
    for k in range(6):
        spikes, outputs = together.step(k, [x[k].reshape(-1)])
        alone = [runner.step(k, [x[k, r]]) for r, runner in enumerate(apart)]
        assert np.array_equal(outputs[0], np.concatenate([o[0] for _, o in alone]))
