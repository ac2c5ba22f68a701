"""`cxr-effusion validate` end to end on real NIH scans: class folders, a DICOM folder labelled by
SOPInstanceUID with a `--by` column, local and `--url` scoring, refused files, resuming, the page
in a real headless browser with every outside request blocked."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from cxr_client.cli import main
from cxr_client.validate.scoring import JOURNAL_COLUMNS
from service.model import contract_metadata, load_model
from testkit.dicom_factory import dicom_bytes
from testkit.live_server import running_service
from testkit.model_factory import build_model
from tests.conftest import SHARED_DATA, require_module, require_nih
from tests.reference import direct_probability

EXTRA = SHARED_DATA / "nih-extra"
require_module("sklearn")  # the validate extra: scikit-learn and matplotlib (CI installs them with train)
require_module("matplotlib")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def first(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.png"))[:count]


@pytest.fixture(scope="module")
def heat_model(models_dir: Path) -> Path:
    """The mean model with a heatmap output, so the examples have heatmaps."""
    return build_model(models_dir / "heat.onnx", heatmap_shape=("N", 256, 256))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, nih_dir: Path) -> Path:
    """Class folders of real scans, plus a 64 px scan (refused), a text file named .png and a DICOM copy of one scan."""
    root = tmp_path_factory.mktemp("site")
    for label, count in (("effusion", 5), ("nofinding", 5), ("other", 2)):
        (root / label).mkdir()
        for scan in first(nih_dir / label, count):
            shutil.copy(scan, root / label / scan.name)
    lowres = first(SHARED_DATA / "nih-lowres64" / "effusion", 1)[0]
    shutil.copy(lowres, root / "effusion" / f"small_{lowres.name}")
    (root / "nofinding" / "notes.png").write_bytes(b"not a scan")
    copied = first(root / "effusion", 1)[0]
    pixels = np.asarray(Image.open(copied).convert("L"))
    (root / "effusion" / "nested").mkdir()
    (root / "effusion" / "nested" / "copy.dcm").write_bytes(dicom_bytes(pixels))
    return root


def validate(*args: str | Path) -> int:
    return main(["validate", *map(str, args), "--no-progress"])


def brute_force_auroc(rows: list[dict[str, str]]) -> float:
    scored = [(row["label"], float(row["effusion_probability"])) for row in rows if row["effusion_probability"] and row["label"]]
    positives = [p for label, p in scored if label == "effusion"]
    negatives = [p for label, p in scored if label == "no_effusion"]
    return sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (len(positives) * len(negatives))


@pytest.fixture(scope="module")
def local_report(folders: Path, heat_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("local")
    assert validate(folders, "--model", heat_model, "--output", output) == 0
    return output


def test_class_folders_scored_locally(local_report: Path, folders: Path, heat_model: Path) -> None:
    report = json.loads((local_report / "report.json").read_text())
    data = report["data"]
    assert report["schema_version"] == 1 and not (local_report / "scoring-journal.csv").exists()
    assert (data["files"], data["positives"], data["negatives"]) == (15, 6, 7)  # 5 + the DICOM copy; 5 + 2 other
    refused = sorted((Path(r["file"]).name.split("_")[0], r["error_code"]) for r in data["refused"])
    assert refused == [("notes.png", "unsupported_media_type"), ("small", "image_too_small")]
    assert data["formats"] == {"png": 13, "dicom": 1, "not decoded": 1}
    assert len(data["duplicates"]) == 1 and data["duplicates"][0][1] == "effusion/nested/copy.dcm"
    assert data["training_overlap"] == {"checked": False, "reason": "the model's metadata does not list its training patients"}
    assert report["model"]["sha256"] == load_model(heat_model).sha256 and report["model"]["heatmap"] is True

    rows = read_rows(local_report / "predictions.csv")
    assert len(rows) == 15
    by_file = {row["file"]: row for row in rows}
    scan = next(iter(sorted((folders / "nofinding").glob("0*.png"))))
    assert float(by_file[f"nofinding/{scan.name}"]["effusion_probability"]) == pytest.approx(
        direct_probability(heat_model, scan), abs=1e-5
    )
    assert report["discrimination"]["auroc"]["value"] == pytest.approx(brute_force_auroc(rows))
    names = [point["name"] for point in report["operating_points"]]
    assert names == ["model threshold", "sensitivity 0.90", "sensitivity 0.95"]
    assert all(point["sensitivity"] >= 0.9 for point in report["operating_points"][1:])
    html = (local_report / "report.html").read_text()
    assert "image_too_small" in html and "AUROC" in html and "data:image/jpeg;base64," in html


def test_local_and_url_give_identical_numbers(local_report: Path, folders: Path, heat_model: Path, tmp_path: Path) -> None:
    key = "validate-test-key-0123456789"
    with running_service(heat_model, CXR_API_KEYS=key) as server:
        assert validate(folders, "--url", server.url, "--output", tmp_path / "nokey") == 2  # GET /model: 401, one line
        assert validate(folders, "--url", server.url, "--api-key", key, "--output", tmp_path) == 0
    local = json.loads((local_report / "report.json").read_text())
    remote = json.loads((tmp_path / "report.json").read_text())
    assert remote["model"]["scored_by"].startswith("url: http://127.0.0.1")
    for section in ("discrimination", "operating_points", "calibration", "examples"):
        assert remote[section] == local[section], section
    assert {k: v for k, v in remote["data"].items() if k != "folder"} == {k: v for k, v in local["data"].items() if k != "folder"}
    assert read_rows(tmp_path / "predictions.csv") == read_rows(local_report / "predictions.csv")
    assert (tmp_path / "report.html").read_text().count("data:image/jpeg") == (local_report / "report.html").read_text().count(
        "data:image/jpeg"
    )


@pytest.fixture(scope="module")
def dicom_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Real nih-extra scans re-encoded as DICOM files without a suffix, and a CSV naming them by SOPInstanceUID."""
    require_nih()
    if not (EXTRA / "labels.csv").exists():
        pytest.skip("nih-extra not found")
    rows = [row for row in read_rows(EXTRA / "labels.csv") if row["mode"] == "L" and row["width"] == "1024"]
    chosen = [r for r in rows if r["label"] == "effusion"][:2] + [r for r in rows if r["label"] == "nofinding"][:3]
    chosen += [r for r in rows if r["label"] == "other" and r["view_position"] == "AP"][:2]
    root = tmp_path_factory.mktemp("dicom")
    (root / "scans" / "series1").mkdir(parents=True)
    labels = root / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "patient_id", "view_position"])
        for number, row in enumerate(chosen):
            uid = generate_uid()
            pixels = np.asarray(Image.open(EXTRA / row["label"] / row["filename"]))
            (root / "scans" / "series1" / f"IM{number:04d}").write_bytes(dicom_bytes(pixels, sop_instance_uid=uid))
            writer.writerow([uid, row["label"], row["patient_id"], row["view_position"]])
        writer.writerow(["1.2.3.4.5.6.7", "nofinding", "00000000", "PA"])  # a row without a file
    return root / "scans", labels, chosen[0]["patient_id"]


