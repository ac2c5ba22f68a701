"""`cxr-effusion dicomweb` against a real PACS (Debian's Orthanc with its DICOMweb plugin) and the real service.

Real NIH scans from the shared data, wrapped as DX/CR DICOM in three studies, are stored in Orthanc; the
router finds, scores and stores back. Orthanc then holds exactly one SR per chest image, referencing that
image, with the probability the JSON API gives for the same file; Orthanc parses each SR and Secondary
Capture (its own tag dump and preview), and highdicom and pydicom read them back. Reruns store nothing
twice, an interrupted run resumes, and a non-chest series and an out-of-range study are left alone.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from cxr_client.cli import main
from testkit import orthanc
from testkit.dicom_factory import dicom_dataset, to_bytes
from testkit.live_server import LiveServer, free_port, running_service
from tests.conftest import EXAMPLES, require_module, require_nih

pytestmark = pytest.mark.slow
hd = require_module("highdicom")
require_module("dicomweb_client")


@pytest.fixture(scope="module")
def pacs() -> Iterator[str]:
    """A fresh Orthanc on free ports; missing, it fails under CI (.ci/run installs it) and skips elsewhere."""
    problem = orthanc.missing()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; .ci/run installs it", pytrace=False)
        pytest.skip(problem)
    with orthanc.orthanc_server() as url:
        yield url


@pytest.fixture(scope="module")
def service(heatmap_model: Path) -> Iterator[LiveServer]:
    with running_service(heatmap_model) as server:
        yield server


def real_scans(count_by_label: dict[str, int]) -> list[Path]:
    """The first full-resolution 8-bit grayscale NIH scans of each label, in labels.csv order."""
    nih = require_nih()
    chosen: list[Path] = []
    with (nih / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            wanted = count_by_label.get(row["label"], 0)
            if wanted and row["mode"] == "L" and row["width"] == row["height"] == "1024":
                chosen.append(nih / row["label"] / row["filename"])
                count_by_label[row["label"]] = wanted - 1
    assert not any(count_by_label.values()), "not enough full-resolution scans in the shared data"
    return chosen


def as_dicom(png: Path, *, study: str, series: str, modality: str, study_date: str, body_part: str = "CHEST") -> bytes:
    """A real scan as the modality would send it: its pixels unchanged, in a study and series of our choosing."""
    dataset = dicom_dataset(np.asarray(Image.open(png)), modality=modality, sop_instance_uid=generate_uid())
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.StudyDate, dataset.StudyTime, dataset.BodyPartExamined = study_date, "093000", body_part
    dataset.PatientName, dataset.PatientID = f"NIH^{png.stem}", f"NIH-{png.stem}"
    return to_bytes(dataset)


def store(pacs: str, data: bytes) -> None:
    response = httpx.post(f"{pacs}/instances", content=data, timeout=30)  # Orthanc's own upload, not the router's STOW
    assert response.status_code == 200, response.text


def instances(pacs: str, modality: str) -> list[dict]:
    """Orthanc's own view: every instance of `modality`, with the tags Orthanc parsed from its file."""
    found = httpx.post(f"{pacs}/tools/find", json={"Level": "Instance", "Query": {"Modality": modality}}, timeout=30).json()
    return [httpx.get(f"{pacs}/instances/{orthanc_id}/simplified-tags", timeout=30).json() | {"id": orthanc_id} for orthanc_id in found]


def router(pacs: str, service: LiveServer, state: Path, *selection: str) -> int:
    return main(
        ["dicomweb", "--pacs", f"{pacs}/dicom-web", "--url", service.url, "--heatmap", "--state", str(state), "--no-progress", *selection]
    )


