"""Overload at several times capacity against the real server: fast 503s, never timeouts or 5xx others."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from testkit.images import png_bytes
from testkit.live_server import running_service

CLIENTS = 24  # capacity is max_queue + max_batch = 3 requests: 8x over
SECONDS = 3.0


def test_overload_sheds_with_503_and_liveness_stays_fast(slow_model: Path) -> None:
    rows, cols = np.mgrid[0:512, 0:512]
    scan = png_bytes(((rows * 3 + cols * 7) % 256).astype(np.uint8))
    env = {"CXR_MAX_QUEUE": "2", "CXR_MAX_BATCH": "1", "CXR_INTRA_OP_THREADS": "1", "CXR_DECODE_THREADS": "1"}
    statuses: Counter[tuple[int, str | None]] = Counter()
    missing_retry_after: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/predict", content=scan, headers={"Content-Type": "image/png"})
                code = None if response.status_code == 200 else response.json()["error"]["code"]
                with lock:
                    statuses[(response.status_code, code)] += 1
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        missing_retry_after.append(response.status_code)

    with running_service(slow_model, **env) as server, ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(client_loop, server.url) for _ in range(CLIENTS)]
        probe_latencies = []
        with httpx.Client(base_url=server.url, timeout=5) as prober:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert prober.get("/live").status_code == 200
                probe_latencies.append(time.perf_counter() - started)
                time.sleep(0.05)
            stop.set()
            for future in clients:
                future.result(timeout=30)
            assert prober.get("/ready").status_code == 200  # overload is not unreadiness

    assert set(statuses) <= {(200, None), (503, "overloaded")}, statuses
    assert statuses[(200, None)] > 0 and statuses[(503, "overloaded")] > 0, statuses
    assert not missing_retry_after
    assert max(probe_latencies) < 1.0, f"/live took {max(probe_latencies):.2f}s under overload"


def test_requests_beyond_the_in_flight_limit_are_refused_before_their_body_is_read(mean_model: Path) -> None:
    rows, cols = np.mgrid[0:512, 0:512]
    scan = png_bytes(((rows * 3 + cols * 7) % 256).astype(np.uint8))

    def trickle() -> object:
        for start in range(0, len(scan), len(scan) // 10 + 1):
            yield scan[start : start + len(scan) // 10 + 1]
            time.sleep(0.15)

    with running_service(mean_model, CXR_MAX_IN_FLIGHT="2") as server, ThreadPoolExecutor(2) as pool:
        slow = [
            pool.submit(httpx.post, f"{server.url}/predict", content=trickle(), headers={"Content-Type": "image/png"}, timeout=30)
            for _ in range(2)
        ]
        time.sleep(0.4)  # both slow uploads hold their slots
        started = time.perf_counter()
        refused = httpx.post(f"{server.url}/predict", content=scan, headers={"Content-Type": "image/png"}, timeout=30)
        assert time.perf_counter() - started < 0.5
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert [future.result().status_code for future in slow] == [200, 200]
        after = httpx.post(f"{server.url}/predict", content=scan, headers={"Content-Type": "image/png"}, timeout=30)
        assert after.status_code == 200  # slots are given back
