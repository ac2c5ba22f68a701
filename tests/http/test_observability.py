"""Prometheus metrics and structured logs: what they say, and what they must never say."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.http.app import create_app
from testkit.dicom_factory import (
    PATIENT_ID,
    PATIENT_NAME,
    SOP_INSTANCE_UID,
    dicom_bytes,
    dicom_dataset,
    to_bytes,
)
from testkit.images import png_bytes
from testkit.live_server import running_service
from tests.conftest import make_settings, wait_ready

SCAN = png_bytes(((np.add.outer(np.arange(300), np.arange(300)) * 7) % 256).astype(np.uint8))
SECRET_FILENAME = "SECRETFILENAME-Zebulon-chest.dcm"


def samples(client: TestClient) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_follow_requests_batches_and_rejections(client: TestClient) -> None:
    for _ in range(3):
        assert client.post("/predict", files={"file": ("a.png", SCAN)}).status_code == 200
    assert client.post("/predict", files={"file": ("a.png", b"not an image")}).status_code == 415
    assert client.post("/predict", files={"file": ("a.png", SCAN[:200])}).status_code == 422
    assert client.get("/no/such/path/12345").status_code == 404
    found = samples(client)

    count = "cxr_http_request_duration_seconds_count"
    assert value(found, count, method="POST", route="/predict", status="200") == 3
    assert value(found, count, method="POST", route="/predict", status="415") == 1
    assert value(found, count, method="GET", route="unmatched", status="404") == 1  # raw paths never become labels
    assert not any("12345" in str(labels) for _, labels in found)
    assert value(found, "cxr_rejected_requests_total", code="unsupported_media_type") == 1
    assert value(found, "cxr_rejected_requests_total", code="undecodable_image") == 1
    assert value(found, "cxr_rejected_requests_total", code="not_found") == 1
    assert value(found, "cxr_batch_size_count") == 3 and value(found, "cxr_batch_size_sum") == 3
    assert value(found, "cxr_inference_duration_seconds_count") == 3
    assert value(found, "cxr_queue_depth") == 0
    assert value(found, "cxr_http_requests_in_flight") == 0
    assert value(found, "cxr_ready") == 1
    (info,) = [labels for name, labels in found if name == "cxr_model_info"]
    info = dict(info)
    assert info["name"] == "test-mean-model" and info["version"] == "0.0.1"
    assert len(info["sha256"]) == 64 and info["execution_provider"] == "CPUExecutionProvider"


def test_two_apps_in_one_process_keep_separate_metrics(mean_model: Path) -> None:
    with TestClient(create_app(make_settings(mean_model))) as first, TestClient(create_app(make_settings(mean_model))) as second:
        wait_ready(first)
        wait_ready(second)
        assert first.post("/predict", files={"file": ("a.png", SCAN)}).status_code == 200
        count = "cxr_http_request_duration_seconds_count"
        assert value(samples(first), count, method="POST", route="/predict", status="200") == 1
        assert value(samples(second), count, method="POST", route="/predict", status="200") == 0


def test_request_id_is_generated_or_honoured(client: TestClient) -> None:
    generated = client.get("/live").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/live", headers={"X-Request-ID": "gateway-42"}).headers["x-request-id"] == "gateway-42"
    hostile = client.get("/live", headers={"X-Request-ID": "a b<script>\\n"}).headers["x-request-id"]
    assert len(hostile) == 32 and "<" not in hostile  # not a sane id: replaced, never echoed
    too_long = client.get("/live", headers={"X-Request-ID": "a" * 129}).headers["x-request-id"]
    assert len(too_long) == 32


@pytest.fixture(scope="module")
def logged_server(mean_model: Path):
    with running_service(mean_model, CXR_LOG_LEVEL="debug") as server:
        yield server


def test_logs_are_json_lines_with_request_ids_and_no_patient_data(logged_server) -> None:
    import httpx

    scan = ((np.add.outer(np.arange(400), np.arange(300)) * 5) % 4096).astype(np.uint16)
    good = dicom_bytes(scan, bits_stored=12)
    broken = good[: len(good) - 5000]
    # Invalid UI and DS values that carry patient data: parsers like to quote invalid values.
    # pydicom refuses to write them, so valid placeholders of the same length are swapped in the bytes.
    bad_uid = f"{PATIENT_NAME}-{PATIENT_ID}"
    bad_slope = f"x{PATIENT_ID}"[:16]
    placeholder_uid = "1." + "2" * (len(bad_uid) - 2)
    placeholder_slope = "1." + "0" * (len(bad_slope) - 2)
    hostile_uid = to_bytes(dicom_dataset(scan, sop_instance_uid=placeholder_uid))
    hostile_slope = dicom_bytes(scan, slope=placeholder_slope, intercept=0.0)  # a DS string keeps its digits
    hostile_uid = hostile_uid.replace(placeholder_uid.encode(), bad_uid.encode())
    hostile_slope = hostile_slope.replace(placeholder_slope.encode(), bad_slope.encode())
    assert bad_uid.encode() in hostile_uid and bad_slope.encode() in hostile_slope
    uploads = [
        ("req-good-dicom", good, 200),
        ("req-broken-dicom", broken, 422),
        ("req-hostile-uid", hostile_uid, 200),  # scored; the UID is not echoed
        ("req-hostile-slope", hostile_slope, 422),
        ("req-not-an-image", PATIENT_NAME.encode() * 10, 415),
    ]
    with httpx.Client(base_url=logged_server.url, timeout=30) as client:
        for request_id, data, status in uploads:
            response = client.post(
                "/predict",
                files={"file": (SECRET_FILENAME, data, "application/dicom")},
                headers={"X-Request-ID": request_id},
            )
            assert response.status_code == status, response.text
            assert response.headers["x-request-id"] == request_id
            if status == 200:
                expected_uid = SOP_INSTANCE_UID if request_id == "req-good-dicom" else None  # a hostile UID is not echoed
                assert response.json()["input"]["sop_instance_uid"] == expected_uid
        assert client.get("/live").status_code == 200

    # The request line is written after the response is sent: wait for the probe's line to land.
    deadline = time.monotonic() + 10
    while '"route": "/live"' not in logged_server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = logged_server.log()
    for secret in (PATIENT_NAME, PATIENT_ID, "Zebulon", "SECRETFILENAME", "19010101"):
        assert secret not in log, f"{secret!r} leaked into the log"

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines)
    by_id = {line["request_id"]: line for line in lines if line["logger"] == "service.requests"}
    for request_id, _, status in uploads:
        line = by_id[request_id]
        assert (line["route"], line["status"], line["method"]) == ("/predict", status, "POST")
        assert line["duration_ms"] > 0
    assert by_id["req-broken-dicom"]["error_code"] == "undecodable_image"
    assert by_id["req-not-an-image"]["error_code"] == "unsupported_media_type"
    assert "error_code" not in by_id["req-good-dicom"]
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn speaks JSON too
    probe_lines = [line for line in lines if line.get("route") == "/live"]
    assert probe_lines and all(line["level"] == "debug" for line in probe_lines)
