"""Run several backends on the same inputs, chunk by chunk, and compare them (docs/verification.md).

The source ANN (``ann``, ONNX Runtime with optimizations disabled) is the reference of the spiking
ONNX (``onnx``) at T = 1; every other backend is compared with ``onnx`` at each T. ``onnx`` runs the
file's standard-op body of the neuron on every sample; ``onnx_custom_op`` runs the reference kernel
(the Python custom op) on the first ``reference_samples`` and must equal ``onnx`` bit for bit there.
When the source is a NIR file there is no ANN: the NIR interpreter is the root that the others are
compared with.

A :class:`Verifier` turns one chunk of samples into a :class:`Tallies`: counts, sums and maxima
only, so that chunks verified anywhere (this process, worker processes, a Ray cluster) merge into
the same totals, and memory holds one chunk's spikes at a time. The criteria are applied to the
merged totals (:func:`failures_of`).
"""
from __future__ import annotations

import copy

import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pmsm.data import Chunk
from pmsm.runtime.backend import BackendRun, ProgressFn
from pmsm.runtime.base.progress import bar_for
from pmsm.spike_stats import merge_spike_stats, spike_stats

BATCH_ONE_SAMPLES = 32  # samples also compared one at a time (batch 1), whatever batch the model takes
# Backends whose disagreement with the reference fails verification; the others are information.
STRICT_BACKENDS = ("onnx", "nir", "torch", "lava")
CUSTOM_OP = "onnx_custom_op"
BATCH_ONE = "onnx_batch1"
BATCH_ONE_FAILURE = "onnx at T=1, one sample at a time"


@dataclass
class Tally:
    """One backend at one T against its reference, over the samples seen so far."""

    reference: str
    samples: int = 0
    max_abs_diff: float = 0.0
    bits_differ: int = 0  # output values whose float32 bit patterns differ from the reference's
    spike_mismatch: int = 0
    spike_total: int = 0
    agree: int = 0
    correct: Optional[int] = None
    seconds: float = 0.0

    def merge(self, other: "Tally") -> "Tally":
        return Tally(
            reference=self.reference, samples=self.samples + other.samples,
            max_abs_diff=max(self.max_abs_diff, other.max_abs_diff), bits_differ=self.bits_differ + other.bits_differ,
            spike_mismatch=self.spike_mismatch + other.spike_mismatch, spike_total=self.spike_total + other.spike_total,
            agree=self.agree + other.agree, correct=_add(self.correct, other.correct),
            seconds=self.seconds + other.seconds)

    @property
    def argmax_agreement(self) -> float:
        return self.agree / self.samples if self.samples else 1.0

    @property
    def accuracy(self) -> Optional[float]:
        return None if self.correct is None or not self.samples else self.correct / self.samples

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "bits_differ": self.bits_differ,
            "spike_mismatch": self.spike_mismatch,
            "spike_total": self.spike_total,
            "argmax_agreement": self.argmax_agreement,
            "accuracy": self.accuracy,
            "seconds": round(self.seconds, 4),
        }


@dataclass
class Scored:
    """A root backend (the ANN, or a NIR source's interpreter) at one T: accuracy and time only."""

    samples: int = 0
    correct: Optional[int] = None
    seconds: float = 0.0

    def merge(self, other: "Scored") -> "Scored":
        return Scored(self.samples + other.samples, _add(self.correct, other.correct), self.seconds + other.seconds)

    @property
    def accuracy(self) -> Optional[float]:
        return None if self.correct is None or not self.samples else self.correct / self.samples


@dataclass
class Tallies:
    """Everything verification keeps of some chunks; :meth:`merge` is associative and exact."""

    samples: int = 0
    roots: dict[str, dict[int, Scored]] = field(default_factory=dict)
    comparisons: dict[str, dict[int, Tally]] = field(default_factory=dict)
    spike_stats: dict[int, dict] = field(default_factory=dict)  # T -> neuron -> pmsm.spike_stats.SpikeStats
    mismatch_by_layer: dict[str, dict[int, list]] = field(default_factory=dict)  # backend -> T -> LayerMismatch rows
    details: dict[str, dict[int, object]] = field(default_factory=dict)  # report key -> T -> a backend's details

    def merge(self, other: "Tallies") -> "Tallies":
        merged = Tallies(samples=self.samples + other.samples)
        merged.roots = _merge_nested(self.roots, other.roots, lambda a, b: a.merge(b))
        merged.comparisons = _merge_nested(self.comparisons, other.comparisons, lambda a, b: a.merge(b))
        merged.spike_stats = _merge_nested(self.spike_stats, other.spike_stats, merge_spike_stats)
        merged.mismatch_by_layer = _merge_nested(self.mismatch_by_layer, other.mismatch_by_layer, _merge_rows)
        merged.details = _merge_nested(self.details, other.details, lambda a, b: a.merge(b))
        return merged


def _add(a: Optional[int], b: Optional[int]) -> Optional[int]:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _merge_flat(a: dict, b: dict, combine) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = combine(out[key], value) if key in out else value
    return out


