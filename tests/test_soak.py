"""The soak benchmark's CI variant: 500 mixed good and hostile requests, no 5xx, no memory growth."""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import MAX_UPLOAD_BYTES, soak
from testkit.live_server import running_service


def test_soak_500_mixed_requests(mean_model: Path) -> None:
    env = {"CXR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "CXR_LOG_LEVEL": "warning"}
    with running_service(mean_model, **env) as server:
        report = soak(server, requests=500, concurrency=4, warm_up=100, log=lambda line: None)
    assert report["server_error_count"] == 0, report["server_errors"]
    assert report["unexpected_answers"] == {}
    assert report["outcomes"]["200"] > 100 and len(report["outcomes"]) >= 8  # good and bad inputs both ran
    assert report["rss_growth_mib"] < 50, report["rss_mib"]
