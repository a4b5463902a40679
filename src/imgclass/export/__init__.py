"""Export a model file to ONNX or TorchScript, with parity verified against PyTorch."""
