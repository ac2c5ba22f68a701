"""Training data: find labelled scans, split them by patient, and turn them into model tensors.

Decoding and preprocessing are the service's own (`service.decode.decode`, then
`service.preprocessing.preprocess`, through `model_export.cache.scan_tensor`), so training sees
exactly the numbers the service computes for the same file. Three layouts are read:

- class folders: `<root>/effusion/*` and `<root>/nofinding/*` (the Kaggle cxr-dataset);
- NIH ChestX-ray14 `Data_Entry_2017.csv` ("Image Index", "Finding Labels", "Patient ID")
  with its images anywhere under an image root: Effusion (alone or with other findings)
  is class 1, exactly "No Finding" is class 0, everything else is left out;
- a `filename,label,patient_id` CSV (label `effusion` or `nofinding`, other labels left out).
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.cache import read_scan
from model_export.errors import DataError
from service.preprocessing import OUTPUT_SIZE, PREPROCESSING_ID

CLASS_FOLDERS = ("nofinding", "effusion")  # index = the network's class index
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SIMPLE_COLUMNS = ("filename", "label", "patient_id")
NIH_NAME = re.compile(r"^(\d{8})_\d{3}")


@dataclass(frozen=True)
class Sample:
    """One labelled scan."""

    path: Path
    label: int  # 1 = effusion, 0 = no finding
    patient_id: str

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "label": self.label, "patient_id": self.patient_id}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Sample:
        return cls(Path(row["path"]), int(row["label"]), str(row["patient_id"]))


@dataclass(frozen=True)
class Split:
    """Disjoint patient-level train/validation/test sets and the seed that drew them."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    seed: int

    def parts(self) -> dict[str, list[Sample]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "preprocessing_id": PREPROCESSING_ID,
            "summary": self.summary(),
            **{name: [sample.to_json() for sample in samples] for name, samples in self.parts().items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        parts = {name: [Sample.from_json(row) for row in data[name]] for name in ("train", "val", "test")}
        return cls(seed=int(data["seed"]), **parts)

    def summary(self) -> dict[str, dict[str, int]]:
        """Images, patients and effusion/no-finding counts per split (no file names)."""
        return {
            name: {
                "images": len(samples),
                "patients": len({sample.patient_id for sample in samples}),
                "effusion": sum(sample.label for sample in samples),
                "nofinding": sum(1 - sample.label for sample in samples),
            }
            for name, samples in self.parts().items()
        }


def patient_id_for(path: Path) -> str:
    """NIH names start with the patient's 8 digits (`00000013_005.png`); anything else is its own patient."""
    match = NIH_NAME.match(path.name)
    return match.group(1) if match else path.stem


def class_folder_samples(root: Path) -> list[Sample]:
    """Every file in `<root>/effusion` and `<root>/nofinding`; formats are sniffed at decode time."""
    folders = [root / name for name in CLASS_FOLDERS]
    if not any(folder.is_dir() for folder in folders):
        raise DataError(f"{root} has neither an effusion/ nor a nofinding/ folder (or pass --labels CSV)")
    samples = []
    for label, folder in enumerate(folders):
        if folder.is_dir():
            files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
            samples += [Sample(path, label, patient_id_for(path)) for path in files]
    return samples


def csv_samples(csv_path: Path, image_root: Path) -> list[Sample]:
    """Labelled files from an NIH Data_Entry CSV or a filename,label,patient_id CSV."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except OSError as error:
        raise DataError(f"cannot read {csv_path}: {error.strerror or error}") from error
    if all(column in columns for column in NIH_COLUMNS):
        labelled = [(row["Image Index"], nih_label(row["Finding Labels"]), row["Patient ID"]) for row in rows]
    elif all(column in columns for column in SIMPLE_COLUMNS):
        labelled = [(row["filename"], folder_label(row["label"]), row["patient_id"]) for row in rows]
    else:
        raise DataError(
            f"{csv_path} has columns {columns}; expected the NIH columns {list(NIH_COLUMNS)} "
            f"or {list(SIMPLE_COLUMNS)}; missing: "
            f"{[c for c in NIH_COLUMNS if c not in columns]} (NIH) / {[c for c in SIMPLE_COLUMNS if c not in columns]}"
        )
    wanted = [(name, label, patient) for name, label, patient in labelled if label is not None]
    index = index_files(image_root)
    missing = [name for name, _, _ in wanted if name not in index]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(wanted)} labelled images are not under {image_root}, e.g. {', '.join(missing[:5])}"
        )
    return [Sample(index[name], label, patient.strip()) for name, label, patient in wanted]


def nih_label(finding_labels: str) -> int | None:
    """1 for any "Effusion", 0 for exactly "No Finding", None for other findings."""
    findings = {finding.strip() for finding in finding_labels.split("|")}
    if "Effusion" in findings:
        return 1
    return 0 if findings == {"No Finding"} else None


def folder_label(label: str) -> int | None:
    name = label.strip().lower()
    return CLASS_FOLDERS.index(name) if name in CLASS_FOLDERS else None


def index_files(root: Path) -> dict[str, Path]:
    """File name -> path for every file under `root` (NIH spreads images over images_0NN/ folders)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    index: dict[str, Path] = {}
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            index.setdefault(name, Path(folder) / name)
    return index


def find_samples(data: Path, labels: Path | None = None) -> list[Sample]:
    """The labelled scans of a dataset, checked to hold both classes."""
    samples = csv_samples(labels, data) if labels is not None else class_folder_samples(data)
    check_classes(samples, str(labels or data))
    return samples


def check_classes(samples: Sequence[Sample], where: str) -> None:
    """Training and AUROC need both classes; say clearly when a dataset lacks one."""
    if not samples:
        raise DataError(f"no labelled images found in {where}")
    positives = sum(sample.label for sample in samples)
    if positives in (0, len(samples)):
        raise DataError(
            f"{where} holds only one class ({positives} effusion, {len(samples) - positives} no-finding "
            "images); both are needed"
        )


def split_by_patient(samples: Sequence[Sample], *, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Seeded patient-level split, stratified by whether a patient has any effusion image.

    No patient appears in two splits; each split receives both classes, or this raises.
    """
    by_patient: dict[str, list[Sample]] = {}
    for sample in samples:
        by_patient.setdefault(sample.patient_id, []).append(sample)
    strata: dict[int, list[str]] = {0: [], 1: []}
    for patient, images in sorted(by_patient.items()):
        strata[max(sample.label for sample in images)].append(patient)

    rng = random.Random(seed)
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label, patients in strata.items():
        rng.shuffle(patients)
        n_test = max(1, round(len(patients) * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(len(patients) * val_fraction))
        if len(patients) < n_test + n_val + 1:
            raise DataError(
                f"only {len(patients)} patients with {CLASS_FOLDERS[label]} images: too few to give "
                f"train, validation{' and test' if test_fraction > 0 else ''} one each"
            )
        chosen = {"test": patients[:n_test], "val": patients[n_test : n_test + n_val], "train": patients[n_test + n_val :]}
        for name, group in chosen.items():
            parts[name] += [sample for patient in group for sample in by_patient[patient]]
    for samples_in_part in parts.values():
        samples_in_part.sort(key=lambda sample: str(sample.path))
    return Split(seed=seed, **parts)


def official_split(samples: Sequence[Sample], test_list: Path, *, val_fraction: float, seed: int) -> Split:
    """NIH's own patient-wise split: test = the files of `test_list.txt`; validation = a seeded share of
    the other (train_val) patients, stratified as `split_by_patient` does. Results compare with published ones."""
    try:
        test_names = {line.strip() for line in test_list.read_text().splitlines() if line.strip()}
    except OSError as error:
        raise DataError(f"--official-split needs NIH's {test_list.name} beside the labels CSV: {error.strerror or error}") from error
    test = [sample for sample in samples if sample.path.name in test_names]
    train_val = [sample for sample in samples if sample.path.name not in test_names]
    shared = {sample.patient_id for sample in test} & {sample.patient_id for sample in train_val}
    if shared:
        raise DataError(f"{test_list} is not patient-wise for these labels: {len(shared)} patients are in both lists")
    check_classes(test, str(test_list))
    carved = split_by_patient(train_val, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    return Split(train=carved.train, val=carved.val, test=sorted(test, key=lambda sample: str(sample.path)), seed=seed)


def load_tensors(samples: Sequence[Sample]) -> np.ndarray:
    """Decode and preprocess a few samples in memory: float32 [N, 1, 256, 256] (runs use the on-disk cache,
    model_export/cache.py). Unreadable files stop with one line per file."""
    results = [read_scan(sample.path) for sample in samples]
    failures = [f"  {sample.path}: {problem}" for sample, (_, problem) in zip(samples, results) if problem is not None]
    if failures:
        raise DataError(f"{len(failures)} of {len(samples)} images cannot be used:\n" + "\n".join(failures))
    return np.stack([tensor for tensor, _ in results]).reshape(len(samples), 1, OUTPUT_SIZE, OUTPUT_SIZE)
