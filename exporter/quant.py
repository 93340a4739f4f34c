"""The PyTorch PMSM quantization layer: the producer side of the patterns the exporter recognises.

Importing this module imports torch (the ``[torch]`` extra; without it the import fails with an
ImportError saying so); ``pmsm.exporter`` never imports it implicitly, so the converter itself
runs without torch installed.

Forward (docs/spiking-onnx.md), with levels ``L``, trainable ``lambda`` (the parameter ``up``) and shift
``phi = 0.5``::

    Q(x) = clip(floor(x / lambda * L + 0.5), lo, hi) / L * lambda

``lo = -L`` with polarity (PMSM), ``lo = 0`` without (QCFS-style, ReLU-like); ``hi = L``.
The step of one spike is ``theta = lambda / L``.

The operations are written one by one, in this order, because the exported ONNX graph must be
exactly the chain the exporter matches (docs/spiking-onnx.md, How quantizers are recognised)::

    Div(x, up) Mul(L) Add(0.5) Floor Clip(lo, hi) Div(L) Mul(up)

Re-associating them (``x * (L / lambda)``, ``level * theta``) would change float32 rounding, and
the spiking network is bit-exact at T = 1 only because it keeps the source's own arithmetic.

Measured with torch 2.14 (both exporters, eval mode, tests/test_quant.py):

- ``dynamo=True`` (default): ``up`` is an initializer named after the parameter; the scalars
  ``L``, ``0.5`` and the clip bounds are 0-d float32 initializers (``val_*``), shared by value
  across the graph: one ``L`` initializer feeds ``Mul``, the ``Clip`` maximum and ``Div`` of
  every quantizer with that ``L``. IR 10, opset 20.
- ``dynamo=False`` (TorchScript): ``up`` is an initializer; every other scalar is a 0-d
  ``Constant`` node, one per use. IR 9, opset 20.
- Operands: ``Div(x, up)``, ``Mul(t, L)``, ``Add(t, 0.5)``, ``Div(t, L)``, ``Mul(t, up)`` (the
  activation always first). The straight-through floor and clip are one custom autograd
  Function whose forward is a plain ``torch.floor`` and ``torch.clamp`` with constant bounds;
  both exporters inline it into exactly ``Floor``, ``Clip``.
- ONNX Runtime (optimizations disabled) reproduces the eval-mode torch output bit for bit:
  both evaluate the same float32 operations one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

try:
    import torch
    from torch import nn
except ImportError as error:
    raise ImportError(f"pmsm.exporter.quant needs torch ({error}): pip install 'pmsm-export[torch]'",
                      name="torch") from error

PHI = 0.5  # the shift that turns floor into round-half-up (docs/spiking-onnx.md)

# Candidate lambdas are percentiles of the activation magnitude, so the grid follows the data's
# own scale. The entropy optimum sits at a high percentile (each clip level should hold about
# 1/(number of levels) of the mass); nothing above the maximum is tried, as mass only collapses
# further there.
_CANDIDATE_QUANTILES = torch.linspace(0.05, 1.0, 96)
# torch.quantile refuses very large inputs; a strided subsample keeps calibration deterministic.
_MAX_CALIBRATION_ELEMENTS = 1 << 20


class _FloorClip(torch.autograd.Function):
    """``clamp(floor(y), lo, hi)`` with a straight-through gradient.

    Backward passes the gradient unchanged wherever the clip left the floored value alone
    (``lo <= floor(y) <= hi``, bounds included) and blocks it where the clip bit. Two details
    are deliberate:

    - The forward is the bare ``torch.floor`` and ``torch.clamp`` calls, so both exporters
      inline it into exactly ``Floor``, ``Clip``; a detach formulation
      (``y + (floor(y) - y).detach()``) would export extra ``Sub``/``Add`` nodes and break the
      pattern.
    - ``torch.clamp``'s own backward (torch 2.14) gives zero gradient to values *equal* to a
      bound. Behind a floor, a whole bin sits exactly on each clip level (for ``L = 2`` about
      40% of an entropy-calibrated batch), so the stock gradient would silence it; the
      inclusive mask keeps it.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, lo: float, hi: float) -> torch.Tensor:  # noqa: D102
        floored = torch.floor(y)
        ctx.save_for_backward((floored >= lo) & (floored <= hi))
        return torch.clamp(floored, lo, hi)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None


@dataclass(frozen=True)
class Calibration:
    """Outcome of the entropy initialisation of one quantizer."""

    lam: float  # the chosen lambda
    entropy: float  # bits; the maximum possible is log2(number of levels)
    max_entropy: float


def level_entropy(levels: torch.Tensor, lo: int, hi: int) -> float:
    """Entropy in bits, ``H = -sum_k p_k log2 p_k``, of the histogram of integer levels in [lo, hi]."""
    counts = torch.bincount((levels.detach().flatten() - lo).to(torch.int64), minlength=hi - lo + 1)
    p = counts.to(torch.float64) / counts.sum()
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


