"""Spiking ONNX -> NIR in the PMSM dialect (docs/nir.md)."""
from __future__ import annotations

import nir
import onnx

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.targets.nir import dialect
from pmsm.targets.nir.emit import to_nir
from pmsm.targets.nir.fold import fold_biases, fold_coefficients, prune
from pmsm.targets.nir.from_onnx import Problem, Translation, translate
from pmsm.targets.nir.onnx_view import is_neuron, network_view, node_label


def _label(model: onnx.ModelProto, source_name: str) -> str:
    return source_name or model.graph.name or "<model>"


TOKEN_LAYOUT = (2, 1)  # a [N, T, F] input held as (F, T): token-wise linear layers become Conv1d


def features_first(rank: int) -> tuple:
    """The layout holding the last ONNX axis first and the others in order: ``(2, 1)`` for
    ``[N, T, F]`` (Conv1d of kernel 1 over ``(F, T)``), ``(3, 1, 2)`` for ``[N, H, W, C]`` (Conv2d
    1x1 over ``(C, H, W)``), as a linear layer on the last axis needs it (docs/nir.md §3a)."""
    return (rank,) + tuple(range(1, rank))


# Ops that keep both the rank and the element layout of their activation (a Transpose permutes it).
_KEEP_RANK = {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Relu", "BatchNormalization", "Transpose",
              "ReduceMean"}


def linear_layout(nodes: list, tensors: list[str], rank: int, skip: set = frozenset()) -> tuple:
    """The layout to hold ``tensors`` (one value, ``rank`` axes after the batch) in: features first
    (``(F, T)``, ``(C, H, W)``) when a MatMul/Gemm reads its last axis, as a kernel-1 ``Conv1d`` or
    1x1 ``Conv2d`` needs it (docs/nir.md §3a), else ``()`` (ONNX's order). The walk follows the ops
    that keep the layout (not those named in ``skip``), and through each ``Transpose`` which axis
    of the value the MatMul will see last: after ``[N, C, H, W] -> Transpose -> [N, H, W, C]`` that
    is ``C``, which ONNX's order already holds first."""
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # held[name][i]: the axis of the value that ONNX axis i + 1 of ``name`` is
    held = {tensor: tuple(range(1, rank + 1)) for tensor in tensors}
    frontier = list(tensors)
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type in ("MatMul", "Gemm") and node.input[0] == name:
                last = held[name][-1]
                return () if last == 1 else (last,) + tuple(a for a in range(1, rank + 1) if a != last)
            if node_label(node) in skip or not (is_neuron(node) or node.op_type in _KEEP_RANK):
                continue
            axes = held[name]
            if node.op_type == "ReduceMean" and any(a.name == "keepdims" and a.i == 0 for a in node.attribute):
                continue
            if node.op_type == "Transpose":
                perm = [a.ints for a in node.attribute if a.name == "perm"]
                if not perm or len(perm[0]) != rank + 1 or perm[0][0] != 0:
                    continue
                axes = tuple(axes[int(p) - 1] for p in perm[0][1:])
            for o in node.output:
                if o and o not in held:
                    held[o] = axes
                    frontier.append(o)
    return ()


def layouts_to_try(view) -> list[tuple]:
    """The input layouts besides ONNX's own worth a translation: features first for a two-axis
    input always (a 1-D convolution wants ONNX's order, a token-wise layer the other), and for a
    three-axis input where a MatMul or Gemm reads its channels last (channels-last data into
    pointwise layers), as :func:`linear_layout` finds it."""
    shape = view.input_shape
    if shape is None or len(shape) not in (2, 3):
        return []
    if len(shape) == 2:
        return [features_first(2)]
    layout = linear_layout(view.nodes, sorted(view.aliases | {view.input_name}), 3)
    return [layout] if layout else []


def translate_network(model: onnx.ModelProto, label: str) -> tuple[Translation, list[Problem]]:
    """Translate and fold; returns the working graph and every problem found on the way (the NIR
    target's pre-flight and its conversion in one pass).

    NIR has no transpose, so the layout of a two-axis input ``[N, A, B]`` is chosen here, once: as
    in ONNX (``(A, B)``: channels first, as a 1-D convolution reads it) or swapped (``(B, A)``:
    features first, as a token-wise ``MatMul`` over the last axis needs it for ``Conv1d``). Both are
    tried; the one with fewer problems wins, then the one whose first problem comes later in the
    graph (more of it converts before it), then ONNX's order. A three-axis input ``[N, H, W, C]``
    read by a MatMul is tried as ``(C, H, W)`` too (:func:`layouts_to_try`). ``Transpose`` nodes
    inside the network then only change the recorded layout.
    """
    view = network_view(model, label)
    best = _translate(model, label, (), view)
    position = {node_label(n): i for i, n in enumerate(view.nodes)}

    def rank(translated):
        problems = translated[1]
        return len(problems), -min((position.get(p[0], len(position)) for p in problems), default=0)
    for layout in layouts_to_try(view) if best[1] else []:
        swapped = _translate(model, label, layout, network_view(model, label))
        if rank(swapped) < rank(best):
            best = swapped
    return best


def _translate(model, label, input_axes, view) -> tuple[Translation, list[Problem]]:
    tr = translate(model, label, input_axes, view)
    problems = list(tr.problems)
    prune(tr.work)
    fold_coefficients(tr.work)
    problems += fold_biases(tr.work)
    if not problems and not any(n.kind == "output" for n in tr.work.nodes.values()):
        problems.append(("<graph>", "Output", "no graph output depends on the data input"))
    return tr, problems


def network_to_nir(model: onnx.ModelProto, *, source_sha256: str = "", source_name: str = "",
                   timesteps: int = 1) -> nir.NIRGraph:
    """The NIR graph of the untimed PMSM network (``pmsm.exporter.convert.network_for_targets``:
    the source graph with each rounding core replaced by a neuron, no time loop), or
    UnsupportedModelError listing every node NIR cannot take.

    Folding the de-quantization and pre-scaling factors into the weights re-associates float
    arithmetic, so a membrane value sitting exactly on a rounding boundary may round differently
    than in the spiking ONNX: the verification reports such spike mismatches.
    """
    if isinstance(timesteps, bool) or int(timesteps) < 1:
        raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
    label = _label(model, source_name)
    tr, problems = translate_network(model, label)
    if problems:
        raise UnsupportedModelError(label, "nir", problems)
    return translated_to_nir(tr, source_sha256=source_sha256, source_name=source_name, timesteps=timesteps)


def translated_to_nir(translation: Translation, *, source_sha256: str = "", source_name: str = "",
                      timesteps: int = 1) -> nir.NIRGraph:
    """The NIR graph of a translation without problems (:func:`translate_network`)."""
    return to_nir(translation.work, dialect.graph_metadata(int(timesteps), source_sha256, source_name))
