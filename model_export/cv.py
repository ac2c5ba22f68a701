"""Patient-level K-fold cross-validation of a recipe over the whole pool: the study's only ruler.

Every scan gets a fold (stratified by label, grouped by patient, seeded), and in each fold a
network is fitted on the other folds' scans that the recipe trains on; every scan of the held-out
fold is then scored. Recipes are compared on these out-of-fold (OOF) predictions over the whole
pool, beside a logistic regression on 32x32 thumbnails fitted in the very same folds. Nothing is
selected on the held-out fold: the epoch count is fixed by the recipe, not chosen by peeking.

Intervals are percentile bootstraps that resample patients (scans of one patient are not
independent), 2000 times by default.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedGroupKFold

from model_export.distributed import SINGLE, World
from model_export.evaluate import thumbnail_regression
from model_export.fit import effusion_index, fit, mask_top_corners, output_names, predict_logits
from model_export.init import initial_weights
from model_export.pool import LABELS, Downsampled, Scan, downsample, pool_tensors, read_pool
from model_export.recipes import Recipe

THUMBNAIL = 32
REFERENCE = "logistic regression (L2, C=1, balanced class weights) on standardised 32x32 thumbnails, effusion vs the rest"
NATIVE_WIDTH = 1024  # NIH's own resolution; smaller files in the pool are reduced copies


def assign_folds(scans: Sequence[Scan], folds: int, seed: int) -> np.ndarray:
    """Fold index per scan: no patient in two folds, labels spread evenly."""
    labels = np.array([LABELS.index(scan.label) for scan in scans])
    groups = np.array([scan.patient_id for scan in scans])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.full(len(scans), -1)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(scans)), labels, groups)):
        assignment[held_out] = fold
    return assignment


def trains_on(recipe: Recipe, scan: Scan) -> bool:
    """Whether the recipe's training set takes this scan (every scan is still scored out of fold)."""
    return (recipe.other or scan.label != "other") and (recipe.lowres or scan.width >= 256)


def target_matrix(recipe: Recipe, scans: Sequence[Scan]) -> np.ndarray:
    if recipe.targets == "effusion":
        return np.array([[scan.effusion] for scan in scans], dtype=np.float32)
    return np.stack([scan.finding_targets() for scan in scans])


def reference_scores(thumbnails: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """P(effusion) of the thumbnail logistic regression fitted on `train`, for `test`."""
    model = thumbnail_regression()
    model.fit(thumbnails[train], labels[train])
    return model.predict_proba(thumbnails[test])[:, 1]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic on average ranks (ties count half): sklearn's number, ~50x faster.

    The bootstraps call it tens of thousands of times.
    """
    positives = labels == 1
    n_positive = int(positives.sum())
    n_negative = len(labels) - n_positive
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def bootstrap_auroc(
    labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, *, resamples: int, seed: int
) -> tuple[float, list[float]]:
    """AUROC and its patient-resampling percentile 95% interval."""
    point = auroc(labels, scores)
    draws = patient_resamples(patients, resamples, seed)
    values = [auroc(labels[rows], scores[rows]) for rows in draws if 0 < labels[rows].sum() < len(rows)]
    return point, [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def patient_resamples(patients: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of `resamples` bootstrap samples that draw whole patients with replacement."""
    unique, inverse = np.unique(patients, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == index) for index in range(len(unique))]
    rng = np.random.default_rng(seed)
    return [np.concatenate([rows_of[p] for p in rng.integers(0, len(unique), len(unique))]) for _ in range(resamples)]


def subsets(scans: Sequence[Scan]) -> dict[str, np.ndarray]:
    """The comparisons the report makes: boolean masks over the pool."""
    label = np.array([scan.label for scan in scans])
    width = np.array([scan.width for scan in scans])
    binary = label != "other"
    return {
        "effusion_vs_nofinding": binary,
        "effusion_vs_all": np.ones(len(scans), dtype=bool),
        "effusion_vs_nofinding_native": binary & (width == NATIVE_WIDTH),
        "effusion_vs_nofinding_reduced": binary & (width != NATIVE_WIDTH),
    }


