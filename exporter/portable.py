"""A standard-ONNX body for ``ai.pmsm::MultiSpikeNeuron``: the portable spiking ONNX.

Every spiking model carries :func:`neuron_function` as a model-local function (``FunctionProto``,
domain ``ai.pmsm``, name ``MultiSpikeNeuron``). ONNX Runtime runs a registered kernel when there is
one (the Python custom op of :mod:`pmsm.runtime.ortop`, the reference) and inlines the function body
otherwise, so a plain ``onnxruntime.InferenceSession(path)`` runs the spiking model without this
package, at native speed.

The body computes the semantics of docs/spiking-onnx.md with the float32 operations of
:func:`pmsm.runtime.neuron.run_time_major`, in the same order, so the two agree bit for bit::

    Z = Reshape(z, [T, N*rest])            # row t*N + n of z is Z[t, n*rest:(n+1)*rest]
    u = Expand(v_init, [N*rest])
    Scan over t:  u <- u + Z[t];  s[t] <- Clip(R(u), lo, hi) + zero_sign;  u <- u - s[t]
    s = Reshape(S, shape(z))

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

ONNX Runtime requires the outputs of a ``Scan`` body to have a shape, which a function generic over
the rank of ``z`` cannot give; flattening to ``[T, N*rest]`` makes every body value rank 1.

Invalid calls fail instead of computing something: when ``timesteps < 1``, when the leading
dimension of ``z`` is not a multiple of ``timesteps``, or when ``rounding`` is neither ``"floor"``
nor ``"half_even"``, the body's Reshape gets a target containing ``-2`` and ONNX Runtime rejects it
("A dimension cannot be less than -1"). Zero-sized ``z`` needs opset >= 14 (``Reshape(allowzero)``).
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


def _scan_body(rounding_op: str, lo: str, hi: str, zero_sign: str, tag: str) -> onnx.GraphProto:
    """One timestep: ``(u, z_t) -> (u - s_t, s_t)`` with ``s_t = Clip(R(u + z_t), lo, hi) + zero_sign``."""
    b = _Builder(f"{tag}/")
    u_in, z_t = f"{tag}/u_in", f"{tag}/z_t"
    u = b("Add", [u_in, z_t], "u")  # the first step is v_init + z(0), as in the numpy neuron
    s = b("Add", [b("Clip", [b(rounding_op, [u], "rounded"), lo, hi], "clipped"), zero_sign], "s")
    u_out = b("Sub", [u, s], "u_out")
    vector = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [None])  # noqa: E731
    return helper.make_graph(b.nodes, tag, [vector(u_in), vector(z_t)], [vector(u_out), vector(s)])


def _scan_branch(rounding_op: str, u0: str, z_steps: str, lo: str, hi: str, zero_sign: str, tag: str) -> onnx.GraphProto:
    """An ``If`` branch: the Scan over time with rounding ``rounding_op``; output ``[T, N*rest]``."""
    out = f"{tag}/spikes"
    scan = helper.make_node(
        "Scan", [u0, z_steps], [f"{tag}/u_last", out], name=f"{tag}/scan",
        body=_scan_body(rounding_op, lo, hi, zero_sign, f"{tag}/step"), num_scan_inputs=1,
    )
    return helper.make_graph([scan], tag, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None])])


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
    v_init = b.attr_const("v_init", "value_float", "v_init", AttributeProto.FLOAT)
    rounding = b.attr_const("rounding", "value_string", "rounding", AttributeProto.STRING)
    is_floor = _string_equals(b, rounding, "floor", opset, "floor")
    is_half_even = _string_equals(b, rounding, "half_even", opset, "half_even")

    # [T*N, rest...] -> [T, N*rest]; an invalid call gets the Reshape target -2 (rejected).
    one = b.const("one", [1])
    t = b("Reshape", ["timesteps", one], "t")
    shape = b("Shape", ["z"], "shape")
    rows = b("Slice", [shape, b.const("zero", [0]), one], "rows")
    t_safe = b("Max", [t, one], "t_at_least_1")  # no integer division by zero, whatever T is
    n = b("Div", [rows, t_safe], "n")
    width = b("Div", [b("Reshape", [b("Size", ["z"], "size"), one], "size1"), t_safe], "width")
    valid = b("And", [
        b("And", [b("Not", [b("Less", [t, one], "t_below_1")], "t_positive"),
                  b("Equal", [b("Mul", [n, t], "n_times_t"), rows], "rows_multiple_of_t")], "t_valid"),
        b("Or", [is_floor, is_half_even], "rounding_valid"),
    ], "valid")
    t_dim = b("Where", [valid, t, b.const("invalid", [-2])], "t_dim")

    # zero_sign (module docstring): (wanted - 0.5) * 0 is +0.0 or -0.0 by IEEE multiplication.
    # (ONNX Runtime 1.23's Where returned +0.0 for a -0.0 taken from its first operand, so no
    # Where between two signed-zero constants.) It depends on the `timesteps` input through
    # `valid`, so that no optimizer can fold it into a constant and then drop the Add as a no-op
    # (ONNX Runtime removes Add(x, 0) at its default optimization level).
    int_zero = b.const("int_zero", [0], dims=[])
    a_bound_is_0 = b("Or", [b("Equal", [lo_int, int_zero], "lo_is_0"), b("Equal", [hi_int, int_zero], "hi_is_0")],
                     "a_bound_is_0")
    wanted = b("Cast", [b("And", [a_bound_is_0, valid], "plus_zero_wanted")], "plus_zero_wanted_float",
               to=TensorProto.FLOAT)
    zero_sign = b("Mul", [b("Sub", [wanted, b.const("half", [0.5], TensorProto.FLOAT, dims=[])], "zero_side"),
                          b.const("float_zero", [0.0], TensorProto.FLOAT, dims=[])], "zero_sign")

    reshape_attrs = {"allowzero": 1} if opset >= 14 else {}
    z_steps = b("Reshape", ["z", b("Concat", [t_dim, width], "steps_shape", axis=0)], "z_steps", **reshape_attrs)
    u0 = b("Expand", [v_init, width], "u0")

    spikes = b(
        "If", [is_floor], "spikes",
        then_branch=_scan_branch("Floor", u0, z_steps, lo, hi, zero_sign, "pmsm_neuron/floor"),
        else_branch=_scan_branch("Round", u0, z_steps, lo, hi, zero_sign, "pmsm_neuron/half_even"),
    )
    b.nodes.append(helper.make_node("Reshape", [spikes, shape], ["s"], name="pmsm_neuron/s", **reshape_attrs))
    return helper.make_function(
        DOMAIN, OP, ["z", "timesteps"], ["s"], b.nodes, [helper.make_opsetid("", opset)],
        attributes=list(ATTRIBUTES),
        doc_string="PMSM multi-spike neuron (docs/spiking-onnx.md) in standard ONNX ops; "
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
