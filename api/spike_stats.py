"""Spike statistics of one neuron layer: sums and counts only, so that the statistics of chunks of
samples verified anywhere merge exactly (:func:`merge_spike_stats`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _signed_bits(magnitude: int) -> int:
    """Bits of a signed graded payload able to carry -magnitude..magnitude: 1 + ceil(log2(m + 1))."""
    return 1 + int(magnitude).bit_length()


@dataclass
class SpikeStats:
    """What the report needs of one neuron layer's spikes ``[T, N, ...]``: sums and counts only,
    so that the statistics of chunks of samples merge exactly (:func:`merge_spike_stats`)."""

    steps: int
    samples: int
    elements: int  # neurons of the layer (per sample, per step)
    abs_sum: float
    nonzero: int
    ever: int  # (sample, neuron) pairs that spiked at some step
    histogram: dict  # level -> count

    @property
    def entries(self) -> int:
        return self.steps * self.samples * self.elements


def spike_stats(s: np.ndarray) -> SpikeStats:
    """Statistics of spikes ``[T, N, ...]``, one timestep at a time (memory)."""
    s = np.asarray(s)
    steps, samples = s.shape[0], s.shape[1]
    histogram: dict[int, int] = {}
    ever = None
    abs_sum, nonzero = 0.0, 0
    for step in range(steps):
        levels = np.rint(np.asarray(s[step], dtype=np.float64)).astype(np.int64).reshape(-1)
        if levels.size:
            low = int(levels.min())
            for offset in np.flatnonzero(counts := np.bincount(levels - low)):
                histogram[low + int(offset)] = histogram.get(low + int(offset), 0) + int(counts[offset])
        abs_sum += float(np.abs(s[step]).sum(dtype=np.float64))
        spiking = levels != 0
        nonzero += int(spiking.sum())
        ever = spiking if ever is None else ever | spiking
    return SpikeStats(steps=steps, samples=samples, elements=int(np.prod(s.shape[2:], dtype=np.int64)),
                      abs_sum=abs_sum, nonzero=nonzero, ever=int(ever.sum()) if ever is not None else 0,
                      histogram=histogram)


def merge_spike_stats(a: SpikeStats, b: SpikeStats) -> SpikeStats:
    histogram = dict(a.histogram)
    for level, count in b.histogram.items():
        histogram[level] = histogram.get(level, 0) + count
    return SpikeStats(steps=a.steps, samples=a.samples + b.samples, elements=a.elements, abs_sum=a.abs_sum + b.abs_sum,
                      nonzero=a.nonzero + b.nonzero, ever=a.ever + b.ever, histogram=histogram)


def neuron_stats(stats: SpikeStats, lo: int, hi: int) -> dict:
    entries = stats.entries
    histogram = {level: stats.histogram[level] for level in sorted(stats.histogram) if stats.histogram[level]}
    max_abs = max((abs(level) for level in histogram if histogram[level]), default=0)
    return {
        "entries": entries,
        "mean_abs_spikes_per_step": stats.abs_sum / entries if entries else 0.0,
        "silent_fraction": float(1.0 - stats.ever / (stats.samples * stats.elements)) if entries else 0.0,
        "histogram": {str(level): count for level, count in histogram.items()},
        "cap_hit_fraction_lo": histogram.get(lo, 0) / entries if lo != 0 and entries else None,
        "cap_hit_fraction_hi": histogram.get(hi, 0) / entries if hi != 0 and entries else None,
        "max_abs_spikes": int(max_abs),
        "payload_bits": {"observed": _signed_bits(max_abs), "bounds": _signed_bits(max(-lo, hi))},
    }
