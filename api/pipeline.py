"""What the `pmsm-export` command and the Python API do, target by target."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx

from pmsm import limits as run_limits
from pmsm.errors import EXIT_MISMATCH, EXIT_OK, BadInputError, UnsupportedModelError
from pmsm.files import atomic_write_bytes, atomic_write_json
from pmsm.backends import DEFAULT_REFERENCE_SAMPLES
from pmsm.memory import bytes_per_sample, check_fits
from pmsm.paths import Role, check_paths
from pmsm.runtime.schema import TIMESTEPS_INPUT

TARGETS = ("onnx", "nir", "lava")


@dataclass
class Export:
    """The result of converting one source model."""

    source_path: str
    source_sha256: str
    target: str
    spiking: onnx.ModelProto
    neurons: list
    network: onnx.ModelProto = None  # the untimed network the NIR target reads
    compensated: list = field(default_factory=list)  # (node, op) of the nonlinear ops with temporal compensation
    uncompensated: list = field(default_factory=list)  # (node, op, why)
    compensation: bool = True
    output_path: Optional[str] = None
    nir_graph: object = None
    nir_growth: object = None  # standard profile: pmsm.targets.nir.standard.Growth


def default_output(model_path: str, target: str) -> str:
    stem, _ = os.path.splitext(model_path)
    return stem + (".spiking.onnx" if target == "onnx" else ".nir")


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
        from pmsm.data import data_files

        inputs += [Role("--data", path) for path in data_files(data_path)]
    elif data_path is not None:
        inputs.append(Role("--data", data_path))
    resolved = check_paths(inputs, outputs)
    model_folder = os.path.realpath(os.path.dirname(os.path.abspath(model_path)))
    if any(os.path.lexists(real) and real.startswith(model_folder + os.sep) for real in resolved.values()):
        from pmsm.exporter.loading import external_data_files, read_model

        external = external_data_files(read_model(model_path), model_path)
        if external:
            check_paths(inputs + [Role("external data of MODEL", f) for f in external], outputs)
    return resolved


def convert(model_path: str, target: str = "onnx", timesteps: int = 1, compensation: bool = True,
            nir_profile: str = "pmsm") -> Export:
    """Load, pre-flight for ``target`` and convert; nothing is written."""
    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if nir_profile not in ("pmsm", "standard") or (nir_profile == "standard" and target != "nir"):
        raise BadInputError(f"--nir-profile {nir_profile} needs --target nir (the lava target reads the pmsm profile)")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
    if target == "lava":
        import pmsm.targets.lava  # noqa: F401 - without lava-nc: MissingExtraError (exit 2) before any work
    from pmsm.exporter.convert import convert as convert_model
    from pmsm.exporter.convert import network_for_targets
    from pmsm.exporter.loading import load_source

    source = load_source(model_path)
    # NIR and Lava run max pooling on each step's values (the dialect has no compensation yet), so
    # the reference they are checked against does too.
    compensation = compensation and target == "onnx"
    converted = convert_model(source.model, path=model_path, source_sha256=source.sha256,
                              default_timesteps=timesteps, compensation=compensation)
    export = Export(model_path, source.sha256, target, converted.spiking, converted.neurons, converted.network,
                    converted.compensated, converted.uncompensated, compensation)
    if target in ("nir", "lava"):
        from pmsm.targets.nir import network_to_nir, unsupported_nodes

        network = network_for_targets(converted.network)
        problems = unsupported_nodes(network)
        if problems:
            raise UnsupportedModelError(model_path, target, problems, note=_hybrid_note(network, problems))
        export.nir_graph = network_to_nir(network, source_sha256=source.sha256,
                                          source_name=os.path.basename(model_path), timesteps=timesteps)
        if nir_profile == "standard":
            from pmsm.targets.nir.standard import to_standard

            export.nir_graph, export.nir_growth = to_standard(export.nir_graph, model_path)
    if target == "lava":
        from pmsm.targets.lava import unsupported_nir_nodes

        problems = unsupported_nir_nodes(export.nir_graph)
        if problems:
            raise UnsupportedModelError(model_path, target, problems)
    return export


def _hybrid_note(network, problems) -> str:
    from pmsm.energy import mac_share
    from pmsm.hybrid import deployable_part

    share = mac_share(network)
    total = share["macs_per_sample"]
    lines = [deployable_part(network, problems)]
    if total:
        lines.append(f"MACs per sample: {total:,}, of which {share['spiking_synapses'] / total:.1%} in synapses fed by "
                     f"spikes, {share['analog_synapses'] / total:.1%} in weight layers on analog values, "
                     f"{share['activation_products'] / total:.1%} in products of two activations")
    return "\n".join(line for line in lines if line)


def write(export: Export, output: str) -> str:
    """Check ``output``, post-flight the spiking model (it must load in ONNX Runtime), then write."""
    from pmsm.postflight import check_spiking_model

    target = check_output_path(export.source_path, output)
    check_spiking_model(export.spiking, export.source_path)
    save(export, target)
    export.output_path = output
    return output


def save(export: Export, path: str) -> None:
    """Write the export's output file (spiking ONNX or NIR) to ``path`` atomically; no checks."""
    if export.target == "onnx":
        atomic_write_bytes(path, export.spiking.SerializeToString())
    else:
        from pmsm.targets.nir import write_nir

        write_nir(export.nir_graph, path)