def test_dicom_labelled_by_sop_instance_uid_with_subgroups_and_training_overlap(
    dicom_site: tuple[Path, Path, str], models_dir: Path, tmp_path: Path
) -> None:
    scans, labels, trained_patient = dicom_site
    metadata = contract_metadata(
        threshold=0.5, model_name="listing-model", model_version="1", training_data={"patients": [trained_patient, "x"]}
    )
    model = build_model(models_dir / "listing.onnx", heatmap_shape=("N", 256, 256), metadata=metadata)
    status = validate(scans, "--labels", labels, "--by", "view_position", "--target-sensitivity", "0.5", "--model", model, "-o", tmp_path)
    assert status == 0
    report = json.loads((tmp_path / "report.json").read_text())
    data = report["data"]
    assert (data["positives"], data["negatives"], data["formats"]) == (2, 5, {"dicom": 7})
    assert data["labels_without_file"] == ["1.2.3.4.5.6.7"] and data["unlabelled"] == []
    assert data["training_overlap"]["checked"] and data["training_overlap"]["patients"] == [trained_patient]
    assert report["model"]["training_patients"] == 2
    groups = {row["value"]: row for row in report["subgroups"]["view_position"]}
    assert set(groups) == {"AP", "PA"} and sum(row["n"] for row in groups.values()) == 7
    assert [point["target_sensitivity"] for point in report["operating_points"]] == [None, 0.5]
    rows = read_rows(tmp_path / "predictions.csv")
    assert {row["view_position"] for row in rows} == {"AP", "PA"} and all(row["effusion_probability"] for row in rows)
    text = (tmp_path / "report.html").read_text() + (tmp_path / "report.json").read_text()
    assert "SECRET" not in text and "Quixotic" not in text  # the DICOM files' patient name and id stay out


