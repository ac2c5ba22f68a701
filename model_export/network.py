"""The network: torchvision's ResNet18 for one grayscale channel and two classes.

Weights start random (`weights=None`): nothing is ever downloaded, and ImageNet colour
filters would not fit a one-channel input without surgery anyway.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

CLASSES = 2  # index 1 is effusion, the positive class the service's contract expects


def build_network(outputs: int = CLASSES) -> nn.Module:
    """ResNet18 with a 1-channel first convolution and `outputs` logits (2 classes, or one per finding)."""
    network = resnet18(weights=None, num_classes=outputs)
    network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    return network


def binary_head(network: nn.Module, index: int, *, scale: float = 1.0, shift: float = 0.0) -> nn.Module:
    """A copy of `network` whose 2-class head gives softmax(...)[:, 1] = sigmoid(scale * logit[index] + shift).

    This is how a multi-label network, and its calibration (Platt scaling fitted on out-of-fold
    logits), fit the service's contract and the heatmap's evidence (fc row 1 minus row 0) unchanged.
    """
    binary = copy.deepcopy(network).cpu().float().eval()
    source = binary.fc
    head = nn.Linear(source.in_features, CLASSES)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = scale * source.weight[index]
        head.bias[1] = scale * source.bias[index] + shift
    binary.fc = head
    return binary.to(memory_format=torch.contiguous_format)


def pool_input(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average the 256 px input down to the training resolution (exactly a factor x factor mean)."""
    return nn.functional.avg_pool2d(image, factor) if factor > 1 else image


class EffusionProbability(nn.Module):
    """Logits -> P(effusion) = softmax(logits)[:, 1]: what evaluation measures and the ONNX graph outputs."""

    def __init__(self, network: nn.Module, input_pool: int = 1) -> None:
        super().__init__()
        self.network = network
        self.input_pool = input_pool

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(pool_input(image, self.input_pool)).float(), dim=1)[:, 1]


class EffusionWithHeatmap(nn.Module):
    """P(effusion) and its class-activation map (Zhou et al., CVPR 2016) from one forward pass.

    The map weighs the last convolutional block's features by the classifier's evidence for
    effusion over no effusion (fc row 1 minus row 0: the log-odds), keeps the positive part,
    upsamples it bilinearly to the input size and scales each map by its own peak to [0, 1].
    It shows where the model looked, relative within one scan, not how sure it is. Serving it
    costs one extra graph output, not a second model.
    """

    def __init__(self, network: nn.Module, input_pool: int = 1) -> None:
        super().__init__()
        self.network = network
        self.input_pool = input_pool

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        x = net.maxpool(net.relu(net.bn1(net.conv1(pool_input(image, self.input_pool)))))
        features = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        logits = net.fc(torch.flatten(net.avgpool(features), 1))
        probability = torch.softmax(logits.float(), dim=1)[:, 1]
        evidence = (net.fc.weight[1] - net.fc.weight[0]).view(1, -1, 1, 1)
        cam = torch.relu((features.float() * evidence).sum(dim=1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        return probability, cam / (peak + 1e-6)


def load_trained(checkpoint: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a best.pt checkpoint (CPU, eval mode) and the checkpoint's epoch and val_auroc."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network = build_network()
    network.load_state_dict(state["model"])
    return network.eval(), {"epoch": int(state["epoch"]), "val_auroc": float(state["val_auroc"])}


def predict_probabilities(
    network: nn.Module, tensors: np.ndarray, *, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    """P(effusion) for float32 [N, 1, 256, 256] tensors, in float32 as the exported graph computes it."""
    model = EffusionProbability(network).to(device).eval()
    results = []
    with torch.inference_mode():
        for start in range(0, len(tensors), batch_size):
            batch = torch.from_numpy(np.array(tensors[start : start + batch_size], dtype=np.float32)).to(device)
            results.append(model(batch).cpu().numpy())
    return np.concatenate(results) if results else np.zeros(0, dtype=np.float32)
