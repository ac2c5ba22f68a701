"""Optional API keys: every route but the probes needs one; keys are compared in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http import auth
from service.http.app import create_app
from service.http.auth import AuthConfigError, KeyChecker, load_api_keys
from testkit.images import png_bytes
from tests.conftest import make_settings, wait_ready

KEY = "k3y-for-tests-0123456789abcdef"
OTHER_KEY = "another-key-for-rotation-42"
SCAN = png_bytes(((np.add.outer(np.arange(300), np.arange(300)) * 7) % 256).astype(np.uint8))


@pytest.fixture()
def locked(mean_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(mean_model, api_keys=f"{KEY}, {OTHER_KEY}"))) as client:
        wait_ready(client)
        yield client


PROTECTED = [
    ("POST", "/predict"),
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/no-such-route"),  # unknown routes say 401 too: nothing about the app leaks before a key
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong-key-wrong-key-wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}],
    ids=["none", "wrong", "basic-scheme", "empty-bearer"],
)
def test_without_a_valid_key_every_route_is_401(locked: TestClient, method: str, path: str, headers: dict) -> None:
    response = locked.request(method, path, headers=headers, files={"file": ("a.png", SCAN)} if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/live", "/ready", "/ui", "/ui/app.js", "/ui/style.css"])  # the page holds no data
def test_probes_and_the_review_page_stay_open(locked: TestClient, path: str) -> None:
    assert locked.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER_KEY}"}, {"X-API-Key": KEY}],
    ids=["bearer", "bearer-lowercase-second-key", "x-api-key"],
)
def test_a_valid_key_opens_every_route(locked: TestClient, headers: dict) -> None:
    assert locked.post("/predict", files={"file": ("a.png", SCAN)}, headers=headers).status_code == 200
    for path in ("/model", "/metrics", "/openapi.json", "/docs"):
        assert locked.get(path, headers=headers).status_code == 200, path


def test_metrics_can_be_public(mean_model: Path) -> None:
    with TestClient(create_app(make_settings(mean_model, api_keys=KEY, metrics_public=True))) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/model").status_code == 401


def test_auth_is_off_by_default(client: TestClient) -> None:
    assert client.post("/predict", files={"file": ("a.png", SCAN)}).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_keys_file_with_comments_is_combined_with_the_variable(tmp_path: Path, mean_model: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# rotated 2026-11\n\n  {OTHER_KEY}  \n")
    assert load_api_keys(KEY, keys_file) == [KEY, OTHER_KEY]
    with TestClient(create_app(make_settings(mean_model, api_keys_file=keys_file))) as client:
        assert client.get("/model", headers={"X-API-Key": OTHER_KEY}).status_code == 200
        assert client.get("/model", headers={"X-API-Key": KEY}).status_code == 401


@pytest.mark.parametrize(
    ("keys", "file_text", "fragment"),
    [
        ("short", None, "shorter than 16"),
        (None, "# only a comment\n", "holds no key"),
        (None, "missing", "cannot read"),
    ],
)
def test_unusable_key_configuration_stops_start_up(tmp_path: Path, keys, file_text, fragment: str, mean_model: Path) -> None:
    keys_file = None
    if file_text is not None:
        keys_file = tmp_path / "keys"
        if file_text != "missing":
            keys_file.write_text(file_text)
    with pytest.raises(AuthConfigError, match=fragment):
        create_app(make_settings(mean_model, api_keys=keys, api_keys_file=keys_file))


def test_every_configured_key_is_compared_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit and fixed-length operands: the work done cannot depend on the presented key."""
    keys = [KEY, OTHER_KEY, "third-key-third-key-3333"]
    checker = KeyChecker(keys)
    calls: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting_compare)
    for presented in (KEY, OTHER_KEY, keys[2], KEY[:-1] + "X", "x", "y" * 500, None):
        calls.clear()
        expected = presented in keys
        assert checker.accepts(presented) is expected
        assert calls == [(32, 32)] * len(keys), presented


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options(
        "/predict", headers={"Origin": "https://viewer.example.org", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_configured_origins_and_precedes_auth(mean_model: Path) -> None:
    settings = make_settings(mean_model, cors_origins="https://viewer.example.org", api_keys=KEY)
    with TestClient(create_app(settings)) as client:
        request = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
        allowed = client.options("/predict", headers={"Origin": "https://viewer.example.org", **request})
        assert allowed.status_code == 200  # a preflight never carries the key
        assert allowed.headers["access-control-allow-origin"] == "https://viewer.example.org"
        refused = client.options("/predict", headers={"Origin": "https://evil.example.com", **request})
        assert "access-control-allow-origin" not in refused.headers


def test_openapi_declares_the_key_schemes_when_keys_are_set(locked: TestClient, client: TestClient) -> None:
    schema = locked.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["security"] == [{"bearer": []}, {"apiKey": []}]
    assert schema["paths"]["/live"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/predict"]["post"]  # the global requirement applies
    assert "security" not in client.get("/openapi.json").json()  # auth off: nothing declared


def test_python_m_service_refuses_to_start_with_unusable_keys(tmp_path: Path, mean_model: Path) -> None:
    import subprocess
    import sys

    from testkit.live_server import REPO_ROOT, free_port

    empty = tmp_path / "keys"
    empty.write_text("# no key yet\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(mean_model), "--port", str(free_port())],
        cwd=REPO_ROOT,
        env={**os.environ, "CXR_EXECUTION_PROVIDER": "cpu", "CXR_API_KEYS_FILE": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: API keys file {empty} holds no key"]
