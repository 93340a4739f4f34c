"""What every target offers the command flow, and the table of targets.

A target answers the same few calls whatever it produces, so the command flow, the Python API and
the verification plan never branch on a target's name:

- :meth:`Target.convert`: the validated source in, an :class:`Export` out (its pre-flight included:
  every node the target cannot take, listed in one :class:`UnsupportedModelError`);
- :meth:`Target.read_source`: a file of the target's own format as the source (a NIR file for
  Lava), where the target takes one;
- :meth:`Target.write` and :meth:`Target.check_written`: the output file, and its post-flight;
- :meth:`Target.backends`: the backends ``--verify`` runs besides the source ANN and the spiking
  ONNX, built from a :class:`pmsm.plan.VerificationPlan` wherever verification runs.

Each artifact of a conversion (the validated source, the untimed network, the network folded for
targets, the NIR graph, the spiking model) is computed once, kept on the :class:`Export`, and handed
on as an object.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Optional

import onnx

from pmsm.exporter.convert import network_for_targets, spiking_from_network, untimed_network
from pmsm.runtime.base.errors import BadInputError

TARGET_NAMES = ("onnx", "nir", "lava")
# Where each target lives; imported when the target is used (Lava's needs lava-nc and Python 3.10).
_MODULES = {"onnx": "pmsm.targets.spiking_onnx", "nir": "pmsm.targets.nir.target", "lava": "pmsm.targets.lava.target"}
# Spiking backends that keep every neuron's spikes of a chunk at once (the memory estimate of
# pmsm.runtime.base.memory): onnx runs the standard-op body and the custom op; nir adds the
# interpreter and torch; lava the interpreter, Lava floating and fixed point. Here, not on the
# targets, so that the estimate needs no optional extra.
SPIKING_BACKENDS = {"onnx": 2, "nir": 4, "lava": 5}
EXPLAINED_TARGETS = ("nir", "lava")  # whose backends' spikes verification explains per layer


def target_named(name: str) -> "Target":
    """The target called ``name`` on the command line; ``MissingExtraError`` (exit 2) when its
    optional extra is not installed, before any work."""
    if name not in _MODULES:
        raise BadInputError(f"unknown target {name!r}; choose one of {', '.join(TARGET_NAMES)}")
    return importlib.import_module(_MODULES[name]).TARGET


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert: the default number of timesteps written into the files, temporal
    compensation of nonlinear ops, and the NIR profile."""

    timesteps: int = 1
    compensation: bool = True
    nir_profile: str = "pmsm"


@dataclass
class Export:
    """The result of converting one source: every artifact, computed once.

    For an ONNX source: the spiking model, its neuron layers and the untimed network (``folded``:
    that network with every constant folded, what NIR and the energy estimate read; computed on
    first use); for the NIR and Lava targets also the NIR graph. For a NIR file as the source there
    is no ONNX: ``spiking`` and ``network`` are None and ``root`` names the backend the others are
    compared with."""

    source_path: str
    source_sha256: str
    target: str
    spiking: Optional[onnx.ModelProto]
    neurons: list
    network: Optional[onnx.ModelProto] = None
    compensated: list = field(default_factory=list)  # (node, op) of the nonlinear ops with temporal compensation
    uncompensated: list = field(default_factory=list)  # (node, op, why)
    compensation: bool = True
    output_path: Optional[str] = None
    nir_graph: object = None
    nir_growth: object = None  # standard profile: pmsm.targets.nir.standard.Growth
    source: Optional[onnx.ModelProto] = None  # the validated source model (external data loaded)
    root: str = ""  # a NIR source: the backend that is the reference
    criteria: Optional[list] = None  # a NIR source: its own criteria
    input_shape: Optional[list] = None  # a NIR source: [None, *the graph's input shape]
    nir_file: Optional[bytes] = None  # the NIR file as written (set when it is written)
    _folded: Optional[onnx.ModelProto] = field(default=None, repr=False)

    @property
    def folded(self) -> Optional[onnx.ModelProto]:
        if self._folded is None and self.network is not None:
            self._folded = network_for_targets(self.network)
        return self._folded

    @folded.setter
    def folded(self, network: onnx.ModelProto) -> None:
        self._folded = network


class Target:
    """The calls every target answers, and what most targets share."""

    name = ""
    suffix = ".nir"  # of the default output, next to the model
    nir_profiles = ("pmsm",)  # the --nir-profile values it takes
    keeps_compensation = False  # whether the spiking ONNX it is checked against keeps temporal compensation

    def default_output(self, model_path: str) -> str:
        return os.path.splitext(model_path)[0] + self.suffix

    def check_options(self, options: ConvertOptions) -> None:
        if options.nir_profile not in ("pmsm", "standard"):
            raise BadInputError(f"--nir-profile {options.nir_profile}: choose pmsm or standard")
        if options.nir_profile not in self.nir_profiles:
            raise BadInputError(f"--nir-profile {options.nir_profile} needs --target nir "
                                "(the lava target reads the pmsm profile)")
        timesteps = options.timesteps
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")

    def convert(self, source, options: ConvertOptions) -> Export:
        """The spiking ONNX of ``source`` (a validated :class:`pmsm.exporter.loading.ValidatedSource`)."""
        export = self.untimed(source)
        self.add_time_loop(export, options, options.compensation and self.keeps_compensation)
        return export

    def untimed(self, source) -> Export:
        """The untimed network of ``source``: every quantizer recognised, proven and replaced by a
        neuron; no time loop yet (``spiking`` is None)."""
        network, neurons = untimed_network(source.model, source.path)
        return Export(source.path, source.sha256, self.name, None, neurons, network, source=source.model)

    @staticmethod
    def add_time_loop(export: Export, options: ConvertOptions, compensation: bool) -> None:
        """The spiking ONNX of the export's untimed network, with or without temporal compensation."""
        timed = spiking_from_network(export.network, source_sha256=export.source_sha256,
                                     default_timesteps=options.timesteps, compensation=compensation)
        export.spiking, export.compensation = timed.model, compensation
        export.compensated, export.uncompensated = timed.compensated, timed.uncompensated

    def read_source(self, path: str) -> Export:
        raise BadInputError(f"{path}: a NIR file can only be lowered to Lava (--target lava); "
                            f"target '{self.name}' takes the source ONNX model")

    def write(self, export: Export, path: str) -> None:
        """Write the export's output file to ``path`` atomically."""
        raise NotImplementedError

    def check_written(self, export: Export, path: str) -> None:
        """Post-flight of the written file (it reads back as it must), before it is verified."""
        raise NotImplementedError

    def plan_options(self, export: Export, dataset) -> dict:
        """What this target's backends need of the run besides the files (``VerificationPlan`` fields)."""
        return {}

    def backends(self, plan, graph) -> list:
        """The backends of this target, in order, besides the source ANN and the spiking ONNX;
        ``graph``: the plan's NIR graph (None when it has none)."""
        return []

    def notes(self, export: Export) -> list[str]:
        """Lines the command prints about what it wrote, beyond 'wrote ...'."""
        return []

    def golden(self, export: Export, x, timesteps: int):
        """The golden traces of ``x`` (``--golden``: NIR's data format), where the target writes NIR."""
        raise BadInputError(f"--golden needs --target nir (target '{self.name}' writes no NIR file)")

    def report_fields(self, export: Export) -> dict:
        """Sections this target adds to the verification report (the nir target: what runs where
        in a hybrid deployment)."""
        return {}

    def lowering_summary(self, export: Export, timesteps: int) -> str:
        """What the target makes of a source of its own format without running it (``read_source``)."""
        return "read; nothing written"
