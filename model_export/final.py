"""The shipped model: fit a recipe on the whole pool, then export it calibrated by its own cross-validation.

    python -m model_export fit --recipe R [--set ...] --data ... --output runs/final
    python -m model_export export runs/final --cv runs/study/R --output models/NAME.onnx

Nothing about the threshold or the calibration is learnt from scans the shipped network trained
on: both come from the out-of-fold logits of the same recipe's cross-validation (`--cv`), where
every scan was scored by a network that never saw it. Platt scaling (sigmoid(a * logit + b)) is
folded into the graph's 2-class head, so the contract's `effusion_probability` is calibrated.

`fit` records the sha256 of the weights after every epoch (`final.json`), so a rerun of the
documented command can prove, epoch by epoch, that it reproduces the shipped weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from model_export.cache import scan_tensor
from model_export.curves import plot_history
from model_export.cv import oof_columns, read_oof, target_matrix, trains_on
from model_export.distributed import SINGLE, World
from model_export.errors import ExportError
from model_export.evaluate import youden_threshold
from model_export.export import ExportResult, export_model, exporter_versions, identity
from model_export.fit import effusion_index, fit, output_names
from model_export.init import initial_weights
from model_export.network import binary_head, build_network
from model_export.pool import Downsampled, pool_tensors, read_pool
from model_export.recipes import Recipe
from model_export.rundir import write_json
from service.model import contract_metadata
from service.preprocessing import OUTPUT_SIZE
from service.settings import DEFAULT_MAX_PIXELS

THRESHOLD_RULE = "Youden's J (max sensitivity + specificity - 1) on calibrated out-of-fold probabilities, effusion vs all other scans"
CALIBRATION_RULE = "Platt scaling, sigmoid(a * logit + b), fitted on the recipe's out-of-fold logits (effusion vs all other scans)"
ECE_BINS = 10


def state_sha256(network: torch.nn.Module) -> str:
    """A fingerprint of the weights and buffers, independent of file format."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def cpu_facts() -> dict[str, Any]:
    """What decides bit-exact CPU results: torch's kernel level, AMX for bf16, the thread count."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = []
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def fit_final(
    roots: list[Path],
    recipe: Recipe,
    output: Path,
    *,
    recipe_name: str,
    nih_labels: Path | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    cache_dtype: str = "float32",
    stop_after_epochs: int | None = None,
    command: str = "",
    world: World = SINGLE,
    workers: int = 2,
    init: str | None = None,
) -> dict[str, Any]:
    """Train on every scan the recipe takes; write model.pt and final.json (recipe, pool, per-epoch weight hashes).

    Under torchrun every rank trains and only rank 0 writes.
    """
    started = time.monotonic()
    start_weights, provenance = initial_weights(init) if init else (None, None)
    if world.is_main:
        output.mkdir(parents=True, exist_ok=True)
    scans = read_pool(roots, nih_labels)
    chosen = [scan for scan in scans if trains_on(recipe, scan)]
    rows = np.flatnonzero([trains_on(recipe, scan) for scan in scans])
    tensors = world.main_first(lambda: pool_tensors(scans, cache_dir or output / "cache", workers=workers, dtype=cache_dtype))
    images = Downsampled(tensors.take(rows), recipe.resolution)
    targets = target_matrix(recipe, chosen)
    hashes: list[str] = []
    history: list[dict[str, float]] = []

    class Stop(Exception):
        pass

    def record(row: dict[str, float], network: torch.nn.Module) -> None:
        hashes.append(state_sha256(network))
        history.append(row)
        if world.is_main:
            write_json(output / "history.json", history)
            plot_history(history, output / "curves.png")
        if stop_after_epochs is not None and row["epoch"] >= stop_after_epochs:
            raise Stop

    try:
        network = fit(recipe, images, targets, seed=seed, description="fit", on_epoch=record, world=world, workers=workers, init=start_weights)
    except Stop:
        network = None
    summary = {
        "recipe": recipe_name,
        "settings": recipe.describe(),
        "outputs": list(output_names(recipe)),
        "seed": seed,
        "cache_dtype": cache_dtype,
        "command": command,
        "scans": len(chosen),
        "patients": sorted({scan.patient_id for scan in chosen}),
        "labels": {label: sum(scan.label == label for scan in chosen) for label in ("effusion", "nofinding", "other")},
        "epoch_sha256": hashes,
        "cpu": cpu_facts(),
        "processes": world.size,
        **({"initial_weights": provenance} if provenance else {}),
        "minutes": (time.monotonic() - started) / 60,
        "complete": network is not None,
    }
    if not world.is_main:
        return summary
    if network is not None:
        torch.save({"model": network.state_dict(), "outputs": summary["outputs"]}, output / "model.pt")
        summary["sha256"] = state_sha256(network)
    (output / "final.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit + b), a maximum-likelihood fit (a large C: practically unregularised)."""
    model = LogisticRegression(C=1e6, max_iter=1000).fit(logits.reshape(-1, 1), labels)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty equal-width probability bin: mean predicted probability, observed effusion rate, scans."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    return [
        {"predicted": float(probabilities[which == b].mean()), "observed": float(labels[which == b].mean()), "scans": int((which == b).sum())}
        for b in range(bins)
        if (which == b).any()
    ]


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean predicted| over the reliability bins, weighted by bin size."""
    return float(sum(b["scans"] / len(labels) * abs(b["observed"] - b["predicted"]) for b in reliability(labels, probabilities, bins)))


def cross_fitted_probabilities(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Calibrated probabilities where each fold's Platt fit saw only the other folds: an honest ECE."""
    probabilities = np.zeros(len(logits))
    for fold in np.unique(folds):
        mask = folds == fold
        a, b = platt(logits[~mask], labels[~mask])
        probabilities[mask] = sigmoid(a * logits[mask] + b)
    return probabilities


