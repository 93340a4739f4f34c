"""Run several backends on the same inputs and compare them (DESIGN §9).

The source ANN (``ann``, ONNX Runtime with optimizations disabled) is the reference of the spiking
ONNX (``onnx``) at T = 1; every other backend is compared with ``onnx`` at each T. When the source
is a NIR file there is no ANN: the NIR interpreter is the root that the others are compared with.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

ProgressFn = Optional[Callable[[int, int], None]]


@dataclass
class BackendRun:
    output: np.ndarray  # [N, ...] mean over T of the readout
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # ONNX neuron node name -> [T, N, ...]
    seconds: float = 0.0


class Backend(Protocol):
    name: str
    reference: str  # the backend it is compared with; "" for a root, compared with nothing

    def run(self, x: np.ndarray, timesteps: int, progress: ProgressFn = None) -> BackendRun: ...


@dataclass(frozen=True)
class Comparison:
    """One backend at one T against its reference."""

    reference: str
    max_abs_diff: float
    spike_mismatch: int
    spike_total: int
    argmax_agreement: float
    accuracy: Optional[float]
    seconds: float

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "max_abs_diff": self.max_abs_diff,
            "spike_mismatch": self.spike_mismatch,
            "spike_total": self.spike_total,
            "argmax_agreement": self.argmax_agreement,
            "accuracy": self.accuracy,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Verification:
    samples: int
    timesteps: list[int]
    comparisons: dict[str, dict[int, Comparison]]
    ann_accuracy: Optional[float]
    runs: dict[str, dict[int, BackendRun]]  # kept for the energy and spike statistics
    failures: list[str]
    root_accuracy: dict[int, Optional[float]] = field(default_factory=dict)  # a root backend's, per T
    ann_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures


BATCH_ONE_SAMPLES = 32  # samples also compared one at a time (batch 1), whatever batch the model takes
# Backends whose disagreement with the reference fails verification; the others are information.
STRICT_BACKENDS = ("onnx", "nir", "torch", "lava")


def accuracy(output: np.ndarray, labels: Optional[np.ndarray]) -> Optional[float]:
    if labels is None:
        return None
    return float(np.mean(predictions(output) == labels))


def predictions(output: np.ndarray) -> np.ndarray:
    return np.asarray(output).reshape(len(output), -1).argmax(axis=1)


def compare(run: BackendRun, reference: BackendRun, reference_name: str, labels) -> Comparison:
    mismatch = total = 0
    for name, spikes in run.spikes.items():
        total += int(np.abs(spikes).sum())
        if name in reference.spikes:
            mismatch += int(np.count_nonzero(spikes != reference.spikes[name]))
    if not run.spikes:
        total = int(sum(np.abs(s).sum() for s in reference.spikes.values()))
    diff = np.abs(run.output.astype(np.float64) - reference.output.astype(np.float64))
    return Comparison(
        reference=reference_name,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        spike_mismatch=mismatch,
        spike_total=total,
        argmax_agreement=float(np.mean(predictions(run.output) == predictions(reference.output))),
        accuracy=accuracy(run.output, labels),
        seconds=run.seconds,
    )


def verify(ann: Optional[Backend], backends: list[Backend], x: np.ndarray, labels: Optional[np.ndarray],
           timesteps: list[int], progress_factory: Callable[[str, int], ProgressFn] = lambda name, t: None,
           ann_optimized: Optional[Backend] = None) -> Verification:
    """Run ``ann`` once and every backend at every T; ``backends`` start with ``onnx``, or, without
    an ``ann``, with the root (a backend whose ``reference`` is empty)."""
    runs: dict[str, dict[int, BackendRun]] = {}
    ann_run = _timed(ann, x, 1, None) if ann is not None else None
    comparisons: dict[str, dict[int, Comparison]] = {}
    failures: list[str] = []
    root_accuracy: dict[int, Optional[float]] = {}
    if ann_optimized is not None:
        optimized = _timed(ann_optimized, x, 1, None)
        comparisons[ann_optimized.name] = {1: compare(optimized, ann_run, ann.name, labels)}
    if ann is not None and 1 in timesteps:  # the source one sample at a time, as a batch-1 user runs it
        subset = x[:BATCH_ONE_SAMPLES]
        one_ann = ann.run(subset, 1, None, batch_size=1)
        one_onnx = backends[0].run(subset, 1, None, batch_size=1)
        result = compare(one_onnx, one_ann, ann.name, None)
        comparisons["onnx_batch1"] = {1: result}
        if result.max_abs_diff != 0:
            failures.append(f"onnx at T=1, one sample at a time, differs from the source run the same way: "
                            f"max_abs_diff {result.max_abs_diff:.3g} (must be 0)")
    for timestep in timesteps:
        for backend in backends:
            run = _timed(backend, x, timestep, progress_factory(backend.name, timestep))
            runs.setdefault(backend.name, {})[timestep] = run
            if not backend.reference:
                root_accuracy[timestep] = accuracy(run.output, labels)
                continue
            reference = ann_run if ann is not None and backend.reference == ann.name \
                else runs[backend.reference][timestep]
            result = compare(run, reference, backend.reference, labels)
            comparisons.setdefault(backend.name, {})[timestep] = result
            failures += _criteria(backend.name, timestep, result)
    return Verification(samples=len(x), timesteps=list(timesteps), comparisons=comparisons,
                        ann_accuracy=accuracy(ann_run.output, labels) if ann_run is not None else None, runs=runs,
                        failures=failures, root_accuracy=root_accuracy,
                        ann_seconds=ann_run.seconds if ann_run is not None else 0.0)


def _criteria(name: str, timestep: int, result: Comparison) -> list[str]:
    if name == "onnx":
        if timestep == 1 and result.max_abs_diff != 0:
            return [f"onnx at T=1 differs from the source model: max_abs_diff {result.max_abs_diff:.3g} (must be 0)"]
        return []
    if name in STRICT_BACKENDS and result.argmax_agreement < 1.0:
        disagreeing = round((1 - result.argmax_agreement) * 100, 2)
        return [f"{name} at T={timestep} disagrees with {result.reference} on {disagreeing}% of the predictions"]
    return []


def _timed(backend: Backend, x, timestep, progress) -> BackendRun:
    start = time.perf_counter()
    run = backend.run(x, timestep, progress)
    run.seconds = time.perf_counter() - start
    return run


def terminal_progress(name: str, timestep: int) -> ProgressFn:
    """A progress bar on stderr when it is a terminal; nothing in pipes and CI logs."""
    from pmsm.progress import bar_for

    return bar_for(sys.stderr, f"{name} T={timestep}")
