"""The shipped default model (models/) and its card (models/evaluation/): the service serves it, its
contract carries the card's numbers, the card recomputes from the committed out-of-fold predictions,
the file reproduces its recorded scores on real NIH scans through the service's own road, and the
documented `fit` command reproduces its training bit for bit (first epoch, in CI).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.model import load_model
from service.predictor import score_bytes
from service.settings import DEFAULT_MODEL_PATH
from service.variant_choice import load_served_model
from tests.conftest import REPO_ROOT, SHARED_DATA, make_settings, require_module, wait_ready

MODEL = REPO_ROOT / DEFAULT_MODEL_PATH
EVALUATION = REPO_ROOT / "models" / "evaluation"


def recorded_scores(nih_dir: Path) -> list[tuple[Path, str, float]]:
    """(file in ../shared/data, label, probability the export recorded) for every scored scan."""
    with open(EVALUATION / "scores.csv", newline="") as handle:
        return [(SHARED_DATA / row["file"], row["label"], float(row["probability"])) for row in csv.DictReader(handle)]


def test_the_default_model_is_where_the_service_looks_and_small_enough() -> None:
    assert MODEL.is_file(), f"{MODEL} is missing"
    assert MODEL.stat().st_size < 50 * 1024 * 1024
    contract = load_model(MODEL, policy="cpu").contract
    assert contract.model_name == "cxr-effusion-resnet18"
    assert contract.model_version == "2.0.0"
    assert contract.metadata["intended_use"] == "research and integration testing, not for clinical use"


def test_the_contract_carries_the_cards_threshold_calibration_and_out_of_fold_metrics() -> None:
    card = json.loads((EVALUATION / "card.json").read_text())
    contract = load_model(MODEL, policy="cpu").contract
    assert contract.threshold == pytest.approx(card["calibration"]["threshold"], abs=1e-12)
    assert contract.metadata["calibration"]["a"] == pytest.approx(card["calibration"]["platt"]["a"])
    metrics = contract.metadata["validation_metrics"]
    assert metrics["effusion_vs_nofinding"]["auroc"] == pytest.approx(card["auroc"]["effusion_vs_nofinding"]["auroc"])
    final = json.loads((EVALUATION / "final.json").read_text())
    assert contract.metadata["training_data"]["weights_sha256"] == final["sha256"]


def test_the_card_recomputes_from_the_committed_out_of_fold_predictions() -> None:
    require_module("sklearn")
    from model_export.card import card_evidence

    card = json.loads((EVALUATION / "card.json").read_text())
    again = card_evidence(EVALUATION, resamples=0)  # point estimates; the intervals need the 2000 resamples
    assert again["calibration"]["threshold"] == pytest.approx(card["calibration"]["threshold"])
    assert again["calibration"]["ece_cross_fitted"] == pytest.approx(card["calibration"]["ece_cross_fitted"])
    for section in ("auroc", "reference", "top_corners_masked"):
        for name, entry in card[section].items():
            assert again[section][name]["auroc"] == pytest.approx(entry["auroc"], abs=1e-12), (section, name)
    for group, values in card["subgroups"].items():
        for value, entry in values.items():
            assert again["subgroups"][group][value].get("auroc") == pytest.approx(entry.get("auroc"), abs=1e-12)
    assert card["auroc"]["effusion_vs_nofinding"]["auroc"] > card["reference"]["effusion_vs_nofinding"]["auroc"]


def test_the_model_file_reproduces_its_recorded_scores_on_real_scans(nih_dir: Path) -> None:
    model = load_model(MODEL, policy="cpu")
    rows = recorded_scores(nih_dir)
    assert len(rows) > 400
    served = [score_bytes(model, path.read_bytes(), max_pixels=25_000_000).probability for path, _, _ in rows]
    np.testing.assert_allclose(served, [p for _, _, p in rows], atol=1e-5)
    labels = np.array([label for _, label, _ in rows])
    binary = labels != "other"
    positive = np.array(served)[binary & (labels == "effusion")][:, None]
    negative = np.array(served)[binary & (labels == "nofinding")][None, :]
    # Scans it trained on (not a performance figure): it must rank them at least as well as the unseen scans of its
    # cross-validation did; a flipped label, a broken graph or the wrong preprocessing falls far below that.
    out_of_fold = json.loads((EVALUATION / "card.json").read_text())["auroc"]["effusion_vs_nofinding"]["auroc"]
    assert np.mean(positive > negative) + 0.5 * np.mean(positive == negative) > out_of_fold


def test_the_default_model_answers_over_http(nih_dir: Path) -> None:
    path, _, probability = recorded_scores(nih_dir)[0]
    with TestClient(create_app(make_settings(MODEL, model_variant="fp32"))) as client:  # scores.csv holds FP32's numbers
        wait_ready(client, timeout=120)
        response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["effusion_probability"] == pytest.approx(probability, abs=1e-4)
    assert body["model"]["name"] == "cxr-effusion-resnet18" and body["model"]["version"] == "2.0.0"


def test_by_default_the_cpu_serves_the_shipped_int8_variant() -> None:
    served = load_served_model(make_settings(MODEL))  # CXR_MODEL_VARIANT=auto, execution provider cpu
    assert served.variant == "int8" and served.reason.startswith("auto on CPU: INT8 AUROC")


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_shipped_variants_belong_to_the_shipped_model_and_keep_its_auroc(variant: str) -> None:
    """A variant built from an older default model would silently serve other weights: refuse that."""
    model = load_model(MODEL.with_suffix(f".{variant}.onnx"), policy="cpu")
    facts = model.contract.metadata["variant"]
    assert facts["variant"] == variant
    assert facts["source_sha256"] == load_model(MODEL, policy="cpu").sha256
    assert abs(facts["auroc"] - facts["fp32_auroc"]) <= 0.005
    assert model.has_heatmap and model.contract.threshold == load_model(MODEL, policy="cpu").contract.threshold


@pytest.mark.slow
def test_the_documented_fit_command_reproduces_the_shipped_weights_epoch_one(nih_dir: Path, tmp_path: Path) -> None:
    """Rerun the shipped model's own `fit` command for one epoch: its weights must hash like the shipped run's first epoch."""
    require_module("torch")
    from model_export.__main__ import main
    from model_export.final import cpu_facts

    final = json.loads((EVALUATION / "final.json").read_text())
    args = final["command"].split()[3:]  # after "python -m model_export"
    args = [str(SHARED_DATA / arg.split("data/", 1)[1]) if arg.startswith("../shared/data/") else arg for arg in args]
    args[args.index("--output") + 1] = str(tmp_path / "rerun")
    if "--cache-dir" in args:
        args[args.index("--cache-dir") + 1] = str(tmp_path / "cache")
    else:
        args += ["--cache-dir", str(tmp_path / "cache")]  # never the clone's runs/
    here = {key: value for key, value in cpu_facts().items() if key != "threads"}
    shipped = {key: value for key, value in final["cpu"].items() if key != "threads"}
    if here != shipped:
        pytest.skip(f"bit-exact bf16 results need the shipped run's CPU kernels {shipped}; this machine has {here}")
    main([*args, "--stop-after-epochs", "1"])
    rerun = json.loads((tmp_path / "rerun" / "final.json").read_text())
    assert rerun["epoch_sha256"] == final["epoch_sha256"][:1], (
        "the documented fit command no longer reproduces the shipped model's first epoch "
        f"(threads: {os.cpu_count()} cores here); see models/README.md"
    )


def test_the_card_command_writes_the_figures_and_plots_from_the_out_of_fold_predictions(tmp_path: Path) -> None:
    require_module("sklearn")
    from model_export.card import write_card

    evidence = write_card(EVALUATION, tmp_path, resamples=50)
    card = json.loads((EVALUATION / "card.json").read_text())
    assert evidence["auroc"]["effusion_vs_nofinding"]["auroc"] == pytest.approx(card["auroc"]["effusion_vs_nofinding"]["auroc"], abs=1e-12)
    assert json.loads((tmp_path / "card.json").read_text())["calibration"]["threshold"] == pytest.approx(card["calibration"]["threshold"])
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "reliability.png").stat().st_size > 0
    assert (tmp_path / "oof.csv").read_bytes() == (EVALUATION / "oof.csv").read_bytes()
