"""ONNX's average pool over one axis, computed as ONNX computes it: in float32 (docs/nir.md §5a).

Around a 1-D average pool, a quantized network de-quantizes the counts, pools and pre-scales for
the next quantizer: ``Mul(theta) -> AveragePool(k) -> Div(s) -> neuron`` (onnxruntime's QDQ, where
``theta = s``). The dialect's exact form (a window sum of the counts, then one factor
``theta / (k s)``) gives the real-number result; onnxruntime rounds each product, each partial sum,
the division by ``k`` and the division by ``s`` to float32. Measured on the QDQ keyword-spotting
CNN of the tests (``add_scale = 0.03148566``, window 2): over all 65,536 pairs of counts in
[0, 255], onnxruntime's value differs from ``(c0 + c1) / 2`` in 14,392 pairs, 7,418 of them exact
ties ``.5`` that it moves by one float32 ulp either way, so 3,808 pairs round to the other integer
(half to even). The same window sum gives different onnxruntime values (sum 101: ``0x1.93fffep+5``
or ``0x1.94p+5`` depending on the split), and along a fixed sum the value goes up and down with the
split, so no linear node (a function ``w0 c0 + w1 c1`` rounded once, monotone along a fixed sum)
reproduces it: the dialect carries the op.

The node is the window-sum ``Conv1d`` marked ``metadata["pmsm"]["op"] = "avg_pool1d_float32"``; its
weights are the real-number equivalent (``theta / (divisor s)`` on the channel diagonal, what a
consumer ignoring the metadata runs, up to that rounding), and the metadata gives the float32 op:
per channel ``c`` and window, ``acc = 0; for each element x in window order (padding adds 0):
acc = f32(acc + f32(x * dequant[c]))``, then ``p = f32(acc / divisor)`` and
``y = f32(p / prescale[c])`` (``prescale_op == "div"``) or ``f32(p * prescale[c])`` (``"mul"``).
onnxruntime 1.x's ``AveragePool`` over one axis sums each window left to right and divides by the
count (measured: equal to this on windows 2 to 7, strides 1 to 4, both ``count_include_pad``;
multiplying by ``1/count`` instead differs). The node feeds one neuron and nothing else, so ``y``
is the neuron's input ``z``, already float32: the neuron's rounding to float32 changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pmsm.runtime.schema import is_neuron
from pmsm.targets.nir.ir import per_channel
from pmsm.targets.nir.onnx_view import node_label
from pmsm.targets.nir.translator import Unsupported, full

OP = "avg_pool1d_float32"
VERSION = 1


@dataclass
class Float32Pool:
    dequant: np.ndarray   # [C] float32: the de-quantization factor of the counts, per channel
    divisor: float        # the window size ONNX divides by (the same for every window)
    prescale: np.ndarray  # [C] float32: the next quantizer's pre-scaling constant
    prescale_op: str      # "div" or "mul"

    def metadata(self) -> dict:
        return {"op": OP, "version": VERSION, "dequant": [float(v) for v in self.dequant],
                "divisor": float(self.divisor), "prescale": [float(v) for v in self.prescale],
                "prescale_op": self.prescale_op}

    def factor(self) -> np.ndarray:
        """The real-number factor per channel (float64): what the weights hold."""
        d, p = self.dequant.astype(np.float64), self.prescale.astype(np.float64)
        return d / self.divisor / p if self.prescale_op == "div" else d / self.divisor * p


def of_node(meta: dict | None) -> Float32Pool | None:
    """The op a ``Conv1d``'s ``metadata["pmsm"]`` (normalised) marks, or None."""
    if not isinstance(meta, dict) or meta.get("op") != OP:
        return None
    if int(meta.get("version", VERSION)) != VERSION or meta.get("prescale_op") not in ("div", "mul"):
        raise ValueError(f"unknown {OP} version {meta.get('version')!r} or prescale_op {meta.get('prescale_op')!r}")
    return Float32Pool(np.asarray(meta["dequant"], np.float32).reshape(-1), float(meta["divisor"]),
                       np.asarray(meta["prescale"], np.float32).reshape(-1), str(meta["prescale_op"]))


