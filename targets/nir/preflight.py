"""Pre-flight check for the NIR target: every node of a spiking ONNX model that NIR cannot take."""
from __future__ import annotations

import onnx

from pmsm.targets.nir.convert import translate_network


def unsupported_nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """``(node name, op type, reason)`` for every offending node, in graph order; empty when convertible.

    Runs the same translation and folding as the conversion, so what passes here converts.
    """
    _, problems = translate_network(model, model.graph.name or "<model>")
    return problems
