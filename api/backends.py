"""The backends `--verify` runs, each behind the same small interface (pmsm.verification.Backend)."""
from __future__ import annotations

import numpy as np

from pmsm.verification import BackendRun, ProgressFn


class AnnBackend:
    """The source quantized ANN on stock ONNX Runtime (``optimized`` is information only), run as
    its user runs it: a model exported at a fixed batch size runs that many samples at a time."""

    reference = ""

    def __init__(self, model_path: str, optimized: bool = False):
        import onnx

        from pmsm.runtime.execute import SourceModel

        source = onnx.load(model_path)  # external data resolved next to the file
        self.model = SourceModel(source, optimized=optimized)
        self.name = self.model.backend

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        return BackendRun(output=self.model.run(x, batch_size=batch_size)[0])


class OnnxBackend:
    """The spiking ONNX on ONNX Runtime through the custom op: the reference backend."""

    name = "onnx"
    reference = "ann"

    def __init__(self, model):
        from pmsm.runtime.execute import SpikingModel

        self.model = SpikingModel(model)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        result = self.model.run(x, timesteps, collect_spikes=batch_size is None, batch_size=batch_size,
                                progress=progress)
        return BackendRun(output=result.output, spikes=result.spikes)


class NirBackend:
    """The NIR file read back from disk and executed by the project's NIR interpreter (a standard
    profile file: by the literal-spec simulator, exact at T = 1 only)."""

    name = "nir"
    reference = "onnx"

    def __init__(self, graph):
        from pmsm.targets.nir import NirInterpreter
        from pmsm.targets.nir.dialect import is_standard_profile
        from pmsm.targets.nir.literal import LiteralInterpreter

        self.interpreter = (LiteralInterpreter if is_standard_profile(graph) else NirInterpreter)(graph)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        result = self.interpreter.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=result.output, spikes=result.spikes)


class TorchBackend:
    """The NIR graph run by the project's PyTorch runtime (``pmsm.targets.torch``, on nirtorch)."""

    name = "torch"
    reference = "onnx"

    def __init__(self, graph, device: str = "cpu"):
        from pmsm.targets.torch import to_torch

        self.network = to_torch(graph, device=device)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        result = self.network.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=result.output, spikes=result.spikes)


class LavaBackend:
    """The NIR graph lowered to Lava processes, simulated in floating or fixed point."""

    reference = "onnx"

    def __init__(self, graph, fixed_point: bool = False):
        self.graph = graph
        self.fixed_point = fixed_point
        self.name = "lava_fixed" if fixed_point else "lava"
        self.fixed_point_reports: dict[int, object] = {}

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        from pmsm.targets.lava import run_lava

        result = run_lava(self.graph, x, timesteps, fixed_point=self.fixed_point, progress=progress,
                          collect_spikes=True)
        if result.fixed_point_report is not None:
            self.fixed_point_reports[timesteps] = result.fixed_point_report
        return BackendRun(output=result.output, spikes=result.spikes)
