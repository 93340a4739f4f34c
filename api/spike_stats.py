"""Spike statistics of one neuron layer: sums and counts only, so that the statistics of chunks of
samples verified anywhere merge exactly (:func:`merge_spike_stats`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _signed_bits(magnitude: int) -> int:
    """Bits of a signed graded payload able to carry -magnitude..magnitude: 1 + ceil(log2(m + 1))."""
    return 1 + int(magnitude).bit_length()


EXACT_LEVELS = 64  # levels -64..64 are counted one by one; beyond, one bin per power of two


@dataclass
class SpikeStats:
    """What the report needs of one neuron layer's spikes ``[T, N, ...]``: sums and counts only,
    so that the statistics of chunks of samples merge exactly (:func:`merge_spike_stats`).

    The histogram is bounded whatever the bit width: levels ``-EXACT_LEVELS..EXACT_LEVELS`` one by
    one (``histogram``), larger magnitudes in bins ``[2^k + 1, 2^(k+1)]`` of each sign (``bins``:
    ``(first, last) -> count``), and the two extreme levels seen with their exact counts (what the
    cap-hit fractions need). A 16-bit activation layer (65,536 levels) has at most 129 + 2 x 10
    entries; one bar per level made a 32 MB report and 500 s of drawing (measured 2026-12-07).
    """

    steps: int
    samples: int
    elements: int  # neurons of the layer (per sample, per step)
    abs_sum: float
    nonzero: int
    ever: int  # (sample, neuron) pairs that spiked at some step
    histogram: dict  # level -> count, |level| <= EXACT_LEVELS
    bins: dict = field(default_factory=dict)  # (first level, last level) -> count, |level| > EXACT_LEVELS
    extremes: dict = field(default_factory=dict)  # the smallest and the largest level seen -> count

    @property
    def entries(self) -> int:
        return self.steps * self.samples * self.elements


def _wide_bin(level: int) -> tuple[int, int]:
    """The bin of a level of magnitude above EXACT_LEVELS: ``(first, last)`` in increasing order."""
    k = (abs(level) - 1).bit_length() - 1  # 65..128 -> 6, 129..256 -> 7, ...
    first, last = (1 << k) + 1, 1 << (k + 1)
    return (first, last) if level > 0 else (-last, -first)


def spike_stats(s: np.ndarray) -> SpikeStats:
    """Statistics of spikes ``[T, N, ...]``, one timestep at a time (memory)."""
    s = np.asarray(s)
    steps, samples = s.shape[0], s.shape[1]
    exact = np.zeros(2 * EXACT_LEVELS + 1, np.int64)
    bins: dict[tuple[int, int], int] = {}
    extremes: dict[int, int] = {}
    ever = None
    abs_sum, nonzero = 0.0, 0
    for step in range(steps):
        levels = np.rint(np.asarray(s[step], dtype=np.float64)).astype(np.int64).reshape(-1)
        if levels.size:
            small = np.abs(levels) <= EXACT_LEVELS
            exact += np.bincount(levels[small] + EXACT_LEVELS, minlength=exact.size)
            wide = levels[~small]
            if wide.size:
                # bin index by magnitude, vectorised: bit length of |level| - 1
                magnitude_bits = np.floor(np.log2(np.abs(wide) - 1)).astype(np.int64)
                for sign in (-1, 1):
                    chosen = magnitude_bits[(wide > 0) if sign > 0 else (wide < 0)]
                    for k, count in zip(*np.unique(chosen, return_counts=True)):
                        key = _wide_bin(sign * ((1 << int(k)) + 1))
                        bins[key] = bins.get(key, 0) + int(count)
            for level in (int(levels.min()), int(levels.max())):
                if level not in extremes:
                    extremes[level] = 0
            extremes = _keep_extremes(extremes)
            for level in extremes:
                extremes[level] += int(np.count_nonzero(levels == level))
        abs_sum += float(np.abs(s[step]).sum(dtype=np.float64))
        spiking = levels != 0
        nonzero += int(spiking.sum())
        ever = spiking if ever is None else ever | spiking
    histogram = {int(offset) - EXACT_LEVELS: int(exact[offset]) for offset in np.flatnonzero(exact)}
    return SpikeStats(steps=steps, samples=samples, elements=int(np.prod(s.shape[2:], dtype=np.int64)),
                      abs_sum=abs_sum, nonzero=nonzero, ever=int(ever.sum()) if ever is not None else 0,
                      histogram=histogram, bins=bins, extremes=extremes)


def _keep_extremes(extremes: dict) -> dict:
    """Only the smallest and the largest level (their counts as they are)."""
    if not extremes:
        return {}
    low, high = min(extremes), max(extremes)
    return {level: extremes[level] for level in {low, high}}


def merge_spike_stats(a: SpikeStats, b: SpikeStats) -> SpikeStats:
    histogram = dict(a.histogram)
    for level, count in b.histogram.items():
        histogram[level] = histogram.get(level, 0) + count
    bins = dict(a.bins)
    for key, count in b.bins.items():
        bins[key] = bins.get(key, 0) + count
    extremes = dict(a.extremes)
    for level, count in b.extremes.items():
        extremes[level] = extremes.get(level, 0) + count
    return SpikeStats(steps=a.steps, samples=a.samples + b.samples, elements=a.elements, abs_sum=a.abs_sum + b.abs_sum,
                      nonzero=a.nonzero + b.nonzero, ever=a.ever + b.ever, histogram=histogram, bins=bins,
                      extremes=_keep_extremes(extremes))


def neuron_stats(stats: SpikeStats, lo: int, hi: int) -> dict:
    entries = stats.entries
    histogram = {level: stats.histogram[level] for level in sorted(stats.histogram) if stats.histogram[level]}
    extremes = {level: count for level, count in stats.extremes.items() if count}
    counted = {**histogram, **extremes}  # exact counts: every level of small magnitude, and the extremes
    max_abs = max((abs(level) for level in counted), default=0)
    record = {
        "entries": entries,
        "mean_abs_spikes_per_step": stats.abs_sum / entries if entries else 0.0,
        "silent_fraction": float(1.0 - stats.ever / (stats.samples * stats.elements)) if entries else 0.0,
        "histogram": {str(level): count for level, count in histogram.items()},
        "cap_hit_fraction_lo": counted.get(lo, 0) / entries if lo != 0 and entries else None,
        "cap_hit_fraction_hi": counted.get(hi, 0) / entries if hi != 0 and entries else None,
        "max_abs_spikes": int(max_abs),
        "payload_bits": {"observed": _signed_bits(max_abs), "bounds": _signed_bits(max(-lo, hi))},
    }
    if stats.bins:  # levels beyond +-EXACT_LEVELS, by power-of-two bins (the report stays small)
        record["histogram_bins"] = {f"{first}..{last}": count for (first, last), count in sorted(stats.bins.items())
                                    if count}
    return record
