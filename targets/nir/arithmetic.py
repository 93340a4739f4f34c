"""The defined arithmetic of the PMSM dialect (docs/nir.md §4): what makes two implementations agree
spike for spike.

Every value between neurons is the **exact** result of the linear nodes on the stored float32
parameters; it is rounded once, to float32 (nearest, ties to even), where it enters an ``IF`` node
or the ``Output``. Exact arithmetic is cheap here because spikes are small integers: the writer puts
the weights of every output channel on one power-of-two grid (24 significant bits for the largest
weight, what float32 holds), so every product and every partial sum is an integer multiple of that
grid, far below 2**53 of it, and float64 computes all of them exactly **in any order** — BLAS,
cuDNN-free GPU kernels, Lava's dense synapses and a sequential loop alike.

:func:`certify` proves that for a given graph (and, for the layers fed by the analog input, a given
batch of data) by bounding every value and its grid, node by node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np

from pmsm.targets.nir import dialect, ops
from pmsm.targets.nir.interpreter import conv1d_args, conv_padding, topological

SIGNIFICANT_BITS = 24   # of the largest weight of an output channel: float32's precision
EXACT_BITS = 52         # float64 holds integers up to 2**53; one bit of slack for the bound itself


def lsb_exponent(a) -> np.ndarray:
    """``e`` such that each value is an odd multiple of ``2**e``; ``+inf`` for zeros."""
    a = np.asarray(a, dtype=np.float64)
    mantissa, exponent = np.frexp(a)
    m = np.abs(mantissa * 2.0 ** 53).astype(np.int64)
    low = m & -m  # lowest set bit
    out = np.full(a.shape, np.inf)
    nonzero = m != 0
    out[nonzero] = exponent[nonzero] - 53 + np.log2(low[nonzero].astype(np.float64))
    return out


def grid_exponents(weight: np.ndarray) -> np.ndarray:
    """Per output channel (axis 0): the exponent of the grid the writer rounds that channel to."""
    flat = np.abs(np.asarray(weight, dtype=np.float64)).reshape(weight.shape[0], -1)
    peak = flat.max(axis=1)
    out = np.full(peak.shape, np.nan)
    used = peak > 0
    out[used] = np.floor(np.log2(peak[used])) - (SIGNIFICANT_BITS - 1)
    return out


def on_grid(weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``weight`` [O, ...] and ``bias`` [O] as float32, each output channel rounded (half to even)
    to its own power-of-two grid: the largest weight keeps 24 significant bits, smaller weights keep
    the same absolute resolution, so every sum of integer spikes times these weights is an integer
    multiple of the grid."""
    weight = np.asarray(weight, dtype=np.float64)
    exponents = grid_exponents(weight)
    unit = np.where(np.isnan(exponents), 1.0, 2.0 ** np.nan_to_num(exponents)).reshape(
        (-1,) + (1,) * (weight.ndim - 1))
    gridded = np.where(np.isnan(exponents).reshape(unit.shape), weight, np.rint(weight / unit) * unit)
    w32 = gridded.astype(np.float32)
    if bias is None:
        return w32, None
    bias = np.asarray(bias, dtype=np.float64).reshape(-1)
    b_unit = unit.reshape(-1)
    # A bias larger than the channel's largest weight rounds to float32 on a coarser grid, which
    # is a multiple of the channel's grid: still exact.
    b32 = np.where(np.isnan(exponents), bias, np.rint(bias / b_unit) * b_unit).astype(np.float32)
    return w32, b32


# ------------------------------------------------------------------------------------ certificate


@dataclass
class Certificate:
    """Whether float64 evaluation of a graph is exact, hence identical in every implementation."""

    problems: list[tuple[str, str]] = field(default_factory=list)  # (node, why float64 may round)
    data_dependent: list[str] = field(default_factory=list)  # nodes fed by the analog input, unchecked

    @property
    def exact(self) -> bool:
        return not self.problems and not self.data_dependent


@dataclass
class _Range:
    """Every element is a multiple of ``2**grid`` of magnitude at most ``bound`` (arrays ``[N, ...]``:
    per sample for values computed from the data, ``N = 1`` for values that are not)."""

    grid: np.ndarray
    bound: np.ndarray


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _channel_min(grid: np.ndarray) -> np.ndarray:
    """``[N, C]``: the finest grid of each channel (conservative for windows: any position)."""
    return grid.reshape(grid.shape[0], grid.shape[1], -1).min(axis=2)


