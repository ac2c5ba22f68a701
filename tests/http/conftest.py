"""A real headless browser for the page tests: Debian's Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_module

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_module("playwright.sync_api")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def offline_page(browser: Any) -> Iterator[Callable[[str], tuple[Any, list[str]]]]:
    """A page that may load only from `origin` (the service or its gateway): every other request is
    blocked and recorded, as on an air-gapped hospital network."""
    contexts = []

    def open_page(origin: str) -> tuple[Any, list[str]]:
        blocked: list[str] = []
        context = browser.new_context()
        contexts.append(context)

        def only_origin(route: Any) -> None:
            url = route.request.url
            if url.startswith(origin) or url.startswith("data:") or url.startswith("blob:"):
                route.continue_()
            else:
                blocked.append(url)
                route.abort()

        context.route("**/*", only_origin)
        return context.new_page(), blocked

    yield open_page
    for context in contexts:
        context.close()
