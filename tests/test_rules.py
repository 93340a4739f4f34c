"""The quantizer rules added for producers beyond the first ones, each on the smallest graph that shows it.

- ONNX Runtime's contrib ``com.microsoft::QuantizeLinear``/``DequantizeLinear`` (what
  ``quantize_static`` writes below opset 21 for 16- and 4-bit types, and AMD Quark at 8 bits):
  on activations they become neurons, on weights they stay as written;
- a clamp in front of a rounding bounds it when nothing after the rounding does, whether its
  bounds are whole levels or not;
- a source whose nodes are out of topological order is sorted (with a note), while the checker's
  other findings stay refusals.

Every conversion is proven by evaluation inside ``to_spiking_onnx`` and compared here with the source
at T = 1, through the custom op and through the standard-op body.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from test_exporter_passes import RNG, X, assert_t1_bit_exact, const, model, neuron_bounds, node, ops, run_source

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.exporter import quantizers
from pmsm.exporter.convert import check, to_spiking_onnx
from pmsm.exporter.loading import load_source
from pmsm.exporter.quantizers import NEURON_OP
from pmsm.runtime.execute import SpikingModel

MS = "com.microsoft"


def assert_t1_bit_exact_in_the_standard_op_body(m: onnx.ModelProto, x=X) -> None:
    spiking, _ = to_spiking_onnx(m)
    body = SpikingModel(spiking, portable=True).run(x, 1).output
    assert np.array_equal(run_source(m, x), body)


# ------------------------------------------------------------------------------ contrib Q/DQ


def _contrib_qdq_model(zero_point: onnx.TensorProto, scale=0.01, weight: onnx.TensorProto | None = None):
    """``x -> [MatMul(DQ(w))] -> com.microsoft Q -> com.microsoft DQ -> y``."""
    nodes, inits, source = [], [const("s", scale), zero_point], "x"
    if weight is not None:
        nodes += [node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="weight_dequant", domain=MS),
                  node("MatMul", ["x", "w"], ["h"])]
        zp_type = TensorProto.INT4 if weight.data_type == TensorProto.INT4 else TensorProto.INT8
        inits += [weight, const("w_s", 0.05), helper.make_tensor("w_zp", zp_type, [], [0])]
        source = "h"
    nodes += [node("QuantizeLinear", [source, "s", "zp"], ["q"], name="quant", domain=MS),
              node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant", domain=MS)]
    return model(nodes, inits, domains=[MS])


@pytest.mark.parametrize("zp_type, zp, bounds", [
    (TensorProto.INT16, -300, (-32468, 33067)),
    (TensorProto.UINT16, 1000, (-1000, 64535)),
    (TensorProto.UINT8, 7, (-7, 248)),
    (TensorProto.UINT4, 8, (-8, 7)),
    (TensorProto.INT4, 0, (-8, 7)),
], ids=["int16", "uint16", "uint8", "uint4", "int4"])
def test_contrib_qdq_pair_on_an_activation_becomes_a_neuron_with_its_type_range(zp_type, zp, bounds):
    m = _contrib_qdq_model(helper.make_tensor("zp", zp_type, [], [zp]), scale=0.001 if zp_type in (
        TensorProto.INT16, TensorProto.UINT16) else 0.3)
    graph = gs.import_onnx(m)
    records = quantizers.rewrite_qdq(graph)
    assert ops(graph) == ["Div", NEURON_OP, "Mul"]
    assert neuron_bounds(graph) == [(bounds[0], bounds[1], 0.0, "half_even")]
    assert [r.producer for r in records] == ["contrib-qdq"]
    x = RNG.normal(0, 40, (64, 6)).astype(np.float32)  # saturates both ends, also at 16 bits
    assert_t1_bit_exact(m, x)
    assert_t1_bit_exact_in_the_standard_op_body(m, x)


@pytest.mark.parametrize("weight_type", [TensorProto.INT8, TensorProto.INT4], ids=["int8", "int4"])
def test_contrib_dequantize_on_weights_stays_in_the_spiking_file_as_written(weight_type):
    values = RNG.integers(-8, 8, (6, 3)).tolist()
    weight = helper.make_tensor("w_q", weight_type, [6, 3], np.asarray(values).reshape(-1).tolist())
    m = _contrib_qdq_model(helper.make_tensor("zp", TensorProto.INT16, [], [0]), scale=0.001, weight=weight)
    spiking, _ = to_spiking_onnx(m)
    kept = [n for n in spiking.graph.node if n.domain == MS and n.op_type == "DequantizeLinear"]
    assert [n.name for n in kept] == ["weight_dequant"]
    assert any(t.data_type == weight_type for t in spiking.graph.initializer)  # the weights stay 4 or 8 bits
    assert_t1_bit_exact(m)
    assert_t1_bit_exact_in_the_standard_op_body(m)


def test_other_contrib_ops_keep_their_refusal():
    m = model([node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant", domain=MS),
               node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dequant", domain=MS),
               node("FastGelu", ["d"], ["y"], name="gelu", domain=MS)],
              [const("s", 0.1), helper.make_tensor("zp", TensorProto.INT16, [], [0])], domains=[MS])
    with pytest.raises(UnsupportedModelError) as refused:
        check(m)
    assert "gelu" in str(refused.value) and "custom op of domain 'com.microsoft'" in str(refused.value)
    assert "dequant" not in str(refused.value).replace("gelu", "")


def test_contrib_quantize_feeding_no_dequantize_is_refused_as_an_unpaired_quantizer():
    m = model([node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant", domain=MS),
               node("Cast", ["q"], ["y"], name="integer_consumer", to=TensorProto.FLOAT)],
              [const("s", 0.1), helper.make_tensor("zp", TensorProto.INT16, [], [0])], domains=[MS])
    problems = []
    quantizers.rewrite_qdq(gs.import_onnx(m), problems)
    assert [(name, op) for name, op, _ in problems] == [("integer_consumer", "Cast")]


# ------------------------------------------------------------------- a clamp before a rounding


def _clamp_then_round(clamps, *, shift=0.5, rounding="Floor", tail=()):
    """``x -> clamps -> Mul(4) -> [Add(shift)] -> rounding -> tail -> Mul(0.25) -> y``."""
    nodes, previous = [], "x"
    for index, (op, operands) in enumerate(clamps):
        out = f"c{index}"
        nodes.append(node(op, [previous, *operands], [out], name=f"clamp{index}"))
        previous = out
    nodes.append(node("Mul", [previous, "four"], ["scaled"]))
    if shift:
        nodes.append(node("Add", ["scaled", "shift"], ["shifted"]))
    nodes.append(node(rounding, ["shifted" if shift else "scaled"], ["r"], name="round"))
    previous = "r"
    for index, (op, operands) in enumerate(tail):
        out = f"t{index}"
        nodes.append(node(op, [previous, *operands], [out], name=f"after{index}"))
        previous = out
    nodes.append(node("Mul", [previous, "quarter"], ["y"]))
    inits = [const("four", 4.0), const("quarter", 0.25), const("shift", shift), const("zero", 0.0),
             const("hi", 0.75), const("hi_off_grid", 0.675), const("three", 3.0), const("minus", -0.5),
             const("lo_above_zero", 0.3)]
    return model(nodes, inits)


WIDE = RNG.normal(0, 2, (256, 6)).astype(np.float32)


@pytest.mark.parametrize("clamps, tail, bounds", [
    ([("Clip", ["zero", "hi"])], [], (0, 3)),  # clamp(x, 0, 3 levels) then floor(x + 0.5)
    ([("Relu", [])], [("Min", ["three"])], (0, 3)),  # relu, floor, min(., 3)
    ([("Clip", ["zero", "hi_off_grid"])], [], (0, 3)),  # 2.7 levels: floor(2.7 + 0.5) = 3
    ([("Max", ["minus"]), ("Min", ["hi"])], [], (-2, 3)),  # Max then Min, both before
    ([("Min", ["hi"])], [("Relu", [])], (0, 3)),  # only an upper clamp before, a Relu after
], ids=["clip-before", "relu-before-min-after", "clip-off-grid", "max-min-before", "min-before-relu-after"])
def test_clamp_before_a_rounding_becomes_the_neuron_bounds(clamps, tail, bounds):
    m = _clamp_then_round(clamps, tail=tail)
    spiking, records = to_spiking_onnx(m)  # proven by evaluation on every rounding boundary
    assert [(r.params.lo, r.params.hi) for r in records] == [bounds]
    assert not {"Clip", "Relu", "Min", "Max", "Floor"} & {n.op_type for n in spiking.graph.node}
    assert_t1_bit_exact(m, WIDE)
    assert_t1_bit_exact_in_the_standard_op_body(m, WIDE)


def test_round_half_even_with_a_relu_before_and_no_shift():
    m = _clamp_then_round([("Relu", [])], shift=0.0, rounding="Round", tail=[("Min", ["three"])])
    _, records = to_spiking_onnx(m)
    assert [(r.params.lo, r.params.hi, r.params.rounding) for r in records] == [(0, 3, "half_even")]
    assert_t1_bit_exact(m, WIDE)


def test_clamp_before_whose_bound_excludes_zero_is_refused_with_its_bounds():
    m = _clamp_then_round([("Max", ["lo_above_zero"])], tail=[("Min", ["three"])])
    with pytest.raises(UnsupportedModelError, match=r"bound it to \[1, 3\] levels, which excludes 0"):
        check(m)


def test_rounding_without_any_bound_is_still_refused_naming_both_places_for_a_clip():
    m = _clamp_then_round([("Min", ["hi"])])
    with pytest.raises(UnsupportedModelError, match="no lower clip bound.*clamp before it"):
        check(m)


def test_clamp_read_elsewhere_stays_and_the_rounding_is_refused():
    m = _clamp_then_round([("Relu", [])], tail=[("Min", ["three"])])
    m.graph.node.append(node("Neg", ["c0"], ["n"]))
    m.graph.output.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, None))
    with pytest.raises(UnsupportedModelError, match="no lower clip bound"):
        check(m)


# ------------------------------------------------------------------------ topological order


def _saved(m: onnx.ModelProto, tmp_path, name="model.onnx") -> str:
    path = str(tmp_path / name)
    onnx.save(m, path)
    return path


def _unsorted_qdq_model() -> onnx.ModelProto:
    m = model([node("Relu", ["x"], ["r"]),
               node("QuantizeLinear", ["r", "s", "zp"], ["q"], name="quant"),
               node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant")],
              [const("s", 0.05), const("zp", 0, np.uint8)], batch=4,
              outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])])
    reversed_nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(reversed_nodes)
    return m


def test_nodes_out_of_topological_order_are_sorted_with_a_note(tmp_path):
    m = _unsorted_qdq_model()
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(m)
    source = load_source(_saved(m, tmp_path))
    assert len(source.notes) == 1 and "not in topological order" in source.notes[0]
    assert [n.op_type for n in source.model.graph.node] == ["Relu", "QuantizeLinear", "DequantizeLinear"]
    assert_t1_bit_exact(source.model, X[:4])


def test_the_note_is_printed_by_the_command(tmp_path, capsys):
    from pmsm.pipeline import convert

    convert(_saved(_unsorted_qdq_model(), tmp_path))
    assert "pmsm-export: note:" in capsys.readouterr().err


def test_other_checker_findings_stay_refused(tmp_path):
    m = _unsorted_qdq_model()
    m.graph.node[0].input[0] = "written_by_no_node"  # out of order and reading a name nobody writes
    with pytest.raises(BadInputError, match="invalid ONNX model.*written_by_no_node"):
        load_source(_saved(m, tmp_path))
    sorted_but_bad = _unsorted_qdq_model()
    sorted_but_bad.graph.node[0].attribute.append(helper.make_attribute("no_such_attribute", 1))
    with pytest.raises(BadInputError, match="invalid ONNX model"):
        load_source(_saved(sorted_but_bad, tmp_path, "other.onnx"))
