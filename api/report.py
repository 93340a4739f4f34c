"""The verification report (schema ``pmsm-report/1``, docs/verification.md) and its terminal summary."""
from __future__ import annotations

import os
from typing import Optional, TextIO

from pmsm.energy import energy_report
from pmsm.exporter.synapses import mac_share
from pmsm.runtime.base.version import __version__
from pmsm.targets.interface import target_named

SCHEMA = "pmsm-report/1"


def build_report(export, verification, dataset) -> dict:

    tallies = verification.tallies
    roots = tallies.roots
    ann = roots.get("ann", {}).get(1)
    root = export.root  # a NIR source: the backend the others are compared with
    backends = {name: {str(t): c.to_json() for t, c in sorted(by_t.items())}
                for name, by_t in sorted(tallies.comparisons.items(), key=lambda item: _backend_rank(item[0]))}
    for name, by_t in tallies.mismatch_by_layer.items():
        for t, rows in by_t.items():
            backends[name][str(t)]["mismatch_by_layer"] = [r.to_json() for r in rows]
    report = {
        "schema": SCHEMA,
        "tool": {"name": "pmsm-export", "version": __version__},
        "model": {"path": export.source_path, "sha256": export.source_sha256},
        "target": export.target,
        "output": export.output_path,
        "data": {"path": dataset.path, "kind": dataset.kind, "samples": dataset.samples},
        "timesteps": list(verification.timesteps),
        "neurons": [
            {"name": n.name, "producer": n.producer, "lo": n.params.lo, "hi": n.params.hi,
             "v_init": n.params.v_init, "rounding": n.params.rounding}
            for n in export.neurons
        ],
        "verification": {
            "samples": verification.samples,
            "ann_seconds": round(ann.seconds, 4) if ann is not None else 0.0,
            "wall_seconds": round(verification.wall_seconds, 4),
            "execution": dict(verification.execution),
            "backends": backends,
            "criteria": export.criteria or list(CRITERIA),
            "failures": list(verification.failures),
            "passed": verification.passed,
        },
        "accuracy": {
            "ann": ann.accuracy if ann is not None else None,
            "snn": {str(t): c.accuracy for t, c in sorted(tallies.comparisons.get("onnx", {}).items())}
            or {str(t): r.accuracy for t, r in sorted(roots.get(root, {}).items())},
        },
        "energy": _energy(export, tallies) if export.spiking is not None else {},
        "network": _network(export) if export.network is not None else {},
    }
    if root:
        report["verification"]["root"] = root
        report["verification"]["root_seconds"] = {str(t): round(r.seconds, 4)
                                                  for t, r in sorted(roots.get(root, {}).items())}
    for key, by_t in sorted(tallies.details.items()):
        report[key] = {str(t): _jsonable(r) for t, r in sorted(by_t.items())}
    if export.target:
        report.update(target_named(export.target).report_fields(export))
    return report


BACKEND_ORDER = ("ann_ort_opt", "onnx_batch1", "onnx", "onnx_custom_op", "nir", "torch", "lava", "lava_fixed")


def _backend_rank(name: str) -> tuple:
    return (BACKEND_ORDER.index(name), "") if name in BACKEND_ORDER else (len(BACKEND_ORDER), name)


CRITERIA = (
    "onnx vs ann at T=1: max_abs_diff == 0 (also one sample at a time: onnx_batch1)",
    "onnx_custom_op (the reference kernel, on its samples) vs onnx (the standard-op body) at every T: "
    "bit-equal outputs and spikes",
    "nir, torch and lava (floating point) vs onnx at every T: argmax_agreement == 1, and every spike that "
    "differs explained per layer (mismatch_by_layer: unexplained == 0)",
)


def comparable(report: dict) -> dict:
    """The report without what depends on where and how fast it ran (times, workers, chunking):
    two runs on the same data must give equal ``comparable`` reports."""
    import copy

    document = copy.deepcopy(report)
    verification = document["verification"]
    for key in ("ann_seconds", "wall_seconds", "execution", "root_seconds"):
        verification.pop(key, None)
    for by_t in verification["backends"].values():
        for entry in by_t.values():
            entry.pop("seconds", None)
    return document


def _network(export) -> dict:
    """Temporal compensation and where the MACs run (spiking synapses or not)."""
    return {
        "compensation": {"on": export.compensation, "ops": [
            {"node": name, "op": op} for name, op in export.compensated]},
        "uncompensated": [{"node": name, "op": op, "why": why} for name, op, why in export.uncompensated],
        "macs": mac_share(export.folded),
    }


def _energy(export, tallies) -> dict:
    return energy_report(export.folded, tallies.spike_stats, tallies.samples)


def _jsonable(value):
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _percent(value) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def _count(value: int) -> str:
    for limit, unit in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if value >= limit:
            return f"{value / (limit if unit != 'k' else 1e3):.3g}{unit}"
    return str(value)


