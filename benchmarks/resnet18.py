"""The shipped model's graph with random weights, for speed benchmarks only.

Speed depends on the graph, not on the weights, so speed benchmarks need no trained model. This
one is built and exported by model_export's own code (`build_network`, `export_model`: the
1-channel ResNet18, softmax and the class-activation heatmap inside the graph, the same opset and
exporter, the same parity checks), so the benchmarks time exactly the graph the service ships.
It is cached; accuracy of the variants is measured on the trained model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.common import CACHE
from model_export.export import export_model
from model_export.network import build_network
from service.model import contract_metadata
from service.preprocessing import OUTPUT_SIZE


def random_resnet18(path: Path) -> Path:
    """Export a random-weight network through the exporter the shipped model came from."""
    torch.manual_seed(0)
    metadata = contract_metadata(
        threshold=0.5,
        model_name="benchmark-resnet18-random",
        model_version="0.0.0",
        training_data={"note": "random weights, for speed measurements only"},
    )
    parity_images = np.random.default_rng(0).random((4, 1, OUTPUT_SIZE, OUTPUT_SIZE), dtype=np.float32)
    export_model(build_network(), path, metadata, parity_images)
    return path


def benchmark_model() -> Path:
    """The cached random-weight model (the file name names the graph, so an older cache is never reused)."""
    cached = CACHE / "resnet18-shipped-graph.onnx"
    return cached if cached.exists() else random_resnet18(cached)
