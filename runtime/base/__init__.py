"""The base every layer may import: errors and exit codes, run limits, memory, processes, files,
progress, the version, ONNX proto helpers and the one ONNX Runtime session factory. Nothing here
imports another part of pmsm."""
