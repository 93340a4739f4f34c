"""The standard-ONNX body of ai.pmsm::MultiSpikeNeuron (pmsm.runtime.portable) against the reference.

Equality here is bit for bit (float32 bit patterns, so the sign of a zero spike counts too): the
function body run by stock ONNX Runtime against the numpy neuron, and whole spiking models run with
the body (``SpikingModel(..., portable=True)``) against the same models run with the custom op.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, build_qdq_mlp
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime import portable
from pmsm.exporter.convert import to_spiking_onnx
from pmsm.runtime import ortop
from pmsm.runtime.execute import ExecutionError, SpikingModel
from pmsm.exporter.convert import spiking_from_network
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.runtime.schema import NEURON_DOMAIN_VERSION

RNG = np.random.default_rng(7)
TIMESTEPS = (1, 2, 4)
OPSETS = (12, 13, 17, 18, 19, 20, 21, 23)  # 12..18 compare strings with Unique, 19+ with Equal

# floor/half_even, signed/unsigned bounds, v_init 0.5/0 (and -0.0), a bound of 0 on either side
PARAMS = {
    "floor_signed": NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor"),
    "floor_unsigned": NeuronParams(lo=0, hi=3, v_init=0.5, rounding="floor"),
    "floor_v0": NeuronParams(lo=-4, hi=4, v_init=0.0, rounding="floor"),
    "floor_minus_zero": NeuronParams(lo=0, hi=2, v_init=-0.0, rounding="floor"),
    "floor_minus_zero_signed": NeuronParams(lo=-2, hi=2, v_init=-0.0, rounding="floor"),
    "half_even_int8": NeuronParams(lo=-128, hi=127, v_init=0.0, rounding="half_even"),
    "half_even_uint8": NeuronParams(lo=0, hi=255, v_init=0.0, rounding="half_even"),
    "half_even_uint8_zp3": NeuronParams(lo=-3, hi=252, v_init=0.0, rounding="half_even"),
    "half_even_nonpositive": NeuronParams(lo=-2, hi=0, v_init=0.0, rounding="half_even"),
    "half_even_v05": NeuronParams(lo=-1, hi=1, v_init=0.5, rounding="half_even"),
}

SPECIAL = np.array([
    0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.25, -0.25, -0.4, 0.4, -0.0, 0.0,  # rounding ties, signed zeros
    1000.0, -1000.0, 3.5, -3.5, 126.5, 127.5, -128.5, 255.5, 1e30, -1e30,  # at and beyond the caps
], np.float32)


def bits(a) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.view(np.uint32)


def assert_bits_equal(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    differ = bits(got) != bits(want)
    assert not differ.any(), f"{what}: {int(differ.sum())} element(s) differ, e.g. {got[differ][:4]} vs {want[differ][:4]}"


def neuron_node(name, z, s, p: NeuronParams, u="timesteps", u_next=None):
    """A neuron node: of the untimed network by default (``(z, timesteps) -> s``), or one timestep
    with its membrane (``(z, u) -> (s, u_next)``) as the spiking model runs it."""
    return helper.make_node(portable.OP, [z, u], [s] + ([u_next] if u_next else []), name=name,
                            domain=portable.DOMAIN, lo=p.lo, hi=p.hi, v_init=p.v_init, rounding=p.rounding)


def session(model: onnx.ModelProto, optimized=False, custom_ops=False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if custom_ops:
        so.register_custom_ops_library(ortop.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def neuron_bank(opset: int, shape_tail=(3, 5), params=PARAMS) -> onnx.ModelProto:
    """One timestep of one neuron per parameter set, all reading ``z [L, *shape_tail]``, each with
    its membrane ``u_<key>`` in and ``u_next_<key>`` out."""
    dims = ["L", *shape_tail]
    nodes = [neuron_node(key, "z", f"s_{key}", p, u=f"u_{key}", u_next=f"u_next_{key}") for key, p in params.items()]
    graph = helper.make_graph(
        nodes, "bank",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, dims)]
        + [helper.make_tensor_value_info(f"u_{key}", TensorProto.FLOAT, dims) for key in params],
        [helper.make_tensor_value_info(f"{kind}_{key}", TensorProto.FLOAT, dims) for key in params
         for kind in ("s", "u_next")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(portable.DOMAIN, NEURON_DOMAIN_VERSION)],
                              ir_version=10, functions=[portable.neuron_function(opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def z_input(rows=3, tail=(3, 5), special=True):
    z = (RNG.normal(size=(rows, *tail)) * 3).astype(np.float32)
    z.reshape(rows, -1)[:, 0] = np.round(z.reshape(rows, -1)[:, 0] * 2) / 2  # halves: ties at every step
    if special:
        flat = z.reshape(-1)
        flat[: SPECIAL.size] = SPECIAL
        flat[-SPECIAL.size:] = SPECIAL[::-1]
    return z


def run_steps(sess, params, steps):
    """Run the bank over ``steps`` (a list of z), carrying each membrane; returns the spikes per key
    and per step, and the numpy neuron's."""
    got = {key: [] for key in params}
    want = {key: [] for key in params}
    u_onnx = {key: initial_membrane(steps[0].shape, p) for key, p in params.items()}
    u_numpy = dict(u_onnx)
    for z in steps:
        feed = {"z": z, **{f"u_{key}": u for key, u in u_onnx.items()}}
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
        for key, p in params.items():
            got[key].append(outs[f"s_{key}"])
            u_onnx[key] = outs[f"u_next_{key}"]
            u_numpy[key], s = step(u_numpy[key], z, p)
            want[key].append(s)
    return got, want


