"""The report's figures as PNG bytes (matplotlib, no display): ROC, precision-recall, reliability."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; never a window, never a display server

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from cxr_client.validate.metrics import CalibrationBin, OperatingPoint  # noqa: E402

SIZE = (4.2, 3.8)


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def roc_png(labels: np.ndarray, probabilities: np.ndarray, points: list[OperatingPoint]) -> bytes:
    """ROC curve with the reported operating points marked."""
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, probabilities)
    figure, axes = plt.subplots(figsize=SIZE)
    axes.plot(false_positive_rate, true_positive_rate, color="#1f4e79", lw=2, label="model")
    axes.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="chance")
    for point in points:
        if point.sensitivity is not None and point.specificity is not None:
            axes.plot(1 - point.specificity, point.sensitivity, "o", label=f"{point.name} ({point.threshold:.3f})")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(fontsize=7, loc="lower right")
    return _png(figure)


def pr_png(labels: np.ndarray, probabilities: np.ndarray) -> bytes:
    """Precision-recall curve, with the prevalence a random ranking would reach."""
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    figure, axes = plt.subplots(figsize=SIZE)
    axes.step(recall, precision, where="post", color="#1f4e79", lw=2, label="model")
    axes.axhline(float(labels.mean()), color="#999999", lw=1, ls="--", label="prevalence")
    axes.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(fontsize=7, loc="upper right")
    return _png(figure)


def reliability_png(bins: list[CalibrationBin]) -> bytes:
    """Observed effusion rate against mean predicted probability per bin; bar width shows nothing, counts are labelled."""
    figure, axes = plt.subplots(figsize=SIZE)
    axes.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="perfect calibration")
    used = [b for b in bins if b.count]
    axes.plot(
        [b.mean_probability for b in used], [b.observed_rate for b in used], "o-", color="#b03a2e", label="model"
    )
    for b in used:
        axes.annotate(str(b.count), (b.mean_probability, b.observed_rate), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set(xlabel="mean predicted probability", ylabel="observed effusion rate", title="Reliability (n per bin)")
    axes.set(xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(fontsize=7, loc="upper left")
    return _png(figure)
