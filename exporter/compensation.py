"""Temporal (expectation) compensation of nonlinear ops inside the timestep loop.

A nonlinear op ``f`` of time-varying inputs (max pooling, softmax, layer normalisation, GELU, the
product of two activations, ...) is rewritten so that at step ``t`` (1-based) it outputs

    y(t) = t * f(m(t)) - (t - 1) * f(m(t - 1)),   m(t) = running mean of its inputs up to t

so the mean over ``T`` steps of ``y`` is ``f`` of the mean of its inputs, and ``y(1) = f(x(1))``
exactly: the running sum starts at ``-0.0`` (``-0.0 + x == x`` for every float, ``-0.0``
included), ``x / 1 == x``, ``1 * f == f`` and ``f - 0 * 0 == f``. Time-invariant inputs are used as
they are; only floating-point tensors can be averaged, so an op whose time-varying inputs are not
floats is left uncompensated (and listed). Outputs that are not floats (indices, masks) are ``f``
of the running means, without the difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pmsm.exporter.linearity import FLOAT_TYPES, commutes_with_time_mean
from pmsm.runtime.schema import NEURON_DOMAIN


@dataclass
class Compensation:
    nodes: list[onnx.NodeProto]
    state: list[tuple[str, str, onnx.TensorProto]] = field(default_factory=list)  # carried: (in, out, initial)
    compensated: list[tuple[str, str]] = field(default_factory=list)
    uncompensated: list[tuple[str, str, str]] = field(default_factory=list)


def compensate(body: list[onnx.NodeProto], varying: set[str], dtypes: dict[str, int], iteration: str,
               names) -> Compensation:
    """Compensate every nonlinear op of ``body`` (the loop body, in order) that reads a time-varying tensor.

    ``iteration`` is the body's 0-based iteration counter; ``names(stem)`` gives fresh names.
    """
    result = Compensation(nodes=[])
    step_counts: dict[int, tuple[str, None]] = {}  # element type -> (t as that type, unused)

    def counts(elem: int) -> tuple[str, None]:
        if elem not in step_counts:
            one = numpy_helper.from_array(np.array(1, np.int64), names("one"))
            t_int, t = names("t_int"), names(f"t/{elem}")
            result.nodes[:0] = [
                helper.make_node("Constant", [], [one.name], name=one.name, value=one),
                helper.make_node("Add", [iteration, one.name], [t_int], name=t_int),
                helper.make_node("Cast", [t_int], [t], name=t, to=elem),
            ]
            step_counts[elem] = (t, None)
        return step_counts[elem]

    first_step: list[str] = []  # the bool "this is the first step", computed once per body

    def is_first_step() -> str:
        if not first_step:
            zero, first = numpy_helper.from_array(np.array(0, np.int64), names("zero")), names("first_step")
            result.nodes[:0] = [helper.make_node("Constant", [], [zero.name], name=zero.name, value=zero),
                                helper.make_node("Equal", [iteration, zero.name], [first], name=first)]
            first_step.append(first)
        return first_step[0]

    for node in body:
        moving = [name for name in dict.fromkeys(node.input) if name and name in varying]
        if not moving or node.domain == NEURON_DOMAIN or commutes_with_time_mean(node, varying, dtypes):
            result.nodes.append(node)
            continue
        label = node.name or node.output[0]
        why = _why_not(node, moving, dtypes)
        if why:
            result.uncompensated.append((label, node.op_type, why))
            result.nodes.append(node)
            continue
        result.nodes.append(_compensated(node, moving, dtypes, counts, is_first_step(), names, result.state))
        result.compensated.append((label, node.op_type))
    return result


def _compensated(node: onnx.NodeProto, moving: list[str], dtypes: dict[str, int], counts, first: str, names,
                 state: list) -> onnx.NodeProto:
    """``If(first step)``: ``node`` itself on the step's values (``f`` of the first running mean, which is
    the first value: compensation is the identity there), else ``node`` compensated. The first step's
    branch does no arithmetic but ``f``, so T = 1 costs what the op costs; it hands the next step the
    state the compensated step would have: the running sum ``-0.0 + x = x`` and ``1 * f = f``.

    The state carried for an output is ``t * f(m(t))`` (computed for the difference anyway), which is
    the next step's ``(t - 1) * f(m(t - 1))`` bit for bit: the same float product of the same operands.
    """
    label = node.name or node.output[0]
    first_branch, later_branch, if_outputs, first_outputs, later_outputs = [], [], [], [], []
    means = {}
    for name in moving:
        elem = dtypes[name]
        t, _ = counts(elem)
        sum_in, sum_out, mean = names(f"sum/{name}"), names(f"sum_next/{name}"), names(f"mean/{name}")
        initial = numpy_helper.from_array(np.array(-0.0, helper.tensor_dtype_to_np_dtype(elem)), names(f"sum0/{name}"))
        state.append((sum_in, sum_out, initial))
        later_sum, first_sum = names(f"later/sum_next/{name}"), names(f"first/sum_next/{name}")
        later_branch.append(helper.make_node("Add", [sum_in, name], [later_sum], name=later_sum))
        later_branch.append(helper.make_node("Div", [later_sum, t], [mean], name=mean))
        first_branch.append(helper.make_node("Identity", [name], [first_sum], name=first_sum))
        if_outputs.append(sum_out)
        first_outputs.append((first_sum, elem))
        later_outputs.append((later_sum, elem))
        means[name] = mean
    first_node, later_node = onnx.NodeProto(), onnx.NodeProto()
    first_node.CopyFrom(node)
    later_node.CopyFrom(node)
    first_node.name, later_node.name = names(f"first/{label}"), names(f"later/{label}")
    later_node.input[:] = [means.get(name, name) for name in node.input]
    first_branch.append(first_node)
    later_branch.append(later_node)
    differences, carried_first = [], []
    for index, name in enumerate(node.output):
        if not name:
            continue
        elem = dtypes.get(name)
        first_f, later_f = names(f"first/f/{name}"), names(f"later/f/{name}")
        first_node.output[index], later_node.output[index] = first_f, later_f
        if_outputs.append(name)
        first_outputs.append((first_f, elem))
        if elem not in FLOAT_TYPES:
            later_outputs.append((later_f, elem))
            continue
        t, _ = counts(elem)
        prev_in, prev_out = names(f"t_minus_1_f_prev/{name}"), names(f"t_f/{name}")
        initial = numpy_helper.from_array(np.array(0, helper.tensor_dtype_to_np_dtype(elem)), names(f"f0/{name}"))
        state.append((prev_in, prev_out, initial))
        scaled_now, difference, first_prev = names(f"later/t_f/{name}"), names(f"later/compensated/{name}"), \
            names(f"first/t_f/{name}")
        differences += [helper.make_node("Mul", [t, later_f], [scaled_now], name=scaled_now),
                        helper.make_node("Sub", [scaled_now, prev_in], [difference], name=difference)]
        later_outputs.append((difference, elem))
        carried_first.append(helper.make_node("Identity", [first_f], [first_prev], name=first_prev))
        if_outputs.append(prev_out)
        first_outputs.append((first_prev, elem))
        later_outputs.append((scaled_now, elem))
    first_branch += carried_first
    later_branch += differences

    def branch(nodes, outputs, tag):
        return helper.make_graph(nodes, names(f"{tag}/{label}"), [],
                                 [helper.make_tensor_value_info(n, elem or 0, None) for n, elem in outputs])

    return helper.make_node("If", [first], if_outputs, name=names(f"compensated/{label}"),
                            then_branch=branch(first_branch, first_outputs, "first_step"),
                            else_branch=branch(later_branch, later_outputs, "later_steps"))


def _why_not(node: onnx.NodeProto, moving: list[str], dtypes: dict[str, int]) -> str:
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return "an op with subgraphs is not compensated"
    unknown = [name for name in moving + [o for o in node.output if o] if name not in dtypes]
    if unknown:
        return f"element type of '{unknown[0]}' unknown to ONNX type inference"
    if any(dtypes[name] not in FLOAT_TYPES for name in moving):
        return "its time-varying inputs are not floating point, so they have no running mean"
    return ""
