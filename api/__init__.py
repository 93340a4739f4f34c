"""pmsm-export: quantized ONNX to Polarity Multi-Spike Mapping spiking networks.

The Python API mirrors the command line and returns the same report::

    import pmsm
    result = pmsm.export("model.onnx", target="nir", output="model.nir")
    report = pmsm.verify("model.onnx", target="lava", data="test.npz", timesteps=[1, 2])
"""
from __future__ import annotations

from pmsm.runtime.base.version import __version__


def export(model: str, target: str = "onnx", output: str | None = None, timesteps: int = 1,
           compensation: bool = True):
    """Convert ``model`` for ``target`` and write it (to ``output`` or next to the model).

    Returns a :class:`pmsm.pipeline.Export` with the spiking ONNX model, the neuron layers and,
    for ``nir``/``lava``, the NIR graph. Raises :class:`pmsm.runtime.base.errors.PmsmError` on bad input.
    """
    from pmsm.pipeline import convert, default_output, write

    result = convert(model, target, timesteps=timesteps, compensation=compensation)
    write(result, output or default_output(model, target))
    return result


def verify(model: str, target: str = "onnx", data: str | None = None, timesteps=(1, 2, 4),
           output: str | None = None, report: str | None = None, pictures: bool = False,
           compensation: bool = True) -> dict:
    """Convert, write and verify ``model`` as ``pmsm-export --verify`` does; returns the report dict.

    ``report["verification"]["passed"]`` tells whether the equivalence criteria held.
    """
    from pmsm.nir_source import is_nir_file, verify_nir_file
    from pmsm.paths import Role
    from pmsm.pipeline import check_run_paths, default_output, finish_report, report_roles, run_verification

    if is_nir_file(model):  # a NIR file (target lava): Lava against the NIR interpreter, nothing written
        return verify_nir_file(model, target, data, sorted(set(timesteps)), output, report, pictures)
    outputs = [Role("output", output or default_output(model, target))] + report_roles(report, pictures, "report")
    check_run_paths(model, outputs, data)  # the report must not land on the model, the data or the output
    result = export(model, target, output, timesteps=sorted(timesteps)[0], compensation=compensation)
    document = run_verification(result, data, sorted(set(timesteps)), progress=False)
    finish_report(document, report, pictures=pictures)
    return document
