"""/docs on an air-gapped network: everything it needs comes from the service (a real browser, outside blocked)."""

from __future__ import annotations

from pathlib import Path

import httpx

from testkit.live_server import running_service


def test_docs_list_the_operations_with_every_outside_request_blocked(mean_model: Path, offline_page) -> None:
    with running_service(mean_model) as server:
        page, blocked = offline_page(server.url)
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(node => node.textContent)")
        assert {"/predict", "/ready", "/live", "/model"} <= set(paths)
        assert blocked == []
        for route in ("/docs", "/redoc"):
            assert "cdn" not in httpx.get(f"{server.url}{route}").text.lower()
