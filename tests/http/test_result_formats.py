"""`/predict`'s result formats by Accept header: JSON by default (unchanged), a FHIR bundle, a DICOM SR, and the
SR with the heatmap's Secondary Capture as multipart/related; 406 for a DICOM result of a PNG or JPEG; no patient
data in the log on any of these paths."""

from __future__ import annotations

import email.parser
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.http import results
from service.http.app import create_app
from service.http.negotiation import ResultFormat, result_format
from testkit.dicom_factory import PATIENT_ID, PATIENT_NAME, SOP_INSTANCE_UID, dicom_dataset, to_bytes
from testkit.images import encode
from testkit.live_server import running_service
from tests.conftest import EXAMPLES, make_settings, require_module, wait_ready

DICOM = {"Accept": "application/dicom"}
FHIR = {"Accept": "application/fhir+json"}
EXAMPLE_PNG = EXAMPLES / "effusion" / "00009211_000.png"


@pytest.fixture(scope="module")
def heat_client(heatmap_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(heatmap_model))) as client:
        wait_ready(client)
        yield client


def example_dicom() -> bytes:
    """The repository's real DICOM example, with the fake patient identifiers tests look for."""
    dataset = pydicom.dcmread(EXAMPLES / "effusion" / "00009211_000.dcm")
    dataset.PatientName, dataset.PatientID, dataset.SOPInstanceUID = PATIENT_NAME, PATIENT_ID, SOP_INSTANCE_UID
    dataset.file_meta.MediaStorageSOPInstanceUID = SOP_INSTANCE_UID
    return to_bytes(dataset)


