"""Honest evaluation of a training run: held-out metrics with uncertainty, beside a trivial reference.

The decision threshold is chosen on the validation split by Youden's J and then applied,
unchanged, to the test split, so test sensitivity and specificity are not tuned on test data.
AUROC and average precision carry percentile-bootstrap 95% confidence intervals (resampling
test images). The reference is a logistic regression on 32x32 thumbnails of the very same
preprocessed tensors and split: whatever the CNN adds shows up as the gap between the two.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from model_export.network import load_trained, predict_probabilities
from model_export.rundir import load_split_tensors, read_config, read_split
from model_export.train import choose_device

THRESHOLD_RULE = "Youden's J (max sensitivity + specificity - 1) on the validation split, applied unchanged to test"
REFERENCE = "logistic regression (L2, C=1, balanced class weights) on standardised 32x32 thumbnails"
THUMBNAIL = 32


def evaluate_run(run: Path, *, report_dir: Path | None = None, resamples: int = 2000, device: str = "cpu") -> dict[str, Any]:
    """Evaluate best.pt of `run` on its validation and test splits; write the report; return it."""
    report_dir = report_dir or run / "evaluation"
    config = read_config(run)
    split = read_split(run)
    train_x, val_x, test_x = load_split_tensors(split, config, ["train", "val", "test"])
    labels = {name: np.array([sample.label for sample in samples]) for name, samples in split.parts().items()}

    network, checkpoint = load_trained(run / "best.pt")
    target = choose_device(device)
    cnn = {
        "val": predict_probabilities(network, val_x, device=target),
        "test": predict_probabilities(network, test_x, device=target),
    }
    reference = reference_probabilities(train_x, labels["train"], {"val": val_x, "test": test_x})

    threshold = youden_threshold(labels["val"], cnn["val"])
    reference_threshold = youden_threshold(labels["val"], reference["val"])
    report = {
        "run": str(run),
        "checkpoint": checkpoint,
        "split": {"seed": split.seed, **split.summary()},
        "threshold": {"value": threshold, "rule": THRESHOLD_RULE},
        "bootstrap": {"resamples": resamples, "interval": "percentile 95%", "seed": config.seed},
        "cnn": {
            name: binary_metrics(labels[name], cnn[name], threshold, resamples=resamples, seed=config.seed)
            for name in ("val", "test")
        },
        "reference": {
            "method": REFERENCE,
            "threshold": reference_threshold,
            **{
                name: binary_metrics(labels[name], reference[name], reference_threshold, resamples=resamples, seed=config.seed)
                for name in ("val", "test")
            },
        },
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_predictions(report_dir / "predictions.csv", split.parts(), cnn, reference, labels)
    plot_curves(report_dir, labels["test"], cnn["test"], reference["test"], threshold)
    (report_dir / "report.md").write_text(markdown_report(report))
    return report


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score cut-off (predict effusion when score >= cut-off) maximising sensitivity + specificity - 1."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)  # roc_curve starts with +inf (nobody positive)
    best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    return float(np.clip(thresholds[best], 1e-6, 1 - 1e-6))  # the contract needs 0 < threshold < 1


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int, seed: int
) -> dict[str, Any]:
    """AUROC and AP with bootstrap 95% CIs; sensitivity, specificity and confusion matrix at `threshold`."""
    tn, fp, fn, tp = (int(value) for value in confusion_matrix(labels, scores >= threshold, labels=[0, 1]).ravel())
    auroc_ci, ap_ci = bootstrap_intervals(labels, scores, resamples=resamples, seed=seed)
    return {
        "images": len(labels),
        "effusion": int(labels.sum()),
        "auroc": float(roc_auc_score(labels, scores)),
        "auroc_ci95": auroc_ci,
        "average_precision": float(average_precision_score(labels, scores)),
        "average_precision_ci95": ap_ci,
        "prevalence": float(labels.mean()),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def bootstrap_intervals(
    labels: np.ndarray, scores: np.ndarray, *, resamples: int, seed: int
) -> tuple[list[float], list[float]]:
    """Percentile 95% intervals of AUROC and average precision over image resamples with both classes."""
    rng = np.random.default_rng(seed)
    aurocs, precisions = [], []
    for _ in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        sample = labels[index]
        if 0 < sample.sum() < len(sample):
            aurocs.append(roc_auc_score(sample, scores[index]))
            precisions.append(average_precision_score(sample, scores[index]))
    if not aurocs:
        return [float("nan")] * 2, [float("nan")] * 2
    return (
        [float(value) for value in np.percentile(aurocs, [2.5, 97.5])],
        [float(value) for value in np.percentile(precisions, [2.5, 97.5])],
    )


def thumbnails(tensors: np.ndarray, chunk: int = 256) -> np.ndarray:
    """[N, 1, 256, 256] -> [N, 32*32] by 8x8 area means, read in chunks so a memory map stays small."""
    factor = tensors.shape[-1] // THUMBNAIL
    rows = []
    for start in range(0, len(tensors), chunk):
        block = np.asarray(tensors[start : start + chunk], dtype=np.float32)[:, 0]
        small = block.reshape(len(block), THUMBNAIL, factor, THUMBNAIL, factor).mean(axis=(2, 4))
        rows.append(small.reshape(len(block), -1))
    return np.concatenate(rows)


def thumbnail_regression() -> Pipeline:
    """The trivial baseline every figure stands beside: a logistic regression on 32x32 thumbnails (standardised,
    classes balanced). It converges in about 220 iterations on the pool; the limit only bounds a bad case."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))


