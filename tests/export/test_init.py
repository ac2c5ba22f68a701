"""`--init`: a torchvision ResNet18 state dict (made here, never downloaded) or an earlier run's checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import require_module

torch = require_module("torch")

from torchvision.models import resnet18  # noqa: E402

from model_export.__main__ import main  # noqa: E402
from model_export.errors import DataError  # noqa: E402
from model_export.init import apply_initial_weights, initial_weights  # noqa: E402
from model_export.network import build_network  # noqa: E402
from service.model import load_model  # noqa: E402


@pytest.fixture
def imagenet_like(tmp_path: Path) -> Path:
    """torchvision's ResNet18 layout (3 channels, 1000 classes), random weights saved as a plain state dict."""
    torch.manual_seed(123)
    path = tmp_path / "resnet18-local.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_an_imagenet_state_dict_sums_rgb_into_one_channel_and_keeps_a_fresh_head(imagenet_like: Path) -> None:
    state, provenance = initial_weights(str(imagenet_like))
    torch.manual_seed(0)
    network = build_network(outputs=14)
    head = network.fc.weight.detach().clone()
    untouched = apply_initial_weights(network, state)
    assert untouched == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(network.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(network.layer3[1].conv2.weight, state["layer3.1.conv2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(network.fc.weight, head, rtol=0, atol=0)
    assert provenance == {
        "init": str(imagenet_like),
        "kind": "torchvision-resnet18",
        "file": imagenet_like.name,
        "sha256": hashlib.sha256(imagenet_like.read_bytes()).hexdigest(),
    }


def test_a_grey_image_gives_the_rgb_networks_features(imagenet_like: Path) -> None:
    """Summing the kernels is exact: a grey image is (x, x, x) to the ImageNet network."""
    colour = resnet18(weights=None)
    colour.load_state_dict(torch.load(imagenet_like, weights_only=True))
    grey = build_network(outputs=1000)
    apply_initial_weights(grey, initial_weights(str(imagenet_like))[0])
    grey.fc = colour.fc
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey.eval()(image), colour.eval()(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_a_checkpoint_of_an_earlier_run_fine_tunes_everything_that_fits(tmp_path: Path) -> None:
    earlier = build_network()  # a train run's 2-class network
    path = tmp_path / "best.pt"
    torch.save({"model": earlier.state_dict(), "epoch": 3, "val_auroc": 0.9}, path)
    state, provenance = initial_weights(str(path))
    network = build_network(outputs=14)
    assert apply_initial_weights(network, state) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(network.conv1.weight, earlier.conv1.weight, rtol=0, atol=0)
    assert provenance["kind"] == "checkpoint"


def test_imagenet_is_never_downloaded_and_the_message_says_how_to_supply_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    with pytest.raises(DataError, match=r"never downloads.*resnet18-f37072fd\.pth.*--init PATH"):
        initial_weights("imagenet")
    not_weights = tmp_path / "notes.txt"
    not_weights.write_text("hello")
    with pytest.raises(DataError, match="not a torch state dict"):
        initial_weights(str(not_weights))


@pytest.mark.slow
def test_the_provenance_reaches_the_run_and_the_exported_models_metadata(imagenet_like: Path, tmp_path: Path) -> None:
    data, run, model = tmp_path / "synthetic", tmp_path / "run", tmp_path / "model.onnx"
    main(["synth", str(data), "--count", "8", "--size", "256"])
    main(["train", "--data", str(data), "--output", str(run), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
          "--test-fraction", "0.25", "--workers", "1", "--init", str(imagenet_like)])  # fmt: skip
    main(["evaluate", str(run), "--bootstrap", "20"])
    main(["export", str(run), "--output", str(model)])
    recorded = json.loads((run / "init.json").read_text())
    assert recorded["sha256"] == hashlib.sha256(imagenet_like.read_bytes()).hexdigest()
    assert json.loads((run / "config.json").read_text())["init"] == str(imagenet_like)
    assert load_model(model, policy="cpu").contract.metadata["initial_weights"] == recorded
