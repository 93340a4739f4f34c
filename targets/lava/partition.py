"""Group the steps of a Plan into cores: the Lava processes of the fused lowerings.

A core holds neuron layers together with their dendritic trees: every synapse, pooling, scaling
and bias step on the way from upstream spikes (or the network input) to each of its neurons, as
one Loihi core holds a layer's synapses and its neurons. A step shared by the trees of neurons in
different cores (a max pool whose spikes feed a convolution and a residual branch) is computed in
each of them: cores exchange spikes only, never partial sums.

``layers_per_core`` neurons, taken in the plan's topological order, share a core: 1 is one core
per neuron layer; a number at least the neuron count puts the whole network in one core. The
output's tree joins the last core.

Timing: a core computes sample time ``j`` at step ``j + latency`` and sends the spikes one step
later, so cores run in parallel within a step, like Lava's Dense and Conv. A core fed by cores
``s`` has ``latency = max(latency(s) + 1)`` (0 when fed by the input only) and holds each
message back for ``latency - latency(s) - 1`` steps (the input's for ``latency`` steps), which
aligns branches of unequal depth without any extra process.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pmsm.targets.lava.plan import Plan, input_index, is_input

MAX_INPUTS = 8          # in-ports a core process declares (Lava needs them named in its model)


@dataclass(frozen=True)
class Slot:
    """Where a value a core reads from outside lies: port ``port``, flat ``[offset, offset+size)``."""

    port: int
    offset: int
    size: int


@dataclass
class CoreInput:
    source: int             # core index, or an input port's key (plan.input_key)
    delay: int              # steps the message is held back
    size: int               # flat size of the message


@dataclass
class Core:
    name: str
    steps: list             # plan step indices, topological
    neurons: list           # its neuron steps
    has_output: bool        # it computes what reaches the network's Output nodes
    sends: list = field(default_factory=list)       # neuron steps other cores read, in message order
    inputs: list = field(default_factory=list)      # CoreInput per port
    reads: dict = field(default_factory=dict)       # neuron step index or input key -> Slot
    latency: int = 0

    def message_size(self, plan: Plan) -> int:
        return sum(_size(plan.steps[i].out_shape) for i in self.sends)


@dataclass
class Partition:
    cores: list
    output_core: int
    depth: int              # steps from presenting sample time j to its arrival at the readout
    neuron_core: dict       # neuron step index -> core index

    def neuron_latency(self, step: int) -> int:
        return self.cores[self.neuron_core[step]].latency


def partition(plan: Plan, layers_per_core: int = 1) -> Partition:
    if layers_per_core < 1:
        raise ValueError(f"layers_per_core must be >= 1, got {layers_per_core}")
    if any(s.kind == "elementwise" and s.params.get("delay") for s in plan.steps):
        raise ValueError("a plan for cores must be lowered with synapse_latency=0 (it has delay steps)")
    neurons = [i for i, _ in plan.neurons()]
    groups = [neurons[k:k + layers_per_core] for k in range(0, len(neurons), layers_per_core)] or [[]]
    neuron_core = {n: c for c, group in enumerate(groups) for n in group}
    cores = []
    for c, group in enumerate(groups):
        members = set(group)
        for n in group:
            members |= _tree(plan, plan.steps[n].inputs, neuron_core, c)
        if c == len(groups) - 1:
            members |= _tree(plan, plan.all_output_terms(), neuron_core, c)
        cores.append(Core(_core_name(plan, group), sorted(members), list(group), c == len(groups) - 1))
    for c, core in enumerate(cores):
        for source in _external_sources(plan, core, neuron_core, c):
            if not is_input(source) and source not in cores[neuron_core[source]].sends:
                cores[neuron_core[source]].sends.append(source)
    for core in cores:
        core.sends.sort()
    for c, core in enumerate(cores):
        _wire(plan, core, cores, neuron_core, c)
    output = len(cores) - 1
    return Partition(cores, output, cores[output].latency + 1, neuron_core)


def _tree(plan: Plan, terms, neuron_core: dict, core: int) -> set:
    """Non-neuron steps upstream of ``terms`` up to neurons or the input (the dendritic tree)."""
    found, stack = set(), [t.src for t in terms]
    while stack:
        src = stack.pop()
        if is_input(src) or src in found:
            continue
        if plan.steps[src].kind == "neuron":
            continue
        found.add(src)
        stack.extend(t.src for t in plan.steps[src].inputs)
    return found


def _terms_read(plan: Plan, core: Core):
    for i in core.steps:
        yield from plan.steps[i].inputs
    if core.has_output:
        yield from plan.all_output_terms()


def _external_sources(plan: Plan, core: Core, neuron_core: dict, index: int) -> list:
    sources = []
    for term in _terms_read(plan, core):
        outside = is_input(term.src) or neuron_core.get(term.src, index) != index
        if outside and term.src not in sources:
            sources.append(term.src)
    return sources


def _wire(plan: Plan, core: Core, cores: list, neuron_core: dict, index: int) -> None:
    sources = _external_sources(plan, core, neuron_core, index)
    origin = {s: (s if is_input(s) else neuron_core[s]) for s in sources}
    feeding = sorted(set(origin.values()))
    core.latency = max([0] + [cores[f].latency + 1 for f in feeding if not is_input(f)])
    if len(feeding) > MAX_INPUTS:
        raise ValueError(f"core {core.name} reads {len(feeding)} other cores; a core has "
                         f"{MAX_INPUTS} input ports (use more layers per core)")
    for port, f in enumerate(feeding):
        if is_input(f):
            size = _size(plan.inputs[input_index(f)].lava_shape)
            core.inputs.append(CoreInput(f, core.latency, size))
            core.reads[f] = Slot(port, 0, size)
            continue
        sender = cores[f]
        core.inputs.append(CoreInput(f, core.latency - sender.latency - 1, sender.message_size(plan)))
        offset = 0
        for n in sender.sends:
            size = _size(plan.steps[n].out_shape)
            if n in origin:
                core.reads[n] = Slot(port, offset, size)
            offset += size


def _core_name(plan: Plan, group: list) -> str:
    if not group:
        return "core:output"
    first, last = plan.steps[group[0]].node, plan.steps[group[-1]].node
    return f"core:{first}" if first == last else f"core:{first}..{last}"


def _size(shape) -> int:
    return int(np.prod(shape))
