"""The committed digits samples load, run in ONNX Runtime and reach the accuracy samples/README.md states."""
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
EXPECTED = [
    "digits_mlp_pmsm_L2.onnx",
    "digits_mlp_pmsm_L4.onnx",
    "digits_cnn_pmsm_L2.onnx",
    "digits_cnn_pmsm_L4.onnx",
    "digits_cnn_unsigned_L2.onnx",
    "digits_cnn_unsigned_L4.onnx",
]
FLOOR = 0.85
# One image either way: ORT's Conv/Gemm may round differently on another CPU, which can flip a
# borderline prediction; the quantizer chain itself is exact (tests/test_quant.py).
TOLERANCE = 1.5 / 360


def stated_accuracies() -> dict[str, float]:
    """``file -> accuracy`` from the README's per-file table (``| `name.onnx` | 98.06 % | ...``)."""
    text = (SAMPLES / "README.md").read_text()
    rows = re.findall(r"^\| `(digits_\w+\.onnx)` \| (\d+\.\d+) % \|", text, flags=re.M)
    return {name: float(acc) / 100 for name, acc in rows}


@pytest.fixture(scope="module")
def test_split():
    data = np.load(SAMPLES / "digits_test.npz")
    return data["x"], data["y"]


def test_test_split_has_the_documented_layout(test_split):
    x, y = test_split
    assert x.dtype == np.float32 and x.shape == (360, 1, 8, 8)
    assert y.dtype == np.int64 and y.shape == (360,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))


def test_readme_lists_every_committed_sample():
    stated = stated_accuracies()
    assert set(EXPECTED) <= set(stated)
    assert set(stated) == {p.name for p in SAMPLES.glob("digits_*.onnx")}


@pytest.mark.parametrize("name", sorted({p.name for p in SAMPLES.glob("digits_*.onnx")} | set(EXPECTED)))
def test_sample_runs_and_reaches_the_stated_accuracy(name, test_split):
    path = SAMPLES / name
    model = onnx.load(str(path))
    assert model.ir_version <= 11
    assert path.stat().st_size < 200 * 1024
    assert not list(SAMPLES.glob(f"{name}.data"))  # weights inside the file
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Floor" in ops and "Clip" in ops

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.shape == [1, 1, 8, 8]  # exported at batch 1
    x, y = test_split
    pred = np.array([np.argmax(sess.run(None, {inp.name: x[i : i + 1]})[0]) for i in range(len(x))])
    acc = float(np.mean(pred == y))
    assert acc > FLOOR
    assert acc == pytest.approx(stated_accuracies()[name], abs=TOLERANCE)
