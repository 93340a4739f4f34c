"""The ``onnx`` target: the spiking ONNX file (docs/spiking-onnx.md), checked by the backends every
target runs (the standard-op body on every sample, the custom op on the reference samples)."""
from __future__ import annotations

from pmsm.runtime.base.files import atomic_write_bytes
from pmsm.targets.interface import Export, Target


class SpikingOnnxTarget(Target):
    name = "onnx"
    suffix = ".spiking.onnx"
    keeps_compensation = True

    def write(self, export: Export, path: str) -> None:
        atomic_write_bytes(path, export.spiking.SerializeToString())

    def check_written(self, export: Export, path: str) -> None:
        """Nothing to read back: the post-flight loaded the model in ONNX Runtime before writing."""


TARGET = SpikingOnnxTarget()
