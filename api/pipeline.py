"""The command flow: one path for ``pmsm-export``, the Python API and a NIR file as the source.

    arguments checked -> every path checked -> the source loaded and validated once
    -> the target converts it (its pre-flight included) -> post-flight of the spiking model
    -> outputs staged -> verification on a VerificationPlan -> report -> outputs committed

What differs between targets is behind :class:`pmsm.targets.interface.Target`; nothing here
branches on a target's name. What differs for a NIR file as the source (no ANN, nothing to write
but the report) is on its :class:`~pmsm.targets.interface.Export`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

from pmsm.ci_outputs import write_junit, write_summary_markdown
from pmsm.data import DataSet, data_files, from_arrays, open_data, open_model_data
from pmsm.exporter.loading import external_data_files, load_source, read_model
from pmsm.exporter.postflight import check_spiking_model
from pmsm.outputs import Staging
from pmsm.paths import Role, check_paths
from pmsm.plan import DEFAULT_REFERENCE_SAMPLES, VerificationPlan, bytes_per_sample
from pmsm.report import build_report, print_summary
from pmsm.runtime.base import limits as run_limits
from pmsm.runtime.base.errors import EXIT_MISMATCH, EXIT_OK, BadInputError
from pmsm.runtime.base.files import atomic_write_json
from pmsm.runtime.base.memory import check_fits, chunk_samples
from pmsm.runtime.execute import SpikingModel
from pmsm.runtime.schema import TIMESTEPS_INPUT
from pmsm.sharding import executor_for
from pmsm.targets.interface import TARGET_NAMES, ConvertOptions, Export, target_named
from pmsm.verification import split_at, terminal_progress, verify_chunks

TARGETS = TARGET_NAMES


def is_nir_file(path: str) -> bool:
    """What the nir target writes: NIR files are HDF5, hybrid deployments zip archives, ONNX files
    protobuf (never starting with either signature): the file's signature tells them apart."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head == b"\x89HDF\r\n\x1a\n" or (head[:4] == b"PK\x03\x04" and _is_deployment_archive(path))


def _is_deployment_archive(path: str) -> bool:
    """A zip archive with a deployment's manifest (a PyTorch checkpoint is a zip archive too)."""
    import zipfile  # only for files that start as a zip archive does

    try:
        with zipfile.ZipFile(path) as archive:
            return "manifest.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _nir_size(graph) -> str:
    """The size of a NIR graph, or of a hybrid deployment, in words."""
    regions = getattr(graph, "regions", None)
    if regions is not None:
        hosts = len(getattr(graph, "hosts", {}))
        return f"{sum(len(g.nodes) for g in regions.values())} NIR nodes in {len(regions)} region(s), {hosts} host stage(s)"
    return f"{len(graph.nodes)} NIR nodes"


def default_output(model_path: str, target: str) -> str:
    """Where ``target`` writes when no -o is given: next to the model."""
    return target_named(target).default_output(model_path)


def check_output_path(model_path: str, output: str) -> str:
    """The path ``output`` will be written to, checked against the model (pmsm.paths)."""
    return check_run_paths(model_path, [Role("-o", output)])[output]


def check_run_paths(model_path: str, outputs: list[Role], data_path: Optional[str] = None) -> dict[str, str]:
    """Every path of a run checked before anything is written; the resolved path of each output.

    The model's external data files count as inputs too; finding them means reading the model,
    which is only needed when an output already exists in the model's folder (a new file cannot
    be one of them)."""
    inputs = [Role("MODEL", model_path)]
    if data_path:
        inputs += [Role("--data", path) for path in data_files(data_path)]
    elif data_path is not None:
        inputs.append(Role("--data", data_path))
    resolved = check_paths(inputs, outputs)
    model_folder = os.path.realpath(os.path.dirname(os.path.abspath(model_path)))
    if any(os.path.lexists(real) and real.startswith(model_folder + os.sep) for real in resolved.values()):
        if not is_nir_file(model_path):
            external = external_data_files(read_model(model_path), model_path)
            if external:
                check_paths(inputs + [Role("external data of MODEL", f) for f in external], outputs)
    return resolved


def convert(model_path: str, target: str = "onnx", timesteps: int = 1, compensation: bool = True,
            nir_profile: str = "pmsm") -> Export:
    """Load the source once (an ONNX model, or a NIR file for Lava), pre-flight it for ``target``
    and convert it; nothing is written."""
    chosen = target_named(target)
    if is_nir_file(model_path):
        return chosen.read_source(model_path)
    options = ConvertOptions(timesteps=timesteps, compensation=compensation, nir_profile=nir_profile)
    chosen.check_options(options)
    try:
        source = load_source(model_path)
        for note in source.notes:  # what loading repaired (nodes out of topological order)
            print(f"pmsm-export: note: {note}", file=sys.stderr)
        return chosen.convert(source, options)
    except RecursionError:  # onnx-graphsurgeon walks the graph recursively (measured: ~500 nodes deep)
        raise BadInputError(f"{model_path}: the graph is too deep for the converter (Python's recursion limit "
                            f"of {sys.getrecursionlimit()} was reached)") from None


