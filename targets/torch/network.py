"""A PMSM NIR graph as a stateful ``torch.nn.Module``: nirtorch wires the graph, this module maps
each node.

nirtorch (pinned: :data:`NIRTORCH_VERSION`) turns a NIR graph into a ``torch.fx.GraphModule`` whose
``forward(input, state)`` runs one timestep and returns ``(output, state)``; fan-in becomes
``torch.add``. Its default node map is not used for three reasons: its ``Affine`` leaves the bias
uninitialised (it assigns ``module.weight.bias`` instead of ``module.bias``), its ``Flatten`` counts
``start_dim`` with a batch axis that NIR shapes do not have, and it has no ``IF``/``Scale`` and no
padding for ``SumPool2d``. Everything runs in float64 (docs/nir.md §4): on CUDA, cuDNN is switched
off for convolutions because its FFT and Winograd algorithms are not exact even on integers.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import nir
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pmsm.runtime import neuron
from pmsm.runtime.base.errors import BadInputError
from pmsm.runtime.neuron import NeuronParams
from pmsm.targets.nir import dialect, float32_pool, read_nir
from pmsm.targets.nir.interpreter import conv1d_args, conv_padding

NIRTORCH_VERSION = "2.6"
DTYPE = torch.float64


@dataclass
class TorchResult:
    output: np.ndarray  # [N, ...] float32: mean over T of the Output node
    spikes: dict[str, np.ndarray] = field(default_factory=dict)  # [T, N, ...] by the neuron's ONNX node name


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


class PmsmNeuron(nn.Module):
    """The PMSM neuron (``pmsm.runtime.neuron.step``); the state is the float32 membrane."""

    def __init__(self, params: NeuronParams, key: str):
        super().__init__()
        self.params = params
        self.key = key
        self.layout: tuple = ()  # docs/nir.md §3a: its spikes are reported in ONNX's axis order
        self.record: list | None = None

    def forward(self, z: torch.Tensor, state: torch.Tensor | None = None):
        if state is None:
            state = neuron.initial_membrane(tuple(z.shape), self.params, like=z)
        membrane, spikes = neuron.step(state, z, self.params)
        if self.record is not None:
            self.record.append(spikes)
        return spikes.to(z.dtype), membrane


class Conv2d(nn.Module):
    def __init__(self, node: nir.Conv2d, name: str):
        super().__init__()
        self.weight = nn.Parameter(_tensor(node.weight), requires_grad=False)
        self.bias = nn.Parameter(_tensor(node.bias), requires_grad=False)
        self.stride, self.padding = _pair(node.stride), conv_padding(node, name)
        self.dilation, self.groups = _pair(node.dilation), int(node.groups)

    def forward(self, x):
        exact = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else nullcontext()
        with exact:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(nn.Module):
    def __init__(self, node: nir.Conv1d, name: str):
        super().__init__()
        self.weight = nn.Parameter(_tensor(node.weight), requires_grad=False)
        self.bias = nn.Parameter(_tensor(node.bias), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv1d_args(node, name)
        self.float32_pool = dialect.float32_pool(node, name)  # ONNX's float32 average pool (docs/nir.md §5a)

    def forward(self, x):
        if self.float32_pool is not None:
            out = float32_pool.apply(x, self.float32_pool, self.weight.shape[2], self.stride, self.padding)
            return out.to(x.dtype)
        exact = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else nullcontext()
        with exact:
            return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Affine(nn.Module):
    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = nn.Parameter(_tensor(weight), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(_tensor(bias), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", _tensor(scale))

    def forward(self, x):
        return x * self.scale


class Flatten(nn.Module):
    """NIR's ``start_dim``/``end_dim`` count from the first feature axis: torch's from the batch."""

    def __init__(self, node: nir.Flatten):
        super().__init__()
        self.start = int(node.start_dim) + 1
        self.end = -1 if int(node.end_dim) == -1 else int(node.end_dim) + 1

    def forward(self, x):
        return torch.flatten(x, self.start, self.end)


class Pool2d(nn.Module):
    """``sum`` (zero padding), ``avg`` (sum / kh*kw, padding counted) or ``max`` (padding never wins)."""

    def __init__(self, node, mode: str):
        super().__init__()
        self.mode = mode
        self.kernel, self.stride, self.padding = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)

    def forward(self, x):
        if self.mode == "max":
            (ph, pw) = self.padding
            x = F.pad(x, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else x
            return F.max_pool2d(x, self.kernel, self.stride)
        divisor = 1 if self.mode == "sum" else None  # sum: no division at all, hence exact
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True,
                            divisor_override=divisor)


def node_map(graph: nir.NIRGraph, label: str = "<nir graph>") -> dict:
    """nirtorch node map for the PMSM dialect, for the nodes of ``graph`` (a neuron's and a
    convolution's messages name the node)."""
    names = {id(node): name for name, node in graph.nodes.items()}

    def neuron_module(node: nir.IF):
        name = names.get(id(node), "?")
        meta = node.metadata.get(dialect.KEY, {}) if node.metadata else {}
        module = PmsmNeuron(dialect.neuron_params(node, name, label), str(meta.get("onnx_node") or name))
        module.layout = dialect.layout(node)
        return module

    return {
        nir.Input: lambda node: nn.Identity(),
        nir.Output: lambda node: nn.Identity(),
        nir.IF: neuron_module,
        nir.Conv1d: lambda node: Conv1d(node, names.get(id(node), "?")),
        nir.Conv2d: lambda node: Conv2d(node, names.get(id(node), "?")),
        nir.Affine: lambda node: Affine(node.weight, node.bias),
        nir.Linear: lambda node: Affine(node.weight),
        nir.Scale: lambda node: Scale(node.scale),
        nir.Flatten: lambda node: Flatten(node),
        nir.AvgPool2d: lambda node: Pool2d(node, "avg"),
        nir.SumPool2d: lambda node: Pool2d(node, "max" if dialect.is_max_pool(node) else "sum"),
    }


class TorchNetwork(nn.Module):
    """``forward(x, state=None) -> (output, state)`` runs one timestep of a batch ``x [N, ...]``."""

    def __init__(self, graph: nir.NIRGraph, label: str = "<nir graph>", device="cpu"):
        import nirtorch

        super().__init__()
        dialect.check(graph, label)
        self.label = label
        # torch.fx names modules after the nodes: '-' is not an identifier character.
        renamed = {name: name.replace("-", "_") for name in graph.nodes}
        if len(set(renamed.values())) != len(renamed):
            raise BadInputError(f"{label}: node names collide once '-' becomes '_'")
        graph = nir.NIRGraph(nodes={renamed[n]: node for n, node in graph.nodes.items()},
                             edges=[(renamed[a], renamed[b]) for a, b in graph.edges],
                             metadata=graph.metadata, type_check=False)
        self.graph_module = nirtorch.nir_to_torch(graph, node_map(graph, label), default_map={}, device=device,
                                                  dtype=DTYPE)
        self.neurons = [m for m in self.graph_module.modules() if isinstance(m, PmsmNeuron)]
        first = next(node for node in graph.nodes.values() if isinstance(node, nir.Input))
        # run() takes data and gives outputs and spikes in ONNX's axis order; forward() works in
        # the file's own (docs/nir.md §3a).
        self.input_layout = dialect.layout(first)
        self.output_layout = dialect.layout(next(node for node in graph.nodes.values() if isinstance(node, nir.Output)))
        self.input_shape = dialect.to_onnx_shape(
            tuple(int(d) for d in np.asarray(first.input_type["input"]).reshape(-1)), self.input_layout)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.graph_module.parameters(), torch.empty(0)).device

    def forward(self, x: torch.Tensor, state: dict | None = None):
        return self.graph_module(x.to(device=self.device, dtype=DTYPE), state)

    @torch.no_grad()
    def run(self, x, timesteps: int, collect_spikes: bool = False) -> TorchResult:
        """Mean over ``timesteps`` of the output for the analog input ``x`` presented at every step."""
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise BadInputError(f"timesteps must be a positive integer, got {timesteps!r}")
        x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not torch.is_tensor(x) else x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise BadInputError(f"{self.label}: input of shape {tuple(x.shape)} does not match the Input node "
                                f"[N, {', '.join(map(str, self.input_shape))}]")
        x = dialect.to_nir_layout(x.to(torch.float32), self.input_layout).to(device=self.device, dtype=DTYPE)
        for n in self.neurons:
            n.record = [] if collect_spikes else None
        try:
            state, total = None, None
            for _ in range(int(timesteps)):
                out, state = self.graph_module(x, state)
                # each step's output is rounded to float32 once, then summed in float32 in time order
                total = dialect.readout_add(total, out)
            output = dialect.to_onnx_layout(dialect.readout_mean(total, timesteps), self.output_layout)
            output = output.contiguous().cpu().numpy()
            spikes = {n.key: dialect.to_onnx_layout(torch.stack(n.record), n.layout, lead=2).cpu().numpy()
                      for n in self.neurons} if collect_spikes else {}
        finally:
            for n in self.neurons:
                n.record = None
        return TorchResult(output, spikes)


def to_torch(graph_or_path, device="cpu") -> TorchNetwork:
    """A :class:`TorchNetwork` for a PMSM-dialect NIR graph or file, on ``device``."""
    if isinstance(graph_or_path, (str, os.PathLike)):
        return TorchNetwork(read_nir(graph_or_path), os.fspath(graph_or_path), device)
    return TorchNetwork(graph_or_path, device=device)