def apply(x, pool: Float32Pool, kernel: int, stride: int, padding: int):
    """The op on ``x [N, C, L]`` (numpy or torch; any float type holding the counts exactly),
    as float32 ``[N, C, L_out]``."""
    is_np = isinstance(x, np.ndarray)
    if is_np:
        x32 = x.astype(np.float32)
        dequant, prescale = pool.dequant[None, :, None], pool.prescale[None, :, None]
        if padding:
            x32 = np.pad(x32, ((0, 0), (0, 0), (padding, padding)))
        divisor = np.float32(pool.divisor)
    else:
        import torch  # the torch extra: only the torch runtime passes tensors

        x32 = x.to(torch.float32)
        dequant = torch.as_tensor(pool.dequant, device=x.device)[None, :, None]
        prescale = torch.as_tensor(pool.prescale, device=x.device)[None, :, None]
        if padding:
            x32 = torch.nn.functional.pad(x32, (padding, padding))
        divisor = torch.tensor(pool.divisor, dtype=torch.float32, device=x.device)
    a = x32 * dequant  # one float32 rounding per product
    length = a.shape[-1]
    out = (length - kernel) // stride + 1
    stop = stride * (out - 1) + 1
    acc = a[..., 0:stop:stride] * 0  # float32 zeros of the output's shape
    for i in range(kernel):  # left to right, one float32 rounding per addition
        acc = acc + a[..., i:i + stop:stride]
    p = acc / divisor
    return p / prescale if pool.prescale_op == "div" else p * prescale


def _producers(view) -> dict:
    return {o: n for n in view.nodes for o in n.output if o}


def _per_channel(t, name: str, act: str, channels: int) -> np.ndarray | None:
    """A constant operand as one float32 value per channel of ``act`` ([N, C, L]), or None."""
    c = np.asarray(t.view.constants[name])
    if c.dtype != np.float32:
        return None
    try:
        v = per_channel(full(c, t.onnx_shape(act)))
    except Unsupported:
        return None
    return None if v is None or v.shape != (channels,) else v.astype(np.float32)


def mark(t, node: onnx.NodeProto, e) -> None:
    """Mark the 1-D window sum feeding neuron ``node`` as ONNX's float32 average pool when the ONNX
    graph computes ``Mul(counts, theta) -> AveragePool -> Div/Mul(constant) -> node``, the pool's
    divisor is the same for every window, and the value reaches the neuron alone. Anything else
    keeps the exact form."""
    if len(e.terms) != 1 or e.bias is not None:
        return
    (src, _), = e.terms.items()
    pool = t.work.nodes.get(src)
    if pool is None or pool.kind != "sumpool" or len(pool.params["kernel"]) != 1 or pool.in_bias is not None:
        return
    into = t.work.into(pool)
    if len(into) != 1 or not into[0].is_plain or t.work.nodes[into[0].src].kind != "if":
        return
    producers = _producers(t.view)
    scale = producers.get(node.input[0])
    if scale is None or scale.op_type not in ("Div", "Mul") or scale.domain not in ("", "ai.onnx"):
        return
    consts = [i for i, name in enumerate(scale.input[:2]) if t.is_const(name)]
    if consts != [1]:  # activation first, constant second (a Mul by a constant first is rare: kept exact)
        return
    average = producers.get(scale.input[0])
    if average is None or average.op_type != "AveragePool" or pool.onnx_node != node_label(average):
        return
    dequant = producers.get(average.input[0])
    if dequant is None or dequant.op_type != "Mul" or not t.is_const(dequant.input[1]):
        return
    counts = producers.get(dequant.input[0])
    if counts is None or not is_neuron(counts):
        return
    at = {a.name: onnx.helper.get_attribute_value(a) for a in average.attribute}
    kernel, padding = int(pool.params["kernel"][0]), int(pool.params["padding"][0])
    if padding and not int(at.get("count_include_pad", 0)):
        return  # the divisor differs at the borders: kept exact
    channels = pool.in_shape[0]
    theta = _per_channel(t, dequant.input[1], dequant.input[0], channels)
    pre = _per_channel(t, scale.input[1], scale.input[0], channels)
    if theta is None or pre is None or not np.all(np.isfinite(theta)) or not np.all(pre != 0):
        return
    pool.params["float32"] = Float32Pool(theta, float(kernel), pre, "div" if scale.op_type == "Div" else "mul")

