"""pmsm-export: quantized ONNX to Polarity Multi-Spike Mapping spiking networks.

The Python API mirrors the command line and returns the same report::

    import pmsm
    result = pmsm.export("model.onnx", target="nir", output="model.nir")
    report = pmsm.verify("model.onnx", target="lava", data="test.npz", timesteps=[1, 2])
"""
from __future__ import annotations

__version__ = "0.1.0"


def export(model: str, target: str = "onnx", output: str | None = None, timesteps: int = 1):
    """Convert ``model`` for ``target`` and write it (to ``output`` or next to the model).

    Returns a :class:`pmsm.pipeline.Export` with the spiking ONNX model, the neuron layers and,
    for ``nir``/``lava``, the NIR graph. Raises :class:`pmsm.errors.PmsmError` on bad input.
    """
    from pmsm.pipeline import convert, default_output, write

    result = convert(model, target, timesteps=timesteps)
    write(result, output or default_output(model, target))
    return result


def verify(model: str, target: str = "onnx", data: str | None = None, timesteps=(1, 2, 4),
           output: str | None = None, report: str | None = None, pictures: bool = False) -> dict:
    """Convert, write and verify ``model`` as ``pmsm-export --verify`` does; returns the report dict.

    ``report["verification"]["passed"]`` tells whether the equivalence criteria held.
    """
    from pmsm.nir_source import is_nir_file, verify_nir_file
    from pmsm.pipeline import finish_report, run_verification

    if is_nir_file(model):  # a NIR file (target lava): Lava against the NIR interpreter, nothing written
        return verify_nir_file(model, target, data, sorted(set(timesteps)), output, report, pictures)
    result = export(model, target, output, timesteps=sorted(timesteps)[0])
    document = run_verification(result, data, sorted(set(timesteps)), progress=False)
    finish_report(document, report, pictures=pictures)
    return document