def calibration_from_cv(cv_run: Path) -> dict[str, Any]:
    """Platt parameters, threshold and the operating point, all from the CV run's out-of-fold logits."""
    return calibration_of(oof_columns(read_oof(cv_run / "oof.csv")))[0]


def calibration_of(data: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """(`calibration_from_cv`'s figures, the cross-fitted calibrated probabilities its ECE is measured on) of a cv
    run's out-of-fold columns (`model_export.cv.oof_columns`)."""
    logits, labels, binary = data["logit"], data["labels"], data["binary"]
    a, b = platt(logits, labels)
    probabilities = sigmoid(a * logits + b)
    threshold = youden_threshold(labels, probabilities)
    honest = cross_fitted_probabilities(logits, labels, data["folds"])
    predicted = probabilities >= threshold
    return {
        "platt": {"a": a, "b": b, "rule": CALIBRATION_RULE},
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "ece_cross_fitted": expected_calibration_error(labels, honest),
        "ece_uncalibrated": expected_calibration_error(labels, sigmoid(logits)),
        "operating_point": {
            "effusion_vs_all": operating_point(labels, predicted),
            "effusion_vs_nofinding": operating_point(labels[binary], predicted[binary]),
        },
    }, honest


def operating_point(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    positives, negatives = labels == 1, labels == 0
    return {
        "sensitivity": float(predicted[positives].mean()),
        "specificity": float((~predicted[negatives]).mean()),
        "scans": int(len(labels)),
    }


def export_final(
    run: Path,
    cv_run: Path,
    output: Path,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    roots: list[Path] | None = None,
    parity_images: int = 8,
) -> ExportResult:
    """Export `run`'s network with the calibration and threshold of `cv_run`, through the verified exporter."""
    summary = json.loads((run / "final.json").read_text())
    if not summary.get("complete"):
        raise ExportError(f"{run} holds no finished fit (it was stopped early)")
    cv_report = json.loads((cv_run / "report.json").read_text())
    if cv_report["settings"] != summary["settings"]:
        raise ExportError(f"{cv_run} cross-validated other settings than {run} was fitted with: its calibration does not apply")
    recipe = Recipe(**summary["settings"])
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    network = build_network(outputs=len(state["outputs"]))
    network.load_state_dict(state["model"])
    calibration = calibration_from_cv(cv_run)
    head = binary_head(network, effusion_index(recipe), scale=calibration["platt"]["a"], shift=calibration["platt"]["b"])
    oof = cv_report["oof"]
    metadata_metrics = {
        "source": "out-of-fold predictions of the recipe's patient-level cross-validation (not the shipped network's own training scans)",
        "folds": cv_report["folds"],
        **{
            name: {"auroc": row["cnn"]["auroc"], "auroc_ci95": row["cnn"]["ci95"], "reference_auroc": row["reference"]["auroc"], "scans": row["scans"]}
            for name, row in oof.items()
            if "cnn" in row
        },
        "ece_cross_fitted": calibration["ece_cross_fitted"],
        "operating_point": calibration["operating_point"],
    }  # fmt: skip
    metadata = contract_metadata(
        threshold=calibration["threshold"],
        **identity(run, model_name, model_version),
        threshold_rule=calibration["threshold_rule"],
        calibration=calibration["platt"],
        training_data={
            "recipe": summary["recipe"],
            "settings": summary["settings"],
            "scans": summary["scans"],
            "labels": summary["labels"],
            "training_resolution": recipe.resolution,
            "weights_sha256": summary["sha256"],
            "command": summary["command"],
            "patients": summary["patients"],
        },
        validation_metrics=metadata_metrics,
        **({"initial_weights": summary["initial_weights"]} if "initial_weights" in summary else {}),
        exporter=exporter_versions(18),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        intended_use="research and integration testing, not for clinical use",
    )
    images = parity_batch(roots or [], parity_images)
    return export_model(head, output, metadata, images, input_pool=OUTPUT_SIZE // recipe.resolution)


def final_variants(
    model: Path,
    roots: list[Path],
    *,
    variants: tuple[str, ...],
    cache_dir: Path,
    cache_dtype: str = "float32",
    calibration_images: int = 64,
    seed: int = 0,
) -> list[Any]:
    """INT8 / FP16 variants of a fit run's model under the usual guard (AUROC within 0.005 of FP32's).

    INT8 is calibrated on pool scans; both are compared with FP32 on the pool's effusion and
    no-finding scans, which the network trained on: a check that the variant ranks scans like its
    source, not a performance figure (that is the card's out-of-fold evidence).
    """
    from model_export.variants import auroc, build_variant

    scans = read_pool(roots)
    tensors = pool_tensors(scans, cache_dir, dtype=cache_dtype)  # the fit's cache, not a second copy in another dtype
    rng = np.random.default_rng(seed)
    calibration = np.ascontiguousarray(tensors[np.sort(rng.choice(len(scans), size=min(calibration_images, len(scans)), replace=False))])
    binary = np.flatnonzero([scan.label != "other" for scan in scans])
    evaluation = tensors.take(binary)  # still on disk: scored batch by batch, so memory does not grow with the pool
    labels = np.array([scans[index].effusion for index in binary])
    fp32_auroc = auroc(model, evaluation, labels, policy="cpu")
    return [
        build_variant(model, variant, calibration=calibration, evaluation=evaluation, labels=labels, fp32_auroc=fp32_auroc)
        for variant in variants
    ]


def write_scores(model: Path, roots: list[Path], output: Path) -> int:
    """The served probability of every scan of `roots` the service accepts (>= 256 px), through its own road.

    A test re-scores these files with the shipped model file and must find the same numbers.
    """
    from service.model import load_model
    from service.predictor import score_bytes

    served = load_model(model, policy="cpu")
    rows = []
    for scan in read_pool(roots):
        if scan.width >= OUTPUT_SIZE:
            path = Path(scan.path)
            probability = score_bytes(served, path.read_bytes(), max_pixels=DEFAULT_MAX_PIXELS).probability
            rows.append(f"{path.parent.parent.name}/{path.parent.name}/{path.name},{scan.label},{probability:.7f}")
    output.write_text("file,label,probability\n" + "\n".join(rows) + "\n")
    return len(rows)


def parity_batch(roots: list[Path], count: int) -> np.ndarray:
    """Real scans for the exporter's parity check, or random tensors when no data root is given."""
    if roots:
        scans = [scan for scan in read_pool(roots) if scan.width >= OUTPUT_SIZE]
        scans = scans[:: max(1, len(scans) // count)][:count]  # spread over the roots and labels
        return np.stack([scan_tensor(Path(scan.path)) for scan in scans]).astype(np.float32)
    return np.random.default_rng(0).random((count, 1, OUTPUT_SIZE, OUTPUT_SIZE), dtype=np.float32)
