"""The whole PMSM network as one hierarchical Lava process (input port ``inp``, output ``out``).

``out`` carries, every step, what reaches the NIR Output node (bias included) in Lava layout,
``depth`` steps after the input that caused it; a readout averages it over each sample's
``timesteps`` steps. The graph is checked and planned before any child process exists.

A region of a hybrid deployment may have several Input and Output nodes: port ``k`` of each kind
is ``inp``/``out`` for ``k = 0``, then ``inp1``, ``out1``, ... in the graph's order (``inputs``
and ``outputs`` list them); every output delivers sample time ``t`` at the same step.

Lowerings (what one Lava process holds; each becomes one OS process in Lava's runtime):

- ``"layer"`` (default): a neuron layer with its dendritic tree (synapses, pooling, scaling,
  biases), as a Loihi core holds a layer's synapses and neurons; layers exchange graded spikes,
  one step per hop (targets/lava/partition.py).
- ``"network"``: every layer in one process. Fastest; models no message passing between layers.
- ``"synapse"``: every synapse (Lava's own ``Dense``/``Conv``/``Sparse``), pooling, elementwise
  map and neuron layer in its own process: the plain Lava library view, many more processes.

All three give the same spikes (docs/lava.md says how that is checked).
"""
from __future__ import annotations

import os

import numpy as np
from lava.magma.core.decorator import implements, requires
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from pmsm.targets.lava.build import build, build_cores
from pmsm.targets.lava.fixed_point import quantize
from pmsm.targets.lava.graph import analyse
from pmsm.targets.lava.lowering import lower
from pmsm.targets.lava.partition import partition
from pmsm.targets.lava.shutdown import scratch_folder

LOWERINGS = ("layer", "network", "synapse")
LAYERS_PER_CORE = {"layer": 1, "network": 1 << 30}


