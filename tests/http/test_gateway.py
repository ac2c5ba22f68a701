"""Behind a gateway that serves the service under /cxr/ (CXR_ROOT_PATH=/cxr): a real nginx, stripping the
prefix or keeping it; predict, the review page in a real browser, /docs and /openapi.json."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.gateway import NGINX, nginx_gateway
from testkit.live_server import running_service
from tests.conftest import EXAMPLES

SCAN = EXAMPLES / "effusion" / "00009211_000.png"
MODES = ["strip", "keep"]


@pytest.fixture(scope="module")
def gateway(mean_model: Path) -> Iterator[dict[str, str]]:
    """{"strip": base URL, "keep": base URL} of one nginx in front of one service; the service is at <base>/cxr/."""
    if NGINX is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (.ci/run installs it: apt-get install nginx)")
        pytest.skip("nginx is not installed")
    with running_service(mean_model, CXR_ROOT_PATH="/cxr") as server, nginx_gateway(server.port) as urls:
        yield {mode: f"{url}/cxr" for mode, url in urls.items()}


@pytest.mark.parametrize("mode", MODES)
def test_predict_and_probes_through_the_gateway(gateway: dict[str, str], mode: str) -> None:
    base = gateway[mode]
    response = httpx.post(f"{base}/predict", files={"file": ("scan.png", SCAN.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["input"]["width"] == 1024
    assert httpx.get(f"{base}/ready").status_code == 200
    assert httpx.get(f"{base}/nope").json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("mode", MODES)
def test_openapi_and_docs_point_under_the_prefix(gateway: dict[str, str], mode: str) -> None:
    base = gateway[mode]
    schema = httpx.get(f"{base}/openapi.json").json()
    assert schema["servers"] == [{"url": "/cxr"}] and "/predict" in schema["paths"]
    docs = httpx.get(f"{base}/docs").text
    assert "'/cxr/openapi.json'" in docs or '"/cxr/openapi.json"' in docs


@pytest.mark.parametrize("mode", MODES)
def test_review_page_and_docs_work_in_a_browser_under_the_prefix(gateway: dict[str, str], mode: str, offline_page) -> None:
    base = gateway[mode]
    origin = base.removesuffix("/cxr")
    page, blocked = offline_page(origin)
    page.goto(f"{base}/ui")
    assert page.evaluate("document.styleSheets[0].cssRules.length") > 0  # ui/style.css, found relative to the page
    page.set_input_files("#file", str(SCAN))
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert page.text_content("#input").startswith("PNG 1024×1024")

    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(node => node.textContent)")
    assert "/predict" in paths and "/ready" in paths
    assert blocked == []
