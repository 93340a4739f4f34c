"""Reference backend: the ai.pmsm::MultiSpikeNeuron kernel, spiking/source execution, QONNX kernels."""
import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime_extensions
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime import ortop
from pmsm.runtime.execute import ExecutionError, AnnRunner, SpikingModel, SpikingResult
from pmsm.exporter.convert import spiking_from_network
from pmsm.runtime.neuron import NeuronParams, run, step
from pmsm.runtime.schema import NEURON_DOMAIN_VERSION

RNG = np.random.default_rng(0)
K = 6  # features
H = 4  # hidden units of the second layer


def _const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _model(nodes, inputs, outputs, initializers, opset=17, ir_version=10, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(ortop.PMSM_DOMAIN, NEURON_DOMAIN_VERSION)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, functions=list(functions))


def _neuron(name, z, s, p: NeuronParams):
    """A neuron of the untimed network (``MultiSpikeNeuron(z, timesteps)``), as the rewrite writes it."""
    return helper.make_node(
        ortop.NEURON_OP, [z, "timesteps"], [s], name=name, domain=ortop.PMSM_DOMAIN,
        lo=p.lo, hi=p.hi, v_init=p.v_init, rounding=p.rounding,
    )


def spiking_model(scale, params, opset=17, hidden=False, batch="N", ir_version=10):
    """``x -> Div(scale) -> neuron_0 -> Mul(scale) [-> MatMul(W) -> Div -> neuron_1 -> Mul] -> y``
    in the spiking ONNX format (its untimed network put in the time loop by the exporter)."""
    out_features = H if hidden else K
    nodes = [
        helper.make_node("Div", ["x", "scale"], ["z0"], name="div0"),
        _neuron("neuron_0", "z0", "s0", params),
        helper.make_node("Mul", ["s0", "scale"], ["a0" if hidden else "y"], name="mul0"),
    ]
    inits = [_const("scale", scale)]
    if hidden:
        inits.append(_const("w", RNG.normal(size=(K, H)) * 0.5))
        nodes += [
            helper.make_node("MatMul", ["a0", "w"], ["h"], name="fc1"),
            helper.make_node("Div", ["h", "scale"], ["z1"], name="div1"),
            _neuron("neuron_1", "z1", "s1", params),
            helper.make_node("Mul", ["s1", "scale"], ["y"], name="mul1"),
        ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, K]),
        helper.make_tensor_value_info("timesteps", TensorProto.INT64, []),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_features])]
    network = _model(nodes, inputs, outputs, inits, opset=opset, ir_version=ir_version)
    model = spiking_from_network(network).model
    onnx.checker.check_model(model)
    return model


def qdq_model(scale, zero_point, dtype):
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq"),
    ]
    inits = [_const("scale", scale), _const("zp", zero_point, dtype)]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])],
        inits, opset=20,
    )


def probe(n, scale):
    x = (RNG.normal(size=(n, K)) * 40 * scale).astype(np.float32)
    x[0] = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32) * np.float32(scale)  # rounding ties
    x[1, :2] = np.array([-1000, 1000], np.float32) * np.float32(scale)  # beyond any clip bound
    return x


QDQ_CASES = {"int8": (np.int8, 0, -128, 127), "uint8_zp3": (np.uint8, 3, 0, 255)}


@pytest.mark.parametrize("case", QDQ_CASES)
@pytest.mark.parametrize("opset", [17, 20])
def test_t1_equals_numpy_neuron_and_qdq_source_bit_for_bit(case, opset):
    dtype, zp, qmin, qmax = QDQ_CASES[case]
    scale = np.float32(0.25)
    params = NeuronParams(lo=qmin - zp, hi=qmax - zp, v_init=0.0, rounding="half_even")
    x = probe(33, scale)
    res = SpikingModel(spiking_model(scale, params, opset=opset)).run(x, timesteps=1, collect_spikes=True)
    z = (x / scale).astype(np.float32)
    spikes = run(z[None], params)[0]
    np.testing.assert_array_equal(res.spikes["neuron_0"][0], spikes)
    assert np.array_equal(res.output, (spikes * scale).astype(np.float32))
    (ann,) = AnnRunner(qdq_model(scale, zp, dtype)).run(x)
    assert float(np.max(np.abs(res.output - ann))) == 0.0
    assert spikes.min() == params.lo and spikes.max() == params.hi  # both clip bounds are exercised


