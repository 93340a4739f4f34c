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

from pmsm.exporter.graph import constant_value, producer, replace_uses, scalar_value
from pmsm.runtime.qonnx import QONNX_DOMAINS


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


def fold_qonnx_weight_quantizers(graph: gs.Graph) -> gs.Graph:
    """QONNX ``Quant`` nodes on constant weights become float constants.

    Stock ONNX Runtime has no kernel for them, so the generic constant folding cannot evaluate them.
    """
    from pmsm.runtime.qonnx import qonnx_bipolar_quant, qonnx_quant

    for node in list(graph.nodes):
        if node.domain not in QONNX_DOMAINS or node.op not in ("Quant", "IntQuant", "BipolarQuant"):
            continue
        values = [constant_value(t) for t in node.inputs]
        if any(v is None for v in values):
            continue
        if node.op == "BipolarQuant":
            folded = qonnx_bipolar_quant(*values)
        else:
            folded = qonnx_quant(*values, signed=int(node.attrs.get("signed", 1)),
                                 narrow=int(node.attrs.get("narrow", 0)),
                                 rounding_mode=str(node.attrs.get("rounding_mode", "ROUND")))
        output = node.outputs[0]
        replace_uses(graph, output, gs.Constant(output.name + "_folded", np.asarray(folded, dtype=np.float32)))
        node.outputs.clear()
    graph.cleanup()
    return graph


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluate constant subgraphs: Constant nodes, shape arithmetic of the (static) input shape,
    and weight quantizers (``QuantizeLinear [-> Clip] -> DequantizeLinear`` on float weights,
    ``DequantizeLinear`` of int8 weights and int32 biases), which become float constants.

    onnx-graphsurgeon's folding never evaluates QuantizeLinear/DequantizeLinear, so a second step
    evaluates every remaining constant subgraph with ONNX Runtime, graph optimizations disabled:
    the same kernels that compute these values when the source model runs, so the folded
    weights are bit for bit those the source multiplies with.
    """
    graph.fold_constants(fold_shapes=True, error_ok=True)
    graph.cleanup()
    _fold_remaining_constant_subgraphs(graph)
    graph.cleanup()
    return graph


NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _fold_remaining_constant_subgraphs(graph: gs.Graph) -> None:
    graph.toposort()
    constant_nodes, produced = [], set()
    for node in graph.nodes:
        if (node.domain not in ("", "ai.onnx", None) or node.op in NOT_FOLDABLE
                or any(isinstance(v, gs.Graph) for v in node.attrs.values())):
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
    import onnxruntime as ort

    subgraph = gs.Graph(nodes=nodes, inputs=[], outputs=outputs, opset=graph.opset,
                        import_domains=graph.import_domains)
    try:
        model = gs.export_onnx(subgraph, do_type_check=False)
        model.ir_version = min(model.ir_version, 10)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run([t.name for t in outputs], {})
    except Exception:  # noqa: BLE001 - ORT raises its own exception types; nothing is folded then
        return None


def reduce_straight_through_idioms(graph: gs.Graph) -> gs.Graph:
    """``x + (round(x) - x)`` (the detached straight-through trick) is ``round(x)``.

    The reduction is exact in floating point: ``r - x`` is exact by Sterbenz's lemma for the
    nearby integer ``r``, so ``x + (r - x)`` rounds to ``r`` itself.
    """
    for add in [n for n in graph.nodes if n.op == "Add" and len(n.inputs) == 2]:
        for x, diff in (add.inputs, add.inputs[::-1]):
            sub = producer(diff)
            if sub is None or sub.op != "Sub" or sub.inputs[1] is not x:
                continue
            rounding = producer(sub.inputs[0])
            if rounding is None or rounding.op not in ("Round", "Floor") or rounding.inputs[0] is not x:
                continue
            replace_uses(graph, add.outputs[0], rounding.outputs[0])
            add.outputs.clear()
            break
    graph.cleanup()
    return graph


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
        node.inputs[1] = gs.Constant(node.inputs[1].name + "_batch_agnostic", new_shape)
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
