"""The NIR graph run by the project's PyTorch runtime (on nirtorch) as a backend of ``--verify``."""
from __future__ import annotations

import numpy as np

from pmsm.runtime.backend import BackendRun, ProgressFn
from pmsm.targets.torch.network import to_torch


class TorchBackend:
    name = "torch"
    reference = "onnx"
    sample_limit = None
    explained = True

    def __init__(self, graph, device: str = "cpu"):
        self.network = to_torch(graph, device=device)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        result = self.network.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=result.output, spikes=result.spikes)