@pytest.mark.parametrize("rounding,v_init", [("floor", 0.5), ("half_even", 0.0)])
@pytest.mark.parametrize("timesteps", [2, 3, 5])
def test_spikes_per_step_equal_the_numpy_neuron(rounding, v_init, timesteps):
    scale = np.float32(0.5)
    params = NeuronParams(lo=-3, hi=3, v_init=v_init, rounding=rounding)
    x = probe(7, scale) * np.float32(0.1)
    res = SpikingModel(spiking_model(scale, params, hidden=True)).run(x, timesteps, collect_spikes=True)
    assert isinstance(res, SpikingResult) and res.timesteps == timesteps
    assert set(res.spikes) == {"neuron_0", "neuron_1"}
    z = np.broadcast_to((x / scale).astype(np.float32), (timesteps,) + x.shape)
    np.testing.assert_array_equal(res.spikes["neuron_0"], run(z, params))
    assert res.spikes["neuron_0"].shape == (timesteps, 7, K) and res.spikes["neuron_1"].shape == (timesteps, 7, H)
    assert res.spikes["neuron_1"].dtype == np.float32
    assert res.output.shape == (7, H)
    np.testing.assert_allclose(res.output, (res.spikes["neuron_1"] * scale).mean(axis=0), rtol=1e-6, atol=1e-7)


def test_second_layer_spikes_equal_the_numpy_neuron_on_the_first_layers_spikes():
    scale = np.float32(0.5)
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    model = spiking_model(scale, params, hidden=True)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    x = probe(5, scale) * np.float32(0.1)
    res = SpikingModel(model).run(x, 4, collect_spikes=True)
    a0 = (res.spikes["neuron_0"] * scale).astype(np.float32)
    z1 = ((a0 @ w).astype(np.float32) / scale).astype(np.float32)
    np.testing.assert_array_equal(res.spikes["neuron_1"], run(z1, params))


def test_batches_and_fixed_batch_dimension_give_the_same_result():
    scale = np.float32(0.5)
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    x = probe(5, scale) * np.float32(0.1)
    full = SpikingModel(spiking_model(scale, params)).run(x, 3, collect_spikes=True)
    split = SpikingModel(spiking_model(scale, params)).run(x, 3, collect_spikes=True, batch_size=2)
    fixed = SpikingModel(spiking_model(scale, params, batch=2)).run(x, 3, collect_spikes=True)
    for other in (split, fixed):
        np.testing.assert_array_equal(other.output, full.output)
        np.testing.assert_array_equal(other.spikes["neuron_0"], full.spikes["neuron_0"])
    assert full.spikes["neuron_0"].shape == (3, 5, K)
    with pytest.raises(BadInputError, match="batch_size"):
        SpikingModel(spiking_model(scale, params)).run(x, 3, batch_size=0)


def test_error_inside_the_op_raises_and_the_process_survives():
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    broken_model = spiking_model(np.float32(0.5), params)
    initial = next(n for n in broken_model.graph.node if n.op_type == "Constant" and "v_init" in n.name)
    initial.attribute[0].t.CopyFrom(numpy_helper.from_array(np.full(5, 0.5, np.float32), initial.output[0]))
    broken = SpikingModel(broken_model)  # its initial membrane has a shape no input has
    x = np.ones((3, K), np.float32)
    with pytest.raises(ExecutionError, match=r"membrane of shape \(5,\) does not match z of shape \(3, 6\)"):
        broken.run(x, 2)
    # on a raw ORT session the kernel records the error and returns zeros instead of aborting
    lone = _model(
        [helper.make_node(ortop.NEURON_OP, ["x", "u"], ["s", "u_next"], name="n", domain=ortop.PMSM_DOMAIN,
                          lo=-2, hi=2, v_init=0.5, rounding="floor")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info("u_next", TensorProto.FLOAT, ["N", K])], [],
    )
    so = ort.SessionOptions()
    so.register_custom_ops_library(ortop.get_library_path())
    sess = ort.InferenceSession(lone.SerializeToString(), so)
    ortop.clear_op_errors()
    s, _ = sess.run(None, {"x": x, "u": np.zeros(2, np.float32)})
    assert s.shape == x.shape and not s.any()
    errors = ortop.take_op_errors()
    assert len(errors) == 1 and "does not match" in errors[0] and "MultiSpikeNeuron(lo=-2" in errors[0]
    # a later session still works
    res = SpikingModel(spiking_model(np.float32(0.5), params)).run(x, 2)
    assert res.output.shape == (3, K)
    with pytest.raises(BadInputError, match="timesteps"):
        broken.run(x, 0)


