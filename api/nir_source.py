"""A NIR file as the source: ``pmsm-export model.nir --target lava [--verify ...]``.

A team that received a NIR file of the PMSM dialect, and not the ONNX model it was made from,
lowers it to Lava and, with ``--verify``, checks Lava against the project's NIR interpreter, which
is the reference for this source (there is no ANN to compare with). Nothing is written but the
report: the NIR file itself is the model.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from pmsm.errors import EXIT_MISMATCH, EXIT_OK, BadInputError, UnsupportedModelError

ROOT_BACKEND = "nir"
CRITERIA = ["lava (floating point) vs nir at every T: argmax_agreement == 1"]


def is_nir_file(path: str) -> bool:
    """NIR files are HDF5, ONNX files protobuf: the file's signature tells them apart.

    HDF5's signature sits at offset 0, 512, 1024, 2048, ... (after a user block of that size), which
    is where ``h5py.is_hdf5`` looks too; read here, because importing h5py costs 30 to 100 ms of the
    command's start (measured 2026-12-07) and an ONNX file never needs it."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset + len(_HDF5_SIGNATURE) <= size:
                handle.seek(offset)
                if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class NirSource:
    """A NIR file read and checked for Lava; it has the attributes of pmsm.pipeline.Export the
    report reads (no spiking ONNX: ``spiking`` is None)."""

    source_path: str
    source_sha256: str
    nir_graph: object
    neurons: list
    target: str = "lava"
    output_path: Optional[str] = None
    spiking: None = None
    root: str = ROOT_BACKEND
    criteria: list = field(default_factory=lambda: list(CRITERIA))
    input_shape: list = field(default_factory=list)


@dataclass(frozen=True)
class NirNeuron:
    name: str
    params: object
    producer: str = "nir"


def load_nir_source(path: str, target: str) -> NirSource:
    """Read ``path`` (type-checked, PMSM dialect) and pre-flight it for Lava; nothing is written."""
    if target != "lava":
        raise BadInputError(f"{path}: a NIR file can only be lowered to Lava (--target lava); "
                            f"target '{target}' takes the source ONNX model")
    import pmsm.targets.lava  # noqa: F401 - without lava-nc: MissingExtraError (exit 2) before any work
    from pmsm.targets.lava import unsupported_nir_nodes
    from pmsm.targets.nir import NirInterpreter, read_nir

    graph = read_nir(path)
    problems = unsupported_nir_nodes(graph)
    if problems:
        raise UnsupportedModelError(path, target, problems)
    interpreter = NirInterpreter(graph, label=path)
    with open(path, "rb") as file:
        sha256 = hashlib.sha256(file.read()).hexdigest()
    neurons = [NirNeuron(name, params) for name, params in interpreter.neurons.items()]
    return NirSource(path, sha256, graph, neurons, input_shape=[None, *interpreter.input_shape])


def verify_nir_source(source: NirSource, data, timesteps: list[int], progress=True, sharding=None) -> dict:
    """Lava (floating and fixed point) against the NIR interpreter on ``data`` (a
    :class:`pmsm.data.DataSet`)."""
    import nir
    import numpy as np

    from pmsm.backends import Plan
    from pmsm.pipeline import Sharding, verify_dataset
    from pmsm.report import build_report

    with open(source.source_path, "rb") as handle:
        nir_bytes = handle.read()
    plan = Plan(target="lava", source=None, spiking=None, nir=nir_bytes, reference_samples=None,
                input_peak=data.peak())
    spike_values = sum(int(np.size(node.r)) for node in source.nir_graph.nodes.values() if isinstance(node, nir.IF))
    verification = verify_dataset(plan, data, timesteps, sharding or Sharding(), progress, [], spike_values)
    return build_report(source, verification, data)


def verify_nir_file(path: str, target: str, data_path: Optional[str], timesteps: list[int],
                    output: Optional[str] = None, report: Optional[str] = None, pictures: bool = False) -> dict:
    """``pmsm.verify`` of a NIR file; returns the report dict (and writes it to ``report``)."""
    from pmsm.data import open_data
    from pmsm.pipeline import finish_report

    check_outputs(path, output, report)
    source = load_nir_source(path, target)
    document = verify_nir_source(source, open_data(data_path, source.input_shape), timesteps, progress=False)
    finish_report(document, report, pictures=pictures)
    return document


def check_outputs(path: str, output: Optional[str], report: Optional[str]) -> None:
    from pmsm.pipeline import check_output_path

    if output:
        raise BadInputError(f"{path}: -o has nothing to write for a NIR source (Lava simulates the file "
                            "itself); --report writes the verification report")
    if report:
        check_output_path(path, report)


def run_nir_source(args: argparse.Namespace) -> int:
    """``pmsm-export model.nir --target lava``: lower it; with ``--verify``, simulate and compare."""
    from pmsm.data import open_data
    from pmsm.pipeline import Sharding, finish_report
    from pmsm.report import print_summary

    check_outputs(args.model, args.output, args.report)
    source = load_nir_source(args.model, args.target)
    summary = (f"{args.model}: ok for target 'lava': {len(source.neurons)} neuron layer(s), "
               f"{len(source.nir_graph.nodes)} NIR nodes")
    if args.check:
        print(summary)
        return EXIT_OK
    data = open_data(args.data, source.input_shape) if args.verify else None
    if not args.verify:
        from pmsm.targets.lava import Network

        network = Network(source.nir_graph, timesteps=args.timesteps[0])
        print(f"{summary}; lowered to Lava processes, {network.depth} step(s) deep "
              "(nothing written; --verify simulates it against the NIR interpreter)")
        return EXIT_OK
    report = verify_nir_source(source, data, args.timesteps,
                               sharding=Sharding(args.workers, args.ray is not None, args.ray or None))
    for path in finish_report(report, args.report, pictures=bool(args.report)):
        print(f"wrote {path}")
    print_summary(report, sys.stdout)
    for failure in report["verification"]["failures"]:
        print(f"pmsm-export: verification failed: {failure}", file=sys.stderr)
    return EXIT_MISMATCH if report["verification"]["failures"] else EXIT_OK
