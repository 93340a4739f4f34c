"""The one way the package opens an ONNX Runtime session.

CPU only; graph optimizations disabled unless asked for (the ONNX specification's semantics, which
the spiking model is exact against: docs/verification.md); ONNX Runtime's own logging silenced,
since every failure comes back as an exception the caller words; as many intra-op threads as
:func:`set_threads` last said (verification workers that share the cores each take their part).
"""
from __future__ import annotations

from typing import Optional, Union

import onnx
import onnxruntime as ort

_THREADS: Optional[int] = None  # intra-op threads of the sessions created from now on; None: ONNX Runtime's default


def set_threads(threads: Optional[int]) -> None:
    """Threads each session created from now on may use (None: one per core)."""
    global _THREADS
    _THREADS = None if threads is None else max(1, int(threads))


def threads() -> Optional[int]:
    """The intra-op threads of the sessions created from now on (None: ONNX Runtime's default)."""
    return _THREADS


def inference_session(model: Union[onnx.ModelProto, bytes], *, optimized: bool = False,
                      custom_ops_library: Optional[str] = None) -> ort.InferenceSession:
    """A CPU session of ``model``; ``custom_ops_library``: a library of custom op kernels to register."""
    options = ort.SessionOptions()
    if _THREADS is not None:
        options.intra_op_num_threads = _THREADS
    if not optimized:  # otherwise ONNX Runtime's default level
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    if custom_ops_library is not None:
        options.register_custom_ops_library(custom_ops_library)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
