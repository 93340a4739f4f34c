"""The lowering plan: which Lava processes a checked NIR graph becomes, and how they connect.

Pure data, no Lava import, so the plan can be inspected (and quantized) before any process
exists. Timing: the input presents sample time ``t`` at step ``t`` (per sample window); every
Dense/Conv adds one step (Lava sends the previous step's product), every other process adds
none. A term's ``latency`` is that delay; terms summed into one port must share it, so the
shorter ones get an ``elementwise`` delay step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

INPUT = -1          # Term.src of the network's input port
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


@dataclass
class Plan:
    steps: list
    input_shape: tuple          # NIR
    input_lava_shape: tuple
    input_perm: object          # np.ndarray | None
    output_terms: list
    output_shape: tuple
    output_lava_shape: tuple
    output_perm: object

    @property
    def depth(self) -> int:
        """Steps between presenting sample time t and its arrival at the output."""
        return self.output_terms[0].latency

    def neurons(self) -> list[tuple[int, Step]]:
        return [(i, s) for i, s in enumerate(self.steps) if s.kind == "neuron"]


def spike_bits(lo: int, hi: int) -> int:
    """Bits of a graded spike carrying a count in [lo, hi] (sign bit when lo < 0)."""
    return max(1, int(max(-lo, hi)).bit_length() + (1 if lo < 0 else 0))
