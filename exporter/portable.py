"""A standard-ONNX body for ``ai.pmsm::MultiSpikeNeuron``: the portable spiking ONNX.

Every spiking model carries :func:`neuron_function` as a model-local function (``FunctionProto``,
domain ``ai.pmsm``, name ``MultiSpikeNeuron``). ONNX Runtime runs a registered kernel when there is
one (the Python custom op of :mod:`pmsm.runtime.ortop`, the reference) and inlines the function body
otherwise, so a plain ``onnxruntime.InferenceSession(path)`` runs the spiking model without this
package, at native speed.

The op is one timestep of the neuron (docs/spiking-onnx.md), and the body computes it with the
float32 operations of :func:`pmsm.runtime.neuron.step`, in the same order, so the two agree bit
for bit::

    v = u + z;  s = Clip(R(v), lo, hi) + zero_sign;  u_next = v - s

``R`` is ``Floor`` or ``Round`` (ONNX ``Round`` is round-half-to-even, like ``numpy.rint``), chosen
by an ``If`` on the string attribute ``rounding``. ``Equal`` takes strings from opset 19 on; below,
the body compares strings with ``Unique``: ``[rounding, "floor"]`` has one distinct element exactly
when the two are equal. Attributes reach the body through ``Constant`` nodes whose
``value_int``/``value_float``/``value_string`` reference the node's attribute (``ref_attr_name``,
which needs opset >= 12).

``zero_sign`` is ``+0.0`` when a bound is 0 and ``-0.0`` otherwise: ``numpy.clip`` returns the bound
``+0.0`` for a ``-0.0`` input at a bound of 0, while ``Clip`` kernels may return either zero (ONNX
Runtime's does either, depending on the code path). Adding ``+0.0`` turns ``-0.0`` into ``+0.0``;
adding ``-0.0`` changes nothing; no other value (NaN included) is affected.

An unknown ``rounding`` makes the body fail instead of computing something: its final ``Reshape``
gets a target containing ``-2``, which ONNX Runtime rejects ("A dimension cannot be less than -1").
"""
from __future__ import annotations

import onnx
from onnx import AttributeProto, TensorProto, helper

from pmsm.runtime.schema import NEURON_ATTRIBUTES, NEURON_DOMAIN, NEURON_OP

__all__ = [
    "DOMAIN", "OP", "ATTRIBUTES", "MIN_OPSET", "MAX_OPSET", "neuron_function", "default_opset", "attach_neuron_function",
]

DOMAIN, OP = NEURON_DOMAIN, NEURON_OP
ATTRIBUTES = NEURON_ATTRIBUTES
MIN_OPSET = 12  # Constant(value_int/value_float/value_string), here referencing the node's attributes
MAX_OPSET = 23  # the newest default-domain opset ONNX Runtime 1.23 accepts
_STRING_EQUAL_OPSET = 19  # Equal accepts tensor(string) from here on


def _attr_ref(name: str, ref: str, kind: int) -> AttributeProto:
    attr = AttributeProto()
    attr.name = name
    attr.ref_attr_name = ref
    attr.type = kind
    return attr


