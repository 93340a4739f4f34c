"""The backends `--verify` runs, each behind the same small interface (pmsm.verification.Backend),
and the :class:`Plan` they are built from wherever verification runs (this process, a worker
process, a Ray actor): files as bytes, so that it pickles and travels."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pmsm.verification import CUSTOM_OP, BackendRun, ProgressFn, Verifier

DEFAULT_REFERENCE_SAMPLES = 256  # samples the custom op runs on besides the standard-op body


class AnnBackend:
    """The source quantized ANN on stock ONNX Runtime (``optimized`` is information only), run as
    its user runs it: a model exported at a fixed batch size runs that many samples at a time."""

    reference = ""
    sample_limit = None

    def __init__(self, model, optimized: bool = False):
        import onnx

        from pmsm.runtime.execute import SourceModel

        source = model if isinstance(model, onnx.ModelProto) else onnx.load(model)  # external data resolved
        self.model = SourceModel(source, optimized=optimized)
        self.name = self.model.backend

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        return BackendRun(output=self.model.run(x, batch_size=batch_size)[0])


class OnnxBackend:
    """The spiking ONNX on ONNX Runtime: through the Python custom op (``portable=False``, the
    reference kernel) or through the file's standard-op body of the neuron (``portable=True``)."""

    def __init__(self, model, portable: bool = False, name: str = "onnx", reference: str = "ann",
                 sample_limit: Optional[int] = None):
        from pmsm.runtime.execute import SpikingModel

        self.model = SpikingModel(model, portable=portable)
        self.name, self.reference, self.sample_limit = name, reference, sample_limit
        self.portable = portable

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        result = self.model.run(x, timesteps, collect_spikes=batch_size is None, batch_size=batch_size,
                                progress=progress)
        return BackendRun(output=result.output, spikes=result.spikes)


class NirBackend:
    """The NIR file read back from disk and executed by the project's NIR interpreter (a standard
    profile file: by the literal-spec simulator, exact at T = 1 only)."""

    name = "nir"
    reference = "onnx"
    sample_limit = None

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
    sample_limit = None

    def __init__(self, graph, device: str = "cpu"):
        from pmsm.targets.torch import to_torch

        self.network = to_torch(graph, device=device)

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        result = self.network.run(x, timesteps, collect_spikes=True)
        return BackendRun(output=result.output, spikes=result.spikes)


class LavaBackend:
    """The NIR graph lowered to Lava processes, simulated in floating or fixed point.
    ``input_peak``: the largest ``|x|`` of the whole data set (the fixed-point input grid)."""

    reference = "onnx"
    sample_limit = None

    def __init__(self, graph, fixed_point: bool = False, input_peak: Optional[float] = None):
        self.graph = graph
        self.fixed_point = fixed_point
        self.input_peak = input_peak
        self.name = "lava_fixed" if fixed_point else "lava"
        self.fixed_point_reports: dict[int, object] = {}

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun:
        from pmsm.targets.lava import run_lava

        result = run_lava(self.graph, x, timesteps, fixed_point=self.fixed_point, progress=progress,
                          collect_spikes=True, input_peak=self.input_peak)
        if result.fixed_point_report is not None:
            self.fixed_point_reports[timesteps] = result.fixed_point_report
        return BackendRun(output=result.output, spikes=result.spikes)


@dataclass(frozen=True)
class Plan:
    """Everything needed to build the backends of one verification, as bytes.

    ``source``: the source ONNX (None when the source is a NIR file: its interpreter is the root);
    ``spiking``: the spiking ONNX; ``nir``: the NIR file as written (targets nir and lava);
    ``reference_samples``: the custom op runs on the first that many samples (None: all)."""

    target: str
    source: Optional[bytes]
    spiking: Optional[bytes]
    nir: Optional[bytes] = None
    reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES
    torch: bool = False
    input_peak: Optional[float] = None

    def verifier(self, timesteps: list[int]) -> Verifier:
        import onnx

        ann = AnnBackend(onnx.load_from_string(self.source)) if self.source is not None else None
        ann_optimized = AnnBackend(onnx.load_from_string(self.source), optimized=True) if ann else None
        backends, custom_op = [], None
        if self.spiking is not None:
            spiking = onnx.load_from_string(self.spiking)
            custom_op = OnnxBackend(spiking, name=CUSTOM_OP, reference="onnx", sample_limit=self.reference_samples)
            body = _body_backend(spiking)
            if body is None:  # no standard-op body at this opset: the custom op is the spiking ONNX itself
                custom_op = OnnxBackend(spiking)
                backends = [custom_op]
            else:
                backends = [body, custom_op]
        graph = self.nir_graph()
        explain = None
        if graph is not None:
            from pmsm.targets.nir.dialect import is_standard_profile

            nir_backend = NirBackend(graph)
            if ann is None:  # a NIR source: the interpreter is the root
                nir_backend.reference = ""
            backends.append(nir_backend)
            if self.torch:
                backends.append(TorchBackend(graph))
            if self.target == "lava":
                lava = [LavaBackend(graph), LavaBackend(graph, fixed_point=True, input_peak=self.input_peak)]
                for backend in lava:
                    backend.reference = "onnx" if self.spiking is not None else "nir"
                backends += lava
            if self.spiking is not None and not is_standard_profile(graph):
                explain = (graph, [b.name for b in backends if b.name in ("nir", "torch", "lava")])
        return Verifier(backends, timesteps, ann=ann, ann_optimized=ann_optimized, batch_one=custom_op,
                        explain=explain, energy_backend="onnx" if self.spiking is not None else None)

    def nir_graph(self):
        if self.nir is None:
            return None
        from pmsm.targets.nir import read_nir

        with tempfile.TemporaryDirectory(prefix="pmsm-verify-") as folder:
            path = os.path.join(folder, "model.nir")
            with open(path, "wb") as handle:
                handle.write(self.nir)
            return read_nir(path)


def _body_backend(spiking) -> Optional[OnnxBackend]:
    from pmsm.runtime.base.errors import BadInputError

    try:
        return OnnxBackend(spiking, portable=True)
    except BadInputError:
        return None
