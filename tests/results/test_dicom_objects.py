"""The DICOM Structured Report and heatmap Secondary Capture of service/results/, each written as a Part 10 file
and read back by pydicom and highdicom: what a PACS receives is what these tests parse."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from service.heatmap import render
from service.results.finding import Finding, ModelIdentity
from service.results.source import read_source
from testkit.dicom_factory import PATIENT_ID, PATIENT_NAME, dicom_dataset, to_bytes
from tests.conftest import EXAMPLES, require_module

hd = require_module("highdicom")
from service.results.dicom_sc import heatmap_capture  # noqa: E402  # needs highdicom
from service.results.dicom_sr import device_uid, structured_report  # noqa: E402

MODEL = ModelIdentity("cxr-effusion-resnet18", "2.1.0", "0123456789abcdef" * 4, 0.42)
CREATED = datetime(2026, 5, 4, 3, 2, 1)
EXAMPLE_DICOM = EXAMPLES / "effusion" / "00009211_000.dcm"


@pytest.fixture()
def source() -> Dataset:
    """The header of the repository's real DICOM example, with patient and study data a modality would write."""
    dataset = pydicom.dcmread(EXAMPLE_DICOM)
    dataset.PatientName, dataset.PatientID, dataset.PatientSex = PATIENT_NAME, PATIENT_ID, "F"
    dataset.StudyDate, dataset.StudyTime, dataset.AccessionNumber = "20260102", "101500", "ACC-42"
    return read_source(to_bytes(dataset))


def round_trip(dataset: Dataset) -> Dataset:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(("probability", "present"), [(0.8125, True), (0.125, False)])
def test_the_sr_holds_the_finding_the_algorithm_and_the_source(source: Dataset, probability: float, present: bool) -> None:
    written = round_trip(structured_report(source, Finding(probability, present), MODEL, created=CREATED))
    report = hd.sr.ComprehensiveSR.from_dataset(written)
    assert written.Modality == "SR" and written.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert (written.CompletionFlag, written.VerificationFlag, written.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")

    (group,) = report.content.get_image_measurement_groups()
    assert group.finding_type.value == "60046008"
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name.value == "60046008"
    assert evaluation.value.value == ("52101004" if present else "2667000")  # SNOMED CT Present / Absent
    (measurement,) = group.get_measurements()
    assert measurement.value == pytest.approx(probability, abs=1e-12)
    named = content_values(written)
    assert named["Algorithm Name"] == {MODEL.name} and named["Algorithm Version"] == {MODEL.version}
    assert named["Algorithm Parameters"] == {f"sha256={MODEL.sha256}", "threshold=0.42"}
    assert named["Device Observer UID"] == {device_uid(MODEL)}
    (image,) = group.source_images
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert image.referenced_sop_class_uid == source.SOPClassUID

    evidence = written.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber"):
        assert written.get(keyword) == source.get(keyword), keyword  # the patient and study modules, copied
    assert written.SeriesInstanceUID != source.SeriesInstanceUID and written.SOPInstanceUID != source.SOPInstanceUID
    assert (written.ManufacturerModelName, written.SoftwareVersions) == (MODEL.name, MODEL.version)


def content_values(dataset: Dataset) -> dict[str, set[str]]:
    """Every TEXT and UIDREF content item of the SR tree, by concept name: {meaning: {values}}."""
    found: dict[str, set[str]] = {}
    for item in dataset.get("ContentSequence", []):
        value = item.get("TextValue") or item.get("UID")
        if value is not None:
            found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, set()).add(str(value))
        for meaning, values in content_values(item).items():
            found.setdefault(meaning, set()).update(values)
    return found


def test_a_source_without_type2_patient_attributes_gets_them_empty() -> None:
    pixels = np.add.outer(np.arange(300), np.arange(300)).astype(np.uint8)
    dataset = dicom_dataset(pixels)
    del dataset.PatientBirthDate
    written = round_trip(structured_report(read_source(to_bytes(dataset)), Finding(0.5, True), MODEL, created=CREATED))
    assert written.PatientBirthDate == "" and written.PatientSex == "" and written.AccessionNumber == ""
    assert written.PatientName == PATIENT_NAME


def test_a_source_without_study_uid_is_refused_without_quoting_it() -> None:
    from service.errors import ErrorCode, ServiceError

    dataset = dicom_dataset(np.zeros((300, 300), np.uint8))
    placeholder = "1." + "2" * (len(PATIENT_ID) - 2)  # pydicom refuses to write free text as a UID: swapped in the bytes
    dataset.StudyInstanceUID = placeholder
    with pytest.raises(ServiceError) as refused:
        read_source(to_bytes(dataset).replace(placeholder.encode(), PATIENT_ID.encode()))
    assert refused.value.code == ErrorCode.UNSUPPORTED_IMAGE and PATIENT_ID not in refused.value.message


def test_the_heatmap_capture_is_an_rgb_secondary_capture_in_the_source_study(source: Dataset) -> None:
    model_input = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    overlay = render(model_input, model_input).overlay_png
    written = round_trip(heatmap_capture(source, overlay, MODEL, created=CREATED))
    assert written.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert written.PhotometricInterpretation == "RGB" and written.pixel_array.shape == (256, 256, 3)
    assert np.array_equal(written.pixel_array, np.asarray(Image.open(io.BytesIO(overlay)).convert("RGB")))
    assert written.StudyInstanceUID == source.StudyInstanceUID and written.PatientID == PATIENT_ID
    assert written.SeriesInstanceUID != source.SeriesInstanceUID
    assert written.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert written.ImageType == ["DERIVED", "SECONDARY"] and MODEL.version in written.SeriesDescription
    image = hd.Image.from_dataset(written, copy=False)  # highdicom reads it back as an image
    assert image.get_frame(1).shape == (256, 256, 3)
