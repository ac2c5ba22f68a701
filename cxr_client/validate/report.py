"""report.json: every number of the validation, built from the scored cases (no I/O here).

The schema is documented in docs/validation.md; change SCHEMA_VERSION with any change a
reader of an older report would notice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cxr_client.validate import metrics
from cxr_client.validate.scoring import ModelFacts
from cxr_client.validate.summary import FileFacts, data_summary

SCHEMA_VERSION = 1
SUBGROUP_RESAMPLES = 1000
DEFAULT_TARGETS = (0.90, 0.95)


@dataclass(frozen=True)
class Case:
    """One file: where it is (relative to DATA), its truth if known, its score or the service's refusal."""

    file: str
    label: int | None
    probability: float | None
    error_code: str | None
    error_message: str | None
    transient: bool
    facts: FileFacts
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    data: str
    labels_csv: str | None
    targets: tuple[float, ...]
    by: tuple[str, ...]
    examples: int
    missing_from_data: tuple[str, ...]  # CSV rows that no file matched


def scored(cases: list[Case]) -> list[Case]:
    """The cases the metrics are computed on: a label and a probability."""
    return [case for case in cases if case.label is not None and case.probability is not None]


def arrays(cases: list[Case]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([case.label for case in cases], dtype=np.int64)
    probabilities = np.array([case.probability for case in cases], dtype=np.float64)
    return labels, probabilities


def operating_points(labels: np.ndarray, probabilities: np.ndarray, threshold: float, targets: tuple[float, ...]) -> list[metrics.OperatingPoint]:
    """The model's own threshold, then one threshold per target sensitivity (where positives exist)."""
    points = [metrics.operating_point(labels, probabilities, threshold, name="model threshold")]
    for target in targets:
        chosen = metrics.threshold_for_sensitivity(labels, probabilities, target)
        if chosen is not None:
            points.append(metrics.operating_point(labels, probabilities, chosen, name=f"sensitivity {target:.2f}", target=target))
    return points


def _estimate(estimate: metrics.Estimate) -> dict[str, Any]:
    return {"value": estimate.value, "ci95": list(estimate.ci95) if estimate.ci95 else None, "resamples_used": estimate.resamples_used}


def subgroups(cases: list[Case], column: str, threshold: float) -> list[dict[str, Any]]:
    """One row per value of `column`: size, classes, AUROC with its interval, rates at the model's threshold."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        groups[case.columns.get(column) or "(blank)"].append(case)
    table = []
    for value in sorted(groups):
        labels, probabilities = arrays(groups[value])
        point = metrics.operating_point(labels, probabilities, threshold, name=value)
        table.append(
            {
                "value": value,
                "n": int(labels.size),
                "positives": int(labels.sum()),
                "negatives": int(labels.size - labels.sum()),
                "auroc": _estimate(metrics.bootstrap(metrics.auroc, labels, probabilities, resamples=SUBGROUP_RESAMPLES)),
                "sensitivity": point.sensitivity,
                "specificity": point.specificity,
            }
        )
    return table


def build_report(cases: list[Case], model: ModelFacts, options: Options, *, created_at: datetime | None = None) -> dict[str, Any]:
    """The whole report as plain JSON values."""
    usable = scored(cases)
    labels, probabilities = arrays(usable)
    points = operating_points(labels, probabilities, model.threshold, options.targets)
    ece, bins = metrics.calibration(labels, probabilities)
    false_negatives, false_positives = metrics.most_confident_errors(labels, probabilities, model.threshold, options.examples)
    has_patients = any("patient_id" in case.columns for case in cases)
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": (created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": asdict(model) | {"training_patients": None if model.training_patients is None else len(model.training_patients)},
        "data": {
            "folder": options.data,
            "labels_csv": options.labels_csv,
            "files": len(cases),
            "scored_with_label": len(usable),
            "positives": int(labels.sum()),
            "negatives": int(labels.size - labels.sum()),
            "refused": [
                {"file": c.file, "error_code": c.error_code, "error_message": c.error_message}
                for c in cases
                if c.error_code and not c.transient
            ],
            "not_scored_yet": [{"file": c.file, "error_code": c.error_code} for c in cases if c.transient],
            "unlabelled": [c.file for c in cases if c.label is None and c.probability is not None],
            "labels_without_file": list(options.missing_from_data),
            **data_summary([c.facts for c in cases], model.training_patients, has_patient_ids=has_patients),
        },
        "discrimination": {
            "auroc": _estimate(metrics.bootstrap(metrics.auroc, labels, probabilities)),
            "average_precision": _estimate(metrics.bootstrap(metrics.average_precision, labels, probabilities)),
            "bootstrap": {"resamples": metrics.BOOTSTRAP_RESAMPLES, "seed": metrics.BOOTSTRAP_SEED, "method": "percentile, scans resampled"},
        },
        "operating_points": [point.as_dict() for point in points],
        "calibration": {"ece": ece, "bins": [asdict(b) for b in bins]},
        "subgroups": {column: subgroups(usable, column, model.threshold) for column in options.by},
        "examples": {
            "false_negatives": [{"file": usable[i].file, "probability": usable[i].probability} for i in false_negatives],
            "false_positives": [{"file": usable[i].file, "probability": usable[i].probability} for i in false_positives],
        },
    }
