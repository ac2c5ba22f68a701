"""The export's guards: torch-vs-ONNX Runtime parity is checked on real scans, and a failed check writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module

torch = require_module("torch")

from model_export.data import class_folder_samples, load_tensors
from model_export.errors import ExportError
from model_export.export import check_parity, export_model
from model_export.network import EffusionProbability, build_network
from service.model import contract_metadata


class ExportOnlyScale(torch.nn.Module):
    """Doubles the pooled features only while torch.onnx traces it: the exported graph really
    computes something else than eager torch, as an exporter bug would make it."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * 2 if torch.onnx.is_in_onnx_export() else features


@pytest.fixture(scope="module")
def nih_batch(nih_dir: Path) -> np.ndarray:
    """Three real NIH scans through the service's decode and preprocess."""
    samples = class_folder_samples(nih_dir)
    return np.ascontiguousarray(load_tensors([samples[0], samples[1], samples[-1]]))


def test_the_network_takes_one_channel_and_gives_two_logits_and_a_probability() -> None:
    network = build_network().eval()
    assert network.conv1.in_channels == 1 and network.fc.out_features == 2
    images = torch.rand(3, 1, 256, 256)
    with torch.inference_mode():
        logits = network(images)
        probability = EffusionProbability(network)(images)
    assert logits.shape == (3, 2) and probability.shape == (3,)
    torch.testing.assert_close(probability, torch.softmax(logits, dim=1)[:, 1])


def test_parity_is_measured_over_single_images_and_the_whole_batch() -> None:
    images = np.linspace(0, 1, 3 * 256 * 256, dtype=np.float32).reshape(3, 1, 256, 256)

    def reference(batch: np.ndarray) -> np.ndarray:
        return batch.mean(axis=(1, 2, 3))

    def batch_only_drift(batch: np.ndarray) -> np.ndarray:
        return reference(batch) + (3e-4 if len(batch) > 1 else 0.0)

    assert check_parity(reference, reference, images, tolerance=1e-4) == 0.0
    with pytest.raises(ExportError, match=r"differ by up to 0.0003 on 3 real images \(tolerance 0.0001\)"):
        check_parity(reference, batch_only_drift, images, tolerance=1e-4)
    with pytest.raises(ExportError, match="differ by up to nan"):
        check_parity(reference, lambda batch: reference(batch) * np.nan, images, tolerance=1e-4)


def test_an_export_that_disagrees_with_torch_writes_no_file(tmp_path: Path, nih_batch: np.ndarray) -> None:
    torch.manual_seed(0)
    network = build_network()
    network.avgpool = torch.nn.Sequential(network.avgpool, ExportOnlyScale())
    metadata = contract_metadata(threshold=0.5, model_name="diverging", model_version="0")
    output = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"parity check failed: .* on 3 real images \(tolerance 0.0001\)"):
        export_model(network, output, metadata, nih_batch)
    assert list(tmp_path.iterdir()) == []  # neither the model nor its partial file