def write(export: Export, output: str) -> str:
    """Check ``output``, post-flight the spiking model (it must load in ONNX Runtime), then write."""
    target = check_output_path(export.source_path, output)
    check_spiking_model(export.spiking, export.source_path)
    chosen = target_named(export.target)
    chosen.write(export, target)
    chosen.check_written(export, target)
    export.output_path = output
    return output


def input_shape(export: Export):
    """The declared shape of the data input, ``[N, ...]`` (symbolic dimensions as names or None)."""
    if export.source is None:
        return export.input_shape
    initializers = {i.name for i in export.source.graph.initializer}
    for value in export.source.graph.input:
        if value.name not in initializers and value.name != TIMESTEPS_INPUT:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return None


def open_verification_data(export: Export, data) -> DataSet:
    """``data`` as a :class:`pmsm.data.DataSet`: a path (file or folder), ``(x, y)`` arrays, a
    data set already, or None for the seeded probe batch."""
    if isinstance(data, DataSet):
        return data
    if isinstance(data, tuple):
        return from_arrays(*data)
    if export.source is None:  # a NIR source: one float input known by its shape
        return open_data(data, input_shape(export))
    return open_model_data(data, export.source)


@dataclass(frozen=True)
class Sharding:
    """Where the chunks of ``--verify`` run: ``workers`` local processes (1: this process), or a
    Ray cluster (``ray``; ``ray_address`` None starts a local one)."""

    workers: Optional[int] = None
    ray: bool = False
    ray_address: Optional[str] = None


def plan_for(export: Export, dataset, reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES) -> VerificationPlan:
    """The verification plan of the export: its files as bytes, and the graph already read here."""
    nir_bytes, graph = export.nir_file, export.nir_graph
    if export.nir_graph is not None and nir_bytes is None:  # converted, not written: read back what would be
        nir_bytes, graph = _nir_file_bytes(export), None
    return VerificationPlan(
        target=export.target,
        source=export.source.SerializeToString() if export.source is not None else None,
        spiking=export.spiking.SerializeToString() if export.spiking is not None else None,
        nir=nir_bytes, reference_samples=reference_samples if export.spiking is not None else None, graph=graph,
        **target_named(export.target).plan_options(export, dataset))


