"""Lava target: lower a PMSM NIR graph to Lava processes and simulate it.

- ``Network(graph, timesteps=T, fixed_point=False, lowering="layer")``: the network as one
  hierarchical Lava process with ports ``inp`` and ``out``; ``lowering`` is one of
  ``LOWERINGS`` (one process per neuron layer, one for the network, one per synapse).
- ``run_lava(graph, x, timesteps, ...) -> LavaResult``: stream many samples in one run; no
  worker process survives it, however it ends.
- ``check_graph(graph)``: the pre-flight check alone (raises ``UnsupportedModelError``
  listing every node Lava cannot take); ``unsupported_nir_nodes(graph)`` returns that list.

Importing this package without lava-nc (or on Python >= 3.11) raises
``pmsm.runtime.base.errors.MissingExtraError`` saying how to get it.
"""
from pmsm.targets.lava.availability import require_lava

require_lava()

from pmsm.targets.lava.fixed_point import InputQuantization, NeuronQuantization, SynapseQuantization
from pmsm.targets.lava.graph import GraphView, unsupported_nir_nodes
from pmsm.targets.lava.graph import analyse as check_graph
from pmsm.targets.lava.processes.failure import LavaProcessError
from pmsm.targets.lava.processes.network import LOWERINGS, Network
from pmsm.targets.lava.run import LavaResult, run_lava

__all__ = ["Network", "LOWERINGS", "run_lava", "LavaResult", "LavaProcessError", "check_graph",
           "unsupported_nir_nodes", "GraphView", "InputQuantization", "SynapseQuantization", "NeuronQuantization"]
