"""Shared fixtures: real ONNX test models, real NIH scans, and the app under test."""

from __future__ import annotations

import importlib
import os
import shutil
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
EXAMPLES = REPO_ROOT / "examples"  # a few real NIH scans in the repository (examples/README.md)


def require_module(name: str) -> ModuleType:
    """An optional test dependency; missing, it fails under CI (which installs every extra) and skips elsewhere."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; CI installs the cpu,dev,train,client,reports extras", pytrace=False)
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
def nih_png() -> Path:
    """A real 1024x1024 8-bit grayscale NIH chest X-ray, from the repository's examples (no shared data needed)."""
    return EXAMPLES / "effusion" / "00000282_000.png"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mean_model(models_dir: Path) -> Path:
    return build_model(models_dir / "mean.onnx")


@pytest.fixture(scope="session")
def heatmap_model(models_dir: Path) -> Path:
    """The mean model with a `heatmap` output (the input's own brightness)."""
    return build_model(models_dir / "mean-heatmap.onnx", heatmap_shape=("N", 256, 256))


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium through Playwright (no browser download); missing, it fails under CI and skips elsewhere.

    Module-scoped on purpose: Playwright's sync API keeps an asyncio loop running in the main
    thread while it is open, which breaks every later `asyncio.run()` (tests/test_batching.py)
    and any second Playwright start, so it must close with the module that used it.
    """
    sync_api = require_module("playwright.sync_api")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
