"""NIR target: convert the untimed PMSM network to the PMSM dialect of NIR (docs/nir.md), write, read
and run it.

Public API::

    network_to_nir(model, *, source_sha256="", source_name="", timesteps=1) -> nir.NIRGraph
    unsupported_nodes(model) -> [(node name, op type, reason), ...]
    write_nir(graph, path)            # atomic
    read_nir(path) -> nir.NIRGraph    # type-checked, metadata normalised, dialect checked
    NirInterpreter(graph).run(x, timesteps, collect_spikes=False) -> NirResult
                                      # x, outputs and spikes in the ONNX model's axis order (§3a)
"""
from pmsm.targets.nir.convert import network_to_nir
from pmsm.targets.nir.dialect import DIALECT_FORMAT, VERSION
from pmsm.targets.nir.interpreter import NirInterpreter, NirResult
from pmsm.targets.nir.io import read_nir, write_nir
from pmsm.targets.nir.preflight import unsupported_nodes

__all__ = [
    "DIALECT_FORMAT",
    "VERSION",
    "NirInterpreter",
    "NirResult",
    "read_nir",
    "network_to_nir",
    "unsupported_nodes",
    "write_nir",
]
