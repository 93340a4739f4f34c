"""Running models on ONNX Runtime: the spiking ONNX (reference backend) and its source ANN.

- :class:`SpikingModel` runs a spiking ONNX file (docs/spiking-onnx.md) through the
  ``ai.pmsm::MultiSpikeNeuron`` kernel, with graph optimizations disabled (the reference); with
  ``portable=True``, in standard ONNX ops only (no custom op library registered): the file's lean
  form (:mod:`pmsm.runtime.lean`, each neuron as the few ops its attributes need, ``T = 1``
  without state) or, with ``lean=False``, the standard-ONNX function body the file carries, as a
  plain ``onnxruntime.InferenceSession`` of the file runs it; both bit-exact with the kernel.
- :class:`AnnRunner` runs the quantized ANN on stock ONNX Runtime: with optimizations disabled
  (backend ``ann``, the ONNX specification's semantics, the reference) or at ONNX Runtime's default
  level (backend ``ann_ort_opt``, which fuses QDQ pairs into integer kernels; information only).
  QONNX quantizers run through the kernels of :mod:`pmsm.runtime.ortop`.

A model may take several inputs, of any numeric or bool element type (token ids, attention masks):
``run`` takes one array for a model with one input, or one array per input name
(:class:`~pmsm.runtime.inputs.Samples` or a mapping). Inputs are checked before anything runs
(names, rank, fixed dimensions, dtype, NaN/inf, equal sample counts) and rejected with a one-line
:class:`~pmsm.runtime.base.errors.BadInputError`; an error inside a kernel becomes an
:class:`~pmsm.runtime.ortop.ExecutionError` after ``session.run`` returns, never a process abort.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx
import onnxruntime as ort

from pmsm.runtime import lean as lean_form
from pmsm.runtime import ortop, portable
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.inputs import Batch, InputSpec, Samples, feeds_of
from pmsm.runtime.ortop import ExecutionError
from pmsm.runtime.qonnx import uses_qonnx, with_qonnx_defaults
from pmsm.runtime.schema import SPIKING_ONNX_FORMAT, TIME_LOOP, TIME_PREFIX, TIMESTEPS_INPUT, is_neuron

__all__ = [
    "MAX_IR_VERSION",
    "TIMESTEPS_INPUT",
    "ExecutionError",
    "SpikingResult",
    "SpikingModel",
    "AnnRunner",
    "Samples",
    "load_model",
]

MAX_IR_VERSION = 11  # what onnxruntime 1.23 accepts
DEFAULT_ROWS_PER_RUN = 4096  # rows (samples x timesteps) per session.run when batch_size is not given

ModelLike = Union[onnx.ModelProto, str, "os.PathLike[str]"]


def load_model(model: ModelLike) -> tuple[onnx.ModelProto, str]:
    """``(ModelProto, label for messages)``; ``BadInputError`` when unreadable or too new for ORT."""
    if isinstance(model, onnx.ModelProto):
        proto, label = model, f"model '{model.graph.name}'" if model.graph.name else "model"
    elif isinstance(model, (str, os.PathLike)):
        label = os.fspath(model)
        try:
            proto = onnx.load(label)
        except FileNotFoundError:
            raise BadInputError(f"{label}: no such file") from None
        except Exception as exc:  # noqa: BLE001 - protobuf/onnx raise many kinds
            raise BadInputError(f"{label}: cannot read as an ONNX model: {_first_line(exc)}") from None
    else:
        raise TypeError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    if proto.ir_version > MAX_IR_VERSION:
        raise BadInputError(
            f"{label}: IR version {proto.ir_version} is newer than ONNX Runtime 1.23 accepts "
            f"(<= {MAX_IR_VERSION}); re-export with ir_version <= {MAX_IR_VERSION}"
        )
    return proto, label


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _session(model: onnx.ModelProto, label: str, *, optimized: bool, custom_ops: bool) -> ort.InferenceSession:
    try:
        return inference_session(model, optimized=optimized,
                                 custom_ops_library=ortop.get_library_path() if custom_ops else None)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind exception types
        raise BadInputError(f"{label}: ONNX Runtime cannot load the model: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


_InputSpec = InputSpec  # the name this module used before pmsm.runtime.inputs


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    initializers |= {init.values.name for init in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _batch_size(batch_size, default: int) -> int:
    if batch_size is None:
        return default
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise BadInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    return next((spec.fixed_batch for spec in specs if spec.fixed_batch), None)


def _batch_feeds(feeds: dict[str, np.ndarray], start: int, stop: int, rows: int) -> dict[str, np.ndarray]:
    return {name: _pad_rows(x[start:stop], rows) for name, x in feeds.items()}


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with its leading dimension padded to ``rows`` by repeating the last sample."""
    if x.shape[0] == rows:
        return x
    pad = np.repeat(x[-1:], rows - x.shape[0], axis=0)
    return np.concatenate([x, pad], axis=0)