def _print_fixed_point(fixed: dict | None, out: TextIO) -> None:
    if not fixed:
        return
    records = next(iter(fixed.values()))
    weights = [r["max_rel_error"] for r in records if "max_rel_error" in r]
    state = [r["state_bits"] for r in records if "state_bits" in r]
    payload = [r["payload_bits"] for r in records if "payload_bits" in r]
    overflowing = sorted({r["node"] for r in records if r.get("overflow") or r.get("overflow_count")})
    print(f"  lava_fixed: weights off by up to {100 * max(weights, default=0):.2g}% of a layer's largest weight;\n"
          f"    needs {max(state, default=0)}-bit state, {max(payload, default=0)}-bit payloads"
          f" (per layer: report key lava_fixed_point)", file=out)
    if overflowing:
        print(f"    OVERFLOW beyond 24 bits in {len(overflowing)} layer(s): {', '.join(overflowing)}", file=out)


def _seconds(value) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{1e3 * value:.3g} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def _micro(picojoules) -> str:
    return "?" if picojoules is None else f"{picojoules / 1e6:.4g}"


def _ratio(value) -> str:
    return "?" if value is None else f"{value:.2f}x"


def print_summary(report: dict, out: TextIO) -> None:
    """Backends x T (agreement with the reference, accuracy) and energy totals, in 80 columns."""
    verification = report["verification"]
    print(f"\nverification on {verification['samples']} samples of "
          f"{os.path.basename(report['model']['path'])}:", file=out)
    print(f"  {'backend':<15}{'T':>3}  {'vs':<4}{'max|diff|':>10}{'spikes':>9}{'mismatch':>9}{'agree':>8}"
          f"{'accuracy':>9}{'time':>9}", file=out)
    accuracy = report["accuracy"]
    ann_seconds = verification.get("ann_seconds")
    if accuracy["ann"] is not None or ann_seconds:
        print(f"  {'ann':<15}{'-':>3}  {'':<4}{'':>10}{'':>9}{'':>9}{'':>8}{_percent(accuracy['ann']):>9}"
              f"{_seconds(ann_seconds):>9}", file=out)
    root = verification.get("root")
    for t, value in (accuracy["snn"] if root else {}).items():
        print(f"  {root:<15}{t:>3}  {'':<4}{'':>10}{'':>9}{'':>9}{'':>8}{_percent(value):>9}", file=out)
    for name, by_t in verification["backends"].items():
        for t, c in by_t.items():
            spikes = _count(c["spike_total"]) if c["spike_total"] else "-"
            mismatch = _count(c["spike_mismatch"]) if c["reference"] != "ann" and c["spike_total"] else "-"
            print(f"  {name:<15}{t:>3}  {c['reference']:<4}{c['max_abs_diff']:>10.3g}{spikes:>9}{mismatch:>9}"
                  f"{_percent(c['argmax_agreement']):>8}{_percent(c['accuracy']):>9}{_seconds(c.get('seconds')):>9}",
                  file=out)
    custom = verification["backends"].get("onnx_custom_op")
    if custom:
        ran = next(iter(custom.values()))["samples"]
        print(f"  onnx ran the file's standard-op body on all {verification['samples']} samples; onnx_custom_op the "
              f"reference kernel on the first {ran}", file=out)
    execution = verification.get("execution") or {}
    if execution.get("workers", 1) > 1 or execution.get("kind") == "ray":
        where = "Ray actors" if execution["kind"] == "ray" else "worker processes"
        print(f"  verified in {execution['workers']} {where}, chunks of up to {execution.get('chunk_samples')} samples, "
              f"{_seconds(verification.get('wall_seconds'))} wall time", file=out)
    _print_fixed_point(report.get("lava_fixed_point"), out)
    energy = report.get("energy") or {}
    totals = energy.get("totals")
    if totals:
        print(f"  energy per sample: ANN {_micro(totals['ann_pj'])} uJ", file=out)
        for t, e in totals["snn"].items():
            print(f"    SNN T={t}: {_micro(e['binary_pj'])} uJ binary spikes, {_micro(e['graded_pj'])} uJ graded "
                  f"({_ratio(e['ratio_binary'])} / {_ratio(e['ratio_graded'])} the ANN)", file=out)
    _print_deployment(report.get("deployment"), out)
    print("  verification " + ("passed" if verification["passed"] else "FAILED"), file=out)


def _print_deployment(deployment: Optional[dict], out) -> None:
    """What runs where in a hybrid NIR deployment: per region, then the host ops by type."""
    if not deployment:
        return
    share = deployment["region_mac_share"]
    print(f"  deployment: {len(deployment['regions'])} NIR region(s), {deployment['host_stages']} host stage(s); "
          f"MACs on neuromorphic cores {deployment['region_macs']} of {deployment['macs_per_sample']} per sample"
          + (f" ({100 * share:.1f} %)" if share is not None else ""), file=out)
    print(f"  {'region':<11}{'stage':>6}{'layers':>8}{'neurons':>9}{'synapses':>10}{'MACs':>10}", file=out)
    for r in deployment["regions"]:
        print(f"  {r['region']:<11}{r['stage']:>6}{r['neuron_layers']:>8}{r['neurons']:>9}{r['synapses']:>10}"
              f"{r['macs']:>10}", file=out)
    print("  host ops: " + ", ".join(f"{op} x{n}" for op, n in deployment["host_ops"].items()), file=out)
