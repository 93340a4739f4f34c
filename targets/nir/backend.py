"""The NIR graph as a backend of ``--verify``: the project's interpreter (a standard-profile file:
the literal-spec simulator, exact at T = 1 only)."""
from __future__ import annotations

import numpy as np

from pmsm.runtime.backend import BackendRun, ProgressFn
from pmsm.targets.nir.dialect import is_standard_profile
from pmsm.targets.nir.interpreter import NirInterpreter
from pmsm.targets.nir.literal import LiteralInterpreter


class NirBackend:
    name = "nir"
    reference = "onnx"
    sample_limit = None

    def __init__(self, graph):
        self.explained = not is_standard_profile(graph)  # per-layer explanation of differing spikes
        self.interpreter = (LiteralInterpreter if is_standard_profile(graph) else NirInterpreter)(graph)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        result = self.interpreter.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=result.output, spikes=result.spikes)
