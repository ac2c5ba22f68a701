"""A contract-conforming ResNet18 ONNX file with random weights, for benchmarks only.

Speed depends on the graph, not on the weights, so speed benchmarks need no trained model: they
build this one (torchvision ResNet18, one input channel, two classes, softmax inside the graph,
as model_export exports) and cache it. Accuracy of the variants is measured on the trained model.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
import torchvision

from service.model import INPUT_NAME, OUTPUT_NAME, contract_metadata
from service.preprocessing import OUTPUT_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "benchmarks" / ".cache"


class _Probability(torch.nn.Module):
    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(image), dim=1)[:, 1]


def random_resnet18(path: Path) -> Path:
    """Export a random-weight one-channel ResNet18 that honours the model contract."""
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=2)
    network.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model = _Probability(network).eval()
    example = torch.zeros(2, 1, OUTPUT_SIZE, OUTPUT_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    metadata = contract_metadata(
        threshold=0.5,
        model_name="benchmark-resnet18-random",
        model_version="0.0.0",
        training_data={"note": "random weights, for speed measurements only"},
    )
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return path


def benchmark_model() -> Path:
    """A cached random-weight ResNet18: the shipped model's graph, so the same speed (weights don't matter)."""
    cached = CACHE / "resnet18-random.onnx"
    return cached if cached.exists() else random_resnet18(cached)
