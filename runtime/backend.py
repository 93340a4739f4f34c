"""What a backend of ``--verify`` is (:class:`Backend`, :class:`BackendRun`), and the two every
target runs: the source ANN and the spiking ONNX on ONNX Runtime. The targets' own backends (NIR
interpreter, torch, Lava) live with their targets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np
import onnx

from pmsm.runtime.execute import AnnRunner, SpikingModel

ProgressFn = Optional[Callable[[int, int], None]]


@dataclass
class BackendRun:
    output: np.ndarray  # [N, ...] mean over T of the readout
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # ONNX neuron node name -> [T, N, ...]
    seconds: float = 0.0
    details: Optional[object] = None  # what the backend reports besides (Lava fixed point: per-layer errors)


class Backend(Protocol):
    name: str
    reference: str  # the backend it is compared with; "" for a root, compared with nothing
    sample_limit: Optional[int]  # runs on the samples with index below it only; None: every sample

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun: ...


class AnnBackend:
    """The source quantized ANN on stock ONNX Runtime (``optimized`` is information only), run as
    its user runs it: a model exported at a fixed batch size runs that many samples at a time."""

    reference = ""
    sample_limit = None

    def __init__(self, model: onnx.ModelProto, optimized: bool = False):
        self.model = AnnRunner(model, optimized=optimized)
        self.name = self.model.backend

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        return BackendRun(output=self.model.run(x, batch_size=batch_size)[0])


class OnnxBackend:
    """The spiking ONNX on ONNX Runtime: through the Python custom op (``portable=False``, the
    reference kernel) or through the file's standard-op body of the neuron (``portable=True``)."""

    def __init__(self, model, portable: bool = False, name: str = "onnx", reference: str = "ann",
                 sample_limit: Optional[int] = None):
        self.model = SpikingModel(model, portable=portable)
        self.name, self.reference, self.sample_limit = name, reference, sample_limit
        self.portable = portable

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None, batch_size=None) -> BackendRun:
        result = self.model.run(x, timesteps, collect_spikes=batch_size is None, batch_size=batch_size,
                                progress=progress)
        return BackendRun(output=result.output, spikes=result.spikes)
