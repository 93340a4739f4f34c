"""Run PMSM-dialect NIR files in PyTorch (CPU or GPU), built on nirtorch's graph executor.

Public API::

    to_torch(graph_or_path, device="cpu") -> TorchNetwork     # a torch.nn.Module
    net(x, state=None) -> (output, state)                      # one timestep, batched, the file's axis order
    net.run(x, timesteps, collect_spikes=False) -> TorchResult # numpy in, numpy out, ONNX's axis order

The arithmetic is the dialect's (docs/nir.md §4): float64 sums, exact thanks to the writer's weight
grid, rounded to float32 where they enter a neuron, so the result is spike for spike the same as
``pmsm.targets.nir.NirInterpreter`` and Lava floating point.
"""
from pmsm.targets.torch.network import NIRTORCH_VERSION, TorchNetwork, TorchResult, node_map, to_torch

__all__ = ["NIRTORCH_VERSION", "TorchNetwork", "TorchResult", "node_map", "to_torch"]
