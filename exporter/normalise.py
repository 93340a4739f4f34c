"""Normalisation passes: bring the many ways producers write a quantized ANN to one shape.

Each pass takes a graph and returns it (edited in place), and is testable alone. None of them
changes a number the network computes: what is folded is evaluated by the kernels that run the
source (ONNX Runtime's, and :mod:`pmsm.runtime.qonnx` for QONNX), and what is removed is an exact
identity. In particular inference-mode ``BatchNormalization`` is left alone (see
:mod:`pmsm.exporter.convert`).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from pmsm.exporter.graph import (
    add_node,
    constant_value,
    fresh_name,
    producer,
    replace_uses,
    scalar_value,
    split_constant_operand,
)
from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.qonnx import QONNX_DOMAINS, qonnx_bipolar_quant, qonnx_int_range, qonnx_quant


def drop_initializer_inputs(graph: gs.Graph) -> gs.Graph:
    """Initializers also listed as graph inputs (as Brevitas writes them) are weights, not inputs."""
    graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
    return graph


def remove_identities(graph: gs.Graph) -> gs.Graph:
    """Identity and inference-mode Dropout carry their input through unchanged.

    A Dropout whose mask is read, or whose ``training_mode`` input is not a constant false, is
    not a pass-through and stays (the pre-flight then decides about it).
    """
    for node in list(graph.nodes):
        if node.op in ("Identity", "Dropout") and node.inputs and isinstance(node.inputs[0], gs.Variable):
            if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
                continue  # the mask is used: not a pass-through
            if node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2].name:
                if scalar_value(node.inputs[2]) is None or scalar_value(node.inputs[2]):
                    continue  # (possibly) training mode: random
            replace_uses(graph, node.outputs[0], node.inputs[0])
            node.outputs.clear()
    graph.cleanup()
    return graph


def expand_qonnx_weight_quantizers(graph: gs.Graph) -> gs.Graph:
    """QONNX ``Quant``/``BipolarQuant`` on constant weights become the standard ops computing them.

    Stock ONNX Runtime has no kernel for QONNX ops; the source runs them through
    :mod:`pmsm.runtime.qonnx` at run time. Written as ``Div, Add, R, Clip, Sub, Mul`` on the float
    weights (the float32 operations of :func:`~pmsm.runtime.qonnx.qonnx_quant`, in its order), the
    weights stay run-time values, as in the source: ONNX Runtime would prepack a folded initializer
    and pick other GEMM kernels, which differ in the last bit for a single row. Rounding modes with no
    ONNX op are folded with the numpy kernel instead.
    """
    for node in list(graph.nodes):
        if node.domain not in QONNX_DOMAINS or node.op not in ("Quant", "IntQuant", "BipolarQuant"):
            continue
        values = [constant_value(t) for t in node.inputs]
        if any(v is None for v in values):
            continue
        output = node.outputs[0]
        stem = node.name or output.name
        mode = str(node.attrs.get("rounding_mode", "ROUND")).upper()
        if node.op == "BipolarQuant":
            x, scale = node.inputs[:2]
            v = add_node(graph, "Div", [x, scale], f"{stem}/scaled")
            sign = add_node(graph, "Where", [add_node(graph, "GreaterOrEqual", [v, gs.Constant(f"{stem}/zero", np.array(0, np.float32))],
                                                      f"{stem}/non_negative", dtype=np.bool_),
                                             gs.Constant(f"{stem}/plus", np.array(1, np.float32)),
                                             gs.Constant(f"{stem}/minus", np.array(-1, np.float32))], f"{stem}/sign")
            expanded = add_node(graph, "Mul", [sign, scale], f"{stem}/dequant")
        elif mode in _ONNX_ROUNDING:
            try:
                qmin, qmax = qonnx_int_range(values[3], bool(node.attrs.get("signed", 1)), bool(node.attrs.get("narrow", 0)))
            except ValueError:
                continue  # the pre-flight names the node
            if np.asarray(qmin).size != 1:
                continue
            x, scale, zeropt = node.inputs[:3]
            v = add_node(graph, "Add", [add_node(graph, "Div", [x, scale], f"{stem}/scaled"), zeropt], f"{stem}/shifted")
            rounded = add_node(graph, _ONNX_ROUNDING[mode], [v], f"{stem}/rounded")
            clipped = add_node(graph, "Clip", [rounded, gs.Constant(f"{stem}/qmin", np.asarray(qmin, np.float32).reshape(())),
                                               gs.Constant(f"{stem}/qmax", np.asarray(qmax, np.float32).reshape(()))],
                               f"{stem}/clipped")
            expanded = add_node(graph, "Mul", [add_node(graph, "Sub", [clipped, zeropt], f"{stem}/unshifted"), scale],
                                f"{stem}/dequant")
        else:
            folded = (qonnx_bipolar_quant(*values) if node.op == "BipolarQuant" else
                      qonnx_quant(*values, signed=int(node.attrs.get("signed", 1)), narrow=int(node.attrs.get("narrow", 0)),
                                  rounding_mode=mode))
            expanded = gs.Constant(output.name + "_folded", np.asarray(folded, dtype=np.float32))
        replace_uses(graph, output, expanded)
        node.outputs.clear()
    graph.cleanup()
    return graph


_ONNX_ROUNDING = {"ROUND": "Round", "HALF_EVEN": "Round", "FLOOR": "Floor", "CEIL": "Ceil"}
WEIGHT_POSITIONS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                    "ConvInteger": (1,), "MatMulInteger": (0, 1), "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3),
                    "Einsum": None}
KEPT_AS_WRITTEN = {"QuantizeLinear", "DequantizeLinear"}


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Constant nodes become constants, and so do constant subgraphs that compute quantizer
    parameters, clip bounds and the like, evaluated by ONNX Runtime (optimizations off).

    Weights stay as the source computes them: nothing is folded that a Conv/Gemm/MatMul reads as a
    weight (ONNX Runtime prepacks initializer weights and then picks other kernels than for run-time
    ones), nor anything computed by QuantizeLinear/DequantizeLinear (int8 weights stay int8 on disk).
    """
    for node in list(graph.nodes):
        if node.op == "Constant" and "value" in node.attrs and len(node.outputs) == 1:
            output = node.outputs[0]
            output.inputs.clear()
            output.to_constant(np.asarray(node.attrs["value"].values))
    graph.cleanup()
    _fold_remaining_constant_subgraphs(graph)
    graph.cleanup()
    return graph


