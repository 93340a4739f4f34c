"""A standard-ONNX body for ``ai.pmsm::MultiSpikeNeuron``: the portable spiking ONNX.

Every spiking model carries :func:`neuron_function` as a model-local function (``FunctionProto``,
domain ``ai.pmsm``, name ``MultiSpikeNeuron``). ONNX Runtime runs a registered kernel when there is
one (the Python custom op of :mod:`pmsm.runtime.ortop`, the reference) and inlines the function body
otherwise, so a plain ``onnxruntime.InferenceSession(path)`` runs the spiking model without this
package, at native speed.

The op is one timestep of the neuron (docs/spiking-onnx.md), and the body computes it with the
float32 operations of :func:`pmsm.runtime.neuron.step`, in the same order, so the two agree bit
for bit::

    v = u + z;  s = Clip(R(v), lo, hi) + 0.0;  u_next = v - s

``R`` is ``Floor`` or ``Round`` (ONNX ``Round`` is round-half-to-even, like ``numpy.rint``), chosen
by an ``If`` on the string attribute ``rounding``; its ``else`` branch checks for ``"half_even"``
with a second ``If`` whose own ``else`` fails, so an unknown ``rounding`` stops the run instead of
computing something: a ``Reshape`` to a target of ``-2`` in every entry, which ONNX Runtime rejects
("A dimension cannot be less than -1"). ``Equal`` takes strings from opset 19 on; below, the body
compares strings with ``Unique``: ``[rounding, "floor"]`` has one distinct element exactly when the
two are equal. Attributes reach the body through ``Constant`` nodes whose ``value_int``/
``value_string`` reference the node's attribute (``ref_attr_name``, which needs opset >= 12).

The ``+ 0.0``: a zero spike is ``+0.0`` (ai.pmsm version 3), whatever the sign of the rounded
membrane (``Round(-0.3)`` is ``-0.0``) and whatever a ``Clip`` kernel makes of a ``-0.0`` at a bound
of 0 (ONNX Runtime's returns either, depending on the code path); adding ``+0.0`` turns ``-0.0``
into ``+0.0`` and changes no other value (NaN included). It is what ``DequantizeLinear`` gives for
the zero point's level, so a neuron written as ``QuantizeLinear``/``DequantizeLinear``
(:mod:`pmsm.runtime.lean`) equals this body bit for bit. The zero is ``Size(z) * 0.0``, a run-time
value, so that no optimizer can fold it into a constant and then drop the ``Add`` as a no-op (ONNX
Runtime removes ``Add(x, 0)`` at its default level).

Cost (docs/spiking-onnx.md, "Speed"): with graph optimizations off, as the reference runs, ONNX
Runtime executes every node of the inlined body at every step; ``Constant`` nodes become
initializers and cost nothing, each other node a few tenths of a microsecond at least, an ``If``
one or two more. The body is laid out for that: a step runs 12 nodes (floor) or 14 (half-even) from
opset 19 on, 4 more per string comparison below. ONNX Runtime runs the lean form of
:mod:`pmsm.runtime.lean` instead, where each neuron is written as its own attributes need.
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
    if opset >= _STRING_EQUAL_OPSET:
        text = b.const(f"{tag}_literal", [literal.encode()], TensorProto.STRING, dims=[])
        return b("Equal", [value, text], f"is_{tag}")
    text = b.const(f"{tag}_literal", [literal.encode()], TensorProto.STRING)
    pair = b("Concat", [b("Reshape", [value, b.const(f"{tag}_shape", [1])], f"{tag}_value1"), text],
             f"{tag}_pair", axis=0)
    distinct = b("Size", [b("Unique", [pair], f"{tag}_unique")], f"{tag}_distinct")
    return b("Equal", [distinct, b.const(f"{tag}_one", [1], dims=[])], f"is_{tag}")


def _branch(b: _Builder, name: str) -> onnx.GraphProto:
    """An ``If`` branch made of ``b``'s nodes, whose one output is the last node's."""
    out = b.nodes[-1].output[0]
    return helper.make_graph(b.nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def _rounded(v: str, rounding: str, opset: int) -> list[onnx.NodeProto]:
    """``R(v)``: ``Floor`` for ``"floor"``, ``Round`` for ``"half_even"``, a failing ``Reshape`` otherwise."""
    floor = _Builder("pmsm_neuron/floor/")
    floor("Floor", [v], "rounded")
    outer = _Builder("pmsm_neuron/")
    is_floor = _string_equals(outer, rounding, "floor", opset, "floor")
    half_even = _Builder("pmsm_neuron/not_floor/")
    is_half_even = _string_equals(half_even, rounding, "half_even", opset, "half_even")
    round_ = _Builder("pmsm_neuron/half_even/")
    round_("Round", [v], "rounded")
    fails = _Builder("pmsm_neuron/unknown_rounding/")
    # valid: the shape itself; invalid: shape - (shape + 2) = -2 in every entry. An optimizer folds
    # branches that do not run too (the attributes are constants): for a valid rounding this one
    # folds into a harmless Reshape.
    invalid = fails("Cast", [fails("Not", [fails("Or", [is_floor, is_half_even], "valid")], "invalid")],
                    "invalid_int", to=TensorProto.INT64)
    shape = fails("Shape", [v], "shape")
    shift = fails("Mul", [invalid, fails("Add", [shape, fails.const("two", [2])], "shape_plus_2")], "shift")
    fails("Reshape", [v, fails("Sub", [shape, shift], "target")], "rounded")
    half_even("If", [is_half_even], "rounded", then_branch=_branch(round_, "pmsm_neuron/half_even"),
              else_branch=_branch(fails, "pmsm_neuron/unknown_rounding"))
    outer("If", [is_floor], "rounded", then_branch=_branch(floor, "pmsm_neuron/floor"),
          else_branch=_branch(half_even, "pmsm_neuron/not_floor"))
    return outer.nodes


def neuron_function(opset: int) -> onnx.FunctionProto:
    """The body of ``ai.pmsm::MultiSpikeNeuron`` in standard ONNX ops of default-domain ``opset``.

    ``opset`` should be the model's default-domain opset (``MIN_OPSET..MAX_OPSET``): the function
    imports it, so its ops have the schemas the rest of the model uses.
    """
    opset = int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"the portable neuron body needs default-domain opset {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    b = _Builder("pmsm_neuron/")
    lo = b("Cast", [b.attr_const("lo_int", "value_int", "lo", AttributeProto.INT)], "lo", to=TensorProto.FLOAT)
    hi = b("Cast", [b.attr_const("hi_int", "value_int", "hi", AttributeProto.INT)], "hi", to=TensorProto.FLOAT)
    rounding = b.attr_const("rounding", "value_string", "rounding", AttributeProto.STRING)
    v = b("Add", ["u", "z"], "v")  # the first step is v_init + z(0), as in the numpy neuron
    b.nodes.extend(_rounded(v, rounding, opset))
    rounded = b.nodes[-1].output[0]

    # + 0.0: a zero spike is +0.0 (ai.pmsm version 3), whatever Clip does with a -0.0
    clipped = b("Clip", [rounded, lo, hi], "clipped")
    size = b("Cast", [b("Size", ["z"], "z_size")], "z_size_float", to=TensorProto.FLOAT)
    zero = b("Mul", [size, b.const("float_zero", [0.0], TensorProto.FLOAT, dims=[])], "zero")
    b.nodes.append(helper.make_node("Add", [clipped, zero], ["s"], name="pmsm_neuron/s"))
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
