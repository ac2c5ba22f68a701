"""Shared fixtures: real ONNX test models, real NIH scans, and the app under test."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from testkit.model_factory import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
NIH_DIR = SHARED_DATA / "nih-train"


def require_module(name: str) -> ModuleType:
    """An optional test dependency; missing, it fails under CI (which installs every extra) and skips elsewhere."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; CI installs the cpu,dev,train,client extras", pytrace=False)
        pytest.skip(f"{name} is not installed", allow_module_level=True)


def require_nih() -> Path:
    """The real NIH images; missing data fails under CI and skips elsewhere."""
    if not (NIH_DIR / "labels.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared NIH data not found at {NIH_DIR}")
        pytest.skip(f"shared NIH data not found at {NIH_DIR} (set CXR_SHARED_DATA)")
    return NIH_DIR


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly: a CXR_* variable in the caller's shell must not change them."""
    for name in list(os.environ):
        if name.startswith("CXR_") and name != "CXR_SHARED_DATA":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    return require_nih()


@pytest.fixture(scope="session")
def nih_png(nih_dir: Path) -> Path:
    """A real 1024x1024 8-bit grayscale NIH chest X-ray."""
    return nih_dir / "effusion" / "00000282_000.png"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mean_model(models_dir: Path) -> Path:
    return build_model(models_dir / "mean.onnx")


@pytest.fixture(scope="session")
def slow_model(models_dir: Path) -> Path:
    return build_model(models_dir / "slow.onnx", slow=True)


def make_settings(model_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"model_path": model_path, "execution_provider": "cpu", "warmup_runs": 1, "max_batch": 4}
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"service not ready after {timeout}s: {client.get('/ready').json()}")


@pytest.fixture()
def client(mean_model: Path) -> Iterator[TestClient]:
    """The real app with its lifespan, serving the mean model, ready."""
    with TestClient(create_app(make_settings(mean_model))) as test_client:
        wait_ready(test_client)
        yield test_client
