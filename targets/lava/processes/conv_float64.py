"""Lava's ``Conv`` in floating point, computed in float64.

lava-nc's own floating-point model converts input and weights to ``torch.FloatTensor``: float32 sums,
whose rounding depends on the summation order. The PMSM dialect's arithmetic (docs/nir.md §4) is
float64, exact on the writer's weight grid; this model keeps everything else of lava-nc's model and
only runs the convolution in float64. ``Network.run_cfg`` selects it for floating point.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.models import PyConvModelFloat
from lava.proc.conv.process import Conv


def conv_float64(input_: np.ndarray, weight: np.ndarray, stride, padding, dilation, groups: int) -> np.ndarray:
    """``lava.proc.conv.utils.conv`` (W, H, C layout, true convolution) in float64."""
    x = torch.from_numpy(np.ascontiguousarray(input_.transpose(2, 1, 0), dtype=np.float64))[None]
    # lava's kernels are (out, W, H, in) and flipped: torch correlates (out, in, H, W)
    w = torch.from_numpy(np.ascontiguousarray(weight[:, ::-1, ::-1].transpose(0, 3, 2, 1), dtype=np.float64))
    out = F.conv2d(x, w, stride=list(stride[::-1]), padding=list(padding[::-1]),
                   dilation=list(dilation[::-1]), groups=int(groups))
    return out[0].numpy().transpose(2, 1, 0)


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyConvModelFloat64(PyConvModelFloat):
    def run_spk(self) -> None:
        if self.a_buf is None:
            self.a_buf = np.zeros_like(self.a_out.shape)
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv() if self.num_message_bits.item() > 0 else self.s_in.recv().astype(bool)
        self.a_buf = conv_float64(s_in, self.weight, self.stride, self.padding, self.dilation, self.groups[0])