def _through(node, name: str, r: _Range) -> tuple[_Range, str | None]:
    """The range of ``node``'s output given its summed input's; a reason when it cannot be exact."""
    if isinstance(node, nir.IF):
        p = dialect.neuron_params(node, name, "<graph>")
        shape = (1,) + tuple(node.r.shape)
        return _Range(np.zeros(shape), np.full(shape, float(p.max_abs_spikes))), None
    if isinstance(node, nir.Output):
        return r, None
    if isinstance(node, nir.Flatten):
        n = r.grid.shape[0]
        return _Range(r.grid.reshape(n, -1), r.bound.reshape(n, -1)), None
    if isinstance(node, nir.Scale):
        c = np.asarray(node.scale, np.float64)
        return _Range(r.grid + lsb_exponent(c), r.bound * np.abs(c)), None
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k, s, p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
        out = ops.pool2d(r.bound, k, s, p, "max" if dialect.is_max_pool(node) else "sum")
        grid = np.broadcast_to(_channel_min(r.grid)[:, :, None, None], out.shape).copy()
        if dialect.is_max_pool(node):
            return _Range(grid, out), None
        if isinstance(node, nir.AvgPool2d):
            area = k[0] * k[1]
            why = None if not area & (area - 1) else f"AvgPool2d divides by {area}, which float64 cannot do exactly"
            return _Range(grid - np.log2(area), out / area), why
        return _Range(grid, out), None
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight, np.float64)
        grid = np.min(r.grid[:, None, :] + lsb_exponent(w)[None], axis=2)
        bound = r.bound @ np.abs(w).T
        if isinstance(node, nir.Affine):
            b = np.asarray(node.bias, np.float64)
            grid, bound = np.minimum(grid, lsb_exponent(b)), bound + np.abs(b)
        return _Range(grid, bound), None
    if isinstance(node, nir.Conv1d):
        stride, pad, dilation, groups = conv1d_args(node, name)
        as_2d = nir.Conv2d(input_shape=None, weight=np.asarray(node.weight)[:, :, None, :], stride=(1, stride),
                           padding=(0, pad), dilation=(1, dilation), groups=groups, bias=node.bias)
        out, why = _through(as_2d, name, _Range(r.grid[:, :, None, :], r.bound[:, :, None, :]))
        out = _Range(out.grid[:, :, 0, :], out.bound[:, :, 0, :])
        if dialect.float32_pool(node, name) is not None:
            # ONNX's float32 average pool (docs/nir.md §5a): a float32 value by definition, within a few
            # ulps of the real one; the neuron it feeds adds it alone, which float64 does exactly.
            bound = out.bound * (1 + 2.0 ** -20)
            grid = np.floor(np.log2(np.maximum(bound, np.finfo(np.float32).tiny))) - 23
            return _Range(np.minimum(out.grid - 24, grid), bound), None
        return out, why
    if isinstance(node, nir.Conv2d):
        w = np.asarray(node.weight, np.float64)
        per_channel_in = _channel_min(r.grid)  # [N, C]
        if int(node.groups) != 1:  # the writer never writes groups; stay conservative for others' files
            per_channel_in = np.repeat(per_channel_in.min(axis=1, keepdims=True), w.shape[1], axis=1)
        per_pair = lsb_exponent(w).reshape(w.shape[0], w.shape[1], -1).min(axis=2)  # [O, C]
        grid_o = np.min(per_pair[None] + per_channel_in[:, None, :], axis=2)  # [N, O]
        b = np.asarray(node.bias, np.float64).reshape(-1)
        grid_o = np.minimum(grid_o, lsb_exponent(b)[None])
        args = (_pair(node.stride), conv_padding(node, name), _pair(node.dilation), int(node.groups))
        bound = ops.conv2d(r.bound, np.abs(w), np.abs(b), *args)
        return _Range(np.broadcast_to(grid_o[:, :, None, None], bound.shape).copy(), bound), None
    raise ValueError(f"node '{name}': NIR type {type(node).__name__} is not part of the PMSM dialect")


def certify(graph: nir.NIRGraph, x: np.ndarray | None = None) -> Certificate:
    """Check that float64 evaluates ``graph`` exactly (docs/nir.md §4).

    ``x``: the data batch the graph will run on, in the ONNX model's axis order; without it the nodes
    fed by the analog input are listed as data dependent instead of checked.
    """
    order = topological(graph, "<graph>")
    sources = {name: [s for s, d in graph.edges if d == name] for name in graph.nodes}
    ranges: dict[str, _Range | None] = {}
    cert = Certificate()
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            # ``x`` in the ONNX model's axis order, as the interpreter takes it (docs/nir.md §3a)
            data = None if x is None else dialect.to_nir_layout(np.asarray(x, np.float32).astype(np.float64),
                                                                 dialect.layout(node))
            ranges[name] = None if data is None else _Range(lsb_exponent(data), np.abs(data))
            continue
        ins = [ranges[s] for s in sources[name]]
        unknown = any(r is None for r in ins)
        if unknown:
            cert.data_dependent.append(name)
            if not isinstance(node, nir.IF):
                ranges[name] = None
                continue
            out, _ = _through(node, name, None)  # a neuron emits integers whatever its input was
            ranges[name] = out
            continue
        grid, bound = ins[0].grid, ins[0].bound
        for r in ins[1:]:
            grid, bound = np.minimum(grid, r.grid), bound + r.bound
        total = _Range(grid, bound)
        _check(cert, name, "input", total)
        out, why = _through(node, name, total)
        if why:
            cert.problems.append((name, why))
        if not isinstance(node, (nir.IF, nir.Output)):
            _check(cert, name, "output", out)
        ranges[name] = out
    return cert


def _check(cert: Certificate, name: str, where: str, r: _Range) -> None:
    finite = np.isfinite(r.grid) & (r.bound > 0)
    if not np.any(finite):
        return
    bits = np.log2(r.bound[finite]) - r.grid[finite]
    worst = float(bits.max())
    if worst > EXACT_BITS:
        cert.problems.append((name, f"its {where} needs {worst:.1f} bits of integer precision "
                                    f"(float64 holds {EXACT_BITS + 1})"))
