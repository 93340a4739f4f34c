"""Refuse quantizers whose parameters leave nothing to map to neurons: a zero or non-finite scale,
``L <= 0`` in a PMSM/QCFS floor chain, levels that collapse to one value, bounds that leave no level.

The proof by evaluation (proof.py) compares a quantizer's rounding core with its neuron; the
source's own arithmetic around the core (the scaling into levels before it, the de-quantization
after it) is kept as it is and so was never looked at. A floor chain ``clip(floor(x / s * L +
0.5), -L, L) / L * s`` with ``L = 0`` compares equal on every probe (the core is fine), yet the
model computes ``0 / 0`` = NaN everywhere; with ``s = 0`` every de-quantized level is 0 and the
network's output no longer depends on its input. Both converted with exit 0 before, and
``--verify`` of the first ended in a traceback.

Both sides are checked by evaluation, in the source graph, with ONNX Runtime like the proof:

- **into the levels**: the element-wise chain (``Mul``/``Div``/``Add``/``Sub`` by constants) that
  ends at the quantizer's entry, evaluated at 0 and 1 of its start: the slope must be finite
  everywhere and not zero everywhere (a per-channel zero, a pruned channel, stays allowed);
- **out of the levels**: the element-wise chain that starts at the tensor leaving the quantizer,
  evaluated at every level ``lo..hi``: every value finite, and not all levels on one value;
- the levels themselves: ``lo < hi``.

The first culprit is named with its node and value (the constant that is zero or makes the chain
non-finite).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pmsm.exporter.evaluation import Job, evaluate_many
from pmsm.runtime.base.errors import BadInputError

AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
MAX_LEVELS_PROBED = 4097  # levels evaluated out of the quantizer (an 8-bit one has 256)


class DegenerateQuantizerError(BadInputError):
    """A quantizer with parameters no neuron can take; ``problems``: (node, op, reason)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = list(problems)
        name, op, reason = self.problems[0]
        more = f" (and {len(self.problems) - 1} other quantizer(s))" if len(self.problems) > 1 else ""
        super().__init__(f"node '{name}' ({op}){more}: {reason}")

    def at(self, path: str) -> BadInputError:
        return BadInputError(f"{path}: {self}")


def problems(view, records, to_source: dict) -> list[tuple[str, str, str]]:
    """(node, op, reason) for each record in ``records`` whose parameters are degenerate; ``view``
    is proof.py's view of the source, ``to_source`` maps rewritten tensor names to the source's."""
    found: dict[str, tuple[str, str, str]] = {}
    jobs, checks = [], []
    for record in records:
        params = record.params
        if params.hi <= params.lo:
            found[record.name] = (record.name, record.producer,
                                  f"its levels {params.lo}..{params.hi} leave "
                                  f"{'no level' if params.hi < params.lo else 'a single value'}; a quantizer "
                                  "needs at least two levels")
            continue
        entry = to_source.get(record.entry, record.entry)
        if entry:
            chain, start = _chain_into(view, entry)
            if chain:
                x = _column(view, start, np.array([0.0, 1.0], np.float32))
                job = Job(chain, start, entry, x, record.name)
                jobs.append(job)
                checks.append((record, "into", job, chain))
        for source_exit, _ in record.exits:
            chain, end = _chain_out_of(view, source_exit)
            if not chain:
                continue
            levels = np.arange(params.lo, params.hi + 1, dtype=np.float32)
            if levels.size > MAX_LEVELS_PROBED:
                levels = levels[np.linspace(0, levels.size - 1, MAX_LEVELS_PROBED).astype(int)]
            job = Job(chain, source_exit, end, _column(view, source_exit, levels), record.name)
            jobs.append(job)
            checks.append((record, "out", job, chain))
    if not jobs:
        return list(found.values())
    failed: dict[str, str] = {}
    values = evaluate_many(view, jobs, failed)
    for record, side, job, chain in checks:
        if record.name in found or id(job) not in values:
            continue  # an evaluation that fails is left to the proof, which reports it
        reason = _into_reason(values[id(job)]) if side == "into" else _out_reason(values[id(job)])
        if reason:
            found[record.name] = (record.name, record.producer, f"{reason}{_culprit(view, chain, side)}")
    return list(found.values())


