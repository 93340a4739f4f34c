"""The ``nir`` target: the untimed network folded and written as NIR in the PMSM dialect
(docs/nir.md), or in the standard profile; verified by the project's NIR interpreter and, where
the torch extra is installed, the PyTorch runtime."""
from __future__ import annotations

import importlib
import os

from pmsm.runtime.base.errors import BadInputError, UnsupportedModelError
from pmsm.targets.interface import ConvertOptions, Export, Target
from pmsm.targets.nir import deployment as hybrid
from pmsm.targets.nir.backend import NirBackend
from pmsm.targets.nir.convert import translate_network, translated_to_nir
from pmsm.targets.nir.deployable import refusal_note
from pmsm.targets.nir.io import write_nir
from pmsm.targets.nir.partition import partition
from pmsm.targets.nir.standard import to_standard


class NirTarget(Target):
    name = "nir"
    nir_profiles = ("pmsm", "standard")
    writes_deployments = True  # a network NIR does not express whole becomes a hybrid deployment (docs/nir.md §11)

    def convert(self, source, options: ConvertOptions) -> Export:
        export = self.untimed(source)
        network = export.folded
        name = os.path.basename(source.path)
        translation, problems = translate_network(network, network.graph.name or "<model>")
        if problems and (options.nir_profile == "standard" or not self.writes_deployments):
            raise UnsupportedModelError(source.path, self.name, problems, note=refusal_note(network, problems)
                                        + ("\nthe standard profile takes networks NIR expresses whole; the pmsm "
                                           "profile writes the rest as a hybrid deployment."
                                           if self.writes_deployments else ""))
        if problems:  # host ops compute what the loop body computes: the reference keeps compensation as asked
            self.add_time_loop(export, options, options.compensation)
            return self._deployment(export, source, options, name)
        self.add_time_loop(export, options, options.compensation and self.keeps_compensation)
        export.nir_graph = translated_to_nir(translation, source_sha256=source.sha256, source_name=name,
                                             timesteps=options.timesteps)
        if options.nir_profile == "standard":
            export.nir_graph, export.nir_growth = to_standard(export.nir_graph, source.path)
        return export

    def _deployment(self, export: Export, source, options: ConvertOptions, name: str) -> Export:
        """A network NIR does not express whole: NIR regions and host ops (docs/nir.md §7). The
        host ops compute what the spiking ONNX's loop body computes, temporal compensation
        included, so the reference is the spiking ONNX with compensation as asked (on by default)."""
        folded = export.folded
        part = partition(folded, folded.graph.name or name, compensation=options.compensation)
        summary = hybrid.summarise(folded, part)
        export.nir_graph = hybrid.build(folded, part, compensation=options.compensation, timesteps=options.timesteps,
                                        source_sha256=source.sha256, source_name=name, summary=summary)
        return export

    def write(self, export: Export, path: str) -> None:
        if isinstance(export.nir_graph, hybrid.Deployment):
            hybrid.write_deployment(export.nir_graph, path)
        else:
            write_nir(export.nir_graph, path)

    def check_written(self, export: Export, path: str) -> None:
        """What was written reads back (type checked, dialect checked); the graph read back is the
        one verified, and the file's bytes are what workers verify."""
        export.nir_graph, export.nir_file = hybrid.read_target_file(path)

    def plan_options(self, export: Export, dataset) -> dict:
        return {"torch": export.nir_growth is None and all(map(_importable, ("pmsm.targets.torch", "nirtorch")))}

    def backends(self, plan, graph) -> list:
        if isinstance(graph, hybrid.Deployment):
            engines = ["interpreter"] + (["torch"] if plan.torch else [])
            return [hybrid.DeploymentBackend(graph, engine) for engine in engines]
        interpreter = NirBackend(graph)
        if plan.source is None:  # a NIR source: the interpreter is the root
            interpreter.reference = ""
        backends = [interpreter]
        if plan.torch:
            from pmsm.targets.torch.backend import TorchBackend  # the torch extra, checked by plan_options

            backends.append(TorchBackend(graph))
        return backends

    def notes(self, export: Export) -> list[str]:
        if isinstance(export.nir_graph, hybrid.Deployment):
            return hybrid.summary_lines(export.nir_graph.manifest)
        g = export.nir_growth
        if g is None:
            return []
        return [f"standard profile: {g.neurons_pmsm} PMSM neurons -> {g.neurons_standard} binary units "
                f"(K <= {g.max_units}), {g.weights_pmsm} -> {g.weights_standard} weights; exact at T=1 only"]


    def golden(self, export: Export, x, timesteps: int):
        from pmsm.targets.nir.golden import traces  # nir's data IR: only when --golden asks for it

        if export.nir_growth is not None:
            raise BadInputError("--golden needs the pmsm profile (the standard profile's binary units are not "
                                "the PMSM neurons the traces record)")
        return traces(export.nir_graph, x, timesteps)

    def report_fields(self, export: Export) -> dict:
        if not isinstance(export.nir_graph, hybrid.Deployment):
            return {}
        return {"deployment": hybrid.report_section(export.nir_graph.manifest)}


def _importable(module: str) -> bool:
    """Whether ``module`` imports here (an optional extra is installed)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


TARGET = NirTarget()
