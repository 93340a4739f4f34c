"""What a core process computes each step: its plan steps on one sample, float or fixed point.

``CoreProgram`` is plain data the host builds from a Plan and a Partition (partition.py);
``FloatRunner`` and ``FixedPointRunner`` execute it inside the core's Lava process model. Each
step computes what the process of the same step computes in the ``synapse`` lowering (Lava's
``Dense`` and ``Conv`` models, and this package's pooling, elementwise and neuron models): the
same functions where they are ours, the same arithmetic where they are Lava's (weights clipped
and truncated by Lava's own utilities; a convolution's current wraps at 24 bits like Lava's
fixed-point ``Conv``). The neuron steps ``pmsm.runtime.neuron``.

Fixed point also measures, per step, the largest magnitude it produced and how many values went
beyond the 24 bits of a Loihi message or state (see fixed_point.py): the overflow report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.lava.kernels import Convolution, float32_pool_whc, pool_whc

WORD_BITS = 24
WORD_MAX = 2 ** (WORD_BITS - 1) - 1
# columns of a core's statistics file, one row per operation; COMPUTE_SECONDS (first row only): the
# core's time computing its steps, all operations together
PEAK, OVERFLOWS, STATE_PEAK, STATE_OVERFLOWS, INPUT_PEAK, SPIKE_PEAK, COMPUTE_SECONDS = range(7)
STAT_COLUMNS = 7


@dataclass
class Operation:
    step: int                   # plan step index: the key of its value
    kind: str                   # dense | conv | pool | elementwise | neuron
    node: str
    terms: list                 # (value key, shape the operation sees it in), summed in order
    in_shape: tuple
    out_shape: tuple
    params: dict


@dataclass
class CoreProgram:
    name: str
    operations: list
    reads: dict                 # value key (neuron step or input key) -> (port, offset, size, shape)
    input_sizes: list           # flat size per port
    delays: list                # steps each port's message is held back
    sends: list                 # neuron steps whose spikes leave in s_out, in order
    outputs: list               # per output port: (value key, shape) terms summed into it; empty unless the last core
    interval: int               # timesteps per sample
    latency: int                # sample time j is computed at step j + latency
    record_paths: dict = field(default_factory=dict)   # neuron step -> .npy of its spikes
    stats_path: str = ""        # .npy [len(operations), STAT_COLUMNS]
    error_path: str = ""
    rows: int = 1               # independent rows every message carries (a region of a deployment
                                # applied to every token: each row has its own neurons' state)
    samples: int = 0            # samples of the run (0: unknown); outside their steps the core sends zeros

    @property
    def message_size(self) -> int:
        return self.rows * sum(int(np.prod(op.out_shape)) for op in self.operations if op.step in self.sends)

    @property
    def output_sizes(self) -> list:
        return [self.rows * int(np.prod(terms[0][1])) for terms in self.outputs]


class _Runner:
    def __init__(self, program: CoreProgram):
        self.program = program
        self.buffers = [[np.zeros(size) for _ in range(delay)] for size, delay in
                        zip(program.input_sizes, program.delays)]
        self.shapes = {op.step: op.out_shape for op in program.operations}
        self.neurons = {op.step: NeuronParams(lo=op.params["lo"], hi=op.params["hi"],
                                              v_init=op.params["v_init"], rounding=op.params["rounding"])
                        for op in program.operations if op.kind == "neuron"}
        self.membranes: dict = {}                   # neuron step -> membrane ([rows, ...] with rows)
        self.records = {i: np.load(path, mmap_mode="r+") for i, path in program.record_paths.items()}
        self.stats = np.load(program.stats_path, mmap_mode="r+") if program.stats_path else None
        self.convolutions = {op.step: Convolution(op.params["weight"], op.in_shape, op.params["stride"],
                                                  op.params["padding"], op.params["dilation"],
                                                  op.params["groups"])
                             for op in program.operations if op.kind == "conv"}
        self.dense = {op.step: self._dense_weights(op.params) for op in program.operations
                      if op.kind == "dense"}
        self.step_index = 0

    def _dense_weights(self, params) -> np.ndarray:
        return np.asarray(params["weights"], dtype=np.float64)

    def step(self, k: int, messages: list):
        """Step ``k`` (0-based): returns (spikes to send, outputs to send, one per output port), flat."""
        started = time.perf_counter()
        try:
            return self._step(k, messages)
        finally:
            if self.stats is not None:
                self.stats[0, COMPUTE_SECONDS] += time.perf_counter() - started

    def _step(self, k: int, messages: list):
        self.step_index = k
        program = self.program
        values = {}
        arrived = [self._delayed(p, m) for p, m in enumerate(messages)]
        if program.samples and not 0 <= k - program.latency < program.samples * program.interval:
            # before the first sample reaches this core, or after the last has left it: nothing a
            # sample sees (its neurons restart at its first step), so nothing to compute
            return (np.zeros(program.message_size) if program.sends else None,
                    [np.zeros(size) for size in program.output_sizes] if program.outputs else None)
        window_starts = (k - program.latency) % program.interval == 0
        rows = program.rows
        if rows == 1:
            for key, (port, offset, size, shape) in program.reads.items():
                values[key] = arrived[port][offset:offset + size].reshape(shape)
            for row, op in enumerate(program.operations):
                values[op.step] = self._operation(row, op, _sum_terms(values, op.terms), window_starts)
        else:
            # every value with the rows first; elementwise steps and neurons take all rows at once,
            # synapses and pooling one row at a time (the same products as a single row's)
            for key, (port, offset, size, shape) in program.reads.items():
                values[key] = arrived[port][offset * rows:(offset + size) * rows].reshape((rows,) + tuple(shape))
            for row, op in enumerate(program.operations):
                x = _sum_terms(values, op.terms, (rows,))
                if op.kind in ("elementwise", "neuron"):
                    values[op.step] = self._operation(row, op, x, window_starts)
                else:
                    values[op.step] = np.stack([self._operation(row, op, x[r], window_starts) for r in range(rows)])
        # a message holds each value's rows one after another, values in send order
        spikes = np.concatenate([values[i].reshape(-1) for i in program.sends]) if program.sends else None
        outputs = [_sum_terms(values, terms, (rows,) if rows > 1 else ()).reshape(-1) for terms in program.outputs] \
            if program.outputs else None
        return spikes, outputs

    def _delayed(self, port: int, message: np.ndarray) -> np.ndarray:
        buffer = self.buffers[port]
        if not buffer:
            return message
        slot = self.step_index % len(buffer)
        out = buffer[slot]
        buffer[slot] = np.array(message, copy=True)
        return out

    def _record(self, op: Operation, s: np.ndarray) -> None:
        record = self.records.get(op.step)
        if record is not None:
            record[self.step_index % record.shape[0]] = s

    def _operation(self, row, op, x, window_starts):
        raise NotImplementedError


class FloatRunner(_Runner):
    def _operation(self, row, op, x, window_starts):
        p = op.params
        if op.kind == "dense":
            return self.dense[op.step].dot(x.reshape(-1))
        if op.kind == "conv":
            return self.convolutions[op.step](x)
        if op.kind == "pool" and p["mode"] == "float32_avg":
            return float32_pool_whc(x, p["kernel"], p["stride"], p["padding"], p["pool"])
        if op.kind == "pool":
            return pool_whc(x, p["kernel"], p["stride"], p["padding"], p["mode"])
        if op.kind == "elementwise":
            return x * p["scale"] + p["bias"]
        z = x + p["bias"]
        params = self.neurons[op.step]
        u = self.membranes.get(op.step)
        if window_starts or u is None:
            u = initial_membrane(z.shape, params)
        u, s = step(u, z, params)
        if not np.all(np.isfinite(u)):
            raise BadInputError(f"layer {op.node}: the input drives its membrane beyond float32 "
                                f"(sample {self._sample()}); check the data's range")
        self.membranes[op.step] = u
        s = s.astype(np.float64)
        self._record(op, s)
        return s

    def _sample(self) -> int:
        return max(0, (self.step_index - self.program.latency) // self.program.interval)


class FixedPointRunner(_Runner):
    """Integers throughout; sums run as float64 BLAS products, exact below 2**53."""

    def _dense_weights(self, params) -> np.ndarray:
        from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

        weights = np.asarray(params["weights"], dtype=np.int32)
        mode = determine_sign_mode(weights)
        weights = truncate_weights(clip_weights(weights, mode, num_bits=8), mode, 8)   # as Lava's Dense
        return weights.astype(np.float64)

    def _operation(self, row, op, x, window_starts):
        p = op.params
        if op.kind == "dense":
            return self._measured(row, np.rint(self.dense[op.step].dot(x.reshape(-1))).astype(np.int64))
        if op.kind == "conv":
            current = self._measured(row, np.rint(self.convolutions[op.step](x)).astype(np.int64))
            return _wrap(current)            # as Lava's fixed-point Conv
        if op.kind == "pool":
            if p["mode"] == "avg":
                raise ValueError("fixed point plans average pooling as a sum pool")
            return self._measured(row, np.rint(pool_whc(x, p["kernel"], p["stride"], p["padding"],
                                                        p["mode"])).astype(np.int64))
        if op.kind == "elementwise":
            y = np.left_shift(x.astype(np.int64) * p["scale"].astype(np.int64), p["shift"]) + p["bias"]
            return self._measured(row, y)
        return self._neuron(row, op, x, window_starts)

    def _neuron(self, row, op, x, window_starts):
        p = op.params
        exponent = p["state_exponent"]
        params = self.neurons[op.step]
        z = x.astype(np.int64) + p["bias"].astype(np.int64)
        u = self.membranes.get(op.step)
        if window_starts or u is None:
            u = _to_units(initial_membrane(z.shape, params), exponent)
        state = u + z
        unit = 2.0 ** -exponent
        u_levels, s = step((u * unit).astype(np.float32), (z * unit).astype(np.float32), params)
        self.membranes[op.step] = _to_units(u_levels, exponent)
        s = s.astype(np.int64)
        self._record(op, s)
        if self.stats is not None:
            stats = self.stats[row]
            stats[STATE_PEAK] = max(stats[STATE_PEAK], float(np.abs(state).max(initial=0)))
            stats[STATE_OVERFLOWS] += int(np.count_nonzero(np.abs(state) > WORD_MAX))
            stats[INPUT_PEAK] = max(stats[INPUT_PEAK], float(np.abs(z).max(initial=0)))
            stats[OVERFLOWS] += int(np.count_nonzero(np.abs(z) > WORD_MAX))
            stats[SPIKE_PEAK] = max(stats[SPIKE_PEAK], float(np.abs(s).max(initial=0)))
        return s

    def _measured(self, row: int, values: np.ndarray) -> np.ndarray:
        if self.stats is not None:
            stats = self.stats[row]
            stats[PEAK] = max(stats[PEAK], float(np.abs(values).max(initial=0)))
            stats[OVERFLOWS] += int(np.count_nonzero((values > WORD_MAX) | (values < -WORD_MAX - 1)))
        return values


def _sum_terms(values: dict, terms: list, lead: tuple = ()):
    total = None
    for key, shape in terms:
        v = values[key].reshape(lead + tuple(shape))
        total = v if total is None else total + v
    return total


def _wrap(x: np.ndarray) -> np.ndarray:
    base = 1 << WORD_BITS
    return (x + base // 2) % base - base // 2


def _to_units(levels: np.ndarray, exponent: int) -> np.ndarray:
    return np.rint(levels.astype(np.float64) * 2.0 ** exponent).astype(np.int64)