def _column(view, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` laid along the batch axis of a tensor of ``name``'s rank (1 elsewhere), so that
    per-channel constants broadcast over them."""
    rank = view.ranks.get(name, 1) or 1
    return values.reshape((-1,) + (1,) * (rank - 1))


def _into_reason(value: np.ndarray) -> str:
    if not np.all(np.isfinite(value)):
        return "the scaling of its input into levels is not finite (a division by zero or an infinite scale)"
    if np.all(value[1] == value[0]):
        return "the scaling of its input into levels is 0: every input lands on the same level"
    return ""


def _out_reason(value: np.ndarray) -> str:
    if not np.all(np.isfinite(value)):
        return "the de-quantization of its levels is not finite (a division by zero or an infinite scale)"
    flat = value.reshape(value.shape[0], -1)
    if np.all(flat == flat[:1]):
        return "the de-quantization maps every level to the same value (a scale of 0)"
    return ""


def _constant(view, name: str) -> np.ndarray | None:
    tensor = view.initializers.get(name)
    if tensor is not None:
        return numpy_helper.to_array(tensor)
    node = view.producers.get(name)
    if node is not None and node.op_type == "Constant" and not node.input:
        attribute = next((a for a in node.attribute if a.name == "value"), None)
        if attribute is not None:
            return numpy_helper.to_array(attribute.t)
        for a in node.attribute:
            if a.name in ("value_float", "value_floats"):
                return np.array(onnx.helper.get_attribute_value(a), np.float32)
    return None


def _affine_step(view, node) -> tuple[str, str] | None:
    """(variable input, constant input) of an element-wise ``Mul``/``Div``/``Add``/``Sub`` by a
    constant; None for any other node."""
    if node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    first, second = node.input
    if _constant(view, second) is not None and _constant(view, first) is None:
        return first, second
    if node.op_type in ("Mul", "Add") and _constant(view, first) is not None and _constant(view, second) is None:
        return second, first
    return None


def _chain_into(view, entry: str) -> tuple[list, str]:
    """The affine nodes that compute ``entry`` (in graph order) and the tensor they start from."""
    chain, name = [], entry
    while (node := view.producers.get(name)) is not None and (step := _affine_step(view, node)) is not None:
        chain.append(node)
        name = step[0]
    return _with_constants(view, chain[::-1]), name


def _chain_out_of(view, exit: str) -> tuple[list, str]:
    """The affine nodes that follow ``exit`` while it has a single reader, and the tensor they end at."""
    consumers: dict[str, list] = {}
    for node in view.model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in view.model.graph.output}
    chain, name = [], exit
    while len(readers := consumers.get(name, [])) == 1 and name not in outputs:
        step = _affine_step(view, readers[0])
        if step is None or step[0] != name:
            break
        chain.append(readers[0])
        name = readers[0].output[0]
    return _with_constants(view, chain), name


def _with_constants(view, chain: list) -> list:
    """``chain`` preceded by the ``Constant`` nodes it reads."""
    if not chain:
        return chain
    constants = [view.producers[name] for node in chain for name in node.input
                 if name in view.producers and view.producers[name].op_type == "Constant"]
    return constants + chain


def _culprit(view, chain: list, side: str) -> str:
    """``; node 'n' (Op) divides by 0`` for the first multiplier or divisor that is zero or not
    finite in ``chain``."""
    for node in chain:
        step = _affine_step(view, node)
        if step is None or node.op_type not in ("Mul", "Div"):
            continue
        value = _constant(view, step[1])
        if value is None or value.size == 0:
            continue
        value = value.astype(np.float64)
        bad = ~np.isfinite(value) | (value == 0)
        if side == "into" and node.op_type == "Mul" and not np.all(value == 0):
            bad = ~np.isfinite(value)  # a zero channel of a multiplier is allowed
        if np.any(bad):
            shown = value.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
            verb = "divides by" if node.op_type == "Div" else "multiplies by"
            where = "" if value.size == 1 else f" (in {int(bad.sum())} of {value.size} channels)"
            return f"; node '{node.name}' ({node.op_type}) {verb} '{step[1]}' = {float(shown):g}{where}"
    return ""