# ---------------------------------------------------------------------------------------------
# The function body alone, against the numpy neuron
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", OPSETS)
def test_function_body_equals_the_numpy_neuron_bit_for_bit(opset):
    model = neuron_bank(opset)
    for optimized in (False, True):  # exact at ONNX Runtime's default level too
        sess = session(model, optimized=optimized)
        got, want = run_steps(sess, PARAMS, [z_input() for _ in range(max(TIMESTEPS))])
        for key in PARAMS:
            for t, (a, b) in enumerate(zip(got[key], want[key])):
                assert_bits_equal(a, b, f"opset {opset} optimized={optimized} {key} step {t}")


def test_function_body_is_exact_at_the_default_level_with_static_shapes():
    # with every dimension known, ONNX Runtime's optimizer sees more constants: the zero that turns
    # -0.0 into +0.0 must still not be folded and its Add dropped
    model = neuron_bank(21, shape_tail=(3, 5))
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 3
    got, want = run_steps(session(model, optimized=True), PARAMS, [z_input() for _ in range(3)])
    for key in PARAMS:
        for t, (a, b) in enumerate(zip(got[key], want[key])):
            assert_bits_equal(a, b, f"{key} step {t}")


def _nodes_run(nodes, is_floor: bool, a_bound_is_0: bool) -> list[str]:
    """The ops ONNX Runtime runs for one call of the body: Constant nodes become initializers and
    run no kernel; an If runs itself and the branch its condition takes."""
    ran = []
    for node in nodes:
        if node.op_type == "Constant":
            continue
        ran.append(node.op_type)
        if node.op_type == "If":
            cond = {"pmsm_neuron/is_floor": is_floor, "pmsm_neuron/not_floor/is_half_even": not is_floor,
                    "pmsm_neuron/a_bound_is_0": a_bound_is_0}[node.input[0]]
            branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
            ran += _nodes_run(branch.node, is_floor, a_bound_is_0)
    return ran


@pytest.mark.parametrize("opset", [17, 21])
def test_function_body_runs_few_nodes_per_step(opset):
    # with optimizations off (the reference) every node of the inlined body runs at every step
    body = portable.neuron_function(opset).node
    strings = 0 if opset >= 19 else 4  # Reshape, Concat, Unique, Size before Equal, per comparison
    essential = ["Add", "Floor", "Clip", "Sub"]
    floor = _nodes_run(body, is_floor=True, a_bound_is_0=False)
    assert sorted(set(essential) - set(floor)) == [] and len(floor) == 12 + strings
    assert floor.count("Add") == 2  # v = u + z, and + 0.0 for every neuron (a zero spike is +0.0)
    half_even = _nodes_run(body, is_floor=False, a_bound_is_0=True)
    assert "Round" in half_even and "Floor" not in half_even and len(half_even) == 14 + 2 * strings


def test_function_body_equals_the_kernel_on_nan_inf_and_other_ranks():
    model = neuron_bank(17, shape_tail=())
    z = np.concatenate([SPECIAL, [np.nan, np.inf, -np.inf, 0.75]]).astype(np.float32)
    body, _ = run_steps(session(model), PARAMS, [z] * 4)
    kernel, numpy_neuron = run_steps(session(model, custom_ops=True), PARAMS, [z] * 4)
    for key in PARAMS:
        for t in range(4):
            assert_bits_equal(body[key][t], kernel[key][t], f"{key} step {t}")
            assert_bits_equal(body[key][t], numpy_neuron[key][t], f"{key} step {t}")
    rank4 = neuron_bank(20, shape_tail=(2, 3, 4))
    got, want = run_steps(session(rank4), PARAMS, [z_input(rows=2, tail=(2, 3, 4)) for _ in range(3)])
    for key in PARAMS:
        assert_bits_equal(np.stack(got[key]), np.stack(want[key]), f"rank 4 {key}")


