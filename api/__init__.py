"""pmsm-export: quantized ONNX to Polarity Multi-Spike Mapping spiking networks."""
from __future__ import annotations

__version__ = "0.1.0"
