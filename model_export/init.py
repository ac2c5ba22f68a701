"""Initial weights (`--init`): torchvision's ImageNet ResNet18, or a checkpoint of an earlier run.

- a torchvision ResNet18 state dict (ImageNet, 3 input channels): the first convolution becomes
  one-channel by summing its RGB kernels (a grey image x is the RGB image (x, x, x), so the
  filter responses are unchanged); the classifier is left as freshly initialised, since ImageNet's
  1000 classes are not ours;
- a checkpoint of an earlier run (`best.pt`/`last.pt` of `train`, `model.pt` of `fit`): every
  tensor whose shape fits (fine-tuning on a site's own data); a head of another size stays fresh;
- `imagenet`: the same file through torchvision's weights API, from torch's local hub cache only.
  Nothing is downloaded at run time: if the file is not there the run stops at once and says how
  to supply it.

Where the weights came from (kind, file, sha256) is recorded in the run and in the exported model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_export.errors import DataError

IMAGENET = "imagenet"


def resolve_init(spec: str) -> Path:
    """The file `--init` names: a path, or for `imagenet` torchvision's file in the local hub cache."""
    if spec != IMAGENET:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"--init {spec}: no such file")
        return path
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise DataError(
            f"--init imagenet: {cached} is not there and this command never downloads. On a machine with internet, "
            f"download {url} (e.g. `curl -LO {url}`) and pass --init PATH_TO_THE_FILE, or copy it to {cached}"
        )
    return cached


def initial_weights(spec: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict to start from, provenance) for `--init SPEC`."""
    path = resolve_init(spec)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  # torch raises many kinds for a file that is not a checkpoint
        raise DataError(f"--init {path}: not a torch state dict or checkpoint ({error})") from error
    checkpoint = isinstance(loaded, dict) and isinstance(loaded.get("model"), dict)
    state = loaded["model"] if checkpoint else loaded
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise DataError(f"--init {path}: not a ResNet18 state dict (no conv1.weight)")
    kind = "checkpoint" if checkpoint else "torchvision-resnet18"
    provenance = {"init": spec, "kind": kind, "file": path.name, "sha256": file_sha256(path)}
    return state, provenance


def apply_initial_weights(network: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy `state` into `network` (RGB first convolution summed to grey); returns the names left as they were."""
    own = network.state_dict()
    adapted = dict(state)
    first = adapted["conv1.weight"]
    if first.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        adapted["conv1.weight"] = first.sum(dim=1, keepdim=True)
    fitting = {name: value for name, value in adapted.items() if name in own and own[name].shape == value.shape}
    if "conv1.weight" not in fitting or "layer4.1.bn2.weight" not in fitting:
        raise DataError("--init: the weights are not a ResNet18 of this shape")
    network.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
