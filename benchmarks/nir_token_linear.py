"""Which standard NIR 1.0.8 node holds a token-wise linear layer (docs/nir.md §3a)?

A token-wise layer applies one ``W [O, F]`` (and bias ``b``) to every token of ``x [T, F]`` (per
sample; ONNX ``MatMul`` of ``[N, T, F]`` by a constant). Two candidates are built here and each is
(1) constructed as ``nir.NIRGraph(type_check=True)``, (2) written and read back by ``nir.read``
(type checking on), (3) run by nirtorch 2.6 with its *default* node map, and compared with
``x W^T + b``. (This package's interpreter would compute either, but a file that ``nir.read``
refuses never reaches it.)

- ``Affine`` on ``(T, F)``, relying on a "leading axes are batch-like" convention;
- ``Conv1d`` of kernel 1 on ``(F, T)`` (features as channels, tokens as positions).

Measured 2026-12-07 (nir 1.0.8, nirtorch 2.6, torch 2.x, CPU):

    Affine on (T,F): NIRGraph(type_check=True) -> FAILS: ValueError Type inference error:
        type mismatch: input.output: [[5 4]] -> lin.input: [[4]]
    Affine on (T,F): nir.read (type check) -> FAILS: the same
    Affine on (T,F): nirtorch 2.6 default map -> max |y - x W^T - b| = 1.88
        (2.42 in another run: its Affine leaves the bias uninitialised)
    Conv1d k=1 on (F,T): NIRGraph(type_check=True) -> NIRGraph
    Conv1d k=1 on (F,T): nir.read (type check) -> NIRGraph
    Conv1d k=1 on (F,T): nirtorch 2.6 default map -> max |y - x W^T - b| = 2.38e-07   (float32)

    .venv/bin/python benchmarks/nir_token_linear.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import nir
import numpy as np

T, F, O = 5, 4, 3


def _graphs(weight, bias):
    def affine(check):
        return nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([T, F])}),
                                   "lin": nir.Affine(weight=weight, bias=bias),
                                   "output": nir.Output(output_type={"output": np.array([T, O])})},
                            edges=[("input", "lin"), ("lin", "output")], type_check=check)

    def conv1d(check):
        return nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([F, T])}),
                                   "lin": nir.Conv1d(input_shape=T, weight=weight[:, :, None], stride=1, padding=0,
                                                     dilation=1, groups=1, bias=bias),
                                   "output": nir.Output(output_type={"output": np.array([O, T])})},
                            edges=[("input", "lin"), ("lin", "output")], type_check=check)

    return (("Affine on (T,F)", affine, lambda x: x, lambda y: y),
            ("Conv1d k=1 on (F,T)", conv1d, lambda x: x.transpose(0, 2, 1), lambda y: y.transpose(0, 2, 1)))


def _attempt(what, fn):
    try:
        print(f"{what} -> {fn()}")
    except Exception as exc:  # noqa: BLE001 - the failure is the measurement
        print(f"{what} -> FAILS: {type(exc).__name__} {str(exc).splitlines()[0][:160]}")


def main() -> None:
    import nirtorch
    import torch

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((O, F)).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32)
    x = rng.standard_normal((2, T, F)).astype(np.float32)
    want = x @ weight.T + bias
    with tempfile.TemporaryDirectory() as folder:
        for name, make, feed, back in _graphs(weight, bias):
            _attempt(f"{name}: NIRGraph(type_check=True)", lambda: type(make(True)).__name__)
            graph = make(False)
            path = Path(folder) / f"{name[:6]}.nir"
            nir.write(str(path), graph)
            _attempt(f"{name}: nir.read (type check)", lambda: type(nir.read(str(path))).__name__)

            def run():
                module = nirtorch.nir_to_torch(graph, {})
                y = module(torch.tensor(feed(x)))
                y = y[0] if isinstance(y, tuple) else y
                return f"max |y - x W^T - b| = {np.abs(back(y.detach().numpy()) - want).max():.3g}"
            _attempt(f"{name}: nirtorch 2.6 default map", run)


if __name__ == "__main__":
    main()
