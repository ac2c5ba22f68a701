"""The review page in a real headless browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from testkit.live_server import running_service
from tests.conftest import require_module

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = require_module("playwright.sync_api")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def test_upload_a_scan_and_read_the_result(browser, mean_model: Path, nih_png: Path, tmp_path: Path) -> None:
    with running_service(mean_model) as server:
        expected = httpx.post(f"{server.url}/predict", files={"file": ("s.png", nih_png.read_bytes())}).json()
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(f"{server.url}/ui")
        assert "not for clinical use" in page.text_content("header")
        page.set_input_files("#file", str(nih_png))
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        shown = page.text_content("#probability")
        assert shown == f"{expected['effusion_probability'] * 100:.1f} %"
        assert page.text_content("#label") == expected["label"]
        assert "test-mean-model 0.0.1" in page.text_content("#model")
        assert page.text_content("#provider") == "CPUExecutionProvider"
        assert "PNG 1024×1024 L" in page.text_content("#input")
        screenshot = tmp_path / "ui.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 10_000

        page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a scan"}])
        page.wait_for_selector("#status.error", timeout=30_000)
        assert page.text_content("#status").startswith("unsupported_media_type:")
        page.close()


def test_page_is_served_with_a_strict_content_security_policy(mean_model: Path) -> None:
    with running_service(mean_model) as server:
        response = httpx.get(f"{server.url}/ui")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "http" not in response.text.replace("http-equiv", "")  # no external CDN or link
        assert httpx.get(f"{server.url}/ui/app.js").headers["content-type"].startswith("text/javascript")