def _neuron_kernel_id():
    kernels = onnxruntime_extensions._pmsm_array_kernels
    return next(k for k, opdef in kernels.items() if opdef.op_type == f"{ortop.PMSM_DOMAIN}::{ortop.NEURON_OP}")


class _Counting:
    """Stands in for a kernel's Opdef in the dispatcher's table, counting the calls that reach it."""

    def __init__(self, opdef):
        self.opdef, self.calls = opdef, 0
        self.op_type, self._nativedef, self.cast_attributes = opdef.op_type, opdef._nativedef, opdef.cast_attributes

    def body(self, *inputs, **attrs):
        self.calls += 1
        return self.opdef.body(*inputs, **attrs)


def test_onnx_runtime_calls_the_kernel_through_the_array_dispatcher(monkeypatch):
    # onnxruntime-extensions' own dispatcher looks kernels up in Opdef._odlist and returns lists; ours
    # looks them up in its own table: a run that reaches the stand-in went through ours
    kernels = onnxruntime_extensions._pmsm_array_kernels
    k_id = _neuron_kernel_id()
    counting = _Counting(kernels[k_id])
    monkeypatch.setitem(kernels, k_id, counting)
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    x = probe(9, 0.5) * np.float32(0.1)
    res = SpikingModel(spiking_model(np.float32(0.5), params, hidden=True)).run(x, 3, collect_spikes=True)
    assert counting.calls == 6  # two neurons, three steps
    z = np.broadcast_to((x / np.float32(0.5)).astype(np.float32), (3,) + x.shape)
    np.testing.assert_array_equal(res.spikes["neuron_0"], run(z, params))


def test_dispatcher_answers_with_float32_arrays_and_passes_other_ops_to_the_library():
    k_id = _neuron_kernel_id()
    handed_on = []
    dispatch = ortop._dispatch_to(lambda *call: handed_on.append(call) or "library", onnxruntime_extensions._pmsm_array_kernels)
    z = np.array([[0.5, -0.0, 2.6], [-7.0, 1.5, -0.4]], np.float32)
    attrs = {"hi": "2", "lo": "-2", "rounding": "half_even", "v_init": "0.0"}
    for u in (np.array(0.0, np.float32), np.zeros((1, 1), np.float32), np.full(z.shape, 0.25, np.float32)):
        answer = dispatch(k_id, [z, u], attrs)
        assert answer[0] == k_id and answer[1] == z.shape and answer[3] == z.shape
        want_u, want_s = step(np.asarray(u, np.float32).reshape(()) if u.size == 1 else u, z,
                              NeuronParams(lo=-2, hi=2, v_init=0.0, rounding="half_even"))
        for flat, want in ((answer[2], want_s), (answer[4], want_u)):
            assert isinstance(flat, np.ndarray) and flat.dtype == np.float32 and flat.flags["C_CONTIGUOUS"]
            assert np.array_equal(flat.view(np.uint32), want.reshape(-1).view(np.uint32))  # -0.0 included
    assert dispatch(12345, ["feed"], {"a": "1"}) == "library" and handed_on == [(12345, ["feed"], {"a": "1"})]


