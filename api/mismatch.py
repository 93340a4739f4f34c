"""Per-layer spike mismatches of a NIR backend against the spiking ONNX reference, and their cause.

The NIR file folds scales into weights and computes exactly (docs/nir.md §4); the spiking ONNX keeps
the source's float32 arithmetic, whose rounding depends on ONNX Runtime's summation order. So a
neuron's input differs between the two by at most the float32 rounding error of the source's sums,
``tolerance = (terms + 4) * 2**-24 * magnitude`` (``terms``: non-zero products summed, ``magnitude``:
the sum of their absolute values; the 4 cover de-quantization, bias, pre-scaling and the writer's
weight grid). Each differing spike count (one element at one step of one sample) is then:

- ``propagated``: a neuron feeding this layer already differed in that sample at that step or
  before, or this element itself differed at an earlier step (its membrane residue differs since);
- ``boundary``: else, when the reference's count needs a membrane within ``tolerance`` (summed over
  the steps so far) of the one this backend had — the float re-association of the source's own
  arithmetic moved a value across a rounding boundary;
- ``unexplained``: anything else. The float arithmetic cannot cause it; ``--verify`` must fail.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import nir
import numpy as np

from pmsm.runtime.neuron import NeuronParams, initial_membrane, step
from pmsm.targets.nir.deployment import Deployment, DeploymentRunner
from pmsm.targets.nir.interpreter import NirInterpreter

UNIT_ROUNDOFF = 2.0 ** -24
EXTRA_ROUNDINGS = 4


@dataclass(frozen=True)
class LayerMismatch:
    layer: str  # the neuron's ONNX node
    spikes: int  # spike events |s| of the reference
    mismatched: int  # (step, sample, element) whose counts differ
    boundary: int
    propagated: int
    unexplained: int
    max_tolerance: float  # the largest tolerance used for this layer (membrane units)

    def to_json(self) -> dict:
        return asdict(self)


def _boundary(k: np.ndarray, p: NeuronParams) -> np.ndarray:
    """The lowest membrane whose count is at least ``k`` (ties of half-even ignored: a tolerance)."""
    return k - 0.5 if p.rounding == "half_even" else k.astype(np.float64)


def _distance_to_count(u: np.ndarray, s: np.ndarray, p: NeuronParams) -> np.ndarray:
    """How far the membrane ``u`` is from any membrane that yields the count ``s``."""
    low = np.where(s <= p.lo, -np.inf, _boundary(s, p))
    high = np.where(s >= p.hi, np.inf, _boundary(s + 1, p))
    return np.maximum(np.maximum(low - u, u - high), 0.0)


def feeding_neurons(graph: nir.NIRGraph) -> dict[str, list[str]]:
    """For each IF node, the IF nodes whose spikes reach its input through linear nodes only."""
    sources = {name: [s for s, d in graph.edges if d == name] for name in graph.nodes}
    out = {}
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.IF):
            continue
        found, stack, seen = [], list(sources[name]), set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            if isinstance(graph.nodes[s], nir.IF):
                found.append(s)
            else:
                stack.extend(sources[s])
        out[name] = found
    return out


def explain(graph: nir.NIRGraph, x: np.ndarray, reference: dict[str, np.ndarray],
            spikes: dict[str, np.ndarray]) -> list[LayerMismatch]:
    """Per neuron layer (in graph order): the spikes of a NIR backend (``spikes``, keyed by ONNX
    node, ``[T, N, ...]``) against the reference's, each difference classified (module docstring).
    ``graph``: a NIR graph, or a hybrid deployment (:func:`_deployment_layers`)."""
    if isinstance(graph, Deployment):
        return _classify(*_deployment_layers(graph, x, spikes), reference, spikes)
    interp = NirInterpreter(graph)
    currents = interp.currents(x, spikes)
    magnitude = interp.currents(x, spikes, absolute=True)
    terms = _term_counts(graph, x, spikes)
    keys = {name: interp.key(name) for name in interp.neurons}
    feeding = {keys[name]: [keys[f] for f in found] for name, found in feeding_neurons(graph).items()}
    layers = [(keys[name], interp.neurons[name]) for name in interp.order if name in interp.neurons]
    return _classify(layers, feeding, currents, magnitude, terms, reference, spikes)


def _deployment_layers(deployment, x: np.ndarray, spikes: dict[str, np.ndarray]):
    """The neuron layers of a deployment in the order one timestep runs them, the neurons feeding
    each (through region nodes, and through host stages, whose outputs are taken to depend on all
    their inputs), and the inputs each neuron receives from ``spikes`` (value, magnitude, terms)."""
    runner = DeploymentRunner(deployment)
    timesteps = len(next(iter(spikes.values())))
    _, _, z = runner.run(x, timesteps, replay=spikes, modes=("value", "absolute", "indicator"))
    producers, regions = {}, {}
    for stage in runner.stages:
        if isinstance(stage, tuple):
            for tensor in stage[0]["outputs"]:
                producers[tensor] = ("host", stage[0])
        else:
            regions[stage.stage["name"]] = stage
            for node, tensor, _ in stage.outputs:
                producers[tensor] = ("region", stage, node)
    memo: dict = {}

    def back(region, name: str, seen: set) -> set:
        """IF keys reached walking back from ``name`` in ``region`` (excluded), across stages."""
        found, stack = set(), list(region.interp.sources[name])
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            if s in region.interp.neurons:
                found.add(region.interp.key(s))
            elif isinstance(region.interp.graph.nodes[s], nir.Input):
                tensor = next(t for node, t, _ in region.inputs if node == s)
                found |= of_tensor(tensor)
            else:
                stack.extend(region.interp.sources[s])
        return found

    def of_tensor(tensor: str) -> set:
        if tensor not in memo:
            memo[tensor] = set()
            origin = producers.get(tensor)
            if origin is not None and origin[0] == "region":
                memo[tensor] = back(origin[1], origin[2], set())
            elif origin is not None:
                memo[tensor] = set().union(set(), *[of_tensor(t) for t in origin[1]["inputs"]])
        return memo[tensor]

    layers, feeding = [], {}
    for stage in runner.stages:
        if isinstance(stage, tuple):
            continue
        for name in stage.interp.order:
            if name in stage.interp.neurons:
                key = stage.interp.key(name)
                layers.append((key, stage.interp.neurons[name]))
                feeding[key] = sorted(back(stage, name, set()))
    return layers, feeding, z["value"], z["absolute"], z["indicator"]


def _classify(layers, feeding, currents, magnitude, terms, reference, spikes) -> list[LayerMismatch]:
    differs_by_layer: dict[str, np.ndarray] = {}  # [T, N]: some element differs at that step
    rows = []
    for key, p in layers:
        mine, ref = np.asarray(spikes[key]), np.asarray(reference[key])
        diff = mine != ref
        differs_by_layer[key] = diff.reshape(diff.shape[0], diff.shape[1], -1).any(axis=2)
        upstream = np.zeros(differs_by_layer[key].shape, bool)
        for f in feeding[key]:
            upstream |= np.logical_or.accumulate(differs_by_layer[f], axis=0)
        earlier = np.logical_or.accumulate(diff, axis=0)
        earlier = np.concatenate([np.zeros_like(earlier[:1]), earlier[:-1]])
        propagated = diff & (earlier | upstream.reshape(upstream.shape + (1,) * (diff.ndim - 2)))
        tolerance = np.cumsum((terms[key] + EXTRA_ROUNDINGS) * UNIT_ROUNDOFF * magnitude[key], axis=0)
        u = initial_membrane(mine.shape[1:], p)
        distance = np.empty(mine.shape)
        for t in range(mine.shape[0]):
            u, s = step(u, currents[key][t], p)
            before = u.astype(np.float64) + s  # the membrane the count was taken from
            distance[t] = _distance_to_count(before, ref[t].astype(np.float64), p)
        candidates = diff & ~propagated
        boundary = candidates & (distance <= tolerance)
        rows.append(LayerMismatch(
            layer=key, spikes=int(np.abs(ref).sum()), mismatched=int(diff.sum()),
            boundary=int(boundary.sum()), propagated=int(propagated.sum()),
            unexplained=int((candidates & ~boundary).sum()),
            max_tolerance=float(tolerance.max(initial=0.0))))
    return rows


def _term_counts(graph: nir.NIRGraph, x: np.ndarray, spikes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per neuron input, how many non-zero products it sums (the n of the float error bound)."""
    indicator = {}
    for name, node in graph.nodes.items():
        clone = node
        if isinstance(node, (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
            fields = {}
            for attr in ("weight", "bias", "scale"):
                if getattr(node, attr, None) is not None:
                    fields[attr] = (np.asarray(getattr(node, attr)) != 0).astype(np.float32)
            clone = _replace(node, fields)
        indicator[name] = clone
    counting = nir.NIRGraph(nodes=indicator, edges=list(graph.edges), metadata=graph.metadata, type_check=False)
    return NirInterpreter(counting).currents((np.asarray(x) != 0).astype(np.float32),
                                             {k: (np.asarray(v) != 0).astype(np.float32) for k, v in spikes.items()})


def _replace(node, fields: dict):
    import copy

    clone = copy.copy(node)
    for k, v in fields.items():
        setattr(clone, k, v)
    return clone


def failures(rows: list[LayerMismatch], backend: str, timesteps: int) -> list[str]:
    """One message per layer whose differences the float arithmetic cannot explain."""
    return [f"{backend} at T={timesteps}: {r.unexplained} spike count(s) of layer '{r.layer}' differ from the "
            "spiking ONNX where neither an earlier difference nor float rounding near a boundary explains it"
            for r in rows if r.unexplained]


def merge_rows(a: list[LayerMismatch], b: list[LayerMismatch]) -> list[LayerMismatch]:
    """The rows of two disjoint sets of samples as one (layers in the same order)."""
    if [r.layer for r in a] != [r.layer for r in b]:
        raise ValueError("mismatch rows of different graphs cannot be merged")
    return [LayerMismatch(layer=x.layer, spikes=x.spikes + y.spikes, mismatched=x.mismatched + y.mismatched,
                          boundary=x.boundary + y.boundary, propagated=x.propagated + y.propagated,
                          unexplained=x.unexplained + y.unexplained,
                          max_tolerance=max(x.max_tolerance, y.max_tolerance)) for x, y in zip(a, b)]