def fold_for_targets(graph: gs.Graph) -> gs.Graph:
    """Every constant subgraph folded (weights included) and batch-agnostic reshapes: for targets
    that fold coefficients themselves and have no batch (NIR, Lava), not for the spiking ONNX."""
    graph.fold_constants(fold_shapes=True, error_ok=True)
    graph.cleanup()
    _fold_remaining_constant_subgraphs(graph, keep_weights=False)
    graph.cleanup()
    return make_reshapes_batch_agnostic(graph)


NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _read_as_weight(tensor: gs.Tensor) -> bool:
    for reader in tensor.outputs:
        positions = WEIGHT_POSITIONS.get(reader.op, ())
        if positions is None or any(i in positions for i, t in enumerate(reader.inputs) if t is tensor):
            return True
    return False


def _fold_remaining_constant_subgraphs(graph: gs.Graph, keep_weights: bool = True) -> None:
    graph.toposort()
    constant_nodes, produced = [], set()
    for node in graph.nodes:
        if (node.domain not in ("", "ai.onnx", None) and not _is_contrib_qdq(node) or node.op in NOT_FOLDABLE
                or any(isinstance(v, gs.Graph) for v in node.attrs.values())
                or keep_weights and node.op in KEPT_AS_WRITTEN):
            continue
        inputs = [t for t in node.inputs if not t.is_empty()]
        if all(isinstance(t, gs.Constant) or id(t) in produced for t in inputs):
            constant_nodes.append(node)
            produced.update(id(t) for t in node.outputs)
    if not constant_nodes:
        return
    members = {id(n) for n in constant_nodes}
    wanted = []
    for node in constant_nodes:
        for tensor in node.outputs:
            if keep_weights and _read_as_weight(tensor):
                continue
            if tensor in graph.outputs or any(id(reader) not in members for reader in tensor.outputs):
                wanted.append(tensor)
    if not wanted:
        return
    values = _evaluate(graph, constant_nodes, wanted)
    if values is None:  # one part ONNX Runtime cannot evaluate: fold the others one by one
        values = [_evaluate(graph, _ancestors(tensor, constant_nodes), [tensor]) for tensor in wanted]
        values = [None if v is None else v[0] for v in values]
    for tensor, value in zip(wanted, values):
        if value is not None:  # else left as is; the pre-flight names what the rewrite cannot use
            tensor.inputs.clear()
            tensor.to_constant(np.asarray(value))


def _is_contrib_qdq(node: gs.Node) -> bool:
    """ONNX Runtime's ``com.microsoft`` Q/DQ (16- and 4-bit below opset 21): ONNX Runtime, which
    evaluates the constant subgraphs, runs them like the standard ops."""
    return node.domain == "com.microsoft" and node.op in KEPT_AS_WRITTEN


def _ancestors(tensor: gs.Tensor, nodes: list[gs.Node]) -> list[gs.Node]:
    """The nodes among ``nodes`` (topologically sorted) that ``tensor`` depends on, in order."""
    members = {id(n) for n in nodes}
    found, stack = set(), [tensor]
    while stack:
        for node in stack.pop().inputs:
            if id(node) in members and id(node) not in found:
                found.add(id(node))
                stack.extend(t for t in node.inputs if not t.is_empty())
    return [n for n in nodes if id(n) in found]


