"""Inputs that used to convert into something broken, or not be answered at all: degenerate
quantizer parameters, subgraphs nested deep, data inputs no sample can take (issue 24).

Each is refused with exit 2 and one line naming what is wrong; the fuzz test
(tests/test_fuzz.py) draws many more of each kind.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES
from hostile import assert_refused, run_command, snapshot
from pmsm.cli import main
from pmsm.runtime.base.limits import Limits, subgraph_depth


def floor_chain_sample(name: str = "digits_mlp_pmsm_L2") -> onnx.ModelProto:
    return onnx.load(os.path.join(SAMPLES, name + ".onnx"))


def first_chain(model):
    """(scale Div, L Mul, Clip, de-quantizing Div, de-quantizing Mul) of the first floor chain."""
    nodes = list(model.graph.node)
    floor = next(i for i, n in enumerate(nodes) if n.op_type == "Floor")
    return nodes[floor - 3], nodes[floor - 2], nodes[floor + 1], nodes[floor + 2], nodes[floor + 3]


def give_constant(model, node, index, value):
    name = f"test_{node.name}_{index}"
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    node.input[index] = name


def refused(tmp_path, capfd, model, *options) -> str:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    before = snapshot(tmp_path)
    outcome = run_command([path, "-o", tmp_path / "out.onnx", *options], capfd)
    assert_refused(outcome, before, snapshot(tmp_path))
    return outcome.error_lines[0]


@pytest.mark.parametrize("sample", ["digits_mlp_pmsm_L2", "digits_cnn_pmsm_L2", "digits_vit_pmsm_L4"])
def test_a_floor_chain_with_l_zero_in_every_use_is_refused_naming_the_node_and_the_value(tmp_path, capfd, sample):
    model = floor_chain_sample(sample)
    _, mul, clip, dequantize, _ = first_chain(model)
    for node, index in ((mul, 1), (clip, 2), (dequantize, 1)):
        give_constant(model, node, index, 0.0)
    line = refused(tmp_path, capfd, model)
    assert "the scaling of its input into levels is 0" in line and f"'{mul.name}' (Mul)" in line and "= 0" in line


def test_l_zero_only_in_the_de_quantizing_div_is_refused_and_named(tmp_path, capfd):
    model = floor_chain_sample()
    dequantize = first_chain(model)[3]
    give_constant(model, dequantize, 1, 0.0)
    line = refused(tmp_path, capfd, model, "--verify", "--data", os.path.join(SAMPLES, "digits_test.npz"))
    assert "de-quantization of its levels is not finite" in line and f"'{dequantize.name}' (Div) divides by" in line


def test_a_scale_of_zero_is_refused_as_a_division_by_zero(tmp_path, capfd):
    model = floor_chain_sample("digits_cnn_pmsm_L2")
    div, *_ = first_chain(model)
    give_constant(model, div, 1, 0.0)
    assert f"'{div.name}' (Div) divides by" in refused(tmp_path, capfd, model)


def test_a_scale_of_zero_in_the_de_quantization_only_collapses_every_level_and_is_refused(tmp_path, capfd):
    model = floor_chain_sample()
    rescale = first_chain(model)[4]
    give_constant(model, rescale, 1, 0.0)
    assert "maps every level to the same value" in refused(tmp_path, capfd, model)


def test_bounds_that_leave_a_single_level_are_refused(tmp_path, capfd):
    model = floor_chain_sample("digits_mlp_unsigned_L2")
    _, mul, clip, dequantize, _ = first_chain(model)
    give_constant(model, clip, 2, 0.0)      # clip(q, 0, 0): every input on level 0
    assert "its levels 0..0 leave a single value" in refused(tmp_path, capfd, model)


def test_a_zero_scaling_in_some_channels_only_is_allowed_as_a_pruned_channel(tmp_path):
    # a per-channel multiplier with one zero channel before the quantizer: that channel always
    # sits on one level, the others carry the signal; the model converts
    model = floor_chain_sample("digits_cnn_pmsm_L2")
    div, mul, *_ = first_chain(model)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    channels = next(t.dims[0] for t in model.graph.initializer if t.name == conv.input[1])
    mask = np.ones((channels, 1, 1), np.float32)
    mask[3] = 0.0
    model.graph.initializer.append(numpy_helper.from_array(mask, "pruned"))
    pruned = helper.make_node("Mul", [div.input[0], "pruned"], ["pruned_out"], name="prune")
    div.input[0] = "pruned_out"
    model.graph.node.insert(list(model.graph.node).index(div), pruned)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx")]) == 0


def nested_ifs(depth: int) -> onnx.ModelProto:
    model = floor_chain_sample()
    leaf = helper.make_graph([helper.make_node("Constant", [], ["leaf"],
                                               value=numpy_helper.from_array(np.array([1.0], np.float32)))],
                             "leaf", [], [helper.make_tensor_value_info("leaf", TensorProto.FLOAT, [1])])
    graph = model.graph
    for level in range(depth):
        cond = f"cond_{level}"
        graph.node.append(helper.make_node("Constant", [], [cond], value=numpy_helper.from_array(np.array(True))))
        node = graph.node.add(op_type="If", name=f"if_{level}", input=[cond], output=[f"if_{level}"])
        node.attribute.add(name="else_branch", type=onnx.AttributeProto.GRAPH).g.CopyFrom(leaf)
        graph = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH).g
        graph.name = f"level_{level + 1}"
        graph.output.append(helper.make_tensor_value_info(f"if_{level + 1}", TensorProto.FLOAT, [1]))
    graph.node.append(helper.make_node("Constant", [], [f"if_{depth}"],
                                       value=numpy_helper.from_array(np.array([1.0], np.float32))))
    return model


def test_subgraph_depth_counts_the_nesting_of_if_bodies():
    assert subgraph_depth(floor_chain_sample()) == 0
    assert subgraph_depth(nested_ifs(3)) == 3


def test_if_nested_30_deep_in_an_unused_branch_is_refused_at_once_naming_the_flag(tmp_path, capfd):
    line = refused(tmp_path, capfd, nested_ifs(30))
    assert "nested 30 deep" in line and f"more than the {Limits().max_subgraph_depth} allowed" in line
    assert "--max-subgraph-depth" in line


def test_the_depth_flag_lets_a_model_nested_deeper_than_the_default_through(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(nested_ifs(Limits().max_subgraph_depth + 1), str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx"), "--max-subgraph-depth", "12"]) == 0


def test_a_data_input_of_rank_0_is_refused(tmp_path, capfd):
    model = floor_chain_sample()
    del model.graph.input[0].type.tensor_type.shape.dim[:]
    assert "rank 0" in refused(tmp_path, capfd, model)


@pytest.mark.parametrize("symbolic", ["every dimension", "one sample dimension"])
def test_a_data_input_with_symbolic_sample_dimensions_is_refused(tmp_path, capfd, symbolic):
    model = floor_chain_sample()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for i, dim in enumerate(dims if symbolic == "every dimension" else dims[2:3]):
        dim.dim_param = f"d{i}"
    assert "only the batch (the first) may be symbolic" in refused(tmp_path, capfd, model)


def test_a_symbolic_batch_alone_is_still_accepted(tmp_path):
    model = floor_chain_sample()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    assert main([str(path), "-o", str(tmp_path / "out.onnx")]) == 0


def test_a_spiking_model_given_as_the_source_is_refused_in_one_line(tmp_path, capfd):
    spiking = tmp_path / "spiking.onnx"
    assert main([os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx"), "-o", str(spiking)]) == 0
    before = snapshot(tmp_path)
    outcome = run_command([spiking, "-o", tmp_path / "again.onnx"], capfd)
    assert_refused(outcome, before, snapshot(tmp_path))


def test_verification_counts_a_nan_spike_as_a_mismatch_instead_of_failing():
    from pmsm.verification import BackendRun, compare

    nan = np.array([[1.0, np.nan]], np.float32)
    run = BackendRun(output=nan, spikes={"a": nan})
    reference = BackendRun(output=np.ones_like(nan), spikes={"a": np.ones_like(nan)})
    tally = compare(run, reference, "onnx", None)
    assert tally.spike_total == 1 and tally.spike_mismatch == 1
