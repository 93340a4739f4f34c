"""Pictures of a verification report (schema ``pmsm-report/1``), written as PNG files.

:func:`write_pictures` draws, from the report dictionary alone:

- ``<stem>-accuracy.png``: accuracy against the number of timesteps T (the ANN as a horizontal line),
  when the report has accuracies (labelled data);
- ``<stem>-energy.png``: energy per sample of each synaptic layer for the ANN and the SNN (binary and
  graded events) at the largest T, and the totals against T;
- ``<stem>-spikes.png``: the distribution of spike levels of each neuron layer at the largest T
  (small multiples);
- ``<stem>-partition.png``: a hybrid NIR deployment's schedule of one timestep, stage by stage: the
  MACs and neurons of each NIR region, and the ops of each host stage.

Matplotlib draws off screen (the Agg canvas, no pyplot state); each file is written to a temporary
file in the target folder and renamed over the target.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from pmsm.runtime.base.files import atomic_path

__all__ = ["write_pictures", "picture_paths"]

PICTURE_KINDS = ("accuracy", "energy", "spikes", "partition")

MAX_PANELS = 48  # spike histograms beyond this many neuron layers are left out (and said so)
COLORS = {"ann": "#4d4d4d", "binary": "#d95f02", "graded": "#1b9e77", "snn": "#1b9e77"}


def picture_paths(folder: str, stem: str) -> list[str]:
    """Every path :func:`write_pictures` may write for ``folder`` and ``stem``."""
    return [os.path.join(folder, f"{stem}-{kind}.png") for kind in PICTURE_KINDS]


def write_pictures(report: dict, folder: str, stem: str) -> list[str]:
    """Write the report's pictures into ``folder`` as ``<stem>-*.png``; returns the paths written."""
    written = []
    drawers = {"accuracy": _accuracy_figure, "energy": _energy_figure, "spikes": _spikes_figure,
               "partition": _partition_figure}
    for kind, path in zip(PICTURE_KINDS, picture_paths(folder, stem)):
        figure = drawers[kind](report)
        if figure is None:
            continue
        _save(figure, path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> None:
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")  # into the file atomic_path made, with the usual mode


def _title(report: dict) -> str:
    path = (report.get("model") or {}).get("path")
    return os.path.basename(path) if path else ""


def _timesteps(mapping: dict) -> list[tuple[int, str]]:
    """``[(T, key)]`` sorted by T, for a dict keyed by T as strings."""
    pairs = []
    for key in mapping or {}:
        try:
            pairs.append((int(key), key))
        except (TypeError, ValueError):
            continue
    return sorted(pairs)


def _largest_t(energy: dict) -> Optional[str]:
    pairs = _timesteps((energy.get("totals") or {}).get("snn") or {})
    if pairs:
        return pairs[-1][1]
    keys = set()
    for record in energy.get("layers", []) + energy.get("neuron_layers", []):
        keys |= set(record.get("per_T") or {})
    pairs = _timesteps(dict.fromkeys(keys))
    return pairs[-1][1] if pairs else None


def _number(value) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# Accuracy against T
# ---------------------------------------------------------------------------------------------


def _accuracy_figure(report: dict):
    accuracy = report.get("accuracy") or {}
    ann = _number(accuracy.get("ann"))
    snn = [(t, _number(accuracy["snn"][key])) for t, key in _timesteps(accuracy.get("snn") or {})]
    snn = [(t, a) for t, a in snn if a is not None]
    if ann is None and not snn:
        return None
    figure = _figure(6, 4)
    ax = figure.add_subplot()
    if snn:
        ts = [t for t, _ in snn]
        ax.plot(ts, [100 * a for _, a in snn], marker="o", color=COLORS["snn"], label="SNN (PMSM)")
        for t, a in snn:
            ax.annotate(f"{100 * a:.1f}", (t, 100 * a), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        ax.set_xticks(ts)
        if len(ts) > 2 and ts[-1] / max(ts[0], 1) >= 8:
            ax.set_xscale("log", base=2)
            ax.set_xticks(ts, [str(t) for t in ts])
    if ann is not None:
        ax.axhline(100 * ann, color=COLORS["ann"], linestyle="--", label=f"quantized ANN ({100 * ann:.1f} %)")
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(": ".join(filter(None, ["Accuracy against timesteps", _title(report)])))
    return figure


# ---------------------------------------------------------------------------------------------
# Energy per layer and totals
# ---------------------------------------------------------------------------------------------


def _energy_figure(report: dict):
    energy = report.get("energy") or {}
    layers = energy.get("layers") or []
    t_key = _largest_t(energy)
    if not layers:
        return None
    names = [str(layer.get("name", "?")) for layer in layers]
    ann = [_number(layer.get("energy_ann_pj")) for layer in layers]
    per_t = [(layer.get("per_T") or {}).get(t_key) or {} for layer in layers] if t_key else [{} for _ in layers]
    binary = [_number(e.get("energy_binary_pj")) for e in per_t]
    graded = [_number(e.get("energy_graded_pj")) for e in per_t]

    totals = (energy.get("totals") or {})
    snn_totals = _timesteps(totals.get("snn") or {})
    figure = _figure(max(7.0, 4.0 + 0.55 * len(layers)) + (3.5 if snn_totals else 0), 4.8)
    grid = figure.add_gridspec(1, 2 if snn_totals else 1, width_ratios=[max(len(layers), 3), 3] if snn_totals else None)

    ax = figure.add_subplot(grid[0, 0])
    width = 0.27
    positions = list(range(len(layers)))
    series = [("ANN", ann, COLORS["ann"])]
    if t_key:
        series += [(f"SNN T={t_key}, binary", binary, COLORS["binary"]),
                   (f"SNN T={t_key}, graded", graded, COLORS["graded"])]
    offset0 = -(len(series) - 1) / 2 * width
    for i, (label, values, color) in enumerate(series):
        xs = [p + offset0 + i * width for p in positions]
        ax.bar(xs, [v if v and v > 0 else 0 for v in values], width, label=label, color=color)
    _log_if_positive(ax, ann + binary + graded)
    ax.set_xticks(positions, names, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center",
                  fontsize=8)
    ax.set_ylabel("energy per sample (pJ)")
    ax.set_title("Per synaptic layer")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)

    if snn_totals:
        ax2 = figure.add_subplot(grid[0, 1])
        ts = [key for _, key in snn_totals]
        xs = list(range(len(ts)))
        ann_total = _number(totals.get("ann_pj"))
        b = [_number(totals["snn"][k].get("binary_pj")) or 0 for k in ts]
        g = [_number(totals["snn"][k].get("graded_pj")) or 0 for k in ts]
        ax2.bar([x - 0.2 for x in xs], b, 0.4, color=COLORS["binary"], label="SNN binary")
        ax2.bar([x + 0.2 for x in xs], g, 0.4, color=COLORS["graded"], label="SNN graded")
        if ann_total:
            ax2.axhline(ann_total, color=COLORS["ann"], linestyle="--", label="ANN")
        _log_if_positive(ax2, b + g + [ann_total])
        ax2.set_xticks(xs, [f"T={k}" for k in ts])
        ax2.set_title("Total")
        ax2.grid(True, axis="y", alpha=0.3)
        ax2.legend(fontsize=8)
    constants = energy.get("constants") or {}
    units = ", ".join(f"{constants[k]} pJ/{unit}" for k, unit in (("mac_pj", "MAC"), ("sop_pj", "SOP")) if k in constants)
    heading = "energy estimate per sample" + (f" ({units})" if units else "")
    figure.suptitle(": ".join(filter(None, [_title(report), heading])))
    return figure


def _log_if_positive(ax, values) -> None:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")


# ---------------------------------------------------------------------------------------------
# Spike-level histograms
# ---------------------------------------------------------------------------------------------


def _bins(binned: dict) -> list[tuple[int, int, int]]:
    """``[(first, last, count)]`` of the report's ``histogram_bins`` (keys ``"<first>..<last>"``)."""
    out = []
    for key, count in binned.items():
        try:
            first, last = (int(part) for part in str(key).split(".."))
            out.append((first, last, int(count)))
        except (TypeError, ValueError):
            continue
    return sorted(out)


def _spikes_figure(report: dict):
    from matplotlib.ticker import FuncFormatter, NullFormatter

    energy = report.get("energy") or {}
    t_key = _largest_t(energy)
    records = [r for r in energy.get("neuron_layers") or [] if t_key and (r.get("per_T") or {}).get(t_key)]
    if not records:
        return None
    shown = records[:MAX_PANELS]
    columns = min(4, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure = _figure(3.2 * columns, 2.6 * rows + 0.6)
    for index, record in enumerate(shown):
        stats = record["per_T"][t_key]
        histogram = stats.get("histogram") or {}
        levels = sorted((int(k), int(v)) for k, v in histogram.items())
        wide = _bins(stats.get("histogram_bins") or {})  # (first, last, count) beyond the exact levels
        total = sum(c for _, c in levels) + sum(c for _, _, c in wide) or 1
        ax = figure.add_subplot(rows, columns, index + 1)
        if levels or wide:
            # one filled outline per panel (one artist, not one bar per level: drawing cost bounded
            # whatever the bit width), exact levels one unit wide, each power-of-two bin as wide as
            # the bin at its share per level; level 0 drawn over it in its own colour
            spans = [(k - 0.45, k + 0.45, c / total) for k, c in levels] + \
                [(first - 0.5, last + 0.5, c / total / (last - first + 1)) for first, last, c in wide]
            fractions = [height for _, _, height in spans]
            edges, heights = [], []
            for left, right, height in sorted(spans):
                if edges and left > edges[-1]:
                    heights.append(0.0)  # a gap between bars
                    edges.append(left)
                elif not edges:
                    edges.append(left)
                heights.append(height)
                edges.append(max(right, edges[-1]))
            ax.stairs(heights, edges, fill=True, color=COLORS["graded"], baseline=min(fractions) / 10)
            zero_share = dict(levels).get(0, 0) / total
            if zero_share:
                ax.bar([0], [zero_share], width=0.9, color=COLORS["ann"], bottom=min(fractions) / 10)
            if max(fractions) / min(fractions) > 100:
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
        lo, hi = record.get("lo"), record.get("hi")
        if isinstance(lo, int) and isinstance(hi, int):
            margin = max(0.8, 0.03 * (hi - lo))
            ax.set_xlim(lo - margin, hi + margin)
        mean = _number(stats.get("mean_abs_spikes_per_step"))
        silent = _number(stats.get("silent_fraction"))
        caps = [f"{100 * v:.0f}% at {b}" for b, v in ((lo, _number(stats.get("cap_hit_fraction_lo"))),
                                                     (hi, _number(stats.get("cap_hit_fraction_hi"))))
                if v is not None and v > 0]
        zero = dict(levels).get(0, 0) / total
        details = [f"mean |s| {mean:.2f}" if mean is not None else "", f"s = 0: {100 * zero:.0f}%",
                   f"silent {100 * silent:.0f}%" if silent is not None else ""] + caps
        ax.set_title(str(record.get("name", "?")), fontsize=9)
        ax.text(0.98, 0.97, "\n".join(d for d in details if d), transform=ax.transAxes, ha="right", va="top",
                fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("spike level s per step", fontsize=8)
        if index % columns == 0:
            ax.set_ylabel("share of neuron-steps", fontsize=8)
    note = f" (first {MAX_PANELS} of {len(records)} layers)" if len(records) > MAX_PANELS else ""
    figure.suptitle(": ".join(filter(None, [_title(report), f"spike levels per neuron layer at T={t_key}{note}"])))
    return figure


def _partition_figure(report: dict):
    """One bar per stage of a deployment's timestep, in order: regions by their MACs (neurons
    written on the bar), host stages as a marker labelled with their ops."""
    deployment = report.get("deployment")
    if not deployment:
        return None
    regions = {r["region"]: r for r in deployment["regions"]}
    schedule = deployment["schedule"]
    figure = _figure(max(6.0, 0.22 * len(schedule) + 2), 4.2)
    axes = figure.add_subplot(1, 1, 1)
    peak = max([r["macs"] for r in regions.values()] + [1])
    for index, stage in enumerate(schedule):
        if stage["kind"] == "region":
            r = regions[stage["stage"]]
            axes.bar(index, max(r["macs"], peak * 0.01), color=COLORS["snn"])
            axes.text(index, max(r["macs"], peak * 0.01), f"{r['neurons']}", ha="center", va="bottom", fontsize=6,
                      rotation=90)
        else:
            axes.bar(index, -peak * 0.08, color=COLORS["binary"])
            label = ",".join(sorted(set(stage["ops"])))
            axes.text(index, -peak * 0.1, label, ha="center", va="top", fontsize=6, rotation=90)
    share = deployment.get("region_mac_share")
    axes.set_ylim(-peak * 0.6, peak * 1.25)
    axes.set_xlabel("stage of one timestep (green: NIR region, neurons above; orange: host ops, below)")
    axes.set_ylabel("MACs per sample")
    axes.set_title(f"{_title(report)}: {len(regions)} NIR regions, {deployment['host_stages']} host stages, "
                   + (f"{100 * share:.1f} % of MACs on neuromorphic cores" if share is not None else ""), fontsize=9)
    return figure