def multipart_parts(response) -> list[bytes]:
    """The bodies of a multipart/related answer, parsed by the standard library's MIME parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + response.content)
    assert message.get_content_type() == "multipart/related" and message.get_param("type") == "application/dicom"
    return [part.get_payload(decode=True) for part in message.get_payload()]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ResultFormat.JSON),
        ("", ResultFormat.JSON),
        ("*/*", ResultFormat.JSON),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", ResultFormat.JSON),
        ("application/json", ResultFormat.JSON),
        ("application/fhir+json", ResultFormat.FHIR),
        ("application/dicom", ResultFormat.DICOM),
        ('multipart/related; type="application/dicom"', ResultFormat.DICOM),
        ("multipart/related; type=application/dicom+json", ResultFormat.JSON),
        ("application/json, application/fhir+json", ResultFormat.JSON),  # a tie goes to JSON
        ("application/json;q=0.5, application/fhir+json", ResultFormat.FHIR),
        ("application/fhir+json;q=0.2, application/dicom;q=0.9", ResultFormat.DICOM),
        ("application/dicom;q=0, application/json;q=0.1", ResultFormat.JSON),  # q=0: not acceptable
        ("application/dicom;q=nonsense", ResultFormat.JSON),
    ],
)
def test_the_accept_header_picks_the_format(accept: str | None, expected: ResultFormat) -> None:
    assert result_format(accept) is expected


def test_a_browser_accept_header_still_gets_the_json_answer(client: TestClient) -> None:
    data = EXAMPLE_PNG.read_bytes()
    plain = client.post("/predict", files={"file": ("scan", data)})
    browser = client.post("/predict", files={"file": ("scan", data)}, headers={"Accept": "text/html,*/*;q=0.8"})
    assert plain.headers["content-type"] == browser.headers["content-type"] == "application/json"
    assert browser.json()["effusion_probability"] == plain.json()["effusion_probability"]


def test_fhir_for_a_png_is_a_valid_bundle_with_the_json_probability(client: TestClient) -> None:
    require_module("fhir.resources")
    from fhir.resources.R4B.bundle import Bundle

    data = EXAMPLE_PNG.read_bytes()
    expected = client.post("/predict", files={"file": ("scan", data)}).json()
    response = client.post("/predict", files={"file": ("scan", data)}, headers=FHIR)
    assert response.status_code == 200 and response.headers["content-type"] == "application/fhir+json"
    bundle = Bundle.model_validate(response.json())
    observation = bundle.entry[1].resource
    assert float(observation.valueQuantity.value) == expected["effusion_probability"]
    assert observation.interpretation[0].coding[0].code == ("POS" if expected["label"] == "effusion" else "NEG")
    assert expected["model"]["sha256"] in observation.method.text
    assert observation.derivedFrom is None  # a PNG has no study to name


def test_fhir_for_a_dicom_names_its_study(client: TestClient) -> None:
    data = example_dicom()
    bundle = client.post("/predict", content=data, headers={"Content-Type": "application/dicom", **FHIR}).json()
    study = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert bundle["entry"][1]["resource"]["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{study}"
    assert PATIENT_NAME not in json.dumps(bundle) and PATIENT_ID not in json.dumps(bundle)  # FHIR carries no patient data


def test_a_dicom_answer_is_the_sr_of_the_same_prediction(client: TestClient) -> None:
    require_module("highdicom")
    import highdicom as hd

    data = example_dicom()
    expected = client.post("/predict", content=data, headers={"Content-Type": "application/dicom"}).json()
    response = client.post("/predict", content=data, headers={"Content-Type": "application/dicom", **DICOM})
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    report = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(io.BytesIO(response.content)))
    (group,) = report.content.get_image_measurement_groups()
    assert group.get_measurements()[0].value == expected["effusion_probability"]
    assert group.source_images[0].referenced_sop_instance_uid == SOP_INSTANCE_UID
    assert report.PatientName == PATIENT_NAME  # PHI travels inside the DICOM object, and only there
    assert (report.ManufacturerModelName, report.SoftwareVersions) == (expected["model"]["name"], expected["model"]["version"])


def test_heatmap_true_adds_the_secondary_capture_in_a_multipart_answer(heat_client: TestClient, client: TestClient) -> None:
    require_module("highdicom")
    data = example_dicom()
    response = heat_client.post("/predict?heatmap=true", content=data, headers={"Content-Type": "application/dicom", **DICOM})
    assert response.status_code == 200, response.text
    report, capture = (pydicom.dcmread(io.BytesIO(part)) for part in multipart_parts(response))
    assert report.Modality == "SR" and capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert capture.StudyInstanceUID == report.StudyInstanceUID == pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert capture.pixel_array.shape == (256, 256, 3)
    # A model without a heatmap output still answers multipart, with the SR alone.
    alone = client.post("/predict?heatmap=true", content=data, headers={"Content-Type": "application/dicom", **DICOM})
    assert [pydicom.dcmread(io.BytesIO(part)).Modality for part in multipart_parts(alone)] == ["SR"]


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_dicom_result_of_a_png_or_jpeg_is_not_acceptable(client: TestClient, kind: str) -> None:
    data = EXAMPLE_PNG.read_bytes() if kind == "png" else encode(Image.open(EXAMPLE_PNG), "JPEG")
    response = client.post("/predict", files={"file": ("scan", data)}, headers=DICOM)
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    assert kind.upper() in response.json()["error"]["message"]


def test_without_the_reports_extra_a_dicom_result_is_not_acceptable(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "DICOM_RESULTS", False)  # as if highdicom were not installed (found once, at import)
    response = client.post("/predict", content=example_dicom(), headers={"Content-Type": "application/dicom", **DICOM})
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable" and "cxr-effusion[reports]" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def logged_heat_server(heatmap_model: Path):
    with running_service(heatmap_model, CXR_LOG_LEVEL="debug") as server:
        yield server


def test_no_patient_data_in_logs_or_errors_on_the_new_paths(logged_heat_server) -> None:
    import httpx

    good = example_dicom()
    no_study = dicom_dataset(pydicom.dcmread(io.BytesIO(good)).pixel_array)
    placeholder = "1." + "2" * (len(PATIENT_ID) - 2)  # free text where a UID belongs, swapped in after writing
    no_study.StudyInstanceUID = placeholder
    hostile = to_bytes(no_study).replace(placeholder.encode(), PATIENT_ID.encode())
    one_part_name = pydicom.dcmread(io.BytesIO(good))
    one_part_name.PatientName = "Zebulonsolo"  # highdicom warns about a one-part name, quoting it
    odd_header = pydicom.dcmread(io.BytesIO(good))
    odd_header.PatientSex = "male"  # found in real files; highdicom refuses to copy it into a report
    requests = [
        ("req-sr-one-part-name", to_bytes(one_part_name), DICOM, "", 200),
        ("req-sr-odd-header", to_bytes(odd_header), DICOM, "", 406),
        ("req-fhir", good, FHIR, "", 200),
        ("req-sr", good, DICOM, "", 200),
        ("req-sr-heatmap", good, DICOM, "?heatmap=true", 200),
        ("req-hostile-study-uid", hostile, DICOM, "", 422),
        ("req-png-as-dicom", EXAMPLE_PNG.read_bytes(), DICOM, "", 406),
    ]
    with httpx.Client(base_url=logged_heat_server.url, timeout=60) as client:
        for request_id, data, accept, query, status in requests:
            response = client.post(
                f"/predict{query}", content=data, headers={"Content-Type": "application/octet-stream", "X-Request-ID": request_id, **accept}
            )
            assert response.status_code == status, response.text
            if status != 200:
                assert PATIENT_ID not in response.text and PATIENT_NAME not in response.text
        assert client.get("/live").status_code == 200
    deadline = time.monotonic() + 10
    while '"route": "/live"' not in logged_heat_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = logged_heat_server.log()
    for request_id, *_ in requests:
        assert request_id in log
    for secret in (PATIENT_NAME, PATIENT_ID, "Zebulon", "19010101", "male"):
        assert secret not in log, f"{secret!r} leaked into the log"
