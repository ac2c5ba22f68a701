"""The model card's evidence, computed from the shipped recipe's out-of-fold predictions alone.

    python -m model_export card --cv runs/study/R --output models/evaluation

Writes `oof.csv` and `report.json` (copied: the evidence itself), `card.json` (AUROCs with CIs, calibration,
operating point, subgroups, the top-corner shortcut check), `roc.png` and `reliability.png`.
Everything is recomputable from the output folder itself (`card_evidence(output)`), and a test does exactly that.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from model_export.cv import auroc, bootstrap_auroc, oof_columns, read_oof
from model_export.final import calibration_of, reliability

SUBGROUPS: dict[str, Callable[[dict[str, str]], str]] = {
    "view": lambda row: row["view"] or "unknown",
    "sex": lambda row: row["sex"] or "unknown",
    "age": lambda row: "unknown" if int(row["age"]) < 0 else ("<40" if int(row["age"]) < 40 else "40-59" if int(row["age"]) < 60 else "60+"),
    "resolution": lambda row: "native 1024 px" if row["width"] == "1024" else "reduced copy (64-512 px)",
}


def auroc_entry(data: dict[str, np.ndarray], mask: np.ndarray, score: str, resamples: int) -> dict[str, Any]:
    labels = data["labels"][mask]
    entry: dict[str, Any] = {"scans": int(mask.sum()), "effusion": int(labels.sum())}
    if 0 < labels.sum() < mask.sum():
        if resamples:
            point, ci = bootstrap_auroc(labels, data[score][mask], data["patients"][mask], resamples=resamples, seed=0)
            entry |= {"auroc": point, "ci95": ci}
        else:  # point estimates only (a quick recomputation of the card)
            entry["auroc"] = auroc(labels, data[score][mask])
    return entry


def card_evidence(cv_run: Path, *, resamples: int = 2000) -> dict[str, Any]:
    """Every figure of the card, from the cv run's oof.csv and report.json."""
    rows = read_oof(cv_run / "oof.csv")
    return evidence_of(rows, oof_columns(rows), cv_run, resamples)


def evidence_of(rows: list[dict[str, str]], data: dict[str, np.ndarray], cv_run: Path, resamples: int) -> dict[str, Any]:
    """The card's figures from oof.csv's rows and their columns (`model_export.cv.oof_columns`), parsed once by the caller."""
    binary = data["binary"]
    native = np.array([row["width"] == "1024" for row in rows])
    subgroups: dict[str, dict[str, Any]] = {}
    for name, key in SUBGROUPS.items():
        values = np.array([key(row) for row in rows])
        subgroups[name] = {value: auroc_entry(data, binary & (values == value), "logit", resamples) for value in sorted(set(values))}
    calibration, honest = calibration_of(data)
    return {
        "recipe": json.loads((cv_run / "report.json").read_text())["recipe"],
        "auroc": {
            "effusion_vs_nofinding": auroc_entry(data, binary, "logit", resamples),
            "effusion_vs_all": auroc_entry(data, np.ones(len(rows), dtype=bool), "logit", resamples),
            "effusion_vs_nofinding_native": auroc_entry(data, binary & native, "logit", resamples),
        },
        "reference": {
            "effusion_vs_nofinding": auroc_entry(data, binary, "reference", resamples),
            "effusion_vs_nofinding_native": auroc_entry(data, binary & native, "reference", resamples),
        },
        "top_corners_masked": {
            "effusion_vs_nofinding": auroc_entry(data, binary, "masked", resamples),
            "effusion_vs_nofinding_native": auroc_entry(data, binary & native, "masked", resamples),
        },
        "calibration": calibration,
        "reliability": reliability(data["labels"], honest),
        "subgroups": subgroups,
    }


def plot_roc(path: Path, data: dict[str, np.ndarray], evidence: dict[str, Any]) -> None:
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    binary = data["binary"]
    for score, name, entry in (
        ("logit", "ResNet18 (out of fold)", evidence["auroc"]["effusion_vs_nofinding"]),
        ("masked", "same, top corners masked", evidence["top_corners_masked"]["effusion_vs_nofinding"]),
        ("reference", "32x32 thumbnail regression", evidence["reference"]["effusion_vs_nofinding"]),
    ):
        fpr, tpr, _ = roc_curve(data["labels"][binary], data[score][binary])
        axes.plot(fpr, tpr, label=f"{name}: {entry['auroc']:.3f} ({entry['ci95'][0]:.3f}-{entry['ci95'][1]:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="Effusion vs no finding, out-of-fold")
    axes.legend(loc="lower right", fontsize=7)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_reliability(path: Path, bins: list[dict[str, float]], ece: float) -> None:
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axes.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o")
    for b in bins:
        axes.annotate(str(b["scans"]), (b["predicted"], b["observed"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    axes.set(xlabel="predicted probability (calibrated, cross-fitted)", ylabel="observed effusion rate", title=f"Reliability, ECE {ece:.3f}")
    figure.savefig(path, dpi=120, bbox_inches="tight")


def write_card(cv_run: Path, output: Path, *, resamples: int = 2000) -> dict[str, Any]:
    output.mkdir(parents=True, exist_ok=True)
    rows = read_oof(cv_run / "oof.csv")
    data = oof_columns(rows)  # read once, for the figures and the plots
    evidence = evidence_of(rows, data, cv_run, resamples)
    shutil.copyfile(cv_run / "oof.csv", output / "oof.csv")
    shutil.copyfile(cv_run / "report.json", output / "report.json")
    (output / "card.json").write_text(json.dumps(evidence, indent=2) + "\n")
    plot_roc(output / "roc.png", data, evidence)
    plot_reliability(output / "reliability.png", evidence["reliability"], evidence["calibration"]["ece_cross_fitted"])
    return evidence

