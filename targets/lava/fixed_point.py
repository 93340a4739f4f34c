"""Fixed-point parameters for a Plan, and the error they introduce, per layer.

Every value on a Lava edge is an integer times a *unit* (level units per integer step):
the input ``2**-input_exponent``, spikes ``1``, a sum pool keeps its input's unit, an average
pool divides it by the kernel area (it is run as a sum pool). Steps that multiply (Dense,
Conv, elementwise) choose their output unit, so the receiving port decides it:

- a port fed only by multiplying steps picks ``2**-E`` with the largest ``E`` at which every
  Dense/Conv weight still fits its 8-bit grid (elementwise steps adapt with a left shift);
- a port fed by anything else takes that unit (all such feeds must agree).

A neuron's port unit is its state unit: ``2**-E`` levels, threshold ``2**E``. Weight grids:
Lava's Dense stores mixed-sign weights as even integers in [-256, 254] (7 bits + sign,
in steps of 2, measured); Conv and elementwise use an 8-bit signed integer; elementwise
steps may also shift left; a convolution run as Lava Sparse uses the Dense grid. Lava's
fixed-point Conv ignores ``weight_exp`` (measured), so no per-synapse exponent is used
anywhere: the scale lives in the receiving neuron.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pmsm.runtime.base.errors import UnsupportedModelError
from pmsm.targets.lava.plan import CONVERTERS, Plan, input_key, is_input, spike_bits

TARGET = "lava (fixed point)"
STATE_BITS = 24
GRIDS = {"dense": (2, -256, 254), "conv": (1, -128, 127), "elementwise": (1, -128, 127)}


@dataclass(frozen=True)
class InputQuantization:
    node: str                   # the NIR Input node
    kind: str                   # "input"
    exponent: int               # x_int = round(x * 2**exponent)
    bits: int
    max_abs_error: float | None = None   # filled from the data by the runner


@dataclass(frozen=True)
class SynapseQuantization:
    node: str
    kind: str                   # dense | conv | scale | bias | delay | rescale
    weight_step: float          # smallest weight difference the integer grid can express
    max_rel_error: float        # max |w_q - w| / max |w|
    mean_rel_error: float       # mean |w_q - w| / mean |w|
    bias_max_abs_error: float   # in units of the receiving port's levels
    payload_bits: int           # bits of the graded messages it receives
    step: int | None = None     # index in the plan
    output_bits: int | None = None      # after a run (fused lowerings): bits its largest |output| needed
    overflow_count: int | None = None   # after a run: output values beyond 24 bits (a Conv wraps them)


@dataclass(frozen=True)
class NeuronQuantization:
    node: str
    kind: str                   # "neuron"
    state_exponent: int         # state unit = 2**-state_exponent levels
    threshold: float            # one spike in state units (2**state_exponent)
    v_init_error: float         # levels
    bias_max_abs_error: float   # levels
    payload_bits: int           # bits of the graded spikes it sends, from lo/hi
    step: int | None = None     # index in the plan
    state_bits: int | None = None       # after a run: bits the largest |state| needed (with sign)
    overflow: bool | None = None        # after a run: state went beyond 24 bits
    input_bits: int | None = None       # after a run: bits the largest |input current| needed
    overflow_count: int | None = None   # after a run (fused lowerings): state values beyond 24 bits


@dataclass
class FixedPointPlan:
    params: dict                # step index -> parameters for the fixed-point process
    output_units: list          # per output port: the level value of one integer step
    input_exponents: list       # per input port
    records: list               # InputQuantization per input port first, then per step

    @property
    def output_unit(self) -> float:
        return self.output_units[0]

    @property
    def input_exponent(self) -> int:
        return self.input_exponents[0]


def input_exponent_for(x: np.ndarray, bits: int = 8) -> int:
    """Largest exponent at which ``round(x * 2**e)`` fits ``bits`` signed bits."""
    peak = float(np.max(np.abs(x))) if np.size(x) else 0.0
    if peak == 0.0:
        return 0
    return int(math.floor(math.log2((2 ** (bits - 1) - 1) / peak)))


def quantize_input(x: np.ndarray, exponent: int, bits: int = 8) -> np.ndarray:
    limit = 2 ** (bits - 1) - 1
    return np.clip(np.rint(np.asarray(x, np.float64) * 2.0 ** exponent), -limit, limit).astype(np.int64)


def quantize(plan: Plan, input_exponent, input_bits=8, source: str = "<graph>",
             input_node: str = "input", conv_synapse: str = "conv") -> FixedPointPlan:
    """``input_exponent`` and ``input_bits``: one value, or one per input port of the plan.
    ``conv_synapse="sparse"``: convolutions run as Lava Sparse, which stores weights like Dense."""
    grids = dict(GRIDS, conv=GRIDS["dense"]) if conv_synapse == "sparse" else dict(GRIDS)
    ports = len(plan.inputs)
    exponents = [int(e) for e in np.broadcast_to(np.asarray(input_exponent), (ports,))]
    bits = [int(b) for b in np.broadcast_to(np.asarray(input_bits), (ports,))]
    nodes = [input_node] if ports == 1 else [p.node for p in plan.inputs]
    return _Quantizer(plan, exponents, bits, source, nodes, grids).run()


class _Quantizer:
    def __init__(self, plan: Plan, input_exponents: list, input_bits: list, source: str, input_nodes: list,
                 grids: dict):
        self.plan, self.source, self.input_nodes, self.grids = plan, source, input_nodes, grids
        self.input_exponents, self.input_bits = input_exponents, input_bits
        self.port: dict[int, float] = {}
        keys = [input_key(k) for k in range(len(input_exponents))]
        self.out: dict[int, float] = {key: 2.0 ** -e for key, e in zip(keys, input_exponents)}
        self.bound: dict[int, float] = {key: 2.0 ** (b - 1) - 1 for key, b in zip(keys, input_bits)}
        # worst-case magnitude in levels of what each step sends, known before any scale is set
        self.level_bound: dict[int, float] = {key: self.bound[key] * self.out[key] for key in keys}

    def run(self) -> FixedPointPlan:
        records = [InputQuantization(node, "input", e, b)
                   for node, e, b in zip(self.input_nodes, self.input_exponents, self.input_bits)]
        params = {}
        steps = self.plan.steps
        for i, step in enumerate(steps):
            self.port[i] = self._port_unit(step.inputs, step.node, step if step.kind == "neuron" else None)
            self.level_bound[i] = self._level_bound(step)
            if step.kind == "neuron":
                self.out[i] = 1.0
            elif step.kind == "pool":
                area = step.params["kernel"][0] * step.params["kernel"][1]
                self.out[i] = self.port[i] / area if step.params["mode"] == "avg" else self.port[i]
        output_units = [self._port_unit(output.terms, "output") for output in self.plan.outputs]
        for i, step in enumerate(steps):
            params[i], record = getattr(self, "_" + step.kind)(i, step)
            if record is not None:
                records.append(record)
        return FixedPointPlan(params, output_units, self.input_exponents, records)

    # ------------------------------------------------------------ port scales
    def _level_bound(self, step) -> float:
        into = sum(self.level_bound[t.src] for t in step.inputs)
        p = step.params
        if step.kind == "neuron":
            return float(max(-p["lo"], p["hi"]))
        if step.kind == "pool":
            return into * (p["kernel"][0] * p["kernel"][1] if p["mode"] == "sum" else 1)
        if step.kind == "elementwise":
            return float(np.max(np.abs(p["scale"]) * into + np.abs(p["bias"]), initial=0))
        weights = np.abs(self._multipliers(step))
        return float(np.max(weights.reshape(weights.shape[0], -1).sum(axis=1), initial=0)) * into

    def _accumulator_exponent(self, terms, margin: float) -> float:
        """Largest E at which the summed input plus ``margin`` levels fits 24 bits."""
        peak = sum(self.level_bound[t.src] for t in terms) + margin
        if peak == 0.0:
            return math.inf
        return math.floor(math.log2((2 ** (STATE_BITS - 1) - 1) / peak))

    def _port_unit(self, terms, node, neuron=None) -> float:
        """Scale of the port fed by ``terms``; ``neuron``: its Step when the port is a neuron's."""
        power_of_two = neuron is not None
        # a neuron's state also holds its residue (up to a spike's worth beyond the input) and its bias
        margin = float(max(-neuron.params["lo"], neuron.params["hi"]) + 1
                       + np.max(np.abs(neuron.params["bias"]), initial=0)) if neuron else 0.0
        origins = [t.src for t in terms]
        fixed = [o for o in origins if not self._is_converter(o)]
        free = [o for o in origins if self._is_converter(o)]
        if fixed:
            units = {self.out[o] for o in fixed}
            if len(units) > 1:
                self._fail(node, f"inputs arrive in different fixed scales {sorted(units)}")
            unit = units.pop()
            if power_of_two and not math.log2(unit).is_integer():
                self._fail(node, f"neuron input scale {unit} is not a power of two")
        else:
            limited = [self._max_exponent(o) for o in free if self.plan.steps[o].kind != "elementwise"]
            natural = [self._max_exponent(o) for o in free]
            # finer scales give more weight precision, until the sum no longer fits 24 bits
            candidates = [e for e in (limited or natural) + [self._accumulator_exponent(terms, margin)]
                          if math.isfinite(e)]
            unit = 2.0 ** -(min(candidates) if candidates else 0)
        for o in free:
            if self.out.setdefault(o, unit) != unit:
                self._fail(self.plan.steps[o].node, "feeds ports that need different fixed-point scales")
        return unit

    def _is_converter(self, index: int) -> bool:
        return not is_input(index) and self.plan.steps[index].kind in CONVERTERS

    def _max_exponent(self, index: int) -> float:
        """Largest E at which the step's multipliers fit its grid with output unit 2**-E."""
        step = self.plan.steps[index]
        values = self._multipliers(step)
        peak = float(np.max(np.abs(values))) * self.port[index] if np.size(values) else 0.0
        if peak == 0.0:
            return math.inf
        _, _, hi = self.grids[step.kind]
        return math.floor(math.log2(hi / peak))

    @staticmethod
    def _multipliers(step) -> np.ndarray:
        key = {"dense": "weights", "conv": "weight", "elementwise": "scale"}[step.kind]
        return np.asarray(step.params[key])

    def _fail(self, node, reason: str):
        raise UnsupportedModelError(self.source, TARGET, [(str(node), "fixed point", reason)])

    # ------------------------------------------------------------- per step
    def _ratio(self, index: int) -> float:
        return self.port[index] / self.out[index]

    def _grid(self, kind: str, ratio_values: np.ndarray) -> np.ndarray:
        step_, lo, hi = self.grids[kind]
        return np.clip(step_ * np.rint(ratio_values / step_), lo, hi)

    def _payload(self, step) -> int:
        return max(1, int(math.ceil(self._in_bound(step))).bit_length() + 1)

    def _synapse_record(self, i, step, kind, w, w_eff, bias_err=0.0) -> SynapseQuantization:
        err = np.abs(w_eff - w)
        ref_max, ref_mean = float(np.max(np.abs(w))), float(np.mean(np.abs(w)))
        grid_step = self.grids[self.plan.steps[i].kind][0]
        return SynapseQuantization(
            step.node, kind, grid_step * self.out[i] / self.port[i],
            float(err.max()) / ref_max if ref_max else 0.0,
            float(err.mean()) / ref_mean if ref_mean else 0.0,
            float(bias_err), self._payload(step), step=i)

    def _dense(self, i, step):
        w = step.params["weights"]
        q = self._grid("dense", w * self._ratio(i))
        self.bound[i] = float(np.max(np.abs(q).sum(axis=1) * self._in_bound(step), initial=0))
        record = self._synapse_record(i, step, "dense", w, q / self._ratio(i))
        return {"weights": q.astype(np.int32), "message_bits": record.payload_bits}, record

    def _conv(self, i, step):
        w = step.params["weight"]
        q = self._grid("conv", w * self._ratio(i))
        per_out = np.abs(q).reshape(q.shape[0], -1).sum(axis=1)
        self.bound[i] = float(np.max(per_out, initial=0)) * self._in_bound(step)
        record = self._synapse_record(i, step, "conv", w, q / self._ratio(i))
        params = dict(step.params, weight=q.astype(np.int32), message_bits=record.payload_bits)
        return params, record

    def _elementwise(self, i, step):
        ratio = step.params["scale"] * self._ratio(i)
        peak = float(np.max(np.abs(ratio), initial=0))
        shift = max(0, math.ceil(math.log2(peak / 127))) if peak > 127 else 0
        q = self._grid("elementwise", ratio / 2 ** shift)
        bias = step.params["bias"]
        bias_q = np.rint(bias / self.out[i])
        bias_err = float(np.max(np.abs(bias_q * self.out[i] - bias), initial=0))
        self.bound[i] = float(np.max(np.abs(q) * 2 ** shift * self._in_bound(step) + np.abs(bias_q), initial=0))
        record = self._synapse_record(i, step, step.params["role"], step.params["scale"],
                                      q * 2 ** shift / self._ratio(i), bias_err)
        return {"scale": q.astype(np.int64), "bias": bias_q.astype(np.int64),
                "delay": step.params["delay"], "shift": shift}, record

    def _pool(self, i, step):
        if step.params["mode"] == "float32_avg":  # the lowering plans it as a convolution in fixed point
            raise AssertionError(f"{step.node}: a float32 average pool in a fixed-point plan")
        area = step.params["kernel"][0] * step.params["kernel"][1]
        mode = "sum" if step.params["mode"] == "avg" else step.params["mode"]
        self.bound[i] = self._in_bound(step) * (area if mode == "sum" else 1)
        return dict(step.params, mode=mode), None

    def _neuron(self, i, step):
        exponent = int(round(-math.log2(self.port[i])))
        p = step.params
        unit = 2.0 ** -exponent
        bias_q = np.rint(p["bias"] / unit)
        v_init_q = float(np.rint(p["v_init"] / unit)) * unit
        self.bound[i] = float(max(-p["lo"], p["hi"]))
        record = NeuronQuantization(
            step.node, "neuron", exponent, 2.0 ** exponent, abs(v_init_q - p["v_init"]),
            float(np.max(np.abs(bias_q * unit - p["bias"]), initial=0)), spike_bits(p["lo"], p["hi"]), step=i)
        return dict(p, bias=bias_q.astype(np.int64), state_exponent=exponent), record

    def _in_bound(self, step) -> float:
        return float(sum(self.bound[t.src] for t in step.inputs))