class PMSMQuant(nn.Module):
    """Polarity multi-spike quantizer (``polarity=True``) or its unsigned QCFS-style variant.

    Args:
        levels: ``L``, the largest spike count per step (``theta = lambda / L``).
        polarity: clip to ``[-L, L]`` when true (PMSM), to ``[0, L]`` otherwise.
        lam: initial ``lambda``; usually overwritten by :meth:`calibrate`.

    The clip comes after the floor, on integer levels, so the exported ``Clip`` bounds are the
    spike-count bounds ``lo``/``hi`` of the neuron the exporter creates.
    """

    def __init__(self, levels: int, polarity: bool = True, lam: float = 1.0) -> None:
        super().__init__()
        if isinstance(levels, bool) or int(levels) != levels or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        if not lam > 0:
            raise ValueError(f"lambda must be positive, got {lam!r}")
        self.levels = int(levels)
        self.polarity = bool(polarity)
        # 0-d so that Div/Mul broadcast against any activation shape and export as a scalar.
        self.up = nn.Parameter(torch.tensor(float(lam)))

    @property
    def lo(self) -> int:
        return -self.levels if self.polarity else 0

    @property
    def hi(self) -> int:
        return self.levels

    @property
    def theta(self) -> float:
        return float(self.up.detach()) / self.levels

    def to_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Integer level (spike count at T = 1) of each element, as float."""
        L = float(self.levels)
        y = x / self.up  # Div(x, up)
        y = y * L  # Mul(L)
        y = y + PHI  # Add(0.5)
        return _FloorClip.apply(y, float(self.lo), float(self.hi))  # Floor, Clip(lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.to_levels(x)
        y = y / float(self.levels)  # Div(L)
        return y * self.up  # Mul(up)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> Calibration:
        """Set ``lambda`` so that the entropy of the output level histogram on ``x`` is maximal.

        Too large a lambda collapses the mass into the few central levels, too small a lambda
        piles it on the clip levels; both lower ``H``. Candidates are percentiles of ``|x|``
        (of ``max(x, 0)`` without polarity, whose negative half always lands on level 0).
        Ties go to the smallest candidate.

        This entropy strategy is our reconstruction of the hyperparameter strategy of the PMSM
        paper (arXiv 2508.14520), whose body is not available to us: the paper states that the
        quantizer's hyperparameters are chosen by the information entropy of the output levels,
        not the exact procedure.
        """
        x = x.detach().to(torch.float32).flatten()
        if x.numel() == 0 or not torch.isfinite(x).all():
            raise ValueError("calibration needs a non-empty, finite batch")
        magnitude = x.abs() if self.polarity else x.clamp(min=0)
        if magnitude.numel() > _MAX_CALIBRATION_ELEMENTS:
            stride = -(-magnitude.numel() // _MAX_CALIBRATION_ELEMENTS)
            magnitude = magnitude[::stride]
        candidates = torch.quantile(magnitude, _CANDIDATE_QUANTILES.to(magnitude.dtype))
        candidates = torch.unique(candidates[candidates > 0])  # sorted ascending
        max_entropy = float(torch.log2(torch.tensor(float(self.hi - self.lo + 1))))
        if candidates.numel() == 0:  # all-zero (or all-negative, unsigned) batch: nothing to fit
            return Calibration(float(self.up), 0.0, max_entropy)
        best_lam, best_h = float(candidates[0]), -1.0
        for lam in candidates.tolist():
            self.up.fill_(lam)
            h = level_entropy(self.to_levels(x), self.lo, self.hi)
            if h > best_h:
                best_lam, best_h = lam, h
        self.up.fill_(best_lam)
        return Calibration(best_lam, best_h, max_entropy)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, polarity={self.polarity}, lambda={float(self.up.detach()):.4g}"


def quantizers(model: nn.Module) -> list[PMSMQuant]:
    return [m for m in model.modules() if isinstance(m, PMSMQuant)]


@torch.no_grad()
def calibrate_model(model: nn.Module, *inputs: torch.Tensor) -> list[Calibration]:
    """Entropy-initialise every :class:`PMSMQuant` of ``model`` with one forward pass.

    Each quantizer calibrates on its own input just before it runs, so the layers after it see
    the already-calibrated quantized activations, as they will in training. The model runs in
    whatever mode it is in: use train mode so that batch-norm layers normalise with the batch
    statistics the quantizers will see during training.
    """
    results: list[Calibration] = []

    def hook(module: PMSMQuant, args: tuple[torch.Tensor, ...]) -> None:
        results.append(module.calibrate(args[0]))

    handles = [q.register_forward_pre_hook(hook) for q in quantizers(model)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return results


def quantizer_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The ``lambda`` parameters, e.g. to exempt them from weight decay."""
    return [q.up for q in quantizers(model)]
