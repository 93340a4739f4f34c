"""Evaluating regions of a graph on ONNX Runtime, many at once: what the proof by evaluation and the
check of degenerate quantizers run their probes through.

A :class:`Job` evaluates some nodes of a graph (a :class:`pmsm.exporter.proof.View` gives their
constants and opsets) from one entry tensor, fed an array, to one exit tensor. Jobs whose tensors do
not collide share one session; a pack that fails is run job by job, so that a failure lands on its
owner.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from pmsm.runtime import ortop
from pmsm.runtime.base.proto import onnx_node_order
from pmsm.runtime.base.sessions import inference_session
from pmsm.runtime.qonnx import with_qonnx_defaults
from pmsm.runtime.schema import NEURON_DOMAIN, NEURON_DOMAIN_VERSION


class Job:
    """Evaluate ``nodes`` from ``entry`` (fed ``x``) to ``exit``."""

    def __init__(self, nodes, entry, exit, x, owner=""):
        self.nodes, self.entry, self.exit, self.x, self.owner = nodes, entry, exit, x, owner


class EvaluationError(Exception):
    pass


def evaluate_many(view, jobs: list[Job], failed: dict[str, str]) -> dict[int, np.ndarray]:
    """Outputs of many jobs, packed into as few ONNX Runtime sessions as their tensors allow; a
    pack that fails is run job by job so that the failure lands on its owner (in ``failed``)."""
    results: dict[int, np.ndarray] = {}
    for pack in _packs(jobs):
        try:
            values = _evaluate(view, pack)
        except EvaluationError:
            for job in pack:
                try:
                    values = _evaluate(view, [job])
                    results[id(job)] = values[0]
                except EvaluationError as error:
                    failed.setdefault(job.owner, str(error))
            continue
        for job, value in zip(pack, values):
            results[id(job)] = value
    return results


def _packs(jobs: list[Job]) -> list[list[Job]]:
    """Groups of jobs that can share one graph: no job's input is produced, fed or read as an
    output by another job of the group."""
    packs: list[tuple[list[Job], set[str], set[str]]] = []  # (jobs, entries and exits, produced)
    for job in jobs:
        produced = {o for n in job.nodes for o in n.output if o}
        for members, names, made in packs:
            if job.entry not in names | made and job.exit not in names and not produced & names:
                members.append(job)
                names.update((job.entry, job.exit))
                made.update(produced)
                break
        else:
            packs.append(([job], {job.entry, job.exit}, produced))
    return [members for members, _, _ in packs]


def _evaluate(view, pack: list[Job]) -> list[np.ndarray]:
    nodes: dict[tuple[str, ...], onnx.NodeProto] = {}
    for job in pack:
        for node in job.nodes:
            nodes.setdefault(tuple(node.output), node)
    order = {id(n): i for i, n in enumerate(view.model.graph.node)}
    ordered = sorted(nodes.values(), key=lambda n: order.get(id(n), -1))
    ordered = onnx_node_order(ordered)
    graph = helper.make_graph(
        ordered, "quantizers",
        [helper.make_tensor_value_info(job.entry, TensorProto.FLOAT, list(job.x.shape)) for job in pack],
        [helper.make_tensor_value_info(job.exit, TensorProto.FLOAT, None) for job in pack],
        initializer=view.constants_of(ordered),
    )
    opsets = {o.domain: o.version for o in view.model.opset_import}
    opsets[NEURON_DOMAIN] = NEURON_DOMAIN_VERSION
    for node in ordered:
        opsets.setdefault(node.domain, 1)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=min(view.model.ir_version or 10, 10))
    model = with_qonnx_defaults(model)
    try:
        session = inference_session(model, custom_ops_library=ortop.get_library_path())
        ortop.clear_op_errors()
        with ortop.signals_held():
            values = session.run([job.exit for job in pack], {job.entry: job.x for job in pack})
        ortop.raise_op_errors()
    except Exception as error:  # noqa: BLE001 - ORT's own exception types
        raise EvaluationError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return [np.asarray(v, dtype=np.float32) for v in values]
