"""The :class:`VerificationPlan`: everything needed to build the backends of one verification, as
bytes, so that it pickles and travels wherever verification runs (this process, a worker process, a
Ray actor). The source ANN and the spiking ONNX are every target's; the target adds its own
(:meth:`pmsm.targets.interface.Target.backends`)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import onnx

from pmsm.runtime.backend import AnnBackend, OnnxBackend
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.memory import INPUT_COPIES, spiking_bytes_per_sample
from pmsm.targets.interface import EXPLAINED_TARGETS, SPIKING_BACKENDS, target_named
from pmsm.verification import CUSTOM_OP, Verifier

DEFAULT_REFERENCE_SAMPLES = 256  # samples the custom op runs on besides the standard-op body

__all__ = ["DEFAULT_REFERENCE_SAMPLES", "INPUT_COPIES", "SPIKING_BACKENDS", "VerificationPlan", "bytes_per_sample"]


def bytes_per_sample(sample_values: int, spike_values: int, timesteps: list[int], target: str) -> int:
    """Memory ``--verify`` of ``target`` holds per sample of a chunk (pmsm.runtime.base.memory)."""
    backends = SPIKING_BACKENDS.get(target, max(SPIKING_BACKENDS.values()))
    return spiking_bytes_per_sample(sample_values, spike_values, timesteps, backends, target in EXPLAINED_TARGETS)


@dataclass(frozen=True)
class VerificationPlan:
    """``source``: the source ONNX (None when the source is a NIR file: its interpreter is the root);
    ``spiking``: the spiking ONNX; ``nir``: the NIR file as written (targets nir and lava);
    ``reference_samples``: the custom op runs on the first that many samples (None: all);
    ``torch``, ``input_peak``: what the target's backends need (``Target.plan_options``).
    ``graph``: the NIR graph already read in this process (not pickled: a worker reads ``nir``)."""

    target: str
    source: Optional[bytes]
    spiking: Optional[bytes]
    nir: Optional[bytes] = None
    reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES
    torch: bool = False
    input_peak: Optional[float] = None
    graph: object = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["graph"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def verifier(self, timesteps: list[int]) -> Verifier:
        ann = ann_optimized = None
        if self.source is not None:
            source = onnx.load_from_string(self.source)
            ann, ann_optimized = AnnBackend(source), _optimized_ann_backend(source)
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
        own = target_named(self.target).backends(self, self.nir_graph())
        backends += own
        explained = [b.name for b in own if getattr(b, "explained", False)]
        explain = (self.nir_graph(), explained) if self.spiking is not None and explained else None
        return Verifier(backends, timesteps, ann=ann, ann_optimized=ann_optimized, batch_one=custom_op,
                        explain=explain, energy_backend="onnx" if self.spiking is not None else None)

    def nir_graph(self):
        """The NIR graph: the one read in this process, or the file's bytes read once here."""
        if self.graph is None and self.nir is not None:
            with tempfile.TemporaryDirectory(prefix="pmsm-verify-") as folder:
                path = os.path.join(folder, "model.nir")
                with open(path, "wb") as handle:
                    handle.write(self.nir)
                from pmsm.targets.nir.deployment import read_target_file  # NIR reading: 0.3 s of imports, for NIR plans only

                object.__setattr__(self, "graph", read_target_file(path)[0])
        return self.graph


def _optimized_ann_backend(source) -> Optional[AnnBackend]:
    """The source at ONNX Runtime's default optimization level (information only), or None where
    that level cannot build a session at all: ONNX Runtime 1.23 fuses 4-bit contrib Q/DQ around a
    Conv into a QLinearConv that has no 4-bit kernel, and refuses the model it made."""
    try:
        return AnnBackend(source, optimized=True)
    except BadInputError:
        return None


def _body_backend(spiking) -> Optional[OnnxBackend]:
    try:
        return OnnxBackend(spiking, portable=True)
    except BadInputError:
        return None
