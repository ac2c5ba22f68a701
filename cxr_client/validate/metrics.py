"""The report's numbers, as pure functions of labels (0/1) and probabilities.

Operating points are computed on the same scans they are reported on, so a threshold chosen here
is a site's starting point, to be confirmed on later scans, not a held-out estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CALIBRATION_BINS = 10
MIN_PER_CLASS_FOR_INTERVAL = 5  # below this a percentile bootstrap mostly resamples one or two scans: no interval


@dataclass(frozen=True)
class Estimate:
    """A metric with its percentile-bootstrap 95% interval (None when the data cannot give one)."""

    value: float | None
    ci95: tuple[float, float] | None
    resamples_used: int


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates of `label = probability >= threshold`; a rate is None when its denominator is 0."""

    name: str
    threshold: float
    target_sensitivity: float | None
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def auroc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, probabilities)) if both_classes(labels) else None


def average_precision(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    return float(average_precision_score(labels, probabilities)) if both_classes(labels) else None


def bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float | None],
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """Percentile bootstrap over scans; resamples with one class only are skipped (and counted).

    No interval when either class has fewer than MIN_PER_CLASS_FOR_INTERVAL scans: the interval
    would describe the resampling of those few scans, not the model.
    """
    value = metric(labels, probabilities)
    if value is None:
        return Estimate(None, None, 0)
    positives = int(labels.sum())
    if min(positives, labels.size - positives) < MIN_PER_CLASS_FOR_INTERVAL:
        return Estimate(value, None, 0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, labels.size, labels.size)
        sampled = metric(labels[index], probabilities[index])
        if sampled is not None:
            values.append(sampled)
    if len(values) < resamples // 2:  # too few usable resamples for an interval worth printing
        return Estimate(value, None, len(values))
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(value, (float(low), float(high)), len(values))


def operating_point(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, *, name: str, target: float | None = None
) -> OperatingPoint:
    predicted = probabilities >= threshold
    positive = labels == 1
    tp = int(np.sum(predicted & positive))
    fp = int(np.sum(predicted & ~positive))
    tn = int(np.sum(~predicted & ~positive))
    fn = int(np.sum(~predicted & positive))
    return OperatingPoint(
        name, float(threshold), target, tp, fp, tn, fn,
        _ratio(tp, tp + fn), _ratio(tn, tn + fp), _ratio(tp, tp + fp), _ratio(tn, tn + fn),
    )  # fmt: skip


def threshold_for_sensitivity(labels: np.ndarray, probabilities: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity reaches `target` (None without positives).

    With P positives, at least ceil(target * P) of them must score at or above it: it is the
    score of the ceil(target * P)-th most probable positive.
    """
    positives = np.sort(probabilities[labels == 1])[::-1]
    if positives.size == 0:
        return None
    needed = max(1, math.ceil(target * positives.size - 1e-9))
    return float(positives[needed - 1])


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_probability: float | None
    observed_rate: float | None


def calibration(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[float | None, list[CalibrationBin]]:
    """Expected calibration error over equal-width bins, and the bins the reliability plot draws."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, bins - 1)
    table = []
    error = 0.0
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        if count:
            mean_probability = float(probabilities[inside].mean())
            observed = float(labels[inside].mean())
            error += abs(mean_probability - observed) * count / labels.size
            table.append(CalibrationBin(float(edges[index]), float(edges[index + 1]), count, mean_probability, observed))
        else:
            table.append(CalibrationBin(float(edges[index]), float(edges[index + 1]), 0, None, None))
    return (float(error) if labels.size else None), table


def most_confident_errors(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float, count: int
) -> tuple[list[int], list[int]]:
    """Indices of the false negatives with the lowest and the false positives with the highest probability."""
    order = np.argsort(probabilities, kind="stable")
    false_negatives = [int(i) for i in order if labels[i] == 1 and probabilities[i] < threshold][:count]
    false_positives = [int(i) for i in order[::-1] if labels[i] == 0 and probabilities[i] >= threshold][:count]
    return false_negatives, false_positives
