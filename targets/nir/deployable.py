"""What part of a network the NIR target could take when it cannot take all of it: the note of its
refusal."""
from __future__ import annotations

import onnx

from pmsm.exporter.synapses import mac_share
from pmsm.runtime.schema import is_neuron


def deployable_part(network: onnx.ModelProto, problems: list[tuple[str, str, str]]) -> str:
    """One sentence: the part of ``network`` before its first node a target refused."""
    refused = {name for name, _, _ in problems}
    nodes = list(network.graph.node)
    first = next((i for i, n in enumerate(nodes) if (n.name or n.output[0]) in refused), None)
    neurons = [n for n in nodes if is_neuron(n)]
    if first is None:
        return ""
    before = [n for n in nodes[:first] if is_neuron(n)]
    stop = nodes[first]
    if not before:
        return (f"nothing before the first refused node '{stop.name or stop.output[0]}' ({stop.op_type}) holds a "
                "neuron: run this model as spiking ONNX (--target onnx)")
    return (f"the part a user could deploy is the {len(before)} of {len(neurons)} neuron layers before node "
            f"'{stop.name or stop.output[0]}' ({stop.op_type}), up to tensor '{stop.input[0]}', with the rest "
            "on the host; the whole network runs as spiking ONNX (--target onnx)")


def refusal_note(network: onnx.ModelProto, problems: list[tuple[str, str, str]]) -> str:
    """The part that could be deployed, and where the network's MACs are."""
    share = mac_share(network)
    total = share["macs_per_sample"]
    lines = [deployable_part(network, problems)]
    if total:
        lines.append(f"MACs per sample: {total:,}, of which {share['spiking_synapses'] / total:.1%} in synapses fed by "
                     f"spikes, {share['analog_synapses'] / total:.1%} in weight layers on analog values, "
                     f"{share['activation_products'] / total:.1%} in products of two activations")
    return "\n".join(line for line in lines if line)
