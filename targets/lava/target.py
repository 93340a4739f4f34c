"""The ``lava`` target: what the nir target writes (pmsm profile), lowered to Lava processes and
simulated in floating and fixed point: a NIR file, or a hybrid deployment whose regions run on
cores and whose host stages run as CPU processes (targets/lava/hybrid.py). Either may also be the
source, checked against the project's NIR interpreter (there is no ANN then)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


from pmsm.runtime.base.errors import UnsupportedModelError
from pmsm.targets.interface import ConvertOptions, Export
from pmsm.targets.lava.backend import LavaBackend
from pmsm.targets.lava.graph import unsupported_nir_nodes
from pmsm.targets.lava.processes.network import Network
from pmsm.targets.nir import NirInterpreter
from pmsm.targets.nir import deployment as hybrid
from pmsm.targets.nir.target import NirTarget

NIR_SOURCE_ROOT = "nir"
NIR_SOURCE_CRITERIA = ["lava (floating point) vs nir at every T: argmax_agreement == 1"]


@dataclass(frozen=True)
class NirNeuron:
    """A neuron layer of a NIR source, as the report lists neuron layers."""

    name: str
    params: object
    producer: str = "nir"


class LavaTarget(NirTarget):
    name = "lava"
    nir_profiles = ("pmsm",)
    writes_deployments = True  # regions on cores, host stages on CPU processes (targets/lava/hybrid.py)

    def convert(self, source, options: ConvertOptions) -> Export:
        export = super().convert(source, options)
        self._preflight(export.nir_graph, source.path)
        return export

    def read_source(self, path: str) -> Export:
        """A NIR file or a deployment archive the nir target wrote."""
        graph, data = hybrid.read_target_file(path)
        self._preflight(graph, path)
        if isinstance(graph, hybrid.Deployment):
            neurons = [NirNeuron(f"{region}/{name}", params) for region, g in graph.regions.items()
                       for name, params in NirInterpreter(g, label=f"{path}:{region}").neurons.items()]
            shape = list(graph.manifest["data_input"]["shape"])
        else:
            interpreter = NirInterpreter(graph, label=path)
            neurons = [NirNeuron(name, params) for name, params in interpreter.neurons.items()]
            shape = list(interpreter.input_shape)
        return Export(path, hashlib.sha256(data).hexdigest(), self.name, None, neurons, nir_graph=graph,
                      root=NIR_SOURCE_ROOT, criteria=list(NIR_SOURCE_CRITERIA),
                      input_shape=[None, *shape], nir_file=data)

    def _preflight(self, graph, path: str) -> None:
        if isinstance(graph, hybrid.Deployment):
            from pmsm.targets.lava.hybrid import unsupported_regions  # loads the host process model

            problems = unsupported_regions(graph)
        else:
            problems = unsupported_nir_nodes(graph)
        if problems:
            raise UnsupportedModelError(path, self.name, problems)

    def plan_options(self, export: Export, dataset) -> dict:
        return {"input_peak": dataset.peak()}

    def backends(self, plan, graph) -> list:
        interpreter = super().backends(plan, graph)
        reference = "onnx" if plan.spiking is not None else NIR_SOURCE_ROOT
        if plan.spiking is None:  # a NIR source: the interpreter is the root
            interpreter[0].reference = ""
        return interpreter + [LavaBackend(graph, reference=reference),
                              LavaBackend(graph, fixed_point=True, input_peak=plan.input_peak, reference=reference)]

    def lowering_summary(self, export: Export, timesteps: int) -> str:
        """What lowering the NIR source gives, without simulating it."""
        if isinstance(export.nir_graph, hybrid.Deployment):
            m = export.nir_graph.manifest
            hosts = sum(1 for s in m["stages"] if s["kind"] == "host")
            return (f"a hybrid deployment: {len(export.nir_graph.regions)} region(s) lowered to Lava cores, {hosts} host "
                    "stage(s) as CPU processes (nothing written; --verify simulates it against the NIR interpreter)")
        network = Network(export.nir_graph, timesteps=timesteps)
        return (f"lowered to Lava processes, {network.depth} step(s) deep "
                "(nothing written; --verify simulates it against the NIR interpreter)")


TARGET = LavaTarget()
