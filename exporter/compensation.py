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
    step_counts: dict[int, tuple[str, str]] = {}  # element type -> (t, t - 1) as that type

    def counts(elem: int) -> tuple[str, str]:
        if elem not in step_counts:
            one = numpy_helper.from_array(np.array(1, np.int64), names("one"))
            t_int, t, t_minus_1 = names("t_int"), names(f"t/{elem}"), names(f"t_minus_1/{elem}")
            result.nodes[:0] = [
                helper.make_node("Constant", [], [one.name], name=one.name, value=one),
                helper.make_node("Add", [iteration, one.name], [t_int], name=t_int),
                helper.make_node("Cast", [t_int], [t], name=t, to=elem),
                helper.make_node("Cast", [iteration], [t_minus_1], name=t_minus_1, to=elem),
            ]
            step_counts[elem] = (t, t_minus_1)
        return step_counts[elem]

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
        means = {}
        for name in moving:
            elem = dtypes[name]
            t, _ = counts(elem)
            sum_in, sum_out, mean = names(f"sum/{name}"), names(f"sum_next/{name}"), names(f"mean/{name}")
            initial = numpy_helper.from_array(np.array(-0.0, helper.tensor_dtype_to_np_dtype(elem)), names(f"sum0/{name}"))
            result.state.append((sum_in, sum_out, initial))
            result.nodes.append(helper.make_node("Add", [sum_in, name], [sum_out], name=sum_out))
            result.nodes.append(helper.make_node("Div", [sum_out, t], [mean], name=mean))
            means[name] = mean
        node.input[:] = [means.get(name, name) for name in node.input]
        outputs = list(node.output)
        differences = []
        for index, name in enumerate(outputs):
            elem = dtypes.get(name)
            if not name or elem not in FLOAT_TYPES:
                continue
            t, t_minus_1 = counts(elem)
            f_now, prev_in = names(f"f/{name}"), names(f"f_prev/{name}")
            initial = numpy_helper.from_array(np.array(0, helper.tensor_dtype_to_np_dtype(elem)), names(f"f0/{name}"))
            result.state.append((prev_in, f_now, initial))
            node.output[index] = f_now
            scaled_now, scaled_prev = names(f"t_f/{name}"), names(f"t_minus_1_f_prev/{name}")
            differences += [
                helper.make_node("Mul", [t, f_now], [scaled_now], name=scaled_now),
                helper.make_node("Mul", [t_minus_1, prev_in], [scaled_prev], name=scaled_prev),
                helper.make_node("Sub", [scaled_now, scaled_prev], [name], name=names(f"compensated/{name}")),
            ]
        result.nodes.append(node)
        result.nodes += differences
        result.compensated.append((label, node.op_type))
    return result


def _why_not(node: onnx.NodeProto, moving: list[str], dtypes: dict[str, int]) -> str:
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return "an op with subgraphs is not compensated"
    unknown = [name for name in moving + [o for o in node.output if o] if name not in dtypes]
    if unknown:
        return f"element type of '{unknown[0]}' unknown to ONNX type inference"
    if any(dtypes[name] not in FLOAT_TYPES for name in moving):
        return "its time-varying inputs are not floating point, so they have no running mean"
    return ""
