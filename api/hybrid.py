"""What part of a network a target can take when it cannot take all of it."""
from __future__ import annotations

import onnx

from pmsm.runtime.schema import NEURON_DOMAIN, NEURON_OP


def deployable_part(network: onnx.ModelProto, problems: list[tuple[str, str, str]]) -> str:
    """One sentence: the part of ``network`` before its first node a target refused."""
    refused = {name for name, _, _ in problems}
    nodes = list(network.graph.node)
    first = next((i for i, n in enumerate(nodes) if (n.name or n.output[0]) in refused), None)
    neurons = [n for n in nodes if n.domain == NEURON_DOMAIN and n.op_type == NEURON_OP]
    if first is None:
        return ""
    before = [n for n in nodes[:first] if n.domain == NEURON_DOMAIN and n.op_type == NEURON_OP]
    stop = nodes[first]
    if not before:
        return (f"nothing before the first refused node '{stop.name or stop.output[0]}' ({stop.op_type}) holds a "
                "neuron: run this model as spiking ONNX (--target onnx)")
    return (f"the part a user could deploy is the {len(before)} of {len(neurons)} neuron layers before node "
            f"'{stop.name or stop.output[0]}' ({stop.op_type}), up to tensor '{stop.input[0]}', with the rest "
            "on the host; the whole network runs as spiking ONNX (--target onnx)")