def test_dispatcher_records_a_failure_outside_the_kernel_and_returns_zeros():
    class Broken:
        op_type = "ai.pmsm::Broken"

        class _nativedef:  # noqa: N801 - mimics the extensions' Opdef
            output_types = [1, 1]

        @staticmethod
        def cast_attributes(attributes):
            raise ValueError("bad attribute")

    dispatch = ortop._dispatch_to(None, {7: Broken})
    ortop.clear_op_errors()
    answer = dispatch(7, [np.ones((2, 3), np.float32)], {"a": "x"})
    assert answer[0] == 7 and answer[1] == answer[3] == (2, 3)
    assert not answer[2].any() and not answer[4].any() and answer[2].size == 6
    errors = ortop.take_op_errors()
    assert len(errors) == 1 and "ai.pmsm::Broken" in errors[0] and "bad attribute" in errors[0]


def test_input_mismatch_is_a_bad_input_error_naming_the_input():
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    model = SpikingModel(spiking_model(np.float32(0.5), params))
    with pytest.raises(BadInputError, match=r"input 'x' expects float32 \[N, 6\], got float32 array of shape \(3, 5\)"):
        model.run(np.ones((3, 5), np.float32), 1)
    with pytest.raises(BadInputError, match=r"input 'x' expects float32 \[N, 6\].*rank 3"):
        model.run(np.ones((3, K, 1), np.float32), 1)
    with pytest.raises(BadInputError, match="dtype"):
        model.run(np.full((3, K), "a"), 1)
    x = np.ones((3, K), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(BadInputError, match="NaN"):
        model.run(x, 1)
    with pytest.raises(BadInputError, match="inf"):
        AnnRunner(qdq_model(np.float32(0.25), 0, np.int8)).run(np.full((2, K), 1e39))
    # float64 and integer data are converted
    np.testing.assert_array_equal(model.run(np.ones((3, K)), 1).output, model.run(np.ones((3, K), np.int64), 1).output)


def test_model_level_errors():
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    model = spiking_model(np.float32(0.5), params)
    model.ir_version = 11
    SpikingModel(model)
    model.ir_version = 12
    with pytest.raises(BadInputError, match="IR version 12"):
        SpikingModel(model)
    model.ir_version = 10
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    loop = next(n for n in bad.graph.node if n.op_type == "Loop")
    neuron = next(n for n in loop.attribute[0].g.node if n.name == "neuron_0")
    neuron.attribute.remove(next(a for a in neuron.attribute if a.name == "v_init"))
    with pytest.raises(BadInputError, match=r"node 'neuron_0'.*v_init"):
        SpikingModel(bad)
    with pytest.raises(BadInputError, match="not a spiking ONNX model"):
        SpikingModel(qdq_model(np.float32(0.25), 0, np.int8))
    old_format = onnx.ModelProto()
    old_format.CopyFrom(model)
    onnx.helper.set_model_props(old_format, {"pmsm.format": "spiking-onnx/1"})
    with pytest.raises(BadInputError, match="convert the source again"):
        SpikingModel(old_format)
    with pytest.raises(BadInputError, match="no such file"):
        AnnRunner("/nonexistent/model.onnx")


def test_registered_kernel_wins_over_a_model_local_function():
    body = helper.make_function(
        ortop.PMSM_DOMAIN, ortop.NEURON_OP, ["z", "u"], ["s", "u_next"],
        [helper.make_node("Neg", ["z"], ["s"]), helper.make_node("Identity", ["z"], ["u_next"])],
        [helper.make_opsetid("", 17)], attributes=list(ortop.NEURON_ATTRIBUTES),
    )
    params = NeuronParams(lo=-2, hi=2, v_init=0.5, rounding="floor")
    x = probe(4, 0.5) * np.float32(0.1)
    model = spiking_model(np.float32(0.5), params)
    plain = SpikingModel(model).run(x, 2)
    del model.functions[:]
    model.functions.append(body)
    np.testing.assert_array_equal(SpikingModel(model).run(x, 2).output, plain.output)
    assert not np.array_equal(SpikingModel(model, portable=True, lean=False).run(x, 2).output, plain.output)


def qonnx_model(domain, attrs, op="Quant", scale=0.5):
    inputs = ["x", "scale"] if op == "BipolarQuant" else ["x", "scale", "zeropt", "bitwidth"]
    node = helper.make_node(op, inputs, ["y"], name="quant", domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[_const("scale", scale), _const("zeropt", 0.0), _const("bitwidth", 3.0)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


QONNX_X = np.array([[0.25, 0.75, -0.25, -0.8], [1.3, 2.9, -3.1, -1.75]], np.float32)


@pytest.mark.parametrize("domain,op", [(d, "Quant") for d in ortop.QONNX_DOMAINS] + [(ortop.QONNX_DOMAINS[0], "IntQuant")])
def test_qonnx_quant_source_model_equals_a_hand_computation(domain, op):
    # scale 0.5, 3 bits signed: levels -4..3 (narrow: -3..3); x / 0.5 = [[.5, 1.5, -.5, -1.6], [2.6, 5.8, -6.2, -3.5]]
    expected = {
        (): [[0.0, 1.0, -0.0, -1.0], [1.5, 1.5, -2.0, -2.0]],  # defaults: signed, not narrow, ROUND (half even)
        (("narrow", 1),): [[0.0, 1.0, -0.0, -1.0], [1.5, 1.5, -1.5, -1.5]],
        (("rounding_mode", "FLOOR"),): [[0.0, 0.5, -0.5, -1.0], [1.0, 1.5, -2.0, -2.0]],
        (("rounding_mode", "CEIL"),): [[0.5, 1.0, -0.0, -0.5], [1.5, 1.5, -2.0, -1.5]],
        (("rounding_mode", "ROUND_TO_ZERO"),): [[0.0, 0.5, -0.0, -0.5], [1.0, 1.5, -2.0, -1.5]],
        (("signed", 0),): [[0.0, 1.0, 0.0, 0.0], [1.5, 3.0, 0.0, 0.0]],  # levels 0..7
    }
    for attrs, want in expected.items():
        (y,) = AnnRunner(qonnx_model(domain, dict(attrs), op)).run(QONNX_X)
        np.testing.assert_array_equal(y, np.array(want, np.float32), err_msg=str(attrs))
    (y,) = AnnRunner(qonnx_model(domain, {}, "BipolarQuant")).run(QONNX_X)
    np.testing.assert_array_equal(y, np.where(QONNX_X >= 0, 0.5, -0.5).astype(np.float32))
    # per-channel scale: channel 1 at scale 1 -> [1, 3 (clip)], the others as above
    (y,) = AnnRunner(qonnx_model(domain, {}, op, scale=[[0.5, 1.0, 0.5, 0.5]])).run(QONNX_X)
    np.testing.assert_array_equal(y, np.array([[0.0, 1.0, -0.0, -1.0], [1.5, 3.0, -2.0, -2.0]], np.float32))


def test_qonnx_quant_numpy_semantics():
    x = (RNG.normal(size=(64, 3)) * 4).astype(np.float32)
    scale = np.array([0.3, 0.7, 1.1], np.float32)
    y = ortop.qonnx_quant(x, scale, 2.0, 4, signed=False, narrow=True, rounding_mode="ROUND")
    q = np.clip(np.rint((x / scale).astype(np.float32) + np.float32(2)), 0, 14)
    np.testing.assert_array_equal(y, ((q - 2) * scale).astype(np.float32))
    assert ortop.qonnx_int_range(8, True, True) == (-127, 127)
    np.testing.assert_array_equal(
        ortop.qonnx_quant(np.array([0.5, 1.5, -0.5, -2.5], np.float32), 1.0, 0.0, 8, rounding_mode="HALF_UP"), [1, 2, -1, -3]
    )
    # the kernel records (never raises) and the wrapper raises after the run
    model = qonnx_model(ortop.QONNX_DOMAINS[0], {"rounding_mode": "NEAREST"})
    with pytest.raises(ExecutionError, match="NEAREST"):
        AnnRunner(model).run(QONNX_X)


def test_source_model_backends_on_qdq():
    model = qdq_model(np.float32(0.25), 3, np.uint8)
    x = probe(9, 0.25)
    ref, opt = AnnRunner(model), AnnRunner(model, optimized=True)
    assert (ref.backend, opt.backend) == ("ann", "ann_ort_opt")
    np.testing.assert_array_equal(ref.run(x)[0], opt.run(x, batch_size=4)[0])
