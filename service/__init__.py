"""cxr-effusion inference service: decode, preprocess and score chest X-rays with ONNX Runtime."""

__version__ = "0.1.0"