_LARGEST = ("max_abs_error", "state_bits", "input_bits", "output_bits")


def merge_records(a: list, b: list) -> list:
    """The records of two runs of the same plan on different samples as one: largest errors and
    bit widths, overflow counts added."""
    import dataclasses

    if [(r.node, r.kind) for r in a] != [(r.node, r.kind) for r in b]:
        raise ValueError("fixed-point records of different plans cannot be merged")
    merged = []
    for x, y in zip(a, b):
        changes = {}
        for name in _LARGEST:
            if hasattr(x, name):
                values = [v for v in (getattr(x, name), getattr(y, name)) if v is not None]
                changes[name] = max(values) if values else None
        if hasattr(x, "overflow_count"):
            counts = [v for v in (x.overflow_count, y.overflow_count) if v is not None]
            changes["overflow_count"] = sum(counts) if counts else None
        if hasattr(x, "overflow"):
            flags = [v for v in (x.overflow, y.overflow) if v is not None]
            changes["overflow"] = any(flags) if flags else None
        merged.append(dataclasses.replace(x, **changes))
    return merged


class FixedPointRecords(list):
    """The per-layer records of one fixed-point run; those of runs on other samples merge into one
    (:func:`merge_records`), wherever the runs took place."""

    def merge(self, other: list) -> "FixedPointRecords":
        return FixedPointRecords(merge_records(self, other))