def reference_probabilities(
    train_x: np.ndarray, train_y: np.ndarray, others: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Fit the thumbnail logistic regression on train; P(effusion) for each other split."""
    model = thumbnail_regression()
    model.fit(thumbnails(train_x), train_y)
    return {name: model.predict_proba(thumbnails(tensors))[:, 1] for name, tensors in others.items()}


def write_predictions(
    path: Path,
    parts: dict[str, list[Any]],
    cnn: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
) -> None:
    """Per-file probabilities: what the exported model must reproduce through the service."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "label", "probability", "reference_probability"])
        for name in ("val", "test"):
            for sample, label, probability, ref in zip(parts[name], labels[name], cnn[name], reference[name]):
                writer.writerow([name, sample.path, int(label), f"{probability:.8f}", f"{ref:.8f}"])


def plot_curves(
    report_dir: Path, labels: np.ndarray, cnn: np.ndarray, reference: np.ndarray, threshold: float
) -> None:
    """roc.png and pr.png on the test split: CNN, reference, chance, and the CNN's operating point."""
    roc = Figure(figsize=(5, 5))
    axes = roc.add_subplot()
    for name, scores in (("ResNet18", cnn), ("thumbnail logistic regression", reference)):
        fpr, tpr, _ = roc_curve(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    predicted = cnn >= threshold
    axes.plot(
        [float((predicted & (labels == 0)).sum() / max(1, (labels == 0).sum()))],
        [float((predicted & (labels == 1)).sum() / max(1, (labels == 1).sum()))],
        "ko",
        label=f"threshold {threshold:.3f}",
    )
    axes.plot([0, 1], [0, 1], "k:", label="chance")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, test split")
    axes.legend(loc="lower right", fontsize=8)
    roc.savefig(report_dir / "roc.png", dpi=100, bbox_inches="tight")

    pr = Figure(figsize=(5, 5))
    axes = pr.add_subplot()
    for name, scores in (("ResNet18", cnn), ("thumbnail logistic regression", reference)):
        precision, recall, _ = precision_recall_curve(labels, scores)
        axes.plot(recall, precision, label=f"{name} (AP {average_precision_score(labels, scores):.3f})")
    axes.axhline(labels.mean(), color="k", linestyle=":", label=f"prevalence {labels.mean():.2f}")
    axes.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall, test split", ylim=(0, 1.02))
    axes.legend(loc="lower left", fontsize=8)
    pr.savefig(report_dir / "pr.png", dpi=100, bbox_inches="tight")


def markdown_report(report: dict[str, Any]) -> str:
    """The report for people: split, threshold rule, metrics with intervals, plots."""
    split = report["split"]
    lines = [
        "# Evaluation report",
        "",
        (
            f"Run `{report['run']}`, checkpoint of epoch {report['checkpoint']['epoch']} "
            f"(validation AUROC {report['checkpoint']['val_auroc']:.3f}, the model-selection criterion)."
        ),
        "",
        f"## Split (patient-level, seed {split['seed']})",
        "",
        "| split | images | patients | effusion | no finding |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {split[name]['images']} | {split[name]['patients']} | {split[name]['effusion']} | {split[name]['nofinding']} |"
            for name in ("train", "val", "test")
        ),
        "",
        "## Threshold",
        "",
        f"{report['threshold']['value']:.4f}: {report['threshold']['rule']}.",
        "",
        "## Metrics",
        "",
        (
            f"95% intervals: {report['bootstrap']['interval']} bootstrap over {report['bootstrap']['resamples']} "
            "image resamples. Validation numbers are optimistic (the checkpoint and threshold were chosen on them); "
            "test numbers are the honest ones."
        ),
        "",
        "| model | split | AUROC (95% CI) | average precision (95% CI) | sensitivity | specificity | TN FP FN TP |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, results in (("ResNet18", report["cnn"]), ("reference", report["reference"])):
        for name in ("test", "val"):
            metrics = results[name]
            matrix = metrics["confusion_matrix"]
            lines.append(
                f"| {model} | {name} | {metrics['auroc']:.3f} ({metrics['auroc_ci95'][0]:.3f}-{metrics['auroc_ci95'][1]:.3f}) "
                f"| {metrics['average_precision']:.3f} ({metrics['average_precision_ci95'][0]:.3f}-"
                f"{metrics['average_precision_ci95'][1]:.3f}) | {metrics['sensitivity']:.3f} | {metrics['specificity']:.3f} "
                f"| {matrix['tn']} {matrix['fp']} {matrix['fn']} {matrix['tp']} |"
            )
    lines += [
        "",
        (
            f"Reference: {report['reference']['method']}, its own threshold "
            f"{report['reference']['threshold']:.4f} chosen by the same rule."
        ),
        "",
        "![ROC curves, test split](roc.png)",
        "",
        "![Precision-recall curves, test split](pr.png)",
        "",
    ]
    return "\n".join(lines)