def _evaluate(graph: gs.Graph, nodes: list[gs.Node], outputs: list[gs.Tensor]):
    """Outputs of a subgraph without inputs, computed by ONNX Runtime with optimizations off."""
    subgraph = gs.Graph(nodes=nodes, inputs=[], outputs=outputs, opset=graph.opset,
                        import_domains=graph.import_domains)
    try:
        model = gs.export_onnx(subgraph, do_type_check=False)
        model.ir_version = min(model.ir_version, 10)
        session = inference_session(model)
        return session.run([t.name for t in outputs], {})
    except Exception:  # noqa: BLE001 - ORT raises its own exception types; nothing is folded then
        return None


ROUNDING_OPS = ("Floor", "Round", "Ceil")


def reduce_straight_through_idioms(graph: gs.Graph) -> gs.Graph:
    """The detached straight-through trick around a rounding ``f = R(...)`` of ``a`` becomes ``f``:
    ``a + (f - a)``, ``(f - a) + a`` and ``a - (a - f)``, in any operand order.

    In float32 ``f - a`` is exact for the nearby integer ``f`` (Sterbenz's lemma), so the sum gives
    ``f`` back; the quantizer rewrite proves the whole quantizer on its rounding boundaries anyway.
    """
    for node in [n for n in graph.nodes if n.op in ("Add", "Sub") and len(n.inputs) == 2]:
        reduced = _straight_through_value(node)
        if reduced is not None:
            replace_uses(graph, node.outputs[0], reduced)
            node.outputs.clear()
    graph.cleanup()
    return graph


def _straight_through_value(node: gs.Node):
    """``f`` when ``node`` computes ``f`` through the straight-through identity, else None."""
    def difference(tensor, first_is_rounding: bool):
        sub = producer(tensor)
        if sub is None or sub.op != "Sub" or len(sub.inputs) != 2:
            return None
        f, a = sub.inputs if first_is_rounding else sub.inputs[::-1]
        return (f, a) if _is_rounding_of(f, a) else None

    left, right = node.inputs
    if node.op == "Add":
        for a, diff in ((left, right), (right, left)):
            found = difference(diff, first_is_rounding=True)
            if found is not None and found[1] is a:
                return found[0]
    else:  # a - (a - f)
        found = difference(right, first_is_rounding=False)
        if found is not None and found[1] is left:
            return found[0]
    return None


def _is_rounding_of(f: gs.Tensor, a: gs.Tensor) -> bool:
    """``f`` is ``R(a)`` or ``R(a + c)`` / ``R(a - c)`` for a scalar constant ``c``."""
    rounding = producer(f)
    if rounding is None or rounding.op not in ROUNDING_OPS:
        return False
    u = rounding.inputs[0]
    if u is a:
        return True
    shift = producer(u)
    if shift is None or shift.op not in ("Add", "Sub"):
        return False
    split = split_constant_operand(shift)
    return split is not None and split[0] is a and np.asarray(split[1]).size == 1 and (shift.op == "Add" or split[2] == 1)


def make_reshapes_batch_agnostic(graph: gs.Graph) -> gs.Graph:
    """Reshape targets that hard-code the export batch size copy the batch dimension instead.

    torch exports at batch 1 write ``Reshape(x, [1, 64])``; with time folded into the batch that
    would merge rows, so the leading entry becomes ``-1`` (or ``0``, copy the input's dimension,
    when another entry is already ``-1``).
    """
    batch = _static_batch(graph)
    for node in graph.nodes:
        if node.op != "Reshape":
            continue
        shape = constant_value(node.inputs[1])
        if shape is None or shape.ndim != 1 or shape.size < 2 or batch is None or shape[0] != batch:
            continue
        if not _leading_dim_is_batch(node.inputs[0], batch):
            continue
        new_shape = shape.astype(np.int64).copy()
        if -1 not in new_shape[1:]:
            new_shape[0] = -1  # the batch is what remains after the fixed per-row dimensions
        elif 0 not in new_shape[1:]:
            new_shape[0] = 0  # copy the input's batch dimension
            if "allowzero" in node.attrs:  # the attribute exists from opset 14 on; 0 is its default
                node.attrs["allowzero"] = 0
        else:
            continue
        node.inputs[1] = gs.Constant(fresh_name(node.inputs[1].name + "_batch_agnostic"), new_shape)
    return graph


def _static_batch(graph: gs.Graph):
    for tensor in graph.inputs:
        if tensor.shape and isinstance(tensor.shape[0], (int, np.integer)) and tensor.shape[0] > 0:
            return int(tensor.shape[0])
    return None


def _leading_dim_is_batch(tensor: gs.Tensor, batch: int) -> bool:
    # Activations keep the batch first; a tensor with unknown shape is an activation here since
    # constants were folded away before this pass.
    if isinstance(tensor, gs.Constant):
        return False
    return not tensor.shape or tensor.shape[0] in (batch, None) or isinstance(tensor.shape[0], str)