def input_shape(model: onnx.ModelProto):
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and value.name != TIMESTEPS_INPUT:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return None


def open_verification_data(export: Export, data):
    """``data`` as a :class:`pmsm.data.DataSet`: a path (file or folder), ``(x, y)`` arrays, a
    data set already, or None for the seeded probe batch."""
    from pmsm.data import DataSet, from_arrays, open_model_data

    if isinstance(data, DataSet):
        return data
    if isinstance(data, tuple):
        return from_arrays(*data)
    return open_model_data(data, onnx.load(export.source_path, load_external_data=False))


@dataclass(frozen=True)
class Sharding:
    """Where the chunks of ``--verify`` run: ``workers`` local processes (1: this process), or a
    Ray cluster (``ray``; ``ray_address`` None starts a local one)."""

    workers: Optional[int] = None
    ray: bool = False
    ray_address: Optional[str] = None


def plan_for(export: Export, dataset, reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES):
    """The :class:`pmsm.backends.Plan` of the export's target (its files as bytes)."""
    from pmsm.backends import Plan

    nir_bytes = None
    if export.target in ("nir", "lava"):
        nir_bytes = _nir_file_bytes(export)
    torch = export.target == "nir" and export.nir_growth is None and all(
        map(_importable, ("pmsm.targets.torch", "nirtorch")))
    return Plan(target=export.target, source=onnx.load(export.source_path).SerializeToString(),
                spiking=export.spiking.SerializeToString(), nir=nir_bytes, reference_samples=reference_samples,
                torch=torch, input_peak=dataset.peak() if export.target == "lava" else None)


def _nir_file_bytes(export: Export) -> bytes:
    """The NIR file that will be committed (read back from where it was staged), or the graph
    written to a scratch file when there is none."""
    if export.output_path and os.path.isfile(export.output_path):
        with open(export.output_path, "rb") as handle:
            return handle.read()
    import tempfile

    from pmsm.targets.nir import write_nir

    with tempfile.TemporaryDirectory(prefix="pmsm-nir-") as folder:
        path = os.path.join(folder, "model.nir")
        write_nir(export.nir_graph, path)
        with open(path, "rb") as handle:
            return handle.read()