def test_report_page_is_self_contained_in_chromium(browser, local_report: Path, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    outside: list[str] = []

    def block(route) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", block)
    page.goto((local_report / "report.html").as_uri())
    assert "Local validation: test-mean-model 0.0.1" in page.text_content("h1")
    images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert len(images) >= 5 and all(loaded for _, loaded in images), images
    assert {"ROC curve", "reliability plot", "heatmap"} <= {alt for alt, _ in images}
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    assert outside == []
    page.close()


def test_an_interrupted_run_resumes_from_its_journal(folders: Path, heat_model: Path, tmp_path: Path) -> None:
    journal = tmp_path / "scoring-journal.csv"
    scan = str(sorted((folders / "other").glob("*.png"))[0])
    sha = load_model(heat_model).sha256
    with journal.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=JOURNAL_COLUMNS)
        writer.writeheader()
        writer.writerow({"file": scan, "effusion_probability": "0.123456", "model_sha256": sha})
    assert validate(folders, "--model", heat_model, "-o", tmp_path) == 0
    rows = {row["file"]: row for row in read_rows(tmp_path / "predictions.csv")}
    assert rows[f"other/{Path(scan).name}"]["effusion_probability"] == "0.123456"  # kept, not scored again
    assert not journal.exists()


def test_a_journal_of_another_model_is_refused(folders: Path, heat_model: Path, tmp_path: Path, capsys) -> None:
    journal = tmp_path / "scoring-journal.csv"
    journal.write_text(",".join(JOURNAL_COLUMNS) + "\n" + "x.png,0.5" + "," * (JOURNAL_COLUMNS.index("model_sha256") - 1) + "abc\n")
    assert validate(folders, "--model", heat_model, "-o", tmp_path) == 2
    assert "holds scores of another model (sha256 abc...)" in capsys.readouterr().err
    journal.write_text("file,effusion_probability\n")  # an older layout: appending to it would shift the columns
    assert validate(folders, "--model", heat_model, "-o", tmp_path) == 2
    assert "not written by this version" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        ("filename,diagnosis\na.png,1\n", [], "has no column 'label'"),
        ("filename,label\na.png,maybe\n", [], "line 2: label 'maybe' is neither"),
        ("filename,label\na.png,1\n", ["--by", "scanner"], "has no column 'scanner'"),
        ("filename,label\na.png,1\na.png,0\n", [], "names 'a.png' more than once"),
    ],
)
def test_bad_labels_are_one_line(folders: Path, tmp_path: Path, capsys, csv_text: str, extra: list[str], message: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(csv_text)
    assert validate(folders, "--labels", labels, *extra, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bad_arguments_are_one_line_from_the_installed_command(tmp_path: Path) -> None:
    cases = [
        (["validate", str(tmp_path / "nowhere"), "-o", str(tmp_path)], "is not a folder"),
        (["validate", str(tmp_path), "--by", "sex", "-o", str(tmp_path)], "--by names a CSV column"),
        (["validate", str(tmp_path), "--model", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o")], "no PNG, JPEG or DICOM"),
        (["validate", str(tmp_path), "--target-sensitivity", "95", "-o", str(tmp_path)], "between 0 and 1"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "cxr_client", *args], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_scans_without_any_label_say_how_to_label_them(nih_png: Path, heat_model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "flat").mkdir()
    shutil.copy(nih_png, tmp_path / "flat" / nih_png.name)
    assert validate(tmp_path / "flat", "--model", heat_model, "-o", tmp_path / "out") == 1
    assert "no scored scan has a label: use folders effusion/" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["data"]["unlabelled"] == [nih_png.name]

