"""The NIR graph (or a hybrid deployment: its regions on cores, its host stages on CPU processes)
lowered to Lava processes and simulated, in floating or fixed point, as a backend of ``--verify``. ``input_peak``: the largest ``|x|`` of the whole data set (the fixed-point input
grid). Fixed point reports its per-layer errors as the run's details (report key
``lava_fixed_point``)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from pmsm.runtime.backend import BackendRun, ProgressFn
from pmsm.targets.lava.fixed_point import FixedPointRecords
from pmsm.targets.lava.run import run_lava
from pmsm.targets.nir.deployment import Deployment


class LavaBackend:
    sample_limit = None
    details_key = "lava_fixed_point"

    def __init__(self, graph, fixed_point: bool = False, input_peak: Optional[float] = None, reference: str = "onnx"):
        self.graph = graph
        self.fixed_point = fixed_point
        self.input_peak = input_peak
        self.reference = reference
        self.name = "lava_fixed" if fixed_point else "lava"
        self.explained = not fixed_point

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        if isinstance(self.graph, Deployment):
            # Lava with host processes: imported only for deployments (it loads ONNX Runtime into every worker)
            from pmsm.targets.lava.hybrid import run_deployment

            result = run_deployment(self.graph, x, timesteps, fixed_point=self.fixed_point, progress=progress,
                                    collect_spikes=True, input_peak=self.input_peak)
        else:
            result = run_lava(self.graph, x, timesteps, fixed_point=self.fixed_point, progress=progress,
                              collect_spikes=True, input_peak=self.input_peak)
        details = None if result.fixed_point_report is None else FixedPointRecords(result.fixed_point_report)
        return BackendRun(output=result.output, spikes=result.spikes, details=details)