def _nir_file_bytes(export: Export) -> bytes:
    """The file the export's graph makes (what its target writes), written to a scratch file."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pmsm-nir-") as folder:
        path = os.path.join(folder, "model.nir")
        target_named(export.target).write(export, path)  # a NIR file, or a deployment archive
        with open(path, "rb") as handle:
            return handle.read()


def run_verification(export: Export, data_path, timesteps: list[int], progress=True, data=None,
                     reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES, sharding: Sharding = Sharding(),
                     spike_values: Optional[int] = None) -> dict:
    """Run every backend of the export's target against the reference, chunk by chunk; returns
    the report dict. ``data`` (or ``data_path``): see :func:`open_verification_data`."""
    dataset = open_verification_data(export, data if data is not None else data_path)
    plan = plan_for(export, dataset, reference_samples)
    boundaries = [plan.reference_samples] if plan.reference_samples else []
    verification = verify_dataset(plan, dataset, timesteps, sharding, progress, boundaries,
                                  spike_values if spike_values is not None else _spike_values(export, dataset))
    return build_report(export, verification, dataset)


def verify_dataset(plan: VerificationPlan, dataset, timesteps: list[int], sharding: Sharding, progress: bool,
                   boundaries: list[int], spike_values: Optional[int]):
    """The chunks of ``dataset`` verified where ``sharding`` says, merged."""
    per_sample = bytes_per_sample(dataset.sample_values, spike_values or 0, timesteps, plan.target)
    size = chunk_samples(per_sample)
    executor = executor_for(plan, timesteps, sharding.workers, sharding.ray_address, sharding.ray)
    try:
        verification = verify_chunks(executor, split_at(dataset.chunks(size), boundaries), dataset.samples, timesteps,
                                     progress=terminal_progress() if progress else None)
    finally:
        executor.close()
    verification.execution["chunk_samples"] = size
    return verification


def _spike_values(export: Export, dataset) -> Optional[int]:
    """Spike values one sample makes in one timestep over all neurons (sizes the chunks)."""
    if export.spiking is None:  # a NIR source: one value per IF unit
        import nir
        import numpy as np

        regions = getattr(export.nir_graph, "regions", None)  # a hybrid deployment: IF units of every region
        graphs = regions.values() if regions is not None else [export.nir_graph]
        return sum(int(np.size(node.r)) for g in graphs for node in g.nodes.values() if isinstance(node, nir.IF))
    result = SpikingModel(export.spiking).run(dataset.first(), 1, collect_spikes=True)
    return int(sum(s.size for s in result.spikes.values()))


def finish_report(report: dict, path: Optional[str], pictures: bool = True) -> list[str]:
    """Write the report JSON and, next to it, its pictures; returns the paths written."""
    if not path:
        return []
    atomic_write_json(path, report)
    written = [path]
    if pictures:
        from pmsm.plots import write_pictures  # matplotlib takes seconds to import: only when pictures are drawn

        folder = os.path.dirname(os.path.abspath(path))
        written += write_pictures(report, folder, os.path.splitext(os.path.basename(path))[0])
    return written


@dataclass
class Request:
    """One run of the flow, whoever asked for it (the command line or the Python API)."""

    model: str
    target: str = "onnx"
    output: Optional[str] = None
    timesteps: tuple = (1,)
    compensation: bool = True
    nir_profile: str = "pmsm"
    check: bool = False
    verify: bool = False
    data: object = None
    report: Optional[str] = None
    pictures: bool = True
    junit: Optional[str] = None
    summary_md: Optional[str] = None
    reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES
    sharding: Sharding = Sharding()
    progress: bool = True
    limits: Optional[run_limits.Limits] = None
    golden: Optional[str] = None  # golden traces (docs/nir.md §12) of the first golden_samples samples
    golden_samples: int = 4


@dataclass
class Outcome:
    code: int
    export: Export
    report: Optional[dict] = None
    written: tuple = ()  # the final paths written, in the order of the request's outputs


def run(request: Request, out=None) -> Outcome:
    """Everything a run does, in order; what it prints goes to ``out`` (None: nothing)."""
    say = (lambda text: print(text, file=out)) if out is not None else (lambda text: None)
    timesteps = sorted(set(request.timesteps))
    nir_source = is_nir_file(request.model)
    output = request.output
    if nir_source and output:
        raise BadInputError(f"{request.model}: -o has nothing to write for a NIR source (Lava simulates the file "
                            "itself); --report writes the verification report")
    if not nir_source and output is None:
        output = default_output(request.model, request.target)
    outputs = [] if request.check else (([] if nir_source else [Role("-o", output)])
                                        + report_roles(request.report, request.pictures)
                                        + _ci_roles(request.junit, request.summary_md)
                                        + ([Role("--golden", request.golden)] if request.golden else []))
    data_path = request.data if request.verify and isinstance(request.data, (str, os.PathLike)) else None
    resolved = check_run_paths(request.model, outputs, data_path)
    with run_limits.applied(request.limits or run_limits.current()):
        export = convert(request.model, request.target, timesteps=timesteps[0], compensation=request.compensation,
                         nir_profile=request.nir_profile)
        chosen = target_named(export.target)
        if request.check:
            size = (f"{len(export.spiking.graph.node)} nodes" if export.spiking is not None
                    else _nir_size(export.nir_graph))
            say(f"{request.model}: ok for target '{export.target}': {len(export.neurons)} neuron layer(s), {size}")
            return Outcome(EXIT_OK, export)
        if nir_source and not request.verify:
            say(f"{request.model}: ok for target 'lava': {len(export.neurons)} neuron layer(s), "
                f"{_nir_size(export.nir_graph)}; {chosen.lowering_summary(export, timesteps[0])}")
            return Outcome(EXIT_OK, export)
        dataset = open_verification_data(export, request.data) if request.verify else None
        spike_values = None
        if export.spiking is not None:
            spike_values = check_spiking_model(export.spiking, request.model,
                                               probe=dataset.first() if dataset is not None else None)
        if dataset is not None and spike_values is not None:
            per_sample = bytes_per_sample(dataset.sample_values, spike_values, timesteps, export.target)
            check_fits(per_sample, f"--verify at T={timesteps[-1]} (one sample at a time)",
                       "verify fewer or smaller timesteps")
        report = None
        with Staging(list(resolved.values())) as staging:
            if not nir_source:
                staged = staging.path(resolved[output])
                chosen.write(export, staged)
                chosen.check_written(export, staged)  # post-flight: what was written reads back, and is verified
                export.output_path = staged
            if request.verify:
                report = run_verification(export, None, timesteps, progress=request.progress, data=dataset,
                                          reference_samples=request.reference_samples, sharding=request.sharding,
                                          spike_values=spike_values)
                report["output"] = output
                if request.report:
                    _stage_report(report, request.report, resolved, staging, request.pictures)
                _stage_ci_outputs(report, request.junit, request.summary_md, resolved, staging)
                if request.golden:
                    from pmsm.targets.nir.golden import write_golden  # nir's data IR: only for --golden

                    x = next(dataset.chunks(request.golden_samples)).x
                    write_golden(chosen.golden(export, x, timesteps[-1]), staging.path(resolved[request.golden]))
            written = staging.commit()
        export.output_path = output
    given = {real: path for path, real in resolved.items()}
    for line in chosen.notes(export):
        say(line)
    if report is None:
        say(f"wrote {output} ({len(export.neurons)} PMSM neuron layer(s))")
        return Outcome(EXIT_OK, export, written=tuple(written))
    for path in written:
        say(f"wrote {given.get(path, path)}")
    if out is not None:
        print_summary(report, out)
    failures = report["verification"]["failures"]
    code = EXIT_MISMATCH if failures else EXIT_OK
    return Outcome(code, export, report, tuple(given.get(path, path) for path in written))


def run_command(args: argparse.Namespace) -> int:
    """The command: every argument checked first, outputs staged and moved into place at the end
    (exit 0 or 1, when they are the evidence of the mismatch), nothing left behind on exit 2."""
    limits = run_limits.from_arguments(args)
    timesteps = run_limits.check_timesteps(args.timesteps, limits)
    for flag, value in (("MODEL", args.model), ("-o", args.output), ("--data", args.data), ("--report", args.report),
                        ("--golden", args.golden),
                        ("--junit", args.junit), ("--summary-md", args.summary_md)):
        if value is not None and not value:
            raise BadInputError(f"{flag}: empty path; give a file name")
    needing = [flag for flag, value in (("--report", args.report), ("--data", args.data), ("--junit", args.junit),
                                        ("--summary-md", args.summary_md), ("--workers", args.workers),
                                        ("--golden", args.golden),
                                        ("--ray", args.ray)) if value is not None]
    if needing and not args.verify:
        raise BadInputError(f"{' and '.join(needing)} need{'s' if len(needing) == 1 else ''} --verify")
    request = Request(model=args.model, target=args.target, output=args.output, timesteps=tuple(timesteps),
                      compensation=args.compensation, nir_profile=args.nir_profile, check=args.check,
                      verify=args.verify, data=args.data, report=args.report, junit=args.junit,
                      summary_md=args.summary_md, reference_samples=args.reference_samples,
                      sharding=Sharding(args.workers, args.ray is not None, args.ray or None), limits=limits,
                      golden=args.golden, golden_samples=args.golden_samples)
    outcome = run(request, out=sys.stdout)
    if outcome.report is not None:
        for failure in outcome.report["verification"]["failures"]:
            print(f"pmsm-export: verification failed: {failure}", file=sys.stderr)
        if outcome.report["verification"]["failures"] and outcome.written:
            print(f"pmsm-export: the outputs are kept as the evidence of the mismatch: {', '.join(outcome.written)}",
                  file=sys.stderr)
    return outcome.code


def report_roles(report: Optional[str], pictures: bool = True, flag: str = "--report") -> list[Role]:
    """The report and the pictures drawn next to it, as outputs to check."""
    if report is None:
        return []
    from pmsm.plots import picture_paths  # matplotlib takes seconds to import: only when pictures are drawn

    folder, name = os.path.split(report)
    drawn = picture_paths(folder, os.path.splitext(name)[0]) if pictures else []
    return [Role(flag, report)] + [Role(f"picture of {flag}", p) for p in drawn]


def _ci_roles(junit: Optional[str], summary_md: Optional[str]) -> list[Role]:
    return [Role(flag, value) for flag, value in (("--junit", junit), ("--summary-md", summary_md))
            if value is not None]


def _stage_ci_outputs(report: dict, junit: Optional[str], summary_md: Optional[str], resolved: dict[str, str],
                      staging) -> None:
    if junit:
        write_junit(report, staging.path(resolved[junit]))
    if summary_md:
        write_summary_markdown(report, staging.path(resolved[summary_md]))


def _stage_report(report: dict, path: str, resolved: dict[str, str], staging, pictures: bool) -> None:
    target = resolved[path]
    atomic_write_json(staging.path(target), report)
    if pictures:
        from pmsm.plots import write_pictures  # matplotlib takes seconds to import: only when pictures are drawn

        write_pictures(report, staging.folder_for(target), os.path.splitext(os.path.basename(target))[0])
