"""The ``lava`` target: the NIR file of the nir target (pmsm profile), lowered to Lava processes and
simulated in floating and fixed point; or a NIR file of the PMSM dialect as the source, checked
against the project's NIR interpreter (there is no ANN then)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import nir

from pmsm.runtime.base.errors import UnsupportedModelError
from pmsm.targets.interface import ConvertOptions, Export
from pmsm.targets.lava.backend import LavaBackend
from pmsm.targets.lava.graph import unsupported_nir_nodes
from pmsm.targets.lava.processes.network import Network
from pmsm.targets.nir import NirInterpreter, read_nir
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
    writes_deployments = False  # Lava runs plain NIR files; hybrid deployments are not lowered yet

    def convert(self, source, options: ConvertOptions) -> Export:
        export = super().convert(source, options)
        self._preflight(export.nir_graph, source.path)
        return export

    def read_source(self, path: str) -> Export:
        graph = read_nir(path)
        self._preflight(graph, path)
        interpreter = NirInterpreter(graph, label=path)
        with open(path, "rb") as file:
            data = file.read()
        neurons = [NirNeuron(name, params) for name, params in interpreter.neurons.items()]
        return Export(path, hashlib.sha256(data).hexdigest(), self.name, None, neurons, nir_graph=graph,
                      root=NIR_SOURCE_ROOT, criteria=list(NIR_SOURCE_CRITERIA),
                      input_shape=[None, *interpreter.input_shape], nir_file=data)

    def _preflight(self, graph: nir.NIRGraph, path: str) -> None:
        problems = unsupported_nir_nodes(graph)
        if problems:
            raise UnsupportedModelError(path, self.name, problems)

    def plan_options(self, export: Export, dataset) -> dict:
        return {"input_peak": dataset.peak()}

    def backends(self, plan, graph) -> list:
        interpreter = super().backends(plan, graph)
        reference = "onnx" if plan.spiking is not None else NIR_SOURCE_ROOT
        return interpreter + [LavaBackend(graph, reference=reference),
                              LavaBackend(graph, fixed_point=True, input_peak=plan.input_peak, reference=reference)]

    def lowering_summary(self, export: Export, timesteps: int) -> str:
        """What lowering the NIR source gives, without simulating it."""
        network = Network(export.nir_graph, timesteps=timesteps)
        return (f"lowered to Lava processes, {network.depth} step(s) deep "
                "(nothing written; --verify simulates it against the NIR interpreter)")


TARGET = LavaTarget()
