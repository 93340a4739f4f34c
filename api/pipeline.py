"""What the `pmsm-export` command and the Python API do, target by target."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx

from pmsm.errors import EXIT_MISMATCH, EXIT_OK, BadInputError, UnsupportedModelError
from pmsm.files import atomic_write_bytes, atomic_write_json
from pmsm.runtime.schema import TIMESTEPS_INPUT

PROBE_SAMPLES = 64
PROBE_SEED = 0
TARGETS = ("onnx", "nir", "lava")


@dataclass
class Export:
    """The result of converting one source model."""

    source_path: str
    source_sha256: str
    target: str
    spiking: onnx.ModelProto
    neurons: list
    output_path: Optional[str] = None
    nir_graph: object = None


def default_output(model_path: str, target: str) -> str:
    stem, _ = os.path.splitext(model_path)
    return stem + (".spiking.onnx" if target == "onnx" else ".nir")


def check_output_path(model_path: str, output: str) -> None:
    if os.path.exists(output) and os.path.samefile(model_path, output):
        raise BadInputError(f"{output}: output would overwrite the input model; choose another -o")
    if os.path.realpath(output) == os.path.realpath(model_path):
        raise BadInputError(f"{output}: output would overwrite the input model; choose another -o")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise BadInputError(f"{output}: folder {folder} does not exist")


def convert(model_path: str, target: str = "onnx", timesteps: int = 1) -> Export:
    """Load, pre-flight for ``target`` and convert; nothing is written."""
    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
    if target == "lava":
        import pmsm.targets.lava  # noqa: F401 - without lava-nc: MissingExtraError (exit 2) before any work
    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.exporter.loading import load_source

    source = load_source(model_path)
    spiking, neurons = to_spiking_onnx(source.model, path=model_path, source_sha256=source.sha256,
                                       default_timesteps=timesteps)
    export = Export(model_path, source.sha256, target, spiking, neurons)
    if target in ("nir", "lava"):
        from pmsm.targets.nir import spiking_onnx_to_nir, unsupported_nodes

        problems = unsupported_nodes(spiking)
        if problems:
            raise UnsupportedModelError(model_path, target, problems)
        export.nir_graph = spiking_onnx_to_nir(spiking, source_sha256=source.sha256,
                                               source_name=os.path.basename(model_path), timesteps=timesteps)
    if target == "lava":
        from pmsm.targets.lava import unsupported_nir_nodes

        problems = unsupported_nir_nodes(export.nir_graph)
        if problems:
            raise UnsupportedModelError(model_path, target, problems)
    return export


def write(export: Export, output: str) -> str:
    check_output_path(export.source_path, output)
    if export.target == "onnx":
        atomic_write_bytes(output, export.spiking.SerializeToString())
    else:
        from pmsm.targets.nir import write_nir

        write_nir(export.nir_graph, output)
    export.output_path = output
    return output


def load_data(path: Optional[str], input_shape) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``x`` (and labels ``y`` when present) from an .npz file, or a seeded probe batch."""
    if path is None:
        dims = list(input_shape[1:]) if input_shape else None
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise BadInputError(f"the model input has no fixed shape ({input_shape}); give --data X.npz")
        rng = np.random.default_rng(PROBE_SEED)
        return rng.uniform(0.0, 1.0, size=[PROBE_SAMPLES] + dims).astype(np.float32), None
    if not os.path.isfile(path):
        raise BadInputError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise BadInputError(f"{path}: no array 'x' (found: {', '.join(data.files) or 'nothing'})")
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]) if "y" in data.files else None
    except BadInputError:
        raise
    except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a bad archive
        raise BadInputError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    if x.dtype.kind not in "fiu":
        raise BadInputError(f"{path}: 'x' has dtype {x.dtype}; expected numbers")
    x = x.astype(np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise BadInputError(f"{path}: 'x' holds no samples")
    if not np.all(np.isfinite(x)):
        raise BadInputError(f"{path}: 'x' contains {int(np.size(x) - np.isfinite(x).sum())} NaN or inf value(s)")
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
            raise BadInputError(f"{path}: 'y' must be integer labels, one per sample of 'x' ({len(x)})")
    if input_shape:
        expected = list(input_shape[1:])
        if x.ndim != len(input_shape) or any(isinstance(d, int) and d > 0 and d != g
                                             for d, g in zip(expected, x.shape[1:])):
            raise BadInputError(f"{path}: 'x' has shape {list(x.shape)}, the model input expects "
                                f"[N, {', '.join(str(d) for d in expected)}]")
    return x, y


def input_shape(model: onnx.ModelProto):
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and value.name != TIMESTEPS_INPUT:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return None


def backends_for(export: Export) -> list:
    from pmsm.backends import LavaBackend, NirBackend, OnnxBackend

    backends = [OnnxBackend(export.spiking)]
    if export.target in ("nir", "lava"):
        from pmsm.targets.nir import read_nir

        graph = read_nir(export.output_path) if export.output_path else export.nir_graph
        backends.append(NirBackend(graph))
        if export.target == "lava":
            backends += [LavaBackend(graph), LavaBackend(graph, fixed_point=True)]
    return backends


def load_verification_data(export: Export, data_path: Optional[str]):
    return load_data(data_path, input_shape(onnx.load(export.source_path, load_external_data=False)))


def run_verification(export: Export, data_path: Optional[str], timesteps: list[int], progress=True,
                     data=None) -> dict:
    """Run every backend of the export's target against the reference; returns the report dict."""
    from pmsm.backends import AnnBackend
    from pmsm.report import build_report
    from pmsm.verification import terminal_progress, verify

    x, y = data if data is not None else load_verification_data(export, data_path)
    backends = backends_for(export)
    verification = verify(
        AnnBackend(export.source_path), backends, x, y, timesteps,
        progress_factory=terminal_progress if progress else (lambda name, t: None),
        ann_optimized=AnnBackend(export.source_path, optimized=True),
    )
    report = build_report(export, verification, backends, data_path)
    return report


def finish_report(report: dict, path: Optional[str], pictures: bool = True) -> list[str]:
    """Write the report JSON and, next to it, its pictures; returns the paths written."""
    if not path:
        return []
    atomic_write_json(path, report)
    written = [path]
    if pictures:
        from pmsm.plots import write_pictures

        folder = os.path.dirname(os.path.abspath(path))
        written += write_pictures(report, folder, os.path.splitext(os.path.basename(path))[0])
    return written


def run_command(args: argparse.Namespace) -> int:
    from pmsm.report import print_summary

    if (args.report or args.data) and not args.verify:
        raise BadInputError("--report and --data need --verify")
    from pmsm.nir_source import is_nir_file, run_nir_source

    if is_nir_file(args.model):
        return run_nir_source(args)
    output = args.output or default_output(args.model, args.target)
    if not args.check and os.path.exists(args.model):
        check_output_path(args.model, output)  # before the work, not after it
    export = convert(args.model, args.target, timesteps=args.timesteps[0])
    if args.check:
        print(f"{args.model}: ok for target '{args.target}': {len(export.neurons)} neuron layer(s), "
              f"{len(export.spiking.graph.node)} nodes")
        return EXIT_OK
    data = load_verification_data(export, args.data) if args.verify else None  # bad data: fail before writing
    write(export, output)
    print(f"wrote {output} ({len(export.neurons)} PMSM neuron layer(s))")
    if not args.verify:
        return EXIT_OK
    report = run_verification(export, args.data, args.timesteps, data=data)
    for path in finish_report(report, args.report, pictures=bool(args.report)):
        print(f"wrote {path}")
    print_summary(report, sys.stdout)
    for failure in report["verification"]["failures"]:
        print(f"pmsm-export: verification failed: {failure}", file=sys.stderr)
    return EXIT_MISMATCH if report["verification"]["failures"] else EXIT_OK
