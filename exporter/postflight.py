"""Post-flight: the spiking model must load in ONNX Runtime, within a time bound, before it is written.

The session is built the way the reference backend builds it (:class:`pmsm.runtime.execute.SpikingModel`:
the ``ai.pmsm`` custom op library registered, graph optimizations off), in a child process
(:mod:`pmsm.runtime.base.isolation`), so a model ONNX Runtime cannot load in ``--max-load-seconds`` or that
crashes it is refused with one line instead of hanging or killing the command. Nothing about the
model's structure is assumed: whatever ``SpikingModel`` runs, this checks.
"""
from __future__ import annotations

from typing import Optional

import onnx

from pmsm.runtime import ortop
from pmsm.runtime.base import limits as run_limits
from pmsm.runtime.base import sessions
from pmsm.runtime.base.isolation import call_isolated
from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.execute import SpikingModel
from pmsm.runtime.inputs import probe_batch, unfeedable


def check_spiking_model(spiking: onnx.ModelProto, label: str, probe=None,
                        seconds: Optional[float] = None) -> Optional[int]:
    """Load ``spiking`` in ONNX Runtime and run one sample at T = 1 (``probe``: an array, or one
    per input name; otherwise the first sample of the seeded probe batch when every input's
    shape is fixed); returns the spike values that sample makes in one timestep over all
    neurons, or None when there was nothing to run (an input of unknown shape and no probe)."""
    seconds = run_limits.current().max_load_seconds if seconds is None else seconds

    def load_and_run() -> Optional[int]:
        # one intra-op thread: a smoke test of one batch through the Python kernel, where ONNX
        # Runtime's spinning pool only burns CPU (ViT 4x192, batch 16: 1.4 s of CPU against 2.1 to
        # 2.5 s with the default pool, measured 2026-12-07); restored for the run in process
        saved = sessions.threads()
        sessions.set_threads(1)
        try:
            model = SpikingModel(spiking)
            sample = probe[:1] if probe is not None else _probe_sample(model)
            if sample is None:
                _bare_session(spiking)
                return None
            result = model.run(sample, 1, collect_spikes=True)
            return int(sum(s.size for s in result.spikes.values()))
        finally:
            sessions.set_threads(saved)

    return call_isolated(load_and_run, seconds, label, "ONNX Runtime loading and running the spiking model",
                         f"raise the limit with {run_limits.flag('max_load_seconds')}")


def _probe_sample(model):
    """One valid sample for every input (pmsm.runtime.inputs), or None when a shape is not fixed."""
    if unfeedable(model.inputs) or any(spec.sample_dims is None for spec in model.inputs):
        return None
    return probe_batch(model.model, model.inputs, samples=1)


def _bare_session(spiking: onnx.ModelProto) -> None:
    inference_session(spiking, custom_ops_library=ortop.get_library_path())
