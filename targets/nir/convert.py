"""Spiking ONNX -> NIR in the PMSM dialect (docs/nir.md)."""
from __future__ import annotations

import nir
import onnx

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.targets.nir import dialect
from pmsm.targets.nir.emit import to_nir
from pmsm.targets.nir.fold import fold_biases, fold_coefficients, prune
from pmsm.targets.nir.from_onnx import Problem, Translation, translate
from pmsm.targets.nir.onnx_view import network_view, node_label


def _label(model: onnx.ModelProto, source_name: str) -> str:
    return source_name or model.graph.name or "<model>"


TOKEN_LAYOUT = (2, 1)  # a [N, T, F] input held as (F, T): token-wise linear layers become Conv1d


def translate_network(model: onnx.ModelProto, label: str) -> tuple[Translation, list[Problem]]:
    """Translate and fold; returns the working graph and every problem found on the way (the NIR
    target's pre-flight and its conversion in one pass).

    NIR has no transpose, so the layout of a two-axis input ``[N, A, B]`` is chosen here, once: as
    in ONNX (``(A, B)``: channels first, as a 1-D convolution reads it) or swapped (``(B, A)``:
    features first, as a token-wise ``MatMul`` over the last axis needs it for ``Conv1d``). Both are
    tried; the one with fewer problems wins, then the one whose first problem comes later in the
    graph (more of it converts before it), then ONNX's order. ``Transpose`` nodes inside the network
    then only change the recorded layout.
    """
    view = network_view(model, label)
    best = _lower(model, label, (), view)
    if best[1] and view.input_shape is not None and len(view.input_shape) == 2:
        swapped = _lower(model, label, TOKEN_LAYOUT, network_view(model, label))
        position = {node_label(n): i for i, n in enumerate(view.nodes)}

        def rank(lowered):
            problems = lowered[1]
            return len(problems), -min((position.get(p[0], len(position)) for p in problems), default=0)
        if rank(swapped) < rank(best):
            best = swapped
    return best


def _lower(model, label, input_axes, view) -> tuple[Translation, list[Problem]]:
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
