"""Neuron semantics (the single source of truth) and the ONNX Runtime reference backend."""
