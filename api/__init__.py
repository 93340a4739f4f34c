"""pmsm-export: quantized ONNX to Polarity Multi-Spike Mapping spiking networks.

The Python API mirrors the command line and returns the same report::

    import pmsm
    result = pmsm.export("model.onnx", target="nir", output="model.nir")
    report = pmsm.verify("model.onnx", target="lava", data="test.npz", timesteps=[1, 2])

What the package offers, by layer (docs/architecture.md): ``pmsm.exporter`` (ONNX in, recognition,
proofs, the untimed network and the time loop), ``pmsm.runtime`` (the neuron, the ONNX Runtime
kernels and the spiking-ONNX format and runners), ``pmsm.targets`` (onnx, nir, lava behind one
interface), and this front door (the command flow, verification, the report).
"""
from __future__ import annotations

from pmsm.runtime.base.version import __version__

__all__ = ["__version__", "export", "verify"]


def export(model: str, target: str = "onnx", output: str | None = None, timesteps: int = 1,
           compensation: bool = True):
    """Convert ``model`` for ``target`` and write it (to ``output`` or next to the model).

    Returns a :class:`pmsm.targets.interface.Export` with the spiking ONNX model, the neuron layers
    and, for ``nir``/``lava``, the NIR graph. Raises :class:`pmsm.runtime.base.errors.PmsmError` on
    bad input.
    """
    from pmsm.pipeline import convert, default_output, write  # the flow imports every layer: `import pmsm` stays light

    result = convert(model, target, timesteps=timesteps, compensation=compensation)
    write(result, output or default_output(model, target))
    return result


def verify(model: str, target: str = "onnx", data: str | None = None, timesteps=(1, 2, 4),
           output: str | None = None, report: str | None = None, pictures: bool = False,
           compensation: bool = True) -> dict:
    """Convert, write and verify ``model`` as ``pmsm-export --verify`` does; returns the report dict.

    ``report["verification"]["passed"]`` tells whether the equivalence criteria held. A NIR file as
    ``model`` (target lava) is simulated against the NIR interpreter; nothing is written but the report.
    """
    from pmsm.pipeline import Request, run  # the flow imports every layer: `import pmsm` stays light

    request = Request(model=model, target=target, output=output, timesteps=tuple(timesteps),
                      compensation=compensation, verify=True, data=data, report=report, pictures=pictures,
                      progress=False)
    return run(request).report
