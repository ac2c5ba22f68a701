"""What tests and benchmarks both build on: synthetic scans (good and hostile), small real ONNX
models, and `python -m service` run as a subprocess. Never imported by the product."""
