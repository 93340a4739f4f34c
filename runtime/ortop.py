"""ONNX Runtime kernels of the reference backend (Python custom ops, onnxruntime-extensions).

Importing this module defines, once per process:

- ``ai.pmsm::MultiSpikeNeuron`` (docs/spiking-onnx.md): one timestep, ``(z, u) -> (s, u_next)``;
  converts its attributes, builds :class:`~pmsm.runtime.neuron.NeuronParams` and calls
  :func:`pmsm.runtime.neuron.step`, the one implementation of the neuron;
- the QONNX quantizers ``Quant``, ``IntQuant`` and ``BipolarQuant`` in the domains
  ``qonnx.custom_op.general``, ``onnx.brevitas`` and ``finn.custom_op.general``, so that the
  *source* model of a QONNX export runs on stock ONNX Runtime.

A session uses them after ``SessionOptions.register_custom_ops_library(get_library_path())``
(:func:`session_options` does it).

Facts about onnxruntime-extensions 0.15.2 this module is built around:

- Only scalar int64/float/string attributes, and every declared attribute is **required**: a node
  without one fails at session creation. QONNX exports may omit ``signed``/``narrow``/
  ``rounding_mode``; :func:`with_qonnx_defaults` fills them in on a copy of the model.
- Float attributes arrive as float32 widened to a Python float (``np.float32(attr)`` is exact).
- **An exception escaping a kernel aborts the whole process.** Every kernel catches everything,
  returns zeros of the input's shape and records the error in a per-thread slot (ONNX Runtime
  calls the kernel on the thread that called ``session.run``). :func:`raise_op_errors` turns the
  record into a Python exception after ``session.run`` returns; the session wrappers in
  :mod:`pmsm.runtime.execute` call it after every run. A signal's exception (Ctrl-C, SIGTERM)
  can still escape, raised by the signal's handler at any bytecode of the kernel, its ``except``
  included (seen: "terminate called after throwing an instance of 'pybind11::error_already_set'
  ... KeyboardInterrupt", exit by SIGABRT, for 1 of 10 Ctrl-Cs while a MobileNetV2 converted):
  :func:`signals_held` makes the handlers only record the signal during ``session.run`` and
  calls them once it returns.
- Defining an op twice in a process breaks later sessions: the kernels are defined at import,
  guarded so that a reload or a second import of this file does not define them again.
- A registered kernel wins over a model-local function (FunctionProto) with the same domain and
  name; without the library registered, ONNX Runtime runs the function body instead.
- The library's C++ kernel calls one Python function for every kernel call, installed with
  ``PyCustomOpDef.install_hooker``. The library's own (``_ocos._on_pyop_invocation``) returns each
  output as ``ndarray.flatten().tolist()``; the C++ side then builds an array again from that list
  of Python floats (float64, then cast to float32). That round trip was 97 % of the custom op's node
  time on a QDQ ResNet-18 (docs/spiking-onnx.md, "Speed"). The C++ side takes any object that
  converts to an array and copies a float32 C-contiguous one with ``memcpy``, so this module installs
  its own dispatcher (:func:`_dispatch_to`): the kernels defined here return their outputs as float32
  C-contiguous arrays, bit for bit what the list carried (signed zeros and NaN payloads included,
  which the float64 round trip kept too); every other Python op in the process (the library's own)
  goes to the library's function unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Callable

import numpy as np
import onnx

from pmsm.runtime import extensions
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.neuron import NeuronParams, step
from pmsm.runtime.qonnx import (
    QONNX_BIPOLAR_OP,
    QONNX_DOMAINS,
    QONNX_QUANT_OPS,
    qonnx_bipolar_quant,
    qonnx_int_range,
    qonnx_quant,
)
from pmsm.runtime.schema import NEURON_ATTRIBUTES, NEURON_OP
from pmsm.runtime.schema import NEURON_DOMAIN as PMSM_DOMAIN

__all__ = [
    "PMSM_DOMAIN",
    "NEURON_OP",
    "NEURON_ATTRIBUTES",
    "QONNX_DOMAINS",
    "ExecutionError",
    "signals_held",
    "get_library_path",
    "neuron_params_of",
    "qonnx_int_range",
    "qonnx_quant",
    "qonnx_bipolar_quant",
    "clear_op_errors",
    "take_op_errors",
    "raise_op_errors",
]

# the custom-op part of onnxruntime-extensions only: its package __init__ imports torch (extensions.py)
onnxruntime_extensions = extensions.load()
PyOp, _ocos, get_library_path, onnx_op = (onnxruntime_extensions.PyOp, onnxruntime_extensions._ocos,
                                          onnxruntime_extensions.get_library_path, onnxruntime_extensions.onnx_op)



_MAX_RECORDED = 64
_MAX_CAST = 4096  # distinct (kernel, attributes) conversions remembered by the dispatcher


class ExecutionError(BadInputError):
    """Running a model failed: a kernel rejected its inputs, or ONNX Runtime failed."""


# ---------------------------------------------------------------------------------------------
# Error slot: kernels never raise (that aborts the process); they record here instead.
# ---------------------------------------------------------------------------------------------


class _ErrorSlot(threading.local):
    def __init__(self) -> None:
        self.errors: list[tuple[str, BaseException]] = []
        self.dropped = 0


def _shared_slot() -> _ErrorSlot:
    # Kept on the extensions module so that a second copy of this file (reload, or an import
    # under another name) shares the slot the kernels defined by the first copy write to.
    slot = getattr(onnxruntime_extensions, "_pmsm_error_slot", None)
    if slot is None:
        slot = _ErrorSlot()
        onnxruntime_extensions._pmsm_error_slot = slot
    return slot


_SLOT = _shared_slot()


def _record(message: str, exc: BaseException) -> None:
    try:
        if len(_SLOT.errors) < _MAX_RECORDED:
            _SLOT.errors.append((message, exc))
        else:
            _SLOT.dropped += 1
    except BaseException:  # noqa: BLE001 - nothing may escape a kernel
        pass


def clear_op_errors() -> None:
    """Forget errors recorded by kernels on this thread."""
    _SLOT.errors = []
    _SLOT.dropped = 0


def take_op_errors() -> list[str]:
    """Messages of the errors recorded by kernels on this thread since the last clear/take."""
    messages = [message for message, _ in _SLOT.errors]
    if _SLOT.dropped:
        messages.append(f"... and {_SLOT.dropped} more")
    clear_op_errors()
    return messages


def raise_op_errors(context: str = "") -> None:
    """Raise the first error recorded by a kernel on this thread (and clear the record).

    A ``KeyboardInterrupt`` caught inside a kernel is re-raised as such.
    """
    errors, dropped = _SLOT.errors, _SLOT.dropped
    if not errors:
        return
    clear_op_errors()
    for _, exc in errors:
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt
    more = len(errors) - 1 + dropped
    prefix = f"{context}: " if context else ""
    suffix = f" (and {more} more kernel error(s))" if more else ""
    raise ExecutionError(f"{prefix}{errors[0][0]}{suffix}") from errors[0][1]


@contextlib.contextmanager
def signals_held():
    """Around ``session.run``: SIGINT and SIGTERM handlers written in Python only record the signal
    (ONNX Runtime may call this module's kernels, where a raised exception aborts the process),
    and are called with it once the block has run. Outside the main thread nothing changes (its
    handlers never run there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list = []

    def record(signum, frame):
        received.append(signum)

    held = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if callable(handler):
            held[signum] = handler
            signal.signal(signum, record)
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            held[signum](signum, None)


def _guarded(describe: Callable[..., str], outputs: int = 1):
    """Wrap a kernel body: any exception is recorded and zeros of the first input's shape returned
    (one array per output)."""

    def wrap(body):
        @functools.wraps(body)
        def kernel(*inputs, **attrs):
            try:
                out = body(*inputs, **attrs)
                if outputs == 1:
                    return np.ascontiguousarray(out, dtype=np.float32)
                return tuple(np.ascontiguousarray(o, dtype=np.float32) for o in out)
            except BaseException as exc:  # noqa: BLE001 - an escaping exception aborts the process
                try:
                    message = f"{describe(*inputs, **attrs)}: {exc}"
                except BaseException:  # noqa: BLE001
                    message = f"{body.__name__}: {exc!r}"
                _record(message, exc)
                try:
                    zeros = np.zeros(np.shape(inputs[0]), dtype=np.float32)
                except BaseException:  # noqa: BLE001
                    zeros = np.zeros((0,), dtype=np.float32)
                return zeros if outputs == 1 else tuple(zeros.copy() for _ in range(outputs))

        return kernel

    return wrap


def _shape(a) -> tuple:
    return tuple(np.shape(a))


# ---------------------------------------------------------------------------------------------
# ai.pmsm::MultiSpikeNeuron
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _params(lo: int, hi: int, v_init: float, rounding: str) -> NeuronParams:
    return NeuronParams(lo=int(lo), hi=int(hi), v_init=float(np.float32(v_init)), rounding=str(rounding))


def _describe_neuron(z, u, lo=None, hi=None, v_init=None, rounding=None) -> str:
    return (
        f"{PMSM_DOMAIN}::{NEURON_OP}(lo={lo}, hi={hi}, v_init={v_init!r}, rounding={rounding!r}) "
        f"on z of shape {_shape(z)} with membrane of shape {_shape(u)}"
    )


@_guarded(_describe_neuron, outputs=2)
def _neuron_kernel(z, u, lo, hi, v_init, rounding):
    z = np.asarray(z, dtype=np.float32)
    u = np.asarray(u, dtype=np.float32)
    if u.shape != z.shape:
        if u.size != 1:
            raise ValueError(f"membrane of shape {u.shape} does not match z of shape {z.shape} "
                             "(the initial membrane is a scalar, later ones have the shape of z)")
        u = u.reshape(())  # u + z then has the shape of z, so u_next does too
    u_next, s = step(u, z, _params(lo, hi, v_init, rounding))
    return s, u_next


def neuron_params_of(node: onnx.NodeProto) -> NeuronParams:
    """The neuron parameters of a ``MultiSpikeNeuron`` node; ``BadInputError`` naming the node."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    missing = [name for name in NEURON_ATTRIBUTES if name not in attrs]
    if missing:
        raise BadInputError(f"node '{node.name}' ({NEURON_OP}): missing attribute(s) {', '.join(missing)}")
    rounding = attrs["rounding"]
    if isinstance(rounding, bytes):
        rounding = rounding.decode("utf-8", "replace")
    try:
        return _params(attrs["lo"], attrs["hi"], float(attrs["v_init"]), rounding)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"node '{node.name}' ({NEURON_OP}): {exc}") from None


# ---------------------------------------------------------------------------------------------
# QONNX quantizers (numpy semantics, float32 arithmetic)
# ---------------------------------------------------------------------------------------------


def _describe_quant(x, scale, zeropt, bitwidth, signed=None, narrow=None, rounding_mode=None) -> str:
    return (
        f"QONNX Quant(signed={signed}, narrow={narrow}, rounding_mode={rounding_mode!r}) on x of shape "
        f"{_shape(x)}, scale {_shape(scale)}, zeropt {_shape(zeropt)}, bitwidth {_shape(bitwidth)}"
    )


@_guarded(_describe_quant)
def _quant_kernel(x, scale, zeropt, bitwidth, signed, narrow, rounding_mode):
    y = qonnx_quant(x, scale, zeropt, bitwidth, signed=signed, narrow=narrow, rounding_mode=rounding_mode)
    if y.shape != np.shape(x):
        raise ValueError(f"scale/zeropt/bitwidth broadcast the output to shape {y.shape}")
    return y


def _describe_bipolar(x, scale) -> str:
    return f"QONNX BipolarQuant on x of shape {_shape(x)}, scale {_shape(scale)}"


@_guarded(_describe_bipolar)
def _bipolar_kernel(x, scale):
    y = qonnx_bipolar_quant(x, scale)
    if y.shape != np.shape(x):
        raise ValueError(f"scale broadcasts the output to shape {y.shape}")
    return y


# ---------------------------------------------------------------------------------------------
# Definition and dispatch, once per process
# ---------------------------------------------------------------------------------------------


def _array_kernels() -> dict:
    """``{kernel id: Opdef}`` of the kernels defined here, kept on the extensions module so that a
    reload of this file finds the ones its first import defined."""
    kernels = getattr(onnxruntime_extensions, "_pmsm_array_kernels", None)
    if kernels is None:
        kernels = {}
        onnxruntime_extensions._pmsm_array_kernels = kernels
    return kernels


def _dispatch_to(library_dispatch: Callable, kernels: dict) -> Callable:
    """The function the extensions' C++ kernel calls: ``(kernel id, inputs, attributes as strings) ->
    (kernel id, shape, flat values, shape, flat values, ...)``. Kernels of this module answer with
    arrays; any other id goes to ``library_dispatch``."""

    cast: dict[tuple, dict] = {}  # (kernel id, attribute strings) -> keyword arguments of the body

    def dispatch(k_id, feed, attributes):
        opdef = kernels.get(k_id)
        if opdef is None:
            return library_dispatch(k_id, feed, attributes)
        try:
            key = (k_id, *attributes.items())
            kwargs = cast.get(key)
            if kwargs is None:
                # Opdef.cast_attributes reads the declaration through pybind11, which copies a map at
                # every access (about 20 us a call for four attributes): once per distinct node
                kwargs = opdef.cast_attributes(attributes)
                if len(cast) < _MAX_CAST:
                    cast[key] = kwargs
            outputs = opdef.body(*feed, **kwargs)
            if not isinstance(outputs, tuple):
                outputs = (outputs,)
            answer = [k_id]
            for out in outputs:
                out = np.ascontiguousarray(out, dtype=np.float32)
                answer += (out.shape, out.reshape(-1))
            return tuple(answer)
        except BaseException as exc:  # noqa: BLE001 - an exception here aborts the process too
            _record(f"{opdef.op_type}: {exc!r}", exc)
            zeros = np.zeros(np.shape(feed[0]) if feed else (0,), dtype=np.float32)
            return (k_id,) + (zeros.shape, zeros.reshape(-1)) * len(opdef._nativedef.output_types)

    return dispatch


def _define_kernels() -> None:
    if getattr(onnxruntime_extensions, "_pmsm_kernels_defined", False):
        return
    kernels = _array_kernels()

    def define(body, **declaration):
        opdef = onnx_op(**declaration)(body)
        kernels[opdef._nativedef.obj_id] = opdef

    define(
        _neuron_kernel,
        op_type=f"{PMSM_DOMAIN}::{NEURON_OP}",
        inputs=[PyOp.dt_float, PyOp.dt_float],
        outputs=[PyOp.dt_float, PyOp.dt_float],
        attrs={"lo": PyOp.dt_int64, "hi": PyOp.dt_int64, "v_init": PyOp.dt_float, "rounding": PyOp.dt_string},
    )
    for domain in QONNX_DOMAINS:
        for op in QONNX_QUANT_OPS:
            define(
                _quant_kernel,
                op_type=f"{domain}::{op}",
                inputs=[PyOp.dt_float] * 4,
                outputs=[PyOp.dt_float],
                attrs={"signed": PyOp.dt_int64, "narrow": PyOp.dt_int64, "rounding_mode": PyOp.dt_string},
            )
        define(_bipolar_kernel, op_type=f"{domain}::{QONNX_BIPOLAR_OP}", inputs=[PyOp.dt_float] * 2,
               outputs=[PyOp.dt_float])
    PyOp.install_hooker(_dispatch_to(_ocos._on_pyop_invocation, kernels))
    onnxruntime_extensions._pmsm_kernels_defined = True


_define_kernels()