def _merge_nested(a: dict, b: dict, combine) -> dict:
    out = {key: dict(inner) for key, inner in a.items()}
    for key, inner in b.items():
        out[key] = _merge_flat(out.get(key, {}), inner, combine)
    return out


def _merge_rows(a: list, b: list) -> list:
    from pmsm import mismatch  # reads NIR graphs and deployments: 0.4 s of imports (measured) --check does not need

    return mismatch.merge_rows(a, b)


@dataclass
class Verification:
    """The merged tallies of every sample, and the criteria that failed on them."""

    tallies: Tallies
    timesteps: list[int]
    failures: list[str]
    wall_seconds: float = 0.0
    execution: dict = field(default_factory=dict)  # where it ran: in-process, worker processes, Ray

    @property
    def samples(self) -> int:
        return self.tallies.samples

    @property
    def passed(self) -> bool:
        return not self.failures


class Verifier:
    """Runs every backend on one chunk of samples and tallies it against the references.

    ``ann``/``ann_optimized``: the source model (None for a NIR source); ``batch_one``: the spiking
    backend whose first ``BATCH_ONE_SAMPLES`` samples are also run one at a time against the
    source run the same way; ``explain``: per layer, why spikes of NIR-reading backends differ
    from ``onnx`` (``(nir_graph, backends)``); ``energy_backend``: whose spikes the energy report
    counts."""

    def __init__(self, backends: list, timesteps: list[int], ann=None, ann_optimized=None, batch_one=None,
                 explain: Optional[tuple] = None, energy_backend: Optional[str] = "onnx"):
        self.backends, self.timesteps = backends, list(timesteps)
        self.ann, self.ann_optimized, self.batch_one = ann, ann_optimized, batch_one
        self.explain, self.energy_backend = explain, energy_backend

    def run_chunk(self, start: int, x: np.ndarray, y: Optional[np.ndarray]) -> Tallies:
        tallies = Tallies(samples=len(x))
        ann_run = None
        if self.ann is not None:
            ann_run = _timed(lambda: self.ann.run(x, 1))
            tallies.roots[self.ann.name] = {1: _scored(ann_run, y)}
            if self.ann_optimized is not None:
                optimized = _timed(lambda: self.ann_optimized.run(x, 1))
                tallies.comparisons[self.ann_optimized.name] = {1: compare(optimized, ann_run, self.ann.name, y)}
            subset = max(0, min(len(x), BATCH_ONE_SAMPLES - start))
            if self.batch_one is not None and subset and 1 in self.timesteps:
                one_ann = self.ann.run(x[:subset], 1, batch_size=1)
                one_onnx = _timed(lambda: self.batch_one.run(x[:subset], 1, batch_size=1))
                tallies.comparisons[BATCH_ONE] = {1: compare(one_onnx, one_ann, self.ann.name, None)}
        for timestep in self.timesteps:
            runs: dict[str, BackendRun] = {}
            for backend in self.backends:
                limit = getattr(backend, "sample_limit", None)
                if limit is not None and start >= limit:
                    continue
                run = _timed(lambda: backend.run(x, timestep))
                runs[backend.name] = run
                if not backend.reference:
                    tallies.roots.setdefault(backend.name, {})[timestep] = _scored(run, y)
                    continue
                reference = ann_run if ann_run is not None and backend.reference == self.ann.name \
                    else runs[backend.reference]
                tallies.comparisons.setdefault(backend.name, {})[timestep] = compare(run, reference,
                                                                                     backend.reference, y)
                if run.details is not None:
                    tallies.details.setdefault(backend.details_key, {})[timestep] = run.details
            energy = runs.get(self.energy_backend)
            if energy is not None and energy.spikes:
                tallies.spike_stats[timestep] = {key: spike_stats(s) for key, s in energy.spikes.items()}
            if self.explain is not None and "onnx" in runs:
                self._explain(tallies, timestep, x, runs)
        return tallies

    def _explain(self, tallies: Tallies, timestep: int, x: np.ndarray, runs: dict) -> None:
        from pmsm import mismatch  # reads NIR graphs and deployments: 0.4 s of imports (measured) --check does not need

        graph, names = self.explain
        explained: list = []  # (spikes, rows): a backend with the same spikes as one explained has the same rows
        for name in names:
            if name in runs and runs[name].spikes:
                spikes = runs[name].spikes
                rows = next((copy.deepcopy(r) for s, r in explained if _same_spikes(s, spikes)), None)
                if rows is None:
                    rows = mismatch.explain(graph, x, runs["onnx"].spikes, spikes)
                    explained.append((spikes, rows))
                tallies.mismatch_by_layer.setdefault(name, {})[timestep] = rows


