"""Training data: layouts, labels, patient-level splits and the service-identical tensors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.cache import ScanCache
from model_export.data import (
    Sample,
    Split,
    class_folder_samples,
    csv_samples,
    find_samples,
    load_tensors,
    patient_id_for,
    split_by_patient,
)
from model_export.errors import DataError
from service.decode import decode
from service.preprocessing import preprocess
from testkit.dicom_factory import dicom_bytes
from testkit.images import encode


def gradient(height: int, width: int, dtype: type = np.uint8, top: int = 255) -> np.ndarray:
    row = np.linspace(0, top, width, dtype=np.float64)
    column = np.linspace(0.2, 1.0, height)[:, None]
    return (column * row).astype(dtype)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def odd_files(root: Path) -> list[Path]:
    """One file per awkward input the NIH and Kaggle sets contain, or a hospital might send."""
    rgba = np.dstack([gradient(600, 512)] * 3 + [np.full((600, 512), 255, np.uint8)])
    return [
        write(root / "effusion" / "00000013_005.png", encode(Image.fromarray(gradient(1024, 1024)))),
        write(root / "effusion" / "scan-rgba.png", encode(Image.fromarray(rgba, "RGBA"))),
        write(root / "effusion" / "scan16.png", encode(Image.fromarray(gradient(512, 512, np.uint16, 4000)))),
        write(root / "nofinding" / "00000013_006.jpg", encode(Image.fromarray(gradient(300, 400)), "JPEG")),
        write(root / "nofinding" / "00000099_000.dcm", dicom_bytes(gradient(512, 512, np.uint16, 4095))),
        write(root / "nofinding" / "small256.png", encode(Image.fromarray(gradient(256, 256)).convert("RGB"))),
    ]


def test_class_folders_read_every_format_size_and_mode_with_the_services_functions(tmp_path: Path) -> None:
    files = odd_files(tmp_path)
    (tmp_path / "nofinding" / ".DS_Store").write_bytes(b"junk")  # hidden files are not scans
    samples = class_folder_samples(tmp_path)
    assert sorted(sample.path for sample in samples) == sorted(files)
    labels = {sample.path.name: sample.label for sample in samples}
    assert labels["00000013_005.png"] == 1 and labels["00000099_000.dcm"] == 0

    tensors = load_tensors(samples)
    assert tensors.shape == (len(files), 1, 256, 256) and tensors.dtype == np.float32
    for sample, tensor in zip(samples, tensors):
        expected = preprocess(decode(sample.path.read_bytes(), max_pixels=25_000_000).pixels)[0]
        np.testing.assert_array_equal(tensor, expected)


def test_unreadable_files_are_all_named_with_the_reason(tmp_path: Path) -> None:
    odd_files(tmp_path)
    write(tmp_path / "effusion" / "notes.txt", b"not an image")
    truncated = encode(Image.fromarray(gradient(512, 512)))[:300]
    write(tmp_path / "nofinding" / "truncated.png", truncated)
    write(tmp_path / "nofinding" / "blank.png", encode(Image.new("L", (512, 512), 7)))
    with pytest.raises(DataError) as caught:
        load_tensors(class_folder_samples(tmp_path))
    message = str(caught.value)
    assert message.startswith("3 of 9 images cannot be used")
    assert "notes.txt: unsupported_media_type" in message
    assert "truncated.png: undecodable_image" in message
    assert "blank.png: blank_image" in message


def test_patient_id_is_the_nih_prefix_or_the_file_stem() -> None:
    assert patient_id_for(Path("00000013_005.png")) == "00000013"
    assert patient_id_for(Path("x/00030805_000.dcm")) == "00030805"
    assert patient_id_for(Path("0000013_005.png")) == "0000013_005"
    assert patient_id_for(Path("synthetic_effusion_0001.png")) == "synthetic_effusion_0001"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_nih_data_entry_csv_labels_effusion_against_exactly_no_finding(tmp_path: Path) -> None:
    images = tmp_path / "images_001" / "images"
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png", "00000004_000.png"):
        write(images / name, b"")
    table = write_csv(
        tmp_path / "Data_Entry_2017.csv",
        ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"],
        [
            ["00000001_000.png", "Effusion", "0", "1"],
            ["00000001_001.png", "Atelectasis|Effusion|Mass", "1", "1"],
            ["00000002_000.png", "No Finding", "0", "2"],
            ["00000003_000.png", "Atelectasis", "0", "3"],
            ["00000004_000.png", "No Finding|Mass", "0", "4"],
        ],
    )
    samples = csv_samples(table, tmp_path)
    assert [(sample.path.name, sample.label, sample.patient_id) for sample in samples] == [
        ("00000001_000.png", 1, "1"),
        ("00000001_001.png", 1, "1"),
        ("00000002_000.png", 0, "2"),
    ]
    assert samples[0].path == images / "00000001_000.png"


def test_a_csv_without_the_needed_columns_is_refused_by_name(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "Data_Entry_2017.csv", ["Image Index", "Patient ID"], [["a.png", "1"]])
    with pytest.raises(DataError, match="Finding Labels"):
        csv_samples(table, tmp_path)


def test_a_csv_naming_missing_images_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "effusion" / "a.png", b"")
    table = write_csv(
        tmp_path / "labels.csv",
        ["filename", "label", "patient_id"],
        [["a.png", "effusion", "p1"], ["gone.png", "nofinding", "p2"], ["other.png", "other", "p3"]],
    )
    with pytest.raises(DataError, match=r"1 of 2 labelled images are not under .*gone\.png"):
        csv_samples(table, tmp_path)


def test_the_shared_labels_csv_layout_keeps_its_patient_ids_and_leaves_out_other(nih_dir: Path) -> None:
    samples = csv_samples(nih_dir / "labels.csv", nih_dir)
    with open(nih_dir / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] in ("effusion", "nofinding")]
    assert len(samples) == len(rows)
    assert {(s.path.name, s.label, s.patient_id) for s in samples} == {
        (row["filename"], int(row["label"] == "effusion"), row["patient_id"]) for row in rows
    }


def test_empty_and_one_class_datasets_are_refused(tmp_path: Path) -> None:
    (tmp_path / "effusion").mkdir()
    with pytest.raises(DataError, match="no labelled images"):
        find_samples(tmp_path)
    write(tmp_path / "effusion" / "a.png", b"")
    with pytest.raises(DataError, match=r"only one class \(1 effusion, 0 no-finding"):
        find_samples(tmp_path)
    with pytest.raises(DataError, match="neither an effusion/ nor a nofinding/"):
        find_samples(tmp_path / "effusion")


def many_samples(patients: int, images_per_patient: int = 2) -> list[Sample]:
    return [
        Sample(Path(f"{patient:08d}_{image:03d}.png"), int(patient % 3 == 0), f"{patient:08d}")
        for patient in range(patients)
        for image in range(images_per_patient)
    ]


def test_split_is_by_patient_stratified_seeded_and_round_trips() -> None:
    samples = many_samples(60)
    split = split_by_patient(samples, val_fraction=0.2, test_fraction=0.2, seed=3)
    parts = split.parts()
    patients = {name: {sample.patient_id for sample in part} for name, part in parts.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"] or patients["val"] & patients["test"])
    assert sorted((sample for part in parts.values() for sample in part), key=str) == sorted(samples, key=str)
    for part in parts.values():
        assert 0 < sum(sample.label for sample in part) < len(part)
    assert split.summary()["test"] == {"images": 24, "patients": 12, "effusion": 8, "nofinding": 16}

    assert split_by_patient(samples, val_fraction=0.2, test_fraction=0.2, seed=3) == split
    assert split_by_patient(samples, val_fraction=0.2, test_fraction=0.2, seed=4).test != split.test
    assert Split.from_json(split.to_json()) == split


def test_too_few_patients_of_a_class_for_three_splits_is_refused() -> None:
    samples = many_samples(5)  # patients 0 and 3 have effusion: two patients cannot fill three splits
    with pytest.raises(DataError, match="only 2 patients with effusion images"):
        split_by_patient(samples, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_the_scan_cache_is_incremental_reused_and_notices_a_changed_file(tmp_path: Path) -> None:
    odd_files(tmp_path / "data")
    samples = class_folder_samples(tmp_path / "data")
    paths = [sample.path for sample in samples]
    cache = ScanCache(tmp_path / "cache")
    first = cache.tensors(paths[:4], workers=2)  # two worker processes decode
    np.testing.assert_array_equal(first[:], load_tensors(samples[:4]))  # bit for bit the in-memory numbers
    (chunk,) = cache.folder.glob("chunk-*.npy")
    everything = cache.tensors(paths, workers=1)  # only the new files are decoded, into a second chunk
    assert len(list(cache.folder.glob("chunk-*.npy"))) == 2 and chunk.exists()
    np.testing.assert_array_equal(everything[:4], first[:])
    np.testing.assert_array_equal(everything[np.array([5, 1])], load_tensors([samples[5], samples[1]]))
    again = ScanCache(tmp_path / "cache").tensors(paths)  # a later run reuses every row
    assert len(list(cache.folder.glob("chunk-*.npy"))) == 2
    np.testing.assert_array_equal(again[:], everything[:])

    paths[0].write_bytes(encode(Image.fromarray(gradient(1024, 1024)[::-1].copy())))
    updated = ScanCache(tmp_path / "cache").tensors(paths)
    assert len(list(cache.folder.glob("chunk-*.npy"))) == 3  # the changed file alone was decoded again
    assert not np.array_equal(updated[0], first[0])
    np.testing.assert_array_equal(updated[1:], everything[1:])


@pytest.mark.parametrize(("dtype", "bound"), [("float16", 2.5e-4), ("uint8", 1 / 510 + 1e-7)])
def test_smaller_cache_dtypes_stay_within_their_documented_error(tmp_path: Path, dtype: str, bound: float) -> None:
    odd_files(tmp_path / "data")
    samples = class_folder_samples(tmp_path / "data")
    stored = ScanCache(tmp_path / "cache", dtype=dtype).tensors([sample.path for sample in samples])[:]
    exact = load_tensors(samples)
    assert stored.dtype == np.float32 and 0 < np.abs(stored - exact).max() <= bound

