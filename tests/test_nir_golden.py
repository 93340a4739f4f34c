"""Golden traces (``--golden``, docs/nir.md §12): written in NIR's own data format, read back with
``nir.read_data``, and replayed layer by layer through the interpreter."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pmsm.pipeline import Request, run
from pmsm.runtime.neuron import initial_membrane, step
from pmsm.targets.nir import read_nir
from pmsm.targets.nir.golden import layer_spikes, read_golden
from pmsm.targets.nir.interpreter import NirInterpreter

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "samples")


def test_golden_traces_read_back_and_every_layer_replays_through_the_interpreter(tmp_path):
    model = os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx")
    out, golden = tmp_path / "cnn.nir", tmp_path / "golden.h5"
    outcome = run(Request(model=model, target="nir", output=str(out), timesteps=(1, 2), verify=True,
                          data=os.path.join(SAMPLES, "digits_test.npz"), golden=str(golden), golden_samples=3,
                          progress=False))
    assert outcome.code == 0 and golden.exists()
    data = read_golden(str(golden))
    graph = read_nir(str(out))
    interp = NirInterpreter(graph)
    x = np.asarray(data.nodes["input"].observables["value"].data)[:, 0].reshape((3,) + interp.input_shape)
    spikes = layer_spikes(graph, data)
    assert all(s.shape[:2] == (2, 3) for s in spikes.values())  # T = 2 (the largest), 3 samples
    # each layer's recorded spikes follow from the recorded spikes of the layers feeding it
    currents = interp.currents(x, spikes)
    replayed = 0
    for name, params in interp.neurons.items():
        key = interp.key(name)
        u = initial_membrane(spikes[key].shape[1:], params)
        for t in range(2):
            u, s = step(u, currents[key][t], params)
            assert np.array_equal(s, spikes[key][t]), (key, t)
        replayed += 1
    assert replayed == len(interp.neurons) > 1
    # and the recorded outputs average to what the interpreter answers
    steps = np.asarray(data.nodes["output"].observables["value"].data)  # [samples, T, classes]
    assert np.allclose(steps.mean(axis=1), interp.run(x, 2).output, atol=1e-6)


def test_golden_traces_need_the_nir_target(tmp_path):
    model = os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx")
    with pytest.raises(Exception, match="--golden needs --target nir"):
        run(Request(model=model, target="onnx", output=str(tmp_path / "m.onnx"), verify=True,
                    golden=str(tmp_path / "g.h5"), progress=False))
    assert not (tmp_path / "g.h5").exists() and not (tmp_path / "m.onnx").exists()