class Network(AbstractProcess):
    """Build from a NIR graph in the PMSM dialect (``nir.NIRGraph`` or a path).

    ``fixed_point`` selects integer parameters; run it with ``run_cfg()``, which picks the
    matching models. ``input_exponent`` (fixed point only): the input arrives as
    ``round(x * 2**input_exponent)``. With ``record_dir`` and ``record_steps`` > 0 every
    neuron writes the spikes of the last ``record_steps`` steps (row ``step % record_steps``)
    into ``record_dir/spikes_<step>.npy``; ``recorded_spikes()`` reads them back.
    ``lowering``: see the module docstring. ``conv_synapse`` (``synapse`` lowering only):
    convolutions as Lava ``Conv`` processes, or as ``"sparse"`` matrices (Lava ``Sparse``).
    ``work_dir``: where cores write their statistics and errors (default: a private
    temporary folder). ``input_exponent`` and ``input_bits`` (of the integers arriving) may be one
    per input port. ``offset``: the step at
    which sample time 0 reaches the input ports (a region placed in a deployment's schedule);
    ``input_delays``: per input port, steps to hold its messages back so that ports fed earlier
    meet the latest one; ``rows``: independent rows every port carries (ports of shape
    ``(rows, *Lava shape)``: a region applied to every token of a sequence). Fused lowerings only.
    ``samples``: how many samples the run streams (0: unknown); the cores compute only while one
    is in them.
    """

    def __init__(self, graph, *, timesteps: int, fixed_point: bool = False,
                 input_exponent=0, input_bits=8, record_dir: str | None = None, record_steps: int = 0,
                 lowering: str = "layer", conv_synapse: str = "conv", work_dir: str | None = None,
                 name: str | None = None, offset: int = 0, input_delays: tuple = (), rows: int = 1,
                 samples: int = 0) -> None:
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if lowering not in LOWERINGS:
            raise ValueError(f"lowering must be one of {LOWERINGS}, got {lowering!r}")
        # Lava's __del__ expects an initialised process even when the checks below raise.
        super().__init__(name=name or "pmsm_network")
        view = analyse(graph)
        fused = lowering != "synapse"
        plan = lower(view, fixed_point, synapse_latency=0 if fused else 1)
        fixed = quantize(plan, input_exponent, input_bits, source=view.source, input_node=view.input,
                         conv_synapse=conv_synapse if not fused else "conv") if fixed_point else None
        if not fused and (offset or any(input_delays) or rows != 1):
            raise ValueError("the synapse lowering runs a network fed by the data only (no offset, input delays or rows)")
        lead = (int(rows),) if rows != 1 else ()
        for k, port in enumerate(plan.inputs):
            setattr(self, port_name("inp", k), InPort(shape=lead + tuple(port.lava_shape)))
        for k, port in enumerate(plan.outputs):
            setattr(self, port_name("out", k), OutPort(shape=lead + tuple(port.lava_shape)))
        self.rows = int(rows)
        self.port_counts = (len(plan.inputs), len(plan.outputs))
        self.offset = int(offset)
        self.timesteps = int(timesteps)
        self.fixed_point = bool(fixed_point)
        self.lowering = lowering
        self.record_paths = _record_files(plan, record_dir, int(record_steps), lead)
        if fused:
            if work_dir is None:
                self._work = scratch_folder()
                work_dir = self._work.name
            self.work_dir = work_dir
            cores = partition(plan, LAYERS_PER_CORE[lowering])
            self.lowered = build_cores(view, plan, fixed, cores, int(timesteps), work_dir, self.record_paths,
                                       int(offset), tuple(input_delays), int(rows), int(samples))
        else:
            self.work_dir = None
            self.lowered = build(view, plan, fixed, int(timesteps), self.record_paths, conv_synapse)

    @property
    def depth(self) -> int:
        """Steps from sample time t at the input ports to its arrival at the output ports."""
        return self.lowered.depth

    @property
    def inputs(self) -> list:
        return [getattr(self, port_name("inp", k)) for k in range(self.port_counts[0])]

    @property
    def outputs(self) -> list:
        return [getattr(self, port_name("out", k)) for k in range(self.port_counts[1])]

    @property
    def process_count(self) -> int:
        """Lava processes (hence OS processes) of the network itself."""
        return len(self.lowered.processes)

    def run_cfg(self, *connected) -> Loihi2SimCfg:
        """The run configuration; ``connected``: processes outside the network wired to its
        ports (an input source, a readout), whose models it names too (models.py)."""
        # Lava executes every file of this folder to discover process models: the run configuration
        # (which imports them all) is imported when a run is configured, not on discovery
        from pmsm.targets.lava.models import run_config

        return run_config(self.fixed_point, [*self.lowered.processes, *connected], {self: NetworkModel})

    def recorded_spikes(self) -> dict:
        """Step index -> [record_steps, *Lava shape] spikes (a copy), for recording neurons."""
        return {i: np.array(np.load(path, mmap_mode="r")) for i, path in self.record_paths.items()}


def port_name(kind: str, k: int) -> str:
    return kind if k == 0 else f"{kind}{k}"


def _record_files(plan, record_dir: str | None, steps: int, lead: tuple = ()) -> dict:
    if not record_dir or steps < 1:
        return {}
    paths = {}
    for i, step in plan.neurons():
        paths[i] = os.path.join(record_dir, f"spikes_{i:04d}.npy")
        np.lib.format.open_memmap(paths[i], mode="w+", dtype=np.float32, shape=(steps,) + lead + tuple(step.out_shape))
    return paths


@implements(proc=Network, protocol=LoihiProtocol)
@requires(CPU)
class NetworkModel(AbstractSubProcessModel):
    def __init__(self, proc: Network) -> None:
        # Lava finds sub processes among this model's attributes.
        for i, child in enumerate(proc.lowered.processes):
            setattr(self, f"step_{i:04d}", child)
        for link in proc.lowered.parent_links:
            link(proc)
