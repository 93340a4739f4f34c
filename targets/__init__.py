"""Export targets beyond spiking ONNX: NIR and Lava."""
