"""Write and read NIR files of the PMSM dialect."""
from __future__ import annotations

import os

import nir

from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.base.files import atomic_path
from pmsm.targets.nir import dialect


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` atomically (pmsm.runtime.base.files): a failure never leaves a
    partial file behind, nor touches an existing one."""
    with atomic_path(os.fspath(path), suffix=".nir") as temporary:
        nir.write(temporary, graph)


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a PMSM-dialect NIR file (either profile) with nir's type checking on; BadInputError when it
    is not one.

    Metadata comes back as plain Python (ints, floats, strings, lists, dicts) instead of the numpy
    scalars and arrays h5py returns.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file")
    if os.path.isdir(path) or not h5py.is_hdf5(path):
        raise BadInputError(f"{path}: not a NIR file (NIR files are HDF5; this is not one)")
    try:
        graph = nir.read(path, type_check=True)
    except Exception as exc:  # noqa: BLE001 - nir/h5py raise many kinds for a malformed file
        text = str(exc).strip().splitlines()
        raise BadInputError(f"{path}: not a readable NIR graph: {text[0] if text else type(exc).__name__}") from None
    if not isinstance(graph, nir.NIRGraph):
        raise BadInputError(f"{path}: the file holds a single {type(graph).__name__} node, not a NIR graph")
    graph.metadata = dialect.normalise(graph.metadata or {})
    for node in graph.nodes.values():
        node.metadata = dialect.normalise(node.metadata or {})
    if not dialect.is_standard_profile(graph):  # plain NIR: nothing beyond nir's type check to hold
        dialect.check(graph, path)
    return graph