def _importable(module: str) -> bool:
    """Whether ``module`` imports here (an optional extra is installed)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def run_verification(export: Export, data_path, timesteps: list[int], progress=True, data=None,
                     reference_samples: Optional[int] = DEFAULT_REFERENCE_SAMPLES, sharding: Sharding = Sharding(),
                     spike_values: Optional[int] = None) -> dict:
    """Run every backend of the export's target against the reference, chunk by chunk; returns
    the report dict. ``data`` (or ``data_path``): see :func:`open_verification_data`."""
    from pmsm.report import build_report

    dataset = open_verification_data(export, data if data is not None else data_path)
    plan = plan_for(export, dataset, reference_samples)
    boundaries = [reference_samples] if reference_samples else []
    verification = verify_dataset(plan, dataset, timesteps, sharding, progress, boundaries,
                                  spike_values if spike_values is not None else _spike_values(export, dataset))
    return build_report(export, verification, dataset)


def verify_dataset(plan, dataset, timesteps: list[int], sharding: Sharding, progress: bool, boundaries: list[int],
                   spike_values: Optional[int]):
    """The chunks of ``dataset`` verified where ``sharding`` says, merged."""
    from pmsm.memory import bytes_per_sample, chunk_samples
    from pmsm.sharding import executor_for
    from pmsm.verification import split_at, terminal_progress, verify_chunks

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
    from pmsm.runtime.execute import SpikingModel

    result = SpikingModel(export.spiking).run(dataset.first(), 1, collect_spikes=True)
    return int(sum(s.size for s in result.spikes.values()))


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
    """The command: every argument checked first, outputs staged and moved into place at the end
    (exit 0 or 1, when they are the evidence of the mismatch), nothing left behind on exit 2."""
    from pmsm.outputs import Staging
    from pmsm.postflight import check_spiking_model
    from pmsm.report import print_summary

    limits = run_limits.from_arguments(args)
    timesteps = run_limits.check_timesteps(args.timesteps, limits)
    for flag, value in (("MODEL", args.model), ("-o", args.output), ("--data", args.data), ("--report", args.report),
                        ("--junit", args.junit), ("--summary-md", args.summary_md)):
        if value is not None and not value:
            raise BadInputError(f"{flag}: empty path; give a file name")
    needing = [flag for flag, value in (("--report", args.report), ("--data", args.data), ("--junit", args.junit),
                                        ("--summary-md", args.summary_md), ("--workers", args.workers),
                                        ("--ray", args.ray)) if value is not None]
    if needing and not args.verify:
        raise BadInputError(f"{' and '.join(needing)} need{'s' if len(needing) == 1 else ''} --verify")
    from pmsm.nir_source import is_nir_file, run_nir_source

    if is_nir_file(args.model):
        return run_nir_source(args)
    output = args.output if args.output is not None else default_output(args.model, args.target)
    outputs = [] if args.check else [Role("-o", output)] + report_roles(args.report) + ci_roles(args)
    resolved = check_run_paths(args.model, outputs, args.data if args.verify else None)
    with run_limits.applied(limits):
        export = _convert(args.model, args.target, timesteps[0], args.compensation, args.nir_profile)
        if args.check:
            print(f"{args.model}: ok for target '{args.target}': {len(export.neurons)} neuron layer(s), "
                  f"{len(export.spiking.graph.node)} nodes")
            return EXIT_OK
        dataset = open_verification_data(export, args.data) if args.verify else None
        spike_values = check_spiking_model(export.spiking, args.model,
                                           probe=dataset.first() if dataset is not None else None)
        if dataset is not None and spike_values is not None:
            per_sample = bytes_per_sample(dataset.sample_values, spike_values, timesteps, args.target)
            check_fits(per_sample, f"--verify at T={timesteps[-1]} (one sample at a time)",
                       "verify fewer or smaller timesteps")
        report = None
        with Staging(list(resolved.values())) as staging:
            staged = staging.path(resolved[output])
            save(export, staged)
            if args.target in ("nir", "lava"):
                from pmsm.targets.nir import read_nir

                read_nir(staged)  # post-flight of the NIR file: what was written reads back
            if args.verify:
                export.output_path = staged  # the NIR backend verifies the file that will be committed
                report = run_verification(export, args.data, timesteps, data=dataset,
                                          reference_samples=args.reference_samples,
                                          sharding=Sharding(args.workers, args.ray is not None, args.ray or None),
                                          spike_values=spike_values)
                report["output"] = output
                if args.report:
                    _stage_report(report, args.report, resolved, staging)
                _stage_ci_outputs(report, args, resolved, staging)
            written = staging.commit()
        export.output_path = output
    given = {real: path for path, real in resolved.items()}
    if export.nir_growth is not None:
        g = export.nir_growth
        print(f"standard profile: {g.neurons_pmsm} PMSM neurons -> {g.neurons_standard} binary units "
              f"(K <= {g.max_units}), {g.weights_pmsm} -> {g.weights_standard} weights; exact at T=1 only")
    if report is None:
        print(f"wrote {output} ({len(export.neurons)} PMSM neuron layer(s))")
        return EXIT_OK
    for path in written:
        print(f"wrote {given.get(path, path)}")
    print_summary(report, sys.stdout)
    failures = report["verification"]["failures"]
    for failure in failures:
        print(f"pmsm-export: verification failed: {failure}", file=sys.stderr)
    if failures:
        kept = ", ".join(given.get(path, path) for path in written)
        print(f"pmsm-export: the outputs are kept as the evidence of the mismatch: {kept}", file=sys.stderr)
    return EXIT_MISMATCH if failures else EXIT_OK


def report_roles(report: Optional[str], pictures: bool = True, flag: str = "--report") -> list[Role]:
    """The report and the pictures drawn next to it, as outputs to check."""
    if report is None:
        return []
    from pmsm.plots import picture_paths

    folder, name = os.path.split(report)
    drawn = picture_paths(folder, os.path.splitext(name)[0]) if pictures else []
    return [Role(flag, report)] + [Role(f"picture of {flag}", p) for p in drawn]


def ci_roles(args: argparse.Namespace) -> list[Role]:
    return [Role(flag, value) for flag, value in (("--junit", args.junit), ("--summary-md", args.summary_md))
            if value is not None]


def _stage_ci_outputs(report: dict, args: argparse.Namespace, resolved: dict[str, str], staging) -> None:
    from pmsm.ci_outputs import write_junit, write_summary_markdown

    if args.junit:
        write_junit(report, staging.path(resolved[args.junit]))
    if args.summary_md:
        write_summary_markdown(report, staging.path(resolved[args.summary_md]))


def _stage_report(report: dict, path: str, resolved: dict[str, str], staging) -> None:
    from pmsm.plots import write_pictures

    target = resolved[path]
    atomic_write_json(staging.path(target), report)
    write_pictures(report, staging.folder_for(target), os.path.splitext(os.path.basename(target))[0])


def _convert(model_path: str, target: str, timesteps: int, compensation: bool, nir_profile: str) -> Export:
    try:
        return convert(model_path, target, timesteps=timesteps, compensation=compensation, nir_profile=nir_profile)
    except RecursionError:  # onnx-graphsurgeon walks the graph recursively (measured: ~500 nodes deep)
        raise BadInputError(f"{model_path}: the graph is too deep for the converter (Python's recursion limit "
                            f"of {sys.getrecursionlimit()} was reached)") from None
