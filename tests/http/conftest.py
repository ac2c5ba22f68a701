"""The page tests' offline page, on the shared `browser` fixture (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


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
