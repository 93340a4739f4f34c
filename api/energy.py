"""The energy estimate of a spiking network: the ``"energy"`` section of the report.

:func:`energy_report` takes the untimed network (``pmsm.exporter.convert.network_for_targets``) and
the spikes its neurons emitted on the verification data (``{T: {neuron key: s [T, N, ...]}}``, as
``SpikingModel(model).run(x, T, collect_spikes=True).spikes`` returns them, or their
:class:`~pmsm.spike_stats.SpikeStats`), and returns, JSON-serialisable::

    {"constants": {"mac_pj": 4.6, "sop_pj": 0.9},
     "convention": str,
     "samples": int, "timesteps": [int, ...],
     "layers": [{"name", "op", "macs", "inputs": [str], "input_elements", "fan_out",
                 "fan_out_by_input": {str: float},
                 "energy_ann_pj",
                 "per_T": {"<T>": {"events_binary", "events_graded", "sops_binary", "sops_graded",
                                   "mac_ops", "energy_binary_pj", "energy_graded_pj",
                                   "ratio_binary", "ratio_graded"}}}],
     "neuron_layers": [{"name", "lo", "hi", "neurons",
                        "per_T": {"<T>": {"mean_abs_spikes_per_step", "silent_fraction",
                                          "histogram": {"<level>": count} (|level| <= 64),
                                          "histogram_bins": {"<first>..<last>": count} (beyond; when any),
                                          "cap_hit_fraction_lo",
                                          "cap_hit_fraction_hi", "max_abs_spikes",
                                          "payload_bits": {"observed", "bounds"}, "entries"}}}],
     "totals": {"ann_pj": float, "snn": {"<T>": {"binary_pj", "graded_pj", "ratio_binary",
                                                 "ratio_graded"}}},
     "warnings": [str]}

Figures are per sample; the synaptic layers and their MACs come from :mod:`pmsm.exporter.synapses`.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from pmsm.exporter.synapses import ANALOG_INPUT, neuron_keys, node_attribute, synaptic_layers
from pmsm.spike_stats import SpikeStats, neuron_stats, spike_stats

__all__ = ["ANALOG_INPUT", "CONVENTION", "MAC_PJ", "SOP_PJ", "energy_report", "synaptic_layers"]

MAC_PJ = 4.6  # energy of one 32-bit float multiply-accumulate, 45 nm (Horowitz 2014), the field's usual figure
SOP_PJ = 0.9  # energy of one 32-bit float accumulate (a synaptic operation)

CONVENTION = (
    "Per sample, summed over the T timesteps. ANN: E = MACs * 4.6 pJ. "
    "SNN: E = MACs(layers fed by analog values) * 4.6 pJ + SOPs * 0.9 pJ. "
    "The analog input is the same at every timestep, so a layer fed only by it (the first layer) "
    "computes its output once and pays its MACs once per sample; a layer fed by an analog value that "
    "varies in time (downstream of a neuron, e.g. an unquantized layer) pays its MACs at every step. "
    "A synaptic operation (SOP) is one incoming event times its fan-out. Events are counted two ways: "
    "binary, |s| events per neuron per step (spikes sent one at a time); graded, one event per neuron "
    "per step with s != 0 (one message carrying the signed count, as Loihi 2 graded spikes do). "
    "Fan-out of a layer = its MACs / the number of elements of its data input (per sample). "
    "Operations between a neuron and the layer that only route or scale values (Mul/Div by constants, "
    "Add of branches, Flatten/Reshape, pooling) are folded into the synapse: each neuron event reaches "
    "the layer's synapses through them, with its fan-out multiplied by the average number of pooling "
    "windows (or broadcast copies) an element belongs to. This is exact for average pooling and an "
    "upper bound for max pooling (only a window's maximum passes) and for Relu/Clip after a neuron. "
    "Connections without weights that end in a neuron (a residual Add or a pooling feeding a neuron "
    "directly) are counted in neither the ANN nor the SNN figure. "
    "ratio = SNN energy / ANN energy (below 1: the SNN needs less)."
)


def _events(stats: SpikeStats) -> tuple[float, float]:
    """(binary, graded) events per sample, summed over the timesteps."""
    if stats.samples == 0:
        return 0.0, 0.0
    return stats.abs_sum / stats.samples, stats.nonzero / stats.samples


def _ratio(snn: Optional[float], ann: Optional[float]) -> Optional[float]:
    if snn is None or not ann:
        return None
    return float(snn / ann)


def energy_report(network: onnx.ModelProto, spikes_by_t: dict, samples: int) -> dict:
    """The ``"energy"`` section of the report (see the module docstring for its schema); the
    spikes of each neuron are arrays ``[T, N, ...]`` or their :class:`SpikeStats`."""
    warnings: list[str] = []
    neurons = neuron_keys(network)
    timesteps = sorted(int(t) for t in spikes_by_t)

    def spikes_of(t: int, key: str) -> Optional[SpikeStats]:
        by_name = spikes_by_t.get(t, spikes_by_t.get(str(t), {})) or {}
        s = by_name.get(key)
        if s is None:
            node = neurons.get(key)
            if node is not None:
                s = by_name.get(node.name, by_name.get(node.output[0]))
        if s is None or isinstance(s, SpikeStats):
            return s if s is None or s.steps == t else None
        s = np.asarray(s)
        return spike_stats(s) if s.ndim >= 2 and s.shape[0] == t else None

    layers = synaptic_layers(network)
    layer_records = []
    total_ann = 0.0
    ann_known = True
    snn_totals = {t: {"binary": 0.0, "graded": 0.0, "complete": True} for t in timesteps}
    for layer in layers:
        fan_out = layer.fan_out
        ann_pj = None if layer.macs is None else layer.macs * MAC_PJ
        if ann_pj is None:
            ann_known = False
            warnings.append(f"layer '{layer.name}' ({layer.op}): MACs unknown (shapes did not resolve)")
        else:
            total_ann += ann_pj
        neuron_sources = [s for s in layer.sources if s.kind == "neuron"]
        analog_sources = [s for s in layer.sources if s.kind == "analog"]
        record = {
            "name": layer.name,
            "op": layer.op,
            "macs": layer.macs,
            "inputs": [s.name for s in layer.sources],
            "input_elements": layer.input_elements,
            "fan_out": fan_out,
            "fan_out_by_input": {s.name: (None if fan_out is None else float(fan_out * s.multiplicity))
                                 for s in layer.sources},
            "energy_ann_pj": ann_pj,
            "per_T": {},
        }
        for t in timesteps:
            events_b = events_g = sops_b = sops_g = 0.0
            complete = fan_out is not None
            for source in neuron_sources:
                s = spikes_of(t, source.name)
                if s is None:
                    complete = False
                    warnings.append(f"T={t}: no spikes of neuron '{source.name}' (input of '{layer.name}')")
                    continue
                b, g = _events(s)
                events_b += b
                events_g += g
                if fan_out is not None:
                    sops_b += b * fan_out * source.multiplicity
                    sops_g += g * fan_out * source.multiplicity
            mac_ops = 0
            if analog_sources and layer.macs is not None:
                mac_ops = layer.macs * (t if any(s.time_varying for s in analog_sources) else 1)
            elif analog_sources:
                complete = False
            entry = {
                "events_binary": events_b,
                "events_graded": events_g,
                "sops_binary": sops_b if complete else None,
                "sops_graded": sops_g if complete else None,
                "mac_ops": mac_ops,
                "energy_binary_pj": mac_ops * MAC_PJ + sops_b * SOP_PJ if complete else None,
                "energy_graded_pj": mac_ops * MAC_PJ + sops_g * SOP_PJ if complete else None,
            }
            entry["ratio_binary"] = _ratio(entry["energy_binary_pj"], ann_pj)
            entry["ratio_graded"] = _ratio(entry["energy_graded_pj"], ann_pj)
            record["per_T"][str(t)] = entry
            totals = snn_totals[t]
            if complete:
                totals["binary"] += entry["energy_binary_pj"]
                totals["graded"] += entry["energy_graded_pj"]
            else:
                totals["complete"] = False
        layer_records.append(record)

    neuron_records = []
    for key, node in neurons.items():
        lo, hi = int(node_attribute(node, "lo", 0)), int(node_attribute(node, "hi", 0))
        record = {"name": key, "lo": lo, "hi": hi, "neurons": None, "per_T": {}}
        for t in timesteps:
            s = spikes_of(t, key)
            if s is None:
                warnings.append(f"T={t}: no spikes of neuron '{key}'")
                continue
            record["neurons"] = s.elements
            record["per_T"][str(t)] = neuron_stats(s, lo, hi)
        neuron_records.append(record)

    snn = {}
    if layers:
        for t in timesteps:
            totals = snn_totals[t]
            if not totals["complete"]:
                warnings.append(f"T={t}: the SNN total leaves out what is unknown (see above)")
            binary, graded = float(totals["binary"]), float(totals["graded"])
            snn[str(t)] = {"binary_pj": binary, "graded_pj": graded,
                           "ratio_binary": _ratio(binary, total_ann), "ratio_graded": _ratio(graded, total_ann)}
    else:
        warnings.append("no synaptic layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) found")
    if not ann_known:
        warnings.append("the ANN total leaves out layers whose MACs are unknown")
    return {
        "constants": {"mac_pj": MAC_PJ, "sop_pj": SOP_PJ},
        "convention": CONVENTION,
        "samples": int(samples),
        "timesteps": timesteps,
        "layers": layer_records,
        "neuron_layers": neuron_records,
        "totals": {"ann_pj": float(total_ann), "snn": snn},
        "warnings": list(dict.fromkeys(warnings)),
    }
