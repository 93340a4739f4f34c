"""The PyTorch PMSM quantization layer (exporter/quant.py) and the ONNX it exports (docs/spiking-onnx.md)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("pmsm.exporter.quant", exc_type=ImportError)  # the reason names pmsm-export[torch]
pytestmark = pytest.mark.torch

import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from pmsm.exporter.quant import PMSMQuant, calibrate_model, level_entropy  # noqa: E402


def reference(x, lam, levels, polarity):
    """The formula, one float32 operation at a time, in the order the layer promises."""
    f = np.float32
    y = (x.astype(f) / f(lam)).astype(f)
    y = (y * f(levels)).astype(f)
    y = (y + f(0.5)).astype(f)
    y = np.clip(np.floor(y), -levels if polarity else 0, levels).astype(f)
    y = (y / f(levels)).astype(f)
    return (y * f(lam)).astype(f)


def probe(lam, levels, n=4000, seed=0):
    """Random values plus every rounding boundary (x / lam * L + 0.5 integral) and clip region."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=lam, size=n).astype(np.float32)
    ties = (np.arange(-levels - 2, levels + 3) - 0.5) * np.float32(lam) / levels
    return np.concatenate([x, ties.astype(np.float32), [0.0, 10 * lam, -10 * lam]]).astype(np.float32)


@pytest.mark.parametrize("levels,polarity", [(1, True), (2, True), (4, True), (2, False), (4, False)])
def test_forward_equals_the_formula(levels, polarity):
    lam = 0.7310585
    q = PMSMQuant(levels, polarity, lam=lam)
    x = probe(lam, levels)
    with torch.no_grad():
        out = q(torch.from_numpy(x)).numpy()
        lv = q.to_levels(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out, reference(x, lam, levels, polarity))
    assert np.array_equal(lv, np.round(lv))
    assert lv.min() == q.lo == (-levels if polarity else 0) and lv.max() == q.hi == levels
    assert set(np.unique(lv)) == set(range(q.lo, q.hi + 1))
    assert q.theta == pytest.approx(lam / levels)


def test_gradient_reaches_lambda_and_passes_the_floor_straight_through():
    q = PMSMQuant(2, polarity=True, lam=1.0)
    x = torch.tensor([-5.0, -0.9, -0.3, 0.1, 0.26, 0.6, 0.9, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert q.up.grad is not None and torch.isfinite(q.up.grad) and q.up.grad != 0
    # STE: d/dx = (L / lambda) * (lambda / L) = 1 wherever the clip leaves the level alone,
    # including values that land exactly on a clip level (-0.9 -> -2, 0.9 -> 2); 0 where it bites.
    expected = torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 0])
    torch.testing.assert_close(x.grad, expected)
    # A floor without STE would give zero gradient everywhere.
    assert x.grad.abs().sum() > 0


def test_lambda_trains():
    torch.manual_seed(0)
    q = PMSMQuant(2, polarity=True, lam=4.0)
    x = torch.randn(512)
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((q(x) - x) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert q.up.item() < 4.0


@pytest.mark.parametrize("levels,polarity", [(2, True), (4, True), (2, False)])
def test_calibration_maximises_level_entropy(levels, polarity):
    torch.manual_seed(0)
    x = torch.randn(20000) * 3.0 + 0.2
    q = PMSMQuant(levels, polarity)
    result = q.calibrate(x)
    assert q.up.item() == pytest.approx(result.lam)
    h = level_entropy(q.to_levels(x), q.lo, q.hi)
    assert h == pytest.approx(result.entropy)
    for bad in (100 * float(x.abs().max()), 1e-3):  # collapses to level 0 / piles on the clip
        with torch.no_grad():
            q.up.fill_(bad)
        assert level_entropy(q.to_levels(x), q.lo, q.hi) < h - 0.25
    assert result.entropy <= result.max_entropy + 1e-9
    # polarity uses both halves: near the maximum of log2(2L + 1) for a roughly symmetric input
    if polarity:
        assert result.entropy > 0.95 * result.max_entropy


def test_calibrate_model_initialises_each_quantizer_in_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), PMSMQuant(2), torch.nn.Linear(16, 4), PMSMQuant(4, polarity=False)
    )
    x = torch.randn(256, 8) * 5
    results = calibrate_model(model, x)
    assert [r.lam for r in results] == [model[1].up.item(), model[3].up.item()]
    with torch.no_grad():
        h1 = model[1].to_levels(model[0](x))
    assert level_entropy(h1, -2, 2) == pytest.approx(results[0].entropy)
    assert not model[1]._forward_pre_hooks  # hooks removed


class TwoQuantizers(torch.nn.Module):
    """A signed and an unsigned quantizer side by side: only the quantizer chains in the graph."""

    def __init__(self):
        super().__init__()
        self.signed = PMSMQuant(2, polarity=True, lam=0.7310585)
        self.unsigned = PMSMQuant(3, polarity=False, lam=1.3377)

    def forward(self, x):
        return self.signed(x), self.unsigned(x)


def _constant(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise AssertionError(f"{name} is neither an initializer nor a Constant output")


def _chain_from(model, tensor):
    """Follow single consumers from ``tensor`` until a graph output: the nodes in order."""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    chain = []
    while tensor not in outputs:
        (node,) = [n for n in consumers[tensor] if n.input[0] == tensor]
        chain.append(node)
        tensor = node.output[0]
    return chain


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_export_is_the_plain_pattern_and_runs_bit_exact(tmp_path, dynamo):
    model = TwoQuantizers().eval()
    path = tmp_path / "q.onnx"
    x = torch.from_numpy(probe(0.7310585, 2, n=1000).reshape(1, -1))
    kwargs = {"dynamo": True, "external_data": False} if dynamo else {"dynamo": False, "input_names": ["x"]}
    torch.onnx.export(model, (x,), str(path), **kwargs)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert m.ir_version <= 11
    ops = [n.op_type for n in m.graph.node]
    # exactly two 7-node chains: nothing else (e.g. the STE's backward mask) is left in the graph
    assert len([op for op in ops if op != "Constant"]) == 14 and ops.count("Floor") == 2
    if dynamo:
        assert "Constant" not in ops  # scalars are initializers
    else:
        assert "Constant" in ops  # the TorchScript exporter writes scalars as Constant nodes

    (graph_input,) = m.graph.input
    first = [n for n in m.graph.node if graph_input.name in n.input]
    assert len(first) == 2
    inits = {i.name for i in m.graph.initializer}
    for div, q in zip(sorted(first, key=lambda n: float(_constant(m, n.input[1]))), [model.signed, model.unsigned]):
        chain = [div] + _chain_from(m, div.output[0])
        assert [n.op_type for n in chain] == ["Div", "Mul", "Add", "Floor", "Clip", "Div", "Mul"]
        d, mul_l, add, _, clip, div_l, mul_up = chain
        assert d.input[0] == graph_input.name and d.input[1] in inits  # Div(x, up)
        assert _constant(m, d.input[1]) == np.float32(q.up.item())
        assert _constant(m, mul_l.input[1]) == q.levels  # Mul(t, L)
        assert _constant(m, add.input[1]) == np.float32(0.5)  # Add(t, 0.5)
        assert _constant(m, clip.input[1]) == q.lo and _constant(m, clip.input[2]) == q.hi
        assert _constant(m, div_l.input[1]) == q.levels  # Div(t, L)
        assert mul_up.input[1] == d.input[1]  # Mul(t, up): the same initializer
        for node in (mul_l, add, clip, div_l, mul_up):
            assert _constant(m, node.input[1]).shape == ()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {graph_input.name: x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # float-identical, not merely close
