"""The network: torchvision's ResNet18 for one grayscale channel and two classes.

Weights start random (`weights=None`): nothing is ever downloaded, and ImageNet colour
filters would not fit a one-channel input without surgery anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet18

CLASSES = 2  # index 1 is effusion, the positive class the service's contract expects


def build_network() -> nn.Module:
    """ResNet18 with a 1-channel first convolution and a 2-class head (logits)."""
    network = resnet18(weights=None, num_classes=CLASSES)
    network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    return network


class EffusionProbability(nn.Module):
    """Logits -> P(effusion) = softmax(logits)[:, 1]: what evaluation measures and the ONNX graph outputs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(image).float(), dim=1)[:, 1]


class EffusionWithHeatmap(nn.Module):
    """P(effusion) and its class-activation map (Zhou et al., CVPR 2016) from one forward pass.

    The map weighs the last convolutional block's features by the classifier's evidence for
    effusion over no effusion (fc row 1 minus row 0: the log-odds), keeps the positive part,
    upsamples it bilinearly to the input size and scales each map by its own peak to [0, 1].
    It shows where the model looked, relative within one scan, not how sure it is. Serving it
    costs one extra graph output, not a second model.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        x = net.maxpool(net.relu(net.bn1(net.conv1(image))))
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