def _same_spikes(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _spike_total(spikes: np.ndarray) -> int:
    """Spikes of a layer, counting finite values only: a NaN (a broken model that converted anyway)
    is a mismatch to report, not a traceback."""
    magnitudes = np.abs(np.asarray(spikes, dtype=np.float64))
    return int(magnitudes[np.isfinite(magnitudes)].sum())


def compare(run: BackendRun, reference: BackendRun, reference_name: str, labels) -> Tally:
    mismatch = total = 0
    for name, spikes in run.spikes.items():
        total += _spike_total(spikes)
        if name in reference.spikes:
            mismatch += int(np.count_nonzero(spikes != reference.spikes[name]))
    if not run.spikes:
        total = sum(_spike_total(s) for s in reference.spikes.values())
    mine, theirs = np.asarray(run.output, np.float32), np.asarray(reference.output, np.float32)
    diff = np.abs(mine.astype(np.float64) - theirs.astype(np.float64))
    return Tally(
        reference=reference_name, samples=len(run.output),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        bits_differ=int(np.count_nonzero(mine.view(np.uint32) != theirs.view(np.uint32)))
        if mine.shape == theirs.shape else int(mine.size),
        spike_mismatch=mismatch, spike_total=total,
        agree=int(np.sum(predictions(run.output) == predictions(reference.output))),
        correct=_correct(run.output, labels), seconds=run.seconds)


def predictions(output: np.ndarray) -> np.ndarray:
    return np.asarray(output).reshape(len(output), -1).argmax(axis=1)


def _correct(output: np.ndarray, labels) -> Optional[int]:
    return None if labels is None else int(np.sum(predictions(output) == labels))


def _scored(run: BackendRun, labels) -> Scored:
    return Scored(samples=len(run.output), correct=_correct(run.output, labels), seconds=run.seconds)


def _timed(call) -> BackendRun:
    start = time.perf_counter()
    run = call()
    run.seconds = time.perf_counter() - start
    return run


def failures_of(tallies: Tallies) -> list[str]:
    """The criteria (docs/verification.md) applied to the merged tallies."""
    failures = []
    batch_one = tallies.comparisons.get(BATCH_ONE, {}).get(1)
    if batch_one is not None and batch_one.max_abs_diff != 0:
        failures.append(f"{BATCH_ONE_FAILURE}, differs from the source run the same way: "
                        f"max_abs_diff {batch_one.max_abs_diff:.3g} (must be 0)")
    for name, by_t in tallies.comparisons.items():
        for timestep, result in by_t.items():
            failures += _criteria(name, timestep, result)
    for name, by_t in tallies.mismatch_by_layer.items():
        from pmsm import mismatch  # reads NIR graphs and deployments: 0.4 s of imports (measured) --check does not need

        for timestep, rows in by_t.items():
            failures += mismatch.failures(rows, name, timestep)
    return failures


def _criteria(name: str, timestep: int, result: Tally) -> list[str]:
    if name == "onnx":
        if timestep == 1 and result.max_abs_diff != 0:
            return [f"onnx at T=1 differs from the source model: max_abs_diff {result.max_abs_diff:.3g} (must be 0)"]
        return []
    if name == CUSTOM_OP:
        if result.bits_differ or result.spike_mismatch:
            return [f"{CUSTOM_OP} at T={timestep} is not bit-equal to onnx (the standard-op body) on its "
                    f"{result.samples} samples: {result.bits_differ} output value(s) and {result.spike_mismatch} "
                    f"spike count(s) differ (must be 0)"]
        return []
    if name in STRICT_BACKENDS and result.argmax_agreement < 1.0:
        disagreeing = round((1 - result.argmax_agreement) * 100, 2)
        return [f"{name} at T={timestep} disagrees with {result.reference} on {disagreeing}% of the predictions"]
    return []


def verify_chunks(executor, chunks, samples: int, timesteps: list[int], progress: ProgressFn = None) -> Verification:
    """Verify ``chunks`` (of ``samples`` in all) where ``executor`` runs them (pmsm.sharding) and
    merge what comes back; the criteria are applied to the merged totals."""
    started = time.perf_counter()
    merged, done = Tallies(), 0
    if progress is not None:
        progress(0, samples)
    for chunk, tallies in executor.verify(chunks):
        merged = merged.merge(tallies)
        done += len(chunk.x)
        if progress is not None:
            progress(done, samples)
    return Verification(tallies=merged, timesteps=list(timesteps), failures=failures_of(merged),
                        wall_seconds=time.perf_counter() - started,
                        execution={"kind": executor.kind, "workers": executor.workers})


def split_at(chunks, boundaries: list[int]):
    """``chunks`` with every chunk that spans one of ``boundaries`` (sample indices) cut there,
    so that a backend limited to the first n samples runs on whole chunks."""
    for chunk in chunks:
        cuts = sorted(b - chunk.start for b in boundaries if chunk.start < b < chunk.stop)
        begin = 0
        for cut in cuts + [len(chunk.x)]:
            yield Chunk(chunk.start + begin, chunk.x[begin:cut], None if chunk.y is None else chunk.y[begin:cut])
            begin = cut


def terminal_progress(label: str = "verify") -> ProgressFn:
    """A progress bar on stderr when it is a terminal; nothing in pipes and CI logs."""
    return bar_for(sys.stderr, label)