def _concat(parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=axis)


def _run(session: ort.InferenceSession, names: list[str], feed: dict, label: str) -> list[np.ndarray]:
    ortop.clear_op_errors()
    try:
        with ortop.signals_held():
            outputs = session.run(names, feed)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind exception types
        ortop.raise_op_errors(label)  # a kernel error is the better explanation when there is one
        raise ExecutionError(f"{label}: ONNX Runtime failed: {_first_line(exc)}") from None
    ortop.raise_op_errors(label)
    return outputs


def _take_batch(out: np.ndarray, rows: int, valid: int, name: str, label: str, several: bool) -> np.ndarray:
    if out.ndim >= 1 and out.shape[0] == rows:
        return out[:valid]
    if several:
        raise ExecutionError(
            f"{label}: output '{name}' of shape {out.shape} has no batch dimension of size {rows}; "
            "cannot run the model in batches (pass batch_size >= the number of samples)"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Spiking model
# ---------------------------------------------------------------------------------------------


@dataclass
class SpikingResult:
    """Result of :meth:`SpikingModel.run`.

    ``outputs``: the graph outputs (mean over the ``T`` timesteps of the readout), ``[N, ...]`` each,
    in graph order (``output_names``). ``spikes`` (when collected): for each ``MultiSpikeNeuron``
    node, keyed by node name, its signed spike counts ``[T, N, ...]``.
    """

    outputs: list[np.ndarray]
    output_names: list[str]
    timesteps: int
    spikes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray:
        return self.outputs[0]


class SpikingModel:
    """A spiking ONNX model on ONNX Runtime, graph optimizations disabled.

    ``portable=False`` (the reference): the ``ai.pmsm::MultiSpikeNeuron`` kernel of
    :mod:`pmsm.runtime.ortop` (the numpy neuron) computes every neuron.
    ``portable=True``: no custom op library; ONNX Runtime runs the model's lean form
    (:func:`pmsm.runtime.lean.lean_model`: standard ops, each neuron written as its attributes
    need, ``T = 1`` without state) or, with ``lean=False`` (or a default-domain opset below
    ``lean.MIN_OPSET``, or a file whose lean form ONNX Runtime cannot load), inlines the model's standard-ONNX function body of the neuron
    (:mod:`pmsm.runtime.portable`); a model without that function gets it attached (in its
    default-domain opset) on a copy. Same numbers, bit for bit.
    ``optimized=True`` runs at ONNX Runtime's default optimization level (information only: fusions
    of the model's other ops may change the last bit of the float arithmetic the source defines).
    """

    backend = "onnx"

    def __init__(self, model: ModelLike, portable: bool = False, optimized: bool = False, lean: bool = True):
        self.model, self.label = load_model(model)
        self.portable = bool(portable)
        self.lean = self.portable and bool(lean) and (_default_opset(self.model) or 0) >= lean_form.MIN_OPSET
        self.optimized = bool(optimized)
        graph = self.model.graph
        data = _data_inputs(self.model)
        if not any(vi.name == TIMESTEPS_INPUT for vi in data):
            raise BadInputError(f"{self.label}: not a spiking ONNX model (no graph input '{TIMESTEPS_INPUT}')")
        data = [vi for vi in data if vi.name != TIMESTEPS_INPUT]
        if not data:
            raise BadInputError(f"{self.label}: no data input besides '{TIMESTEPS_INPUT}'")
        self.inputs = [InputSpec.of(vi, self.label) for vi in data]
        self.input = self.inputs[0]
        self.output_names = [vi.name for vi in graph.output]
        self.loop = _time_loop(self.model, self.label)
        self.neurons: dict[str, onnx.NodeProto] = {}
        for node in self.loop.attribute[0].g.node:
            if is_neuron(node):
                ortop.neuron_params_of(node)  # attributes complete and valid, or BadInputError naming the node
                key = node.name or node.output[0]
                if key in self.neurons:
                    key = f"{key}:{node.output[0]}"
                self.neurons[key] = node
        if self.portable and not self.lean:
            self.model = _with_neuron_function(self.model, self.label)
        self._sessions: dict[bool, ort.InferenceSession] = {}

    @property
    def input_name(self) -> str:
        return self.input.name

    @property
    def neuron_names(self) -> list[str]:
        return list(self.neurons)

    def _session_for(self, collect_spikes: bool) -> ort.InferenceSession:
        if collect_spikes not in self._sessions:
            model = _with_spike_outputs(self.model, list(self.neurons.values())) if collect_spikes else self.model
            if self.lean:
                try:
                    self._sessions[collect_spikes] = _session(lean_form.lean_model(model), self.label,
                                                              optimized=self.optimized, custom_ops=False)
                    return self._sessions[collect_spikes]
                except Exception:  # noqa: BLE001 - a file the lean form cannot take runs its function body
                    self.lean = False
                    self.model = _with_neuron_function(self.model, self.label)
                    self._sessions.clear()
                    return self._session_for(collect_spikes)
            self._sessions[collect_spikes] = _session(
                model, self.label, optimized=self.optimized, custom_ops=not self.portable
            )
        return self._sessions[collect_spikes]

    def run(
        self,
        x: Batch,
        timesteps: int,
        collect_spikes: bool = False,
        batch_size: int | None = None,
        progress=None,
    ) -> SpikingResult:
        """Run ``x [N, ...]`` (one array per input name for a model with several inputs) for
        ``timesteps`` steps, ``batch_size`` samples per ``session.run`` (default: about
        ``DEFAULT_ROWS_PER_RUN / T``; a fixed batch dimension in the model wins)."""
        if isinstance(timesteps, (bool, np.bool_)) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
        t = int(timesteps)
        feeds, n = feeds_of(self.inputs, x, self.label)
        fixed = _fixed_batch(self.inputs)
        chunk = fixed or _batch_size(batch_size, max(1, DEFAULT_ROWS_PER_RUN // t))
        session = self._session_for(bool(collect_spikes))
        spike_names = {key: spike_steps_name(node) for key, node in self.neurons.items()} if collect_spikes else {}
        names = self.output_names + list(dict.fromkeys(spike_names.values()))
        several = n > chunk
        outs: list[list[np.ndarray]] = [[] for _ in self.output_names]
        spikes: dict[str, list[np.ndarray]] = {key: [] for key in spike_names}
        t_feed = np.array(t, dtype=np.int64)
        for start, stop in _chunks(n, chunk):
            rows = chunk if fixed else stop - start
            feed = _batch_feeds(feeds, start, stop, rows)
            feed[TIMESTEPS_INPUT] = t_feed
            result = dict(zip(names, _run(session, names, feed, self.label)))
            if progress is not None:
                progress(stop, n)
            for i, name in enumerate(self.output_names):
                outs[i].append(_take_batch(result[name], rows, stop - start, name, self.label, several))
            for key, name in spike_names.items():
                s = result[name]
                if s.ndim < 1 or s.shape[0] != t:
                    raise ExecutionError(f"{self.label}: spikes of neuron '{key}' have shape {s.shape}, expected "
                                         f"{t} timesteps first")
                # [T, N, ...] when the neuron's tensor has the batch first; otherwise (attention in
                # sequence-first layout) one entry per session run: [T, runs, ...]
                spikes[key].append(s[:, : stop - start] if s.ndim > 1 and s.shape[1] == rows else s[:, None])
        return SpikingResult(
            outputs=[_concat(parts) for parts in outs],
            output_names=list(self.output_names),
            timesteps=t,
            spikes={key: _concat_spikes(parts, key, self.label) for key, parts in spikes.items()},
        )


def _concat_spikes(parts: list[np.ndarray], key: str, label: str) -> np.ndarray:
    try:
        return _concat(parts, axis=1)
    except ValueError:
        raise ExecutionError(f"{label}: spikes of neuron '{key}' do not have the batch first and differ in shape "
                             "between runs; pass a batch_size that divides the number of samples") from None


def _time_loop(model: onnx.ModelProto, label: str) -> onnx.NodeProto:
    """The model's ``Loop`` over timesteps; ``BadInputError`` for files of another format."""
    formats = {p.key: p.value for p in model.metadata_props}
    found = formats.get("pmsm.format")
    loops = [node for node in model.graph.node if node.op_type == "Loop" and node.name == TIME_LOOP]
    if found != SPIKING_ONNX_FORMAT or len(loops) != 1:
        raise BadInputError(
            f"{label}: not a {SPIKING_ONNX_FORMAT} model (format {found or 'not given'}); convert the source again "
            "with this version of pmsm-export"
        )
    return loops[0]


def spike_steps_name(neuron: onnx.NodeProto) -> str:
    """The graph output that carries a neuron's spikes at every step, ``[T, N, ...]``."""
    return f"{TIME_PREFIX}spikes/{neuron.output[0]}"


def _with_spike_outputs(model: onnx.ModelProto, neurons: list[onnx.NodeProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose time loop also stacks every neuron's spikes as graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    loop = next(node for node in copy.graph.node if node.op_type == "Loop" and node.name == TIME_LOOP)
    body = loop.attribute[0].g
    present = {o.name for o in body.output}
    for neuron in neurons:
        spikes = neuron.output[0]
        if spikes in present:  # already stacked as an output of the model: stack a copy
            copied = f"{TIME_PREFIX}spike_copy/{spikes}"
            body.node.append(onnx.helper.make_node("Identity", [spikes], [copied], name=copied))
            spikes = copied
        body.output.append(onnx.helper.make_tensor_value_info(spikes, onnx.TensorProto.FLOAT, None))
        present.add(spikes)
        loop.output.append(spike_steps_name(neuron))
        copy.graph.output.append(onnx.helper.make_tensor_value_info(spike_steps_name(neuron), onnx.TensorProto.FLOAT, None))
    return copy


def _with_neuron_function(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """``model``, or a copy of it with the portable neuron body when it has no function for the op."""
    if any((f.domain, f.name) == (portable.DOMAIN, portable.OP) for f in model.functions):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if not portable.attach_neuron_function(copy):
        raise BadInputError(
            f"{label}: no function body for {portable.DOMAIN}::{portable.OP}, and none can be written at "
            f"default-domain opset {portable.default_opset(model)} (supported: "
            f"{portable.MIN_OPSET}..{portable.MAX_OPSET}); run it with the kernel (portable=False)"
        )
    return copy


# ---------------------------------------------------------------------------------------------
# Source model
# ---------------------------------------------------------------------------------------------


class AnnRunner:
    """The quantized ANN on stock ONNX Runtime (QONNX quantizers through this package's kernels).

    ``optimized=False`` (backend ``ann``): graph optimizations disabled, the reference semantics.
    ``optimized=True`` (backend ``ann_ort_opt``): ONNX Runtime's default optimization level.
    """

    def __init__(self, model: ModelLike, optimized: bool = False):
        self.model, self.label = load_model(model)
        self.optimized = bool(optimized)
        self.uses_qonnx = uses_qonnx(self.model)
        data = _data_inputs(self.model)
        if not data:
            raise BadInputError(f"{self.label}: the model has no data input")
        self.inputs = [InputSpec.of(vi, self.label) for vi in data]
        self.input = self.inputs[0]
        self.output_names = [vi.name for vi in self.model.graph.output]
        run_model = with_qonnx_defaults(self.model) if self.uses_qonnx else self.model
        self._session = _session(run_model, self.label, optimized=self.optimized, custom_ops=self.uses_qonnx)

    @property
    def backend(self) -> str:
        return "ann_ort_opt" if self.optimized else "ann"

    @property
    def input_name(self) -> str:
        return self.input.name

    def run(self, x: Batch, batch_size: int | None = None) -> list[np.ndarray]:
        """Outputs for ``x [N, ...]`` (one array per input name for a model with several inputs)
        in graph order, ``batch_size`` samples per ``session.run`` (default
        ``DEFAULT_ROWS_PER_RUN``; a fixed batch dimension in the model wins)."""
        feeds, n = feeds_of(self.inputs, x, self.label)
        fixed = _fixed_batch(self.inputs)
        chunk = fixed or _batch_size(batch_size, DEFAULT_ROWS_PER_RUN)
        several = n > chunk
        outs: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for start, stop in _chunks(n, chunk):
            rows = chunk if fixed else stop - start
            result = _run(self._session, self.output_names, _batch_feeds(feeds, start, stop, rows), self.label)
            for i, (name, out) in enumerate(zip(self.output_names, result)):
                outs[i].append(_take_batch(out, rows, stop - start, name, self.label, several))
        return [_concat(parts) for parts in outs]


def _default_opset(model: onnx.ModelProto) -> int | None:
    return portable.default_opset(model)