@pytest.mark.parametrize("opset", [13, 20])
def test_function_body_rejects_an_unknown_rounding(opset):
    bad = neuron_bank(opset, shape_tail=(3,), params={"ok": PARAMS["floor_signed"]})
    next(a for a in bad.graph.node[0].attribute if a.name == "rounding").s = b"Floor"
    with pytest.raises(Exception, match="cannot be less than -1"):
        session(bad).run(None, {"z": np.ones((4, 3), np.float32), "u_ok": np.full((4, 3), 0.5, np.float32)})


def test_function_opset_range():
    for opset in (portable.MIN_OPSET - 1, portable.MAX_OPSET + 1):
        with pytest.raises(ValueError, match="opset"):
            portable.neuron_function(opset)
    fn = portable.neuron_function(13)
    assert (fn.domain, fn.name, list(fn.input), list(fn.output)) == ("ai.pmsm", "MultiSpikeNeuron", ["z", "u"],
                                                                     ["s", "u_next"])
    assert list(fn.attribute) == ["lo", "hi", "v_init", "rounding"]
    assert [(o.domain, o.version) for o in fn.opset_import] == [("", 13)]
    used = {n.op_type for n in fn.node}
    assert "Unique" in used and "Equal" in used
    assert all(n.domain == "" for n in fn.node)


# ---------------------------------------------------------------------------------------------
# Whole spiking models: SpikingModel(portable=True) against the custom op
# ---------------------------------------------------------------------------------------------


def hand_built(scale, params: NeuronParams, opset=17, features=6, hidden=4):
    """``x -> Div(scale) -> neuron -> Mul(scale) -> MatMul(W) -> Div(scale) -> neuron -> Mul(scale)``
    as a spiking ONNX model (the exporter's time loop around it), without the function body."""
    const = lambda name, v, dt=np.float32: numpy_helper.from_array(np.asarray(v, dtype=dt), name)  # noqa: E731
    nodes = [
        helper.make_node("Div", ["x", "scale"], ["z0"], name="div0"),
        neuron_node("neuron_0", "z0", "s0", params),
        helper.make_node("Mul", ["s0", "scale"], ["a0"], name="mul0"),
        helper.make_node("MatMul", ["a0", "w"], ["h"], name="fc1"),
        helper.make_node("Div", ["h", "scale"], ["z1"], name="div1"),
        neuron_node("neuron_1", "z1", "s1", params),
        helper.make_node("Mul", ["s1", "scale"], ["y"], name="mul1"),
    ]
    inits = [const("scale", scale), const("w", RNG.normal(size=(features, hidden)) * 0.7)]
    graph = helper.make_graph(
        nodes, "hand_built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features]),
         helper.make_tensor_value_info("timesteps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])],
        initializer=inits,
    )
    network = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                      helper.make_opsetid(portable.DOMAIN, NEURON_DOMAIN_VERSION)],
                                ir_version=10)
    model = spiking_from_network(network).model
    del model.functions[:]
    return model


def assert_same_run(model, x, timesteps=TIMESTEPS, what=""):
    reference, body = SpikingModel(model), SpikingModel(model, portable=True)
    for t in timesteps:
        want = reference.run(x, t, collect_spikes=True)
        got = body.run(x, t, collect_spikes=True)
        assert list(got.spikes) == list(want.spikes) and want.spikes
        for a, b, name in zip(got.outputs, want.outputs, want.output_names):
            assert_bits_equal(a, b, f"{what} T={t} output {name}")
        for key in want.spikes:
            assert_bits_equal(got.spikes[key], want.spikes[key], f"{what} T={t} spikes of {key}")


@pytest.mark.parametrize("key", list(PARAMS))
def test_hand_built_spiking_model_portable_equals_custom_op(key):
    params = PARAMS[key]
    scale = np.float32(0.25)
    x = (RNG.normal(size=(24, 6)) * 12 * scale).astype(np.float32)
    x[0] = SPECIAL[:6] * scale  # ties after Div(scale): 0.5, 1.5, 2.5, -0.5, ...
    x[1] = SPECIAL[12:18] * scale  # beyond the caps
    x[2] = np.float32(-0.1) * scale  # rounds to -0.0 with half_even
    model = hand_built(scale, params, opset=13 if "uint8" in key else 20)
    assert not model.functions
    assert_same_run(model, x, what=key)


