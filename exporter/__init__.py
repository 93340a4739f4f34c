"""ONNX in: recognise activation quantizers and rewrite them into PMSM neurons."""
