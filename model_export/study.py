"""The ablation table: cross-validation runs side by side, with paired differences.

Every run of one pool scores the same scans out of fold, so two recipes are compared scan by scan:
the difference of their AUROCs is bootstrapped over the same resampled patients (a paired
bootstrap), which is far tighter than comparing two independent intervals.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model_export.cv import auroc, oof_columns, patient_resamples, read_oof
from model_export.errors import DataError

BINARY = "effusion_vs_nofinding"


def paired_difference(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, patients: np.ndarray, *, resamples: int, seed: int = 0
) -> tuple[float, list[float]]:
    """AUROC(first) - AUROC(second) on the same scans, with a paired patient-bootstrap 95% interval."""
    point = auroc(labels, first) - auroc(labels, second)
    values = [
        auroc(labels[rows], first[rows]) - auroc(labels[rows], second[rows])
        for rows in patient_resamples(patients, resamples, seed)
        if 0 < labels[rows].sum() < len(rows)
    ]
    return point, [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def binary_scores(run: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(scan names, labels, OOF logits, patients) of the effusion and no-finding scans of a run."""
    data = oof_columns(read_oof(run / "oof.csv"))
    binary = data["binary"]
    return data["names"][binary].tolist(), data["labels"][binary], data["logit"][binary], data["patients"][binary]


def interval(row: dict, column: str = "cnn") -> str:
    if column not in row:
        return "n/a"
    low, high = row[column]["ci95"]
    return f"{row[column]['auroc']:.3f} ({low:.3f}-{high:.3f})"


def study_table(runs: Sequence[Path], *, baseline: Path | None = None, resamples: int = 2000) -> str:
    """A Markdown table, one row per run, differences against `baseline` (default: the first run)."""
    baseline = baseline or runs[0]
    names, labels, base_scores, patients = binary_scores(baseline)
    lines = [
        "| recipe | OOF AUROC effusion vs no finding | vs all scans | native 1024 px | top corners masked | "
        f"thumbnail reference | paired difference to {json.loads((baseline / 'report.json').read_text())['recipe']} | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        report = json.loads((run / "report.json").read_text())
        run_names, run_labels, scores, _ = binary_scores(run)
        if run_names != names or not np.array_equal(run_labels, labels):
            raise DataError(f"{run} scored another pool than {baseline}: runs are only comparable on the same scans")
        oof = report["oof"]
        if run == baseline:
            paired = "(baseline)"
        else:
            difference, (low, high) = paired_difference(labels, scores, base_scores, patients, resamples=resamples)
            paired = f"{difference:+.3f} ({low:+.3f} to {high:+.3f})"
        lines.append(
            f"| {report['recipe']} | {interval(oof[BINARY])} | {interval(oof['effusion_vs_all'])} | "
            f"{interval(oof[BINARY + '_native'])} | {interval(oof[BINARY], 'cnn_top_corners_masked')} | "
            f"{interval(oof[BINARY], 'reference')} | {paired} | {report['minutes']['total']:.0f} |"
        )
    return "\n".join(lines)