def test_the_router_reports_every_chest_image_once(pacs: str, service: LiveServer, tmp_path: Path, capsys) -> None:
    effusion_a, effusion_b, normal = real_scans({"effusion": 2, "nofinding": 1})
    study_a, study_b = generate_uid(), generate_uid()
    sources = {  # SOP Instance UID -> the DICOM file stored in the PACS
        "a-dx": as_dicom(effusion_a, study=study_a, series=generate_uid(), modality="DX", study_date="20250310"),
        "a-cr": as_dicom(normal, study=study_a, series=generate_uid(), modality="CR", study_date="20250310"),
        "b-dx": as_dicom(effusion_b, study=study_b, series=generate_uid(), modality="DX", study_date="20250311"),
    }
    hand = as_dicom(normal, study=study_b, series=generate_uid(), modality="DX", study_date="20250311", body_part="HAND")
    example = pydicom.dcmread(EXAMPLES / "effusion" / "00009211_000.dcm")  # the repository's DICOM, an older study
    example.StudyDate = "20190101"
    sources["old"] = to_bytes(example)
    for data in [*sources.values(), hand]:
        store(pacs, data)
    uid_of = {name: pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID for name, data in sources.items()}
    state = tmp_path / "state.json"

    # An interrupted run, in effect: one study first.
    assert router(pacs, service, state, "--study", study_a) == 0
    assert "2 scored, 0 failed, 0 already reported" in capsys.readouterr().err
    # The date range takes up the rest of 2025: study A is skipped, the hand series and the 2019 study are left alone.
    assert router(pacs, service, state, "--since", "20250101", "--until", "20251231") == 0
    assert "1 scored, 0 failed, 2 already reported" in capsys.readouterr().err
    assert len(instances(pacs, "SR")) == 3
    # Since the last run (today): no study is dated since today, so nothing is found.
    assert router(pacs, service, state, "--since-last-run") == 0
    assert "0 scored, 0 failed, 0 already reported" in capsys.readouterr().err
    assert '"last_run": "' + date.today().strftime("%Y%m%d") in state.read_text()
    assert router(pacs, service, state, "--study", example.StudyInstanceUID) == 0
    # Everything again: nothing is scored or stored twice.
    assert router(pacs, service, state, "--since", "19000101") == 0
    assert "0 scored, 0 failed, 4 already reported" in capsys.readouterr().err.splitlines()[-1]

    reports, captures = instances(pacs, "SR"), instances(pacs, "OT")
    assert len(reports) == len(captures) == len(sources)
    referenced = {}
    for report in reports:  # Orthanc's own parse of each SR: it knows the evidence it references
        evidence = report["CurrentRequestedProcedureEvidenceSequence"][0]
        (sop,) = [item["ReferencedSOPInstanceUID"] for series in evidence["ReferencedSeriesSequence"] for item in series["ReferencedSOPSequence"]]
        referenced[sop] = report
    assert set(referenced) == set(uid_of.values())  # one SR per chest image, none for the hand

    with httpx.Client(base_url=service.url, timeout=60) as client:
        for name, data in sources.items():
            report = referenced[uid_of[name]]
            source = pydicom.dcmread(io.BytesIO(data))
            assert report["StudyInstanceUID"] == source.StudyInstanceUID and report["PatientID"] == source.PatientID
            written = pydicom.dcmread(io.BytesIO(httpx.get(f"{pacs}/instances/{report['id']}/file", timeout=30).content))
            (group,) = hd.sr.ComprehensiveSR.from_dataset(written).content.get_image_measurement_groups()
            expected = client.post("/predict", files={"file": ("scan", data)}).json()
            assert group.get_measurements()[0].value == pytest.approx(expected["effusion_probability"], abs=1e-9)
            assert group.source_images[0].referenced_sop_instance_uid == uid_of[name]
            present = group.get_qualitative_evaluations()[0].value.value == "52101004"
            assert present == (expected["label"] == "effusion")

    for capture in captures:  # Orthanc decodes the Secondary Capture's pixels too: its preview is a PNG
        assert capture["SOPClassUID"] == pydicom.uid.SecondaryCaptureImageStorage
        assert capture["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] in uid_of.values()
        preview = httpx.get(f"{pacs}/instances/{capture['id']}/preview", timeout=30)
        assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (256, 256)
        written = pydicom.dcmread(io.BytesIO(httpx.get(f"{pacs}/instances/{capture['id']}/file", timeout=30).content))
        assert hd.Image.from_dataset(written, copy=False).get_frame(1).shape == (256, 256, 3)


def test_a_service_error_is_reported_per_instance(pacs: str, service: LiveServer, tmp_path: Path, capsys) -> None:
    """A CR whose pixels the service refuses (too small) fails with its code; the run says so and exits 1."""
    study = generate_uid()
    tiny = dicom_dataset(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8), modality="CR", sop_instance_uid=generate_uid())
    tiny.StudyInstanceUID, tiny.StudyDate, tiny.BodyPartExamined = study, "20250312", "CHEST"
    store(pacs, to_bytes(tiny))
    assert router(pacs, service, tmp_path / "state.json", "--study", study) == 1
    err = capsys.readouterr().err
    assert f"failed: {tiny.SOPInstanceUID}: image_too_small" in err and "0 scored, 1 failed" in err


def test_a_pacs_that_does_not_answer_is_one_line_and_exit_2(service: LiveServer, tmp_path: Path, capsys) -> None:
    require_module("dicomweb_client")
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert router(unreachable, service, tmp_path / "state.json", "--since", "20260101", "--retries", "0") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith(f"error: PACS {unreachable}/dicom-web did not answer") and "Traceback" not in "\n".join(error)


def test_since_last_run_without_a_recorded_run_is_one_line_and_exit_2(service: LiveServer, tmp_path: Path, capsys) -> None:
    require_module("dicomweb_client")
    assert router("http://127.0.0.1:9", service, tmp_path / "never-written.json", "--since-last-run") == 2
    assert capsys.readouterr().err.strip().startswith("error: no previous run recorded in")