class _Builder:
    """Collects nodes of one graph (function body or subgraph) with unique, readable names."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        name = f"{self.prefix}{output}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, output: str, values, dtype: int = TensorProto.INT64, dims=None) -> str:
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        dims = [len(values)] if dims is None else dims
        return self("Constant", [], output, value=helper.make_tensor(output, dtype, dims, values))

    def attr_const(self, output: str, field: str, attribute: str, kind: int) -> str:
        name = f"{self.prefix}{output}"
        node = helper.make_node("Constant", [], [name], name=name)
        node.attribute.append(_attr_ref(field, attribute, kind))
        self.nodes.append(node)
        return name


def _string_equals(b: _Builder, value: str, literal: str, opset: int, tag: str) -> str:
    """A bool scalar: whether the string scalar ``value`` equals ``literal``."""
    text = b.const(f"{tag}_literal", [literal.encode()], TensorProto.STRING, dims=[])
    if opset >= _STRING_EQUAL_OPSET:
        return b("Equal", [value, text], f"is_{tag}")
    one = b.const(f"{tag}_shape", [1])
    pair = b("Concat", [b("Reshape", [value, one], f"{tag}_value1"), b("Reshape", [text, one], f"{tag}_literal1")],
             f"{tag}_pair", axis=0)
    distinct = b("Size", [b("Unique", [pair], f"{tag}_unique")], f"{tag}_distinct")
    return b("Equal", [distinct, b.const(f"{tag}_one", [1], dims=[])], f"is_{tag}")


def _rounding_branch(rounding_op: str, v: str, tag: str) -> onnx.GraphProto:
    """An ``If`` branch: ``R(v)`` with ``R`` = ``rounding_op``."""
    out = f"{tag}/rounded"
    node = helper.make_node(rounding_op, [v], [out], name=out)
    return helper.make_graph([node], tag, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def neuron_function(opset: int) -> onnx.FunctionProto:
    """The body of ``ai.pmsm::MultiSpikeNeuron`` in standard ONNX ops of default-domain ``opset``.

    ``opset`` should be the model's default-domain opset (``MIN_OPSET..MAX_OPSET``): the function
    imports it, so its ops have the schemas the rest of the model uses.
    """
    opset = int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"the portable neuron body needs default-domain opset {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    b = _Builder("pmsm_neuron/")
    lo_int = b.attr_const("lo_int", "value_int", "lo", AttributeProto.INT)
    hi_int = b.attr_const("hi_int", "value_int", "hi", AttributeProto.INT)
    lo = b("Cast", [lo_int], "lo", to=TensorProto.FLOAT)
    hi = b("Cast", [hi_int], "hi", to=TensorProto.FLOAT)
    rounding = b.attr_const("rounding", "value_string", "rounding", AttributeProto.STRING)
    is_floor = _string_equals(b, rounding, "floor", opset, "floor")
    is_half_even = _string_equals(b, rounding, "half_even", opset, "half_even")
    valid = b("Or", [is_floor, is_half_even], "rounding_valid")

    v = b("Add", ["u", "z"], "v")  # the first step is v_init + z(0), as in the numpy neuron
    rounded = b("If", [is_floor], "rounded",
                then_branch=_rounding_branch("Floor", v, "pmsm_neuron/floor"),
                else_branch=_rounding_branch("Round", v, "pmsm_neuron/half_even"))

    # zero_sign (module docstring): (wanted - 0.5) * 0 is +0.0 or -0.0 by IEEE multiplication. It
    # depends on the size of z, a run-time value, so that no optimizer can fold it into a constant
    # and then drop the Add as a no-op (ONNX Runtime removes Add(x, 0) at its default level).
    int_zero = b.const("int_zero", [0], dims=[])
    a_bound_is_0 = b("Or", [b("Equal", [lo_int, int_zero], "lo_is_0"), b("Equal", [hi_int, int_zero], "hi_is_0")],
                     "a_bound_is_0")
    z_exists = b("Not", [b("Less", [b("Size", ["z"], "size"), int_zero], "size_negative")], "z_exists")
    wanted = b("Cast", [b("And", [a_bound_is_0, z_exists], "plus_zero_wanted")], "plus_zero_wanted_float",
               to=TensorProto.FLOAT)
    zero_sign = b("Mul", [b("Sub", [wanted, b.const("half", [0.5], TensorProto.FLOAT, dims=[])], "zero_side"),
                          b.const("float_zero", [0.0], TensorProto.FLOAT, dims=[])], "zero_sign")
    spikes = b("Add", [b("Clip", [rounded, lo, hi], "clipped"), zero_sign], "spikes")

    shape = b("Shape", [spikes], "shape")
    invalid = b("Cast", [b("Not", [valid], "rounding_invalid")], "invalid", to=TensorProto.INT64)
    # valid: the shape itself; invalid: shape - (shape + 2) = -2 in every entry, which Reshape rejects
    target = b("Sub", [shape, b("Mul", [invalid, b("Add", [shape, b.const("two", [2], dims=[])], "shape_plus_2")],
                                "invalid_shift")], "target")
    reshape_attrs = {"allowzero": 1} if opset >= 14 else {}
    b.nodes.append(helper.make_node("Reshape", [spikes, target], ["s"], name="pmsm_neuron/s", **reshape_attrs))
    b.nodes.append(helper.make_node("Sub", [v, "s"], ["u_next"], name="pmsm_neuron/u_next"))
    return helper.make_function(
        DOMAIN, OP, ["z", "u"], ["s", "u_next"], b.nodes, [helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTES),
        doc_string="PMSM multi-spike neuron, one timestep (docs/spiking-onnx.md), in standard ONNX ops; "
                   "a registered ai.pmsm kernel takes precedence over this body.",
    )


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain opset (``""`` or ``"ai.onnx"``); None when it imports none."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


def attach_neuron_function(model: onnx.ModelProto) -> bool:
    """Give ``model`` (in place) the body of ``ai.pmsm::MultiSpikeNeuron`` in its default-domain
    opset, replacing any function of that domain and name it had. Returns whether it did: a model
    whose opset is outside ``MIN_OPSET..MAX_OPSET`` goes without (it still runs with the kernel)."""
    kept = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP)]
    del model.functions[:]
    model.functions.extend(kept)
    opset = default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        return False
    model.functions.append(neuron_function(opset))
    return True
