"""The whole offline road on synthetic phantoms, through the CLI: synth -> train -> evaluate -> export,
then the real service serves the exported model and reproduces the evaluation's numbers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import require_module

torch = require_module("torch")

from model_export.__main__ import build_parser, main
from model_export.synthetic import phantom, write_dataset
from model_export.train import TrainConfig, train
from service.model import ModelError, load_model
from service.predictor import prepare, score_bytes
from service.preprocessing import preprocess
from testkit.live_server import REPO_ROOT, free_port, running_service

MAX_PIXELS = 25_000_000


@dataclass(frozen=True)
class Pipeline:
    data: Path
    run: Path
    model: Path
    report: dict
    predictions: list[dict[str, str]]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("pipeline")
    data, run, model = root / "synthetic", root / "run", root / "synthetic.onnx"
    main(["synth", str(data), "--count", "20", "--seed", "0"])
    main(
        ["train", "--data", str(data), "--output", str(run), "--epochs", "6", "--batch-size", "4",
         "--learning-rate", "0.002", "--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "0"]
    )  # fmt: skip
    main(["evaluate", str(run), "--bootstrap", "500"])
    main(["export", str(run), "--output", str(model)])  # unnamed: named after its run, never as the shipped model
    report = json.loads((run / "evaluation" / "report.json").read_text())
    with open(run / "evaluation" / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    return Pipeline(data, run, model, report, predictions)


def test_the_model_learned_to_find_synthetic_effusions_on_held_out_phantoms(pipeline: Pipeline) -> None:
    test = pipeline.report["cnn"]["test"]
    assert test["images"] == 10 and test["effusion"] == 5
    assert test["auroc"] >= 0.9
    split = json.loads((pipeline.run / "split.json").read_text())
    patients = [{row["patient_id"] for row in split[name]} for name in ("train", "val", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for name in ("report.md", "roc.png", "pr.png"):
        assert (pipeline.run / "evaluation" / name).stat().st_size > 0


def test_the_exported_model_carries_the_contract_and_the_evaluation(pipeline: Pipeline) -> None:
    model = load_model(pipeline.model, policy="cpu")
    contract = model.contract
    assert contract.threshold == pipeline.report["threshold"]["value"]
    assert (contract.model_name, contract.model_version) == ("cxr-effusion-run", "0.0.0-dev")
    metadata = contract.metadata
    assert metadata["validation_metrics"]["test_auroc"] == pipeline.report["cnn"]["test"]["auroc"]
    assert metadata["training_data"]["split"]["test"] == {"images": 10, "patients": 10, "effusion": 5, "nofinding": 5}
    assert metadata["exporter"]["opset"] >= 17
    datetime.fromisoformat(metadata["created_at"])
    graph = onnx.load(str(pipeline.model), load_external_data=False).graph
    assert [node.op_type for node in graph.node].count("Softmax") == 1
    assert pipeline.model.stat().st_size < 50 * 1024 * 1024


def test_service_preprocessing_and_onnx_reproduce_the_training_time_evaluation(pipeline: Pipeline) -> None:
    model = load_model(pipeline.model, policy="cpu")
    served = np.array([score_bytes(model, Path(row["path"]).read_bytes(), max_pixels=MAX_PIXELS).probability for row in pipeline.predictions])
    evaluated = np.array([float(row["probability"]) for row in pipeline.predictions])
    np.testing.assert_allclose(served, evaluated, atol=1e-4)
    test = [index for index, row in enumerate(pipeline.predictions) if row["split"] == "test"]
    labels = [int(pipeline.predictions[index]["label"]) for index in test]
    assert roc_auc_score(labels, served[test]) == pytest.approx(pipeline.report["cnn"]["test"]["auroc"], abs=1e-9)

    batch = np.concatenate([model_input(Path(pipeline.predictions[index]["path"])) for index in test[:3]])
    np.testing.assert_allclose(model.predict(batch), evaluated[test[:3]], atol=1e-4)  # dynamic batch size


def model_input(path: Path) -> np.ndarray:
    return prepare(path.read_bytes(), max_pixels=MAX_PIXELS).tensor


def test_the_real_service_serves_the_exported_model(pipeline: Pipeline) -> None:
    row = next(row for row in pipeline.predictions if row["split"] == "test" and row["label"] == "1")
    with running_service(pipeline.model) as server:
        response = httpx.post(
            f"{server.url}/predict", files={"file": ("scan.png", Path(row["path"]).read_bytes(), "image/png")}, timeout=30
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["effusion_probability"] == pytest.approx(float(row["probability"]), abs=1e-4)
    assert body["threshold"] == pytest.approx(pipeline.report["threshold"]["value"])
    expected = "effusion" if body["effusion_probability"] >= body["threshold"] else "no_effusion"
    assert body["label"] == expected
    assert body["model"]["name"] == "cxr-effusion-run"


def test_the_service_refuses_the_model_exported_under_another_preprocessing_id(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    model = onnx.load(str(pipeline.model))
    props = {prop.key: prop.value for prop in model.metadata_props}
    props["preprocessing_id"] = "imagenet-224/v1"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))

    with pytest.raises(ModelError, match="trained with preprocessing 'imagenet-224/v1'"):
        load_model(foreign, policy="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(foreign), "--port", str(free_port())],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "error: model refused: model was trained with preprocessing 'imagenet-224/v1'" in result.stderr


def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path: Path) -> None:
    small = tmp_path / "small"
    write_dataset(small, count=5, seed=1, size=256)
    settings = {"data": str(small), "epochs": 2, "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}
    straight = train(TrainConfig(output=str(tmp_path / "straight"), **settings))
    first = train(TrainConfig(output=str(tmp_path / "resumed"), **settings), max_minutes=0)
    assert first.epochs_completed == 1 and "--max-minutes" in first.stop_reason
    resumed = train(TrainConfig(output=str(tmp_path / "resumed"), **settings), resume=True)
    assert resumed.epochs_completed == straight.epochs_completed == 2
    weights = [torch.load(tmp_path / name / "last.pt", weights_only=True)["model"] for name in ("straight", "resumed")]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=1e-6)


def test_every_cli_option_is_documented() -> None:
    parser = build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    assert {"train", "evaluate", "export", "synth"} <= set(commands.choices)
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    result = subprocess.run(
        [sys.executable, "-m", "model_export", "train", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--max-minutes" in result.stdout and "--resume" in result.stdout


def test_the_cli_reports_a_one_class_dataset_in_one_line(tmp_path: Path) -> None:
    main(["synth", str(tmp_path / "data"), "--count", "1", "--size", "256"])
    for path in (tmp_path / "data" / "nofinding").iterdir():
        path.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "model_export", "train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'data'} holds only one class (1 effusion, 0 no-finding images); both are needed"
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_heatmap_lights_up_the_side_with_the_opacity(pipeline: Pipeline, side: str) -> None:
    model = load_model(pipeline.model, policy="cpu")
    assert model.has_heatmap
    rng = np.random.default_rng(7)
    scans = [phantom(rng, effusion=True, side=side) for _ in range(4)]
    batch = np.concatenate([preprocess(scan) for scan in scans])
    _, heat = model.predict_with_heatmap(batch)
    assert heat.shape == (4, 256, 256) and heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    left, right = heat[:, :, :128].mean(), heat[:, :, 128:].mean()
    assert (left > right) if side == "left" else (right > left), f"left {left:.3f} right {right:.3f}"

