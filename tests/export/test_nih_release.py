"""NIH ChestX-ray14 as downloaded: images_0NN/images/*.png, Data_Entry_2017.csv, train_val_list.txt, test_list.txt.

The release here is small and fake: NIH's file names, folders and CSV columns, synthetic pixels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.data import csv_samples, official_split
from model_export.errors import DataError
from model_export.pool import read_pool
from model_export.synthetic import phantom

COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
           "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]  # fmt: skip
FINDINGS = ["Effusion", "No Finding", "Effusion|Atelectasis", "No Finding", "Cardiomegaly"]  # per image of a patient, cycling


def fake_release(root: Path, *, patients: int = 20, images_each: int = 2, test_every: int = 4) -> dict[str, list[str]]:
    """Write the release; every `test_every`-th patient is in test_list.txt (NIH's lists are patient-wise)."""
    rng = np.random.default_rng(0)
    rows, lists = [], {"train_val": [], "test": []}
    for patient in range(1, patients + 1):
        for follow_up in range(images_each):
            name = f"{patient:08d}_{follow_up:03d}.png"
            findings = FINDINGS[(patient + follow_up) % len(FINDINGS)]
            folder = root / f"images_{1 + (patient - 1) * 12 // patients:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(phantom(rng, effusion="Effusion" in findings, size=256)).save(folder / name)
            rows.append([name, findings, follow_up, patient, 40 + patient, "MF"[patient % 2], "PA" if patient % 3 else "AP", 2500, 2048, 0.143, 0.143])
            lists["test" if patient % test_every == 0 else "train_val"].append(name)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([COLUMNS, *rows])
    for name, files in lists.items():
        (root / f"{name}_list.txt").write_text("\n".join(files) + "\n")
    return lists


def test_the_official_split_tests_on_nihs_test_list_and_carves_validation_by_patient(tmp_path: Path) -> None:
    lists = fake_release(tmp_path)
    samples = csv_samples(tmp_path / "Data_Entry_2017.csv", tmp_path)  # found under images_0NN/images/
    assert {sample.path.parent.parent.name for sample in samples} >= {"images_001", "images_012"}
    split = official_split(samples, tmp_path / "test_list.txt", val_fraction=0.25, seed=0)
    kept = {sample.path.name for sample in samples}  # effusion or exactly "No Finding"
    assert {sample.path.name for sample in split.test} == set(lists["test"]) & kept
    assert {sample.path.name for sample in split.train + split.val} == set(lists["train_val"]) & kept
    patients = [{sample.patient_id for sample in part} for part in (split.train, split.val, split.test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert all(sum(sample.label for sample in part) > 0 for part in (split.train, split.val, split.test))


def test_a_test_list_that_is_not_patient_wise_is_refused(tmp_path: Path) -> None:
    lists = fake_release(tmp_path)
    (tmp_path / "test_list.txt").write_text("\n".join([*lists["test"], lists["train_val"][0]]) + "\n")
    with pytest.raises(DataError, match="not patient-wise"):
        official_split(csv_samples(tmp_path / "Data_Entry_2017.csv", tmp_path), tmp_path / "test_list.txt", val_fraction=0.25, seed=0)


def test_the_pool_reads_the_release_root_with_every_finding(tmp_path: Path) -> None:
    fake_release(tmp_path, patients=10)
    scans = read_pool([tmp_path])
    assert len(scans) == 20
    first = next(scan for scan in scans if Path(scan.path).name == "00000001_000.png")
    assert (first.findings, first.label, first.patient_id, first.view, first.sex, first.age) == ("No Finding", "nofinding", "1", "PA", "F", 41)
    assert {scan.label for scan in scans} == {"effusion", "nofinding", "other"}


@pytest.mark.slow
def test_train_official_split_on_the_release(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from model_export.__main__ import main

    lists = fake_release(tmp_path / "nih")
    run = tmp_path / "run"
    main(["train", "--data", str(tmp_path / "nih"), "--labels", str(tmp_path / "nih" / "Data_Entry_2017.csv"), "--official-split",
          "--output", str(run), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--workers", "1"])  # fmt: skip
    split = json.loads((run / "split.json").read_text())
    assert {Path(row["path"]).name for row in split["test"]} <= set(lists["test"])
    assert json.loads((run / "config.json").read_text())["official_split"] is True
    assert (run / "curves.png").stat().st_size > 0 and len(json.loads((run / "history.json").read_text())) == 1
