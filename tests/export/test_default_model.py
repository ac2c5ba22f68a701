"""The shipped default model (models/): the service serves it, and on held-out real NIH scans it
reproduces the numbers of its model card, with the service's own decode and preprocessing.

Needs only the service's dependencies (no torch): the model card's evaluation is checked with
ONNX Runtime.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.model import load_model
from service.predictor import score_bytes
from service.settings import DEFAULT_MODEL_PATH
from service.variant_choice import load_served_model
from tests.conftest import REPO_ROOT, make_settings, wait_ready

MODEL = REPO_ROOT / DEFAULT_MODEL_PATH
EVALUATION = REPO_ROOT / "models" / "evaluation"
FOLDERS = {"1": "effusion", "0": "nofinding"}


def held_out(nih_dir: Path, split: str) -> list[tuple[Path, int, float]]:
    """(file in the shared NIH folder, label, probability in the card's evaluation) per scan of `split`."""
    with open(EVALUATION / "predictions.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    return [(nih_dir / FOLDERS[row["label"]] / Path(row["path"]).name, int(row["label"]), float(row["probability"])) for row in rows]


def auroc(labels: list[int], scores: np.ndarray) -> float:
    """Probability that an effusion scan outscores a no-finding scan (ties count half): the AUROC."""
    positive = scores[np.array(labels) == 1][:, None]
    negative = scores[np.array(labels) == 0][None, :]
    return float(np.mean(positive > negative) + 0.5 * np.mean(positive == negative))


def test_the_default_model_is_where_the_service_looks_and_small_enough() -> None:
    assert MODEL.is_file(), f"{MODEL} is missing"
    assert MODEL.stat().st_size < 50 * 1024 * 1024
    contract = load_model(MODEL, policy="cpu").contract
    assert contract.model_name == "cxr-effusion-resnet18"
    assert contract.metadata["intended_use"] == "research and integration testing, not for clinical use"


def test_the_default_model_reproduces_its_card_on_held_out_nih_scans(nih_dir: Path) -> None:
    report = json.loads((EVALUATION / "report.json").read_text())
    model = load_model(MODEL, policy="cpu")
    assert model.contract.threshold == report["threshold"]["value"]
    test = held_out(nih_dir, "test")
    assert len(test) == report["cnn"]["test"]["images"]
    served = np.array([score_bytes(model, path.read_bytes(), max_pixels=25_000_000).probability for path, _, _ in test])
    np.testing.assert_allclose(served, [probability for _, _, probability in test], atol=1e-4)
    labels = [label for _, label, _ in test]
    measured = auroc(labels, served)
    assert measured == pytest.approx(report["cnn"]["test"]["auroc"], abs=1e-6)
    assert measured > 0.5  # it separates effusion from no finding better than chance on unseen patients


def test_the_default_model_answers_over_http(nih_dir: Path) -> None:
    path, _, probability = held_out(nih_dir, "test")[0]
    with TestClient(create_app(make_settings(MODEL, model_variant="fp32"))) as client:  # the card's numbers are FP32's
        wait_ready(client, timeout=120)
        response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["effusion_probability"] == pytest.approx(probability, abs=1e-4)
    assert body["model"]["name"] == "cxr-effusion-resnet18"


def test_by_default_the_cpu_serves_the_shipped_int8_variant() -> None:
    served = load_served_model(make_settings(MODEL))  # CXR_MODEL_VARIANT=auto, execution provider cpu
    assert served.variant == "int8" and served.reason.startswith("auto on CPU: INT8 AUROC")


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_shipped_variants_belong_to_the_shipped_model_and_keep_its_auroc(variant: str, nih_dir: Path) -> None:
    """A variant built from an older default model would silently serve other weights: refuse that."""
    model = load_model(MODEL.with_suffix(f".{variant}.onnx"), policy="cpu")
    facts = model.contract.metadata["variant"]
    assert facts["variant"] == variant
    assert facts["source_sha256"] == load_model(MODEL, policy="cpu").sha256
    assert abs(facts["auroc"] - facts["fp32_auroc"]) <= 0.005
    assert model.has_heatmap and model.contract.threshold == load_model(MODEL, policy="cpu").contract.threshold
