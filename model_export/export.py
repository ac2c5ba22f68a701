"""A trained checkpoint -> an ONNX file the service accepts, verified before it is published.

The graph computes P(effusion) = softmax(logits)[:, 1] itself (input `image` float32
[N, 1, 256, 256] with dynamic N, output `effusion_probability` float32 [N]), and carries the
service's contract in its metadata, built by `service.model.contract_metadata`. Before the
file appears at its destination, it is opened with the service's own loader
(`service.model.load_model`, which checks signature and contract) and its outputs on real
images are compared with torch's: any difference above the tolerance (1e-4) fails the
export, and nothing is written. The graph's second output, `heatmap`, is a class-activation
map ([N, 256, 256] in [0, 1], see `EffusionWithHeatmap`), parity-checked the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import onnxscript
import torch
import torchvision
from torch import nn

from model_export.data import Sample, load_tensors
from model_export.errors import ExportError
from model_export.network import EffusionWithHeatmap, load_trained
from model_export.rundir import read_config, read_split
from service.model import HEATMAP_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME, ModelError, contract_metadata, load_model

OPSET = 18
TOLERANCE = 1e-4
HEATMAP_TOLERANCE = 1e-3  # maps are scaled by their own peak, which magnifies float noise where the peak is low
DEV_VERSION = "0.0.0-dev"  # a self-trained model's version unless one is given: never the shipped model's identity

Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_difference: float
    parity_images: int
    metadata: dict[str, str]


def export_run(
    run: Path,
    output: Path,
    *,
    evaluation: Path | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    parity_images: int = 8,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export best.pt of `run` with the threshold and metrics of its evaluation report.

    Unnamed, the model is `cxr-effusion-<run folder name>` version `0.0.0-dev`, so a self-trained
    model never answers /predict and /model as if it were the shipped one.
    """
    evaluation = evaluation or run / "evaluation" / "report.json"
    try:
        report = json.loads(evaluation.read_text())
    except OSError as error:
        raise ExportError(
            f"no evaluation report at {evaluation} ({error.strerror or error}); "
            f"run `python -m model_export evaluate {run}` first: the export takes its threshold from it"
        ) from error
    config = read_config(run)
    split = read_split(run)
    network, checkpoint = load_trained(run / "best.pt")
    metadata = contract_metadata(
        threshold=report["threshold"]["value"],
        **identity(run, model_name, model_version),
        threshold_rule=report["threshold"]["rule"],
        training_data={
            "data": config.data,
            "labels": config.labels,
            "classes": {"0": "nofinding", "1": "effusion"},
            "split_seed": split.seed,
            "split": split.summary(),
            "checkpoint_epoch": checkpoint["epoch"],
        },
        validation_metrics=summary_metrics(report),
        **({"initial_weights": json.loads((run / "init.json").read_text())} if (run / "init.json").exists() else {}),
        exporter=exporter_versions(opset),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        intended_use="research and integration testing, not for clinical use",
    )
    samples = (split.test + split.val)[:parity_images]
    return export_model(network, output, metadata, parity_batch(samples), opset=opset, tolerance=tolerance)


def identity(run: Path, model_name: str | None, model_version: str | None) -> dict[str, str]:
    """The contract's name and version: as given, else `cxr-effusion-<run folder>` `0.0.0-dev`, never the shipped model's."""
    return {"model_name": model_name or f"cxr-effusion-{run.resolve().name}", "model_version": model_version or DEV_VERSION}


def export_model(
    network: nn.Module,
    output: Path,
    metadata: dict[str, str],
    images: np.ndarray,
    *,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    input_pool: int = 1,
) -> ExportResult:
    """Export, embed `metadata`, load with the service, check parity on `images`, then publish.

    `input_pool` > 1 puts an exact area average of the 256 px input to the training resolution into the graph.
    """
    module = EffusionWithHeatmap(network.cpu().eval(), input_pool=input_pool).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        torch.onnx.export(
            module,
            (torch.from_numpy(np.concatenate([images, images])[:2]),),  # N=1 would be specialised
            partial,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, HEATMAP_OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N")}},
            external_data=False,
            verbose=False,
        )
        model = onnx.load(partial)
        onnx.helper.set_model_props(model, metadata)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, partial)
        try:
            served = load_model(partial, policy="cpu")
        except ModelError as error:
            raise ExportError(f"the service would refuse this model: {error}") from error

        def reference(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))[0].numpy()

        def reference_heatmap(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))[1].numpy()

        difference = check_parity(reference, served.predict, images, tolerance=tolerance)
        check_parity(
            reference_heatmap,
            lambda batch: served.predict_with_heatmap(batch)[1],
            images,
            tolerance=HEATMAP_TOLERANCE,
        )
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(output, difference, len(images), metadata)


def check_parity(reference: Scorer, candidate: Scorer, images: np.ndarray, *, tolerance: float) -> float:
    """Largest |reference - candidate| over the images one by one and as one batch; raise above `tolerance`."""
    runs = [images[index : index + 1] for index in range(len(images))] + [images]
    difference = max(float(np.max(np.abs(reference(batch) - candidate(batch)))) for batch in runs)
    if not difference <= tolerance:  # also refuses NaN
        raise ExportError(
            f"parity check failed: ONNX Runtime and torch differ by up to {difference:.3g} "
            f"on {len(images)} real images (tolerance {tolerance:g})"
        )
    return difference


def parity_batch(samples: Sequence[Sample]) -> np.ndarray:
    """Real images through the service's decode and preprocess, float32 [N, 1, 256, 256]."""
    if not samples:
        raise ExportError("the run's split has no validation or test images to check parity on")
    return np.ascontiguousarray(load_tensors(samples))


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The evaluation numbers a model carries with it (its card has the full report)."""
    cnn, reference = report["cnn"], report["reference"]
    return {
        "checkpoint_val_auroc": report["checkpoint"]["val_auroc"],
        "test_auroc": cnn["test"]["auroc"],
        "test_auroc_ci95": cnn["test"]["auroc_ci95"],
        "test_average_precision": cnn["test"]["average_precision"],
        "test_sensitivity": cnn["test"]["sensitivity"],
        "test_specificity": cnn["test"]["specificity"],
        "test_images": cnn["test"]["images"],
        "reference_test_auroc": reference["test"]["auroc"],
    }


def exporter_versions(opset: int) -> dict[str, Any]:
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": opset,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
