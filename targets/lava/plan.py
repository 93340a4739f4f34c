"""The lowering plan: which Lava processes a checked NIR graph becomes, and how they connect.

Pure data, no Lava import, so the plan can be inspected (and quantized) before any process
exists. Timing: the input presents sample time ``t`` at step ``t`` (per sample window); every
Dense/Conv adds one step (Lava sends the previous step's product), every other process adds
none. A term's ``latency`` is that delay; terms summed into one port must share it, so the
shorter ones get an ``elementwise`` delay step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

INPUT = -1          # Term.src of the network's (first) input port; input k is ``input_key(k)``
CONVERTERS = ("dense", "conv", "elementwise")   # steps whose output scale the fixed-point pass chooses


@dataclass
class Term:
    src: int                    # index into Plan.steps, or INPUT
    latency: int
    shape: tuple                # Lava shape the consumer sees (a reshape of the source port if different)


@dataclass
class Step:
    kind: str                   # "dense" | "conv" | "pool" | "elementwise" | "neuron"
    node: str                   # NIR node it implements (delays and biases name the consumer)
    inputs: list                # Terms summed into the single input port
    in_shape: tuple             # Lava shapes
    out_shape: tuple
    latency: int                # of its output
    params: dict = field(default_factory=dict)


def input_key(k: int) -> int:
    """Term.src of the network's input port ``k`` (a region of a hybrid deployment may have
    several): negative, so it never names a step."""
    return INPUT - int(k)


def is_input(src: int) -> bool:
    return src < 0


def input_index(src: int) -> int:
    return INPUT - src


@dataclass
class PlanInput:
    node: str                   # the NIR Input node
    shape: tuple                # NIR
    lava_shape: tuple
    perm: object                # np.ndarray | None


@dataclass
class PlanOutput:
    node: str                   # the NIR Output node
    terms: list                 # summed into the network's out port
    shape: tuple                # NIR
    lava_shape: tuple
    perm: object


@dataclass
class Plan:
    """Steps, and the network's ports: one per NIR Input and Output node, in the graph's order
    (a plain network has one of each)."""

    steps: list
    inputs: list                # PlanInput per input port
    outputs: list               # PlanOutput per output port

    @property
    def depth(self) -> int:
        """Steps between presenting sample time t and its arrival at the outputs (all at once)."""
        return max(t.latency for out in self.outputs for t in out.terms)

    # the first port of each kind: what a plain network (one input, one output) has
    @property
    def input_shape(self) -> tuple:
        return self.inputs[0].shape

    @property
    def input_lava_shape(self) -> tuple:
        return self.inputs[0].lava_shape

    @property
    def input_perm(self):
        return self.inputs[0].perm

    @property
    def output_terms(self) -> list:
        return self.outputs[0].terms

    @property
    def output_shape(self) -> tuple:
        return self.outputs[0].shape

    @property
    def output_lava_shape(self) -> tuple:
        return self.outputs[0].lava_shape

    @property
    def output_perm(self):
        return self.outputs[0].perm

    def all_output_terms(self) -> list:
        return [t for out in self.outputs for t in out.terms]

    def neurons(self) -> list[tuple[int, Step]]:
        return [(i, s) for i, s in enumerate(self.steps) if s.kind == "neuron"]


def spike_bits(lo: int, hi: int) -> int:
    """Bits of a graded spike carrying a count in [lo, hi] (sign bit when lo < 0)."""
    return max(1, int(max(-lo, hi)).bit_length() + (1 if lo < 0 else 0))
