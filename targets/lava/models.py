"""The run configuration: which Lava process model runs each process, named up front.

Lava's compiler otherwise finds a process's models by executing every module of the process's
package, once per process instance: about 0.3 s per process here, 12 of the 13 s it took to
compile the 36 processes of a ResNet-18 (measured). ``run_config`` names the model of every
process it knows, by instance (what the compiler's ``exception_proc_model_map`` looks up), and
leaves discovery to the others.
"""
from __future__ import annotations

from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.models import PyConvModelFixed, PyConvModelFloat
from lava.proc.conv.process import Conv
from lava.proc.dense.models import PyDenseModelBitAcc, PyDenseModelFloat
from lava.proc.dense.process import Dense
from lava.proc.sparse.models import PySparseModelBitAcc, PySparseModelFloat
from lava.proc.sparse.process import Sparse

from pmsm.targets.lava.processes import core, elementwise, host, neuron, pool, readout, source

FLOAT, FIXED = "floating_pt", "fixed_pt"
MODELS = {
    core.CoreProcess: {FLOAT: core.PyCoreFloat, FIXED: core.PyCoreFixed},
    elementwise.Elementwise: {FLOAT: elementwise.PyElementwiseFloat, FIXED: elementwise.PyElementwiseFixed},
    host.HostStage: {FLOAT: host.PyHostStageFloat, FIXED: host.PyHostStageFixed},
    neuron.PmsmNeuron: {FLOAT: neuron.PyPmsmNeuronFloat, FIXED: neuron.PyPmsmNeuronFixed},
    pool.Pool: {FLOAT: pool.PyPoolFloat, FIXED: pool.PyPoolFixed},
    readout.MeanReadout: {FLOAT: readout.PyMeanReadoutFloat, FIXED: readout.PyMeanReadoutFixed},
    source.InputSource: {FLOAT: source.PyInputSourceFloat, FIXED: source.PyInputSourceFixed},
    Dense: {FLOAT: PyDenseModelFloat, FIXED: PyDenseModelBitAcc},
    Conv: {FLOAT: PyConvModelFloat, FIXED: PyConvModelFixed},
    Sparse: {FLOAT: PySparseModelFloat, FIXED: PySparseModelBitAcc},
}


def run_config(fixed_point: bool, processes, named: dict | None = None) -> Loihi2SimCfg:
    """``processes``: every process of the run; ``named``: models already chosen (by instance)."""
    tag = FIXED if fixed_point else FLOAT
    models = dict(named or {})
    for process in processes:
        choice = MODELS.get(type(process), {}).get(tag)
        if choice is not None:
            models[process] = choice
    return Loihi2SimCfg(select_tag=tag, exception_proc_model_map=models)
