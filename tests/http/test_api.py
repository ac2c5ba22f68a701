"""The HTTP API through the real app and its lifespan (FastAPI's TestClient, no mocks)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from testkit.images import png_bytes
from tests.conftest import make_settings, wait_ready
from tests.reference import direct_probability


def post_file(client: TestClient, data: bytes, name: str = "scan.png", content_type: str = "image/png"):
    return client.post("/predict", files={"file": (name, data, content_type)})


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]


def test_real_nih_scan_matches_onnx_runtime_on_the_documented_preprocessing(
    client: TestClient, nih_png: Path, mean_model: Path
) -> None:
    response = post_file(client, nih_png.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0.0 <= body["effusion_probability"] <= 1.0
    assert body["effusion_probability"] == pytest.approx(direct_probability(mean_model, nih_png), abs=1e-5)
    assert body["label"] == ("effusion" if body["effusion_probability"] >= body["threshold"] else "no_effusion")
    assert body["model"]["name"] == "test-mean-model"
    assert len(body["model"]["sha256"]) == 64
    assert body["execution_provider"] == "CPUExecutionProvider"
    assert body["input"] == {
        "format": "png", "width": 1024, "height": 1024, "mode": "L", "converted": False, "sop_instance_uid": None
    }
    assert set(body["timing_ms"]) == {"decode", "preprocess", "queue", "inference", "total"}
    assert body["request_id"] == response.headers["x-request-id"]


def test_rgba_nih_scan_is_converted_and_says_so(client: TestClient, nih_dir: Path, mean_model: Path) -> None:
    scan = nih_dir / "nofinding" / "00005813_000.png"
    body = post_file(client, scan.read_bytes()).json()
    assert body["input"]["mode"] == "RGBA" and body["input"]["converted"] is True
    assert body["effusion_probability"] == pytest.approx(direct_probability(mean_model, scan), abs=1e-5)


def test_raw_body_upload(client: TestClient, nih_png: Path) -> None:
    multipart = post_file(client, nih_png.read_bytes()).json()
    raw = client.post("/predict", content=nih_png.read_bytes(), headers={"Content-Type": "image/png"}).json()
    assert raw["effusion_probability"] == multipart["effusion_probability"]


def test_truncated_png(client: TestClient, nih_png: Path) -> None:
    data = nih_png.read_bytes()
    assert_error(post_file(client, data[: len(data) // 3]), 422, "undecodable_image")


def test_text_file(client: TestClient) -> None:
    assert_error(post_file(client, b"hello, not an image", "notes.txt", "text/plain"), 415, "unsupported_media_type")


def test_missing_file_field(client: TestClient) -> None:
    response = client.post("/predict", files={"scan": ("x.png", b"\x89PNG", "image/png")})
    assert_error(response, 422, "missing_file")


def test_unsupported_request_content_type(client: TestClient) -> None:
    response = client.post("/predict", content=b'{"file": 1}', headers={"Content-Type": "application/json"})
    assert_error(response, 415, "unsupported_media_type")


def test_all_black_image(client: TestClient) -> None:
    assert_error(post_file(client, png_bytes(np.zeros((1024, 1024), dtype=np.uint8))), 422, "blank_image")


def test_small_image(client: TestClient) -> None:
    assert_error(post_file(client, png_bytes(np.eye(64, dtype=np.uint8) * 255)), 422, "image_too_small")


def test_oversized_body(mean_model: Path) -> None:
    with TestClient(create_app(make_settings(mean_model, max_upload_bytes=4096))) as client:
        wait_ready(client)
        assert_error(post_file(client, b"\x89PNG\r\n\x1a\n" + bytes(10_000)), 413, "payload_too_large")


def test_each_request_gets_its_own_answer(client: TestClient) -> None:
    dark = np.zeros((512, 512), dtype=np.uint8)
    dark[:8] = 255  # mostly dark: low mean
    bright = np.full((512, 512), 255, dtype=np.uint8)
    bright[:8] = 0  # mostly bright: high mean
    p_dark = post_file(client, png_bytes(dark)).json()["effusion_probability"]
    p_bright = post_file(client, png_bytes(bright)).json()["effusion_probability"]
    assert p_dark < 0.2 < 0.8 < p_bright


def test_client_request_id_is_echoed(client: TestClient, nih_png: Path) -> None:
    response = client.post("/predict", files={"file": ("a.png", nih_png.read_bytes())}, headers={"X-Request-ID": "pacs-42"})
    assert response.headers["x-request-id"] == "pacs-42"
    assert response.json()["request_id"] == "pacs-42"
    unsafe = client.get("/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])  # replaced by a fresh id, not merely altered


def test_model_route_reports_the_contract(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["preprocessing_id"] == "minmax-area256/v1"
    assert body["class_names"] == ["no_effusion", "effusion"]
    assert body["heatmap"] is False
    assert body["metadata"]["training_data"] == {"synthetic": True}


def test_unknown_route_has_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


def test_openapi_documents_the_upload(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]


def test_ready_is_503_until_warm_up_has_finished(slow_model: Path, nih_png: Path) -> None:
    settings = make_settings(slow_model, warmup_runs=5, max_batch=2)  # ~1 s of warm-up
    with TestClient(create_app(settings)) as client:
        first = client.get("/ready")
        assert first.status_code == 503
        assert first.json()["status"] == "warming"
        assert_error(post_file(client, nih_png.read_bytes()), 503, "not_ready")
        wait_ready(client)
        ready = client.get("/ready").json()
        assert ready["ready"] is True and ready["execution_provider"] == "CPUExecutionProvider"
        assert post_file(client, nih_png.read_bytes()).status_code == 200


def test_cuda_policy_without_cuda_fails_readiness_with_the_reason(mean_model: Path) -> None:
    with TestClient(create_app(make_settings(mean_model, execution_provider="cuda"))) as client:
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "failed"
        assert "cuda" in body["reason"] and "CPUExecutionProvider" in body["reason"]
        assert body["execution_provider"] == "CPUExecutionProvider"  # what really runs, not what was asked