def score_table(
    scans: Sequence[Scan], scores: dict[str, np.ndarray], *, resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """AUROC with CI for every subset and every score column (cnn, masked, reference)."""
    labels = np.array([scan.effusion for scan in scans])
    patients = np.array([scan.patient_id for scan in scans])
    table: dict[str, dict[str, Any]] = {}
    for name, mask in subsets(scans).items():
        table[name] = {"scans": int(mask.sum()), "effusion": int(labels[mask].sum())}
        if not 0 < labels[mask].sum() < mask.sum():
            continue  # no AUROC without both classes (e.g. no native-resolution scans in a pool)
        for column, values in scores.items():
            auroc, ci = bootstrap_auroc(labels[mask], values[mask], patients[mask], resamples=resamples, seed=seed)
            table[name][column] = {"auroc": auroc, "ci95": ci}
    return table


def run_cv(
    roots: Sequence[Path],
    recipe: Recipe,
    output: Path,
    *,
    recipe_name: str,
    nih_labels: Path | None = None,
    folds: int = 5,
    seed: int = 0,
    cache_dir: Path | None = None,
    cache_dtype: str = "float32",
    resamples: int = 2000,
    command: str = "",
    only_folds: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
    world: World = SINGLE,
    workers: int = 2,
    init: str | None = None,
) -> dict[str, Any] | None:
    """Cross-validate `recipe`; write recipe.json, oof.csv and report.json into `output`; return the report.

    Each finished fold is kept (`fold-K.npz`), so an interrupted run resumes where it stopped.
    `only_folds` trains just those folds (several processes or machines can share one run's folds);
    the report is written, and returned, once every fold's file exists. Under torchrun every rank
    fits every fold together and only rank 0 writes.
    """
    started = time.monotonic()
    start_weights, provenance = initial_weights(init) if init else (None, None)
    output.mkdir(parents=True, exist_ok=True)
    scans = read_pool(roots, nih_labels)
    tensors = world.main_first(lambda: pool_tensors(scans, cache_dir or output / "cache", workers=workers, dtype=cache_dtype))
    images = Downsampled(tensors, recipe.resolution)
    thumbnails = downsample(tensors, THUMBNAIL).reshape(len(scans), -1)
    fold_of = assign_folds(scans, folds, seed)
    targets = target_matrix(recipe, scans)
    labels = np.array([scan.effusion for scan in scans])
    usable = np.array([trains_on(recipe, scan) for scan in scans])
    if world.is_main:
        recipe_json = {"name": recipe_name, "recipe": recipe.describe(), "folds": folds, "seed": seed, "command": command}
        (output / "recipe.json").write_text(json.dumps(recipe_json, indent=2) + "\n")
    index = effusion_index(recipe)
    logits = np.zeros(len(scans), dtype=np.float32)
    masked = np.zeros(len(scans), dtype=np.float32)
    reference = np.zeros(len(scans), dtype=np.float64)
    fold_minutes = []
    missing = []
    for fold in range(folds):
        held_out = np.flatnonzero(fold_of == fold)
        train = np.flatnonzero((fold_of != fold) & usable)
        saved = output / f"fold-{fold}.npz"
        if not saved.exists() and only_folds is not None and fold not in only_folds:
            missing.append(fold)
            continue
        if saved.exists():
            kept = np.load(saved)
            logits[held_out], masked[held_out], minutes = kept["logits"], kept["masked"], float(kept["minutes"])
        else:
            fold_started = time.monotonic()
            network = fit(
                recipe, images.take(train), targets[train], seed=seed * 1000 + fold, description=f"fold {fold + 1}/{folds}",
                world=world, workers=workers, init=start_weights,
            )  # fmt: skip
            held_out_images = images[held_out]
            logits[held_out] = predict_logits(network, held_out_images, index=index)
            corners = mask_top_corners(torch.from_numpy(held_out_images), recipe.resolution).numpy()
            masked[held_out] = predict_logits(network, corners, index=index)
            minutes = (time.monotonic() - fold_started) / 60
            if world.is_main:
                partial = saved.with_suffix(f".{os.getpid()}.partial")
                with partial.open("wb") as stream:  # a whole file or none: another process may be reading the folder
                    np.savez(stream, logits=logits[held_out], masked=masked[held_out], minutes=minutes)
                partial.replace(saved)
        reference[held_out] = reference_scores(thumbnails, labels, np.flatnonzero(fold_of != fold), held_out)
        fold_minutes.append(minutes)
        log(f"fold {fold + 1}/{folds}: {len(train)} training scans, {len(held_out)} scored, {minutes:.1f} min")
    if missing:
        log(f"folds {', '.join(str(fold + 1) for fold in missing)} of {folds} not trained yet: rerun without --fold once they are, for the report")
        return None

    if world.is_main:
        write_oof(output / "oof.csv", scans, fold_of, logits, masked, reference)
    scores = {"cnn": logits, "cnn_top_corners_masked": masked, "reference": reference}
    report = {
        "recipe": recipe_name,
        "settings": recipe.describe(),
        "command": command,
        "folds": folds,
        "seed": seed,
        "pool": pool_summary(scans),
        "outputs": list(output_names(recipe)),
        "reference_method": REFERENCE,
        "bootstrap": {"resamples": resamples, "unit": "patient", "interval": "percentile 95%"},
        "oof": score_table(scans, scores, resamples=resamples, seed=seed),
        "per_fold": per_fold(scans, fold_of, scores),
        "minutes": {"folds": fold_minutes, "total": sum(fold_minutes)},
        **({"initial_weights": provenance} if provenance else {}),
        "wall_minutes_this_invocation": (time.monotonic() - started) / 60,
    }
    if world.is_main:
        (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def per_fold(scans: Sequence[Scan], fold_of: np.ndarray, scores: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """AUROC effusion vs no finding in each held-out fold (how much the folds disagree)."""
    labels = np.array([scan.effusion for scan in scans])
    binary = subsets(scans)["effusion_vs_nofinding"]
    rows = []
    for fold in range(int(fold_of.max()) + 1):
        mask = binary & (fold_of == fold)
        rows.append(
            {"fold": fold, "scans": int(mask.sum()), "effusion": int(labels[mask].sum())}
            | {name: auroc(labels[mask], values[mask]) for name, values in scores.items()}
        )
    return rows


def pool_summary(scans: Sequence[Scan]) -> dict[str, Any]:
    return {
        "scans": len(scans),
        "patients": len({scan.patient_id for scan in scans}),
        "labels": {label: sum(scan.label == label for scan in scans) for label in LABELS},
        "native_1024": sum(scan.width == NATIVE_WIDTH for scan in scans),
        "roots": sorted({str(Path(scan.path).parent.parent) for scan in scans}),
    }


OOF_COLUMNS = ("path", "label", "patient_id", "width", "view", "sex", "age", "fold", "logit", "logit_top_corners_masked", "reference")


def write_oof(
    path: Path, scans: Sequence[Scan], fold_of: np.ndarray, logits: np.ndarray, masked: np.ndarray, reference: np.ndarray
) -> None:
    """One row per scan: its facts, fold and out-of-fold scores (the file name only, no folder)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OOF_COLUMNS)
        for scan, fold, logit, masked_logit, ref in zip(scans, fold_of, logits, masked, reference):
            facts = asdict(scan)
            writer.writerow(
                [Path(scan.path).name, scan.label, scan.patient_id, scan.width, facts["view"], facts["sex"], facts["age"],
                 int(fold), f"{logit:.6f}", f"{masked_logit:.6f}", f"{ref:.6f}"]
            )  # fmt: skip


def read_oof(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def oof_columns(rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """oof.csv's rows as the arrays the card, the calibration and the study compute on (one parser for all)."""
    return {
        "names": np.array([row["path"] for row in rows]),
        "labels": np.array([int(row["label"] == "effusion") for row in rows]),
        "binary": np.array([row["label"] != "other" for row in rows]),
        "logit": np.array([float(row["logit"]) for row in rows]),
        "masked": np.array([float(row["logit_top_corners_masked"]) for row in rows]),
        "reference": np.array([float(row["reference"]) for row in rows]),
        "patients": np.array([row["patient_id"] for row in rows]),
        "folds": np.array([int(row["fold"]) for row in rows]),
    }