def test_digits_sample_portable_equals_custom_op():
    spiking, neurons = to_spiking_onnx(onnx.load(os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx")))
    assert [(f.domain, f.name) for f in spiking.functions] == [("ai.pmsm", "MultiSpikeNeuron")]
    assert spiking.functions[0].opset_import[0].version == portable.default_opset(spiking) == 20
    onnx.checker.check_model(spiking, full_check=True)
    x = np.load(os.path.join(SAMPLES, "digits_test.npz"))["x"]
    assert len(neurons) == 4
    assert_same_run(spiking, x, what="digits_cnn_pmsm_L2")


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_qdq_model_at_several_opsets_portable_equals_custom_op(opset, tmp_path):
    source = build_qdq_mlp(seed=3, hidden=24, batch="N")
    del source.opset_import[:]
    source.opset_import.append(helper.make_opsetid("", opset))
    onnx.checker.check_model(source, full_check=True)
    spiking, neurons = to_spiking_onnx(source)
    assert len(neurons) == 2
    assert spiking.functions[0].opset_import[0].version == opset
    onnx.checker.check_model(spiking, full_check=True)
    x = RNG.uniform(0, 1.2, (40, 1, 8, 8)).astype(np.float32)
    x[0, 0, 0, :4] = np.array([0.5, 1.5, 2.5, 3.5], np.float32) / 255  # ties at the input quantizer
    assert_same_run(spiking, x, what=f"qdq opset {opset}")
    # a plain ONNX Runtime session, without this package's kernels, runs the saved file
    path = str(tmp_path / "spiking.onnx")
    onnx.save(spiking, path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    (y,) = ort.InferenceSession(path, so).run(None, {"x": x, "timesteps": np.array(2, np.int64)})
    assert_bits_equal(y, SpikingModel(spiking).run(x, 2).output, "plain session")


# ---------------------------------------------------------------------------------------------
# Which implementation runs
# ---------------------------------------------------------------------------------------------


def test_registered_kernel_wins_and_portable_runs_without_it(monkeypatch):
    calls = []

    def counting(u, z, params):
        calls.append(z.shape)
        return step(u, z, params)

    monkeypatch.setattr(ortop, "step", counting)  # the kernel looks the name up per call
    model = hand_built(np.float32(0.5), PARAMS["floor_signed"])
    portable.attach_neuron_function(model)
    onnx.checker.check_model(model, full_check=True)
    x = (RNG.normal(size=(5, 6)) * 3).astype(np.float32)
    with_kernel = SpikingModel(model).run(x, 3)
    assert len(calls) == 6  # both neurons at each of the 3 steps ran through the custom op, function or not
    calls.clear()
    body = SpikingModel(model, portable=True).run(x, 3)
    assert calls == []  # no kernel call: ONNX Runtime ran the function body
    assert_bits_equal(body.output, with_kernel.output)


def test_attach_replaces_an_existing_body_and_skips_unsupported_opsets():
    model = hand_built(np.float32(0.5), PARAMS["floor_signed"])
    model.functions.append(helper.make_function(
        portable.DOMAIN, portable.OP, ["z", "u"], ["s", "u_next"],
        [helper.make_node("Neg", ["z"], ["s"]), helper.make_node("Identity", ["z"], ["u_next"])],
        [helper.make_opsetid("", 17)], attributes=list(portable.ATTRIBUTES)))
    x = (RNG.normal(size=(5, 6)) * 3).astype(np.float32)
    neg = SpikingModel(model, portable=True, lean=False).run(x, 2)  # the file's own body runs as written
    assert portable.attach_neuron_function(model)
    assert len(model.functions) == 1 and model.functions[0].node[0].op_type != "Neg"
    assert_bits_equal(SpikingModel(model, portable=True, lean=False).run(x, 2).output,
                      SpikingModel(model).run(x, 2).output)
    assert not np.array_equal(neg.output, SpikingModel(model).run(x, 2).output)

    old = hand_built(np.float32(0.5), PARAMS["floor_signed"], opset=11)
    assert not portable.attach_neuron_function(old) and not old.functions
    with pytest.raises(BadInputError, match="opset 11"):
        SpikingModel(old, portable=True, lean=False)


def test_portable_run_reports_a_membrane_of_the_wrong_shape():
    model = hand_built(np.float32(0.5), PARAMS["floor_signed"])
    initial = next(n for n in model.graph.node if n.op_type == "Constant" and "v_init" in n.name)
    initial.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full(5, 0.5, np.float32), initial.output[0]))
    for lean in (False, True):  # a file the lean form cannot load runs its function body
        with pytest.raises(ExecutionError, match="ONNX Runtime failed"):
            SpikingModel(model, portable=True, lean=lean).run(np.ones((3, 6), np.float32), 2)
