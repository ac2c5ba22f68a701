"""Fuzzing: random and mutated uploads never cause a 5xx; every route honours its OpenAPI schema.

Example counts are bounded for CI; raise them with `FUZZ_EXAMPLES=2000 pytest tests/http/test_fuzz.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.http.app import create_app
from testkit.dicom_factory import dicom_bytes, rle_bytes
from testkit.images import png_bytes
from testkit.live_server import running_service
from tests.conftest import make_settings, wait_ready

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)

BASE = ((np.add.outer(np.arange(256), np.arange(256)) * 3) % 256).astype(np.uint8)
VALID = {
    "png": png_bytes(BASE),
    "dicom": dicom_bytes(BASE.astype(np.uint16) * 16, bits_stored=12),
    "dicom-rle": rle_bytes(BASE.astype(np.uint16) * 16, bits_stored=12),
}


@pytest.fixture(scope="module")
def app_client(mean_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(mean_model, max_upload_bytes=1 << 20))) as client:
        wait_ready(client)
        yield client


def assert_clean(response) -> None:
    """200, or a 4xx with the documented error shape; a 5xx is always a bug here."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["code"] and error["message"] and error["request_id"]


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """Flip, overwrite, truncate, duplicate or splice bytes of a valid file, keeping its magic mostly intact."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


@FUZZ
@given(body=st.binary(max_size=2048), as_multipart=st.booleans())
def test_random_bytes_never_cause_a_server_error(app_client: TestClient, body: bytes, as_multipart: bool) -> None:
    if as_multipart:
        response = app_client.post("/predict", files={"file": ("x", body)})
    else:
        response = app_client.post("/predict", content=body, headers={"Content-Type": "application/octet-stream"})
    assert_clean(response)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_mutated_valid_files_never_cause_a_server_error(app_client: TestClient, kind: str) -> None:
    @FUZZ
    @given(body=mutated(VALID[kind]))
    def check(body: bytes) -> None:
        assert_clean(app_client.post("/predict", content=body, headers={"Content-Type": "application/octet-stream"}))

    assert app_client.post("/predict", content=VALID[kind], headers={"Content-Type": "application/octet-stream"}).status_code == 200
    check()


@FUZZ
@given(
    content_type=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),  # what a client can send
        st.sampled_from(["multipart/form-data", "multipart/form-data; boundary="]),
    ),
    body=st.binary(max_size=512),
)
def test_random_content_types_never_cause_a_server_error(app_client: TestClient, content_type: str, body: bytes) -> None:
    response = app_client.post("/predict", content=body, headers={"Content-Type": content_type.strip()})
    assert_clean(response)


# --- schemathesis: every operation against its OpenAPI schema, over real HTTP ---------------------


@pytest.fixture(scope="module")
def live_url(mean_model: Path) -> Iterator[str]:
    with running_service(mean_model, CXR_MAX_UPLOAD_BYTES=str(1 << 20)) as server:
        yield server.url


schemathesis.serializer.alias("application/dicom", "application/octet-stream")  # a DICOM body is opaque bytes

# The schema is the app's own; building the app loads nothing (the model loads at start-up).
schema = schemathesis.openapi.from_dict(create_app(make_settings(Path("not-loaded.onnx"))).openapi())


@schema.parametrize()
@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(case, live_url: str) -> None:
    # Excluded: "schema-valid data is accepted". A schema cannot say "a chest X-ray of at least
    # 256x256 pixels"; any binary body is schema-valid, and most are rightly refused with a 4xx.
    case.call_and_validate(base_url=live_url, timeout=30, excluded_checks=[schemathesis.checks.positive_data_acceptance])
