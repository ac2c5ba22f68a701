"""Graceful shutdown of the real server: drain first, finish what was accepted, then exit promptly."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from testkit.live_server import every_process_ready, held_back, in_flight, running_service

EXIT_STATUSES = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled


def wait_exit(server, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    status = server.process.wait(timeout=timeout)
    return status, time.monotonic() - started


def test_sigterm_turns_ready_503_at_once_and_refuses_new_work(mean_model: Path, nih_png: Path) -> None:
    delay = 1.5
    with running_service(mean_model, CXR_DRAIN_DELAY_S=str(delay)) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/ready").status_code == 200
            signalled = time.monotonic()
            server.terminate()
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            assert time.monotonic() - signalled < 1.0
            refused = client.post("/predict", files={"file": ("a.png", nih_png.read_bytes())})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "not_ready"
            assert int(refused.headers["retry-after"]) > 0
            assert client.get("/live").status_code == 200  # alive while draining: no restart
        status, _ = wait_exit(server, timeout=delay + 10)
        assert status in EXIT_STATUSES
        assert delay - 0.3 < time.monotonic() - signalled < delay + 6.0, "the listener closed too early or too late"
        assert "draining" in server.log()


@pytest.mark.parametrize("mode", [{}, {"CXR_WORKERS": "2", "CXR_INFERENCE": "shared"}], ids=["one-process", "shared-inference"])
def test_sigterm_under_load_loses_no_accepted_request(slow_model: Path, nih_png: Path, mode: dict[str, str]) -> None:
    """Every request either completes (200) or is refused cleanly (503); none is cut mid-flight.

    Clients behave like a load balancer: they stop sending once one of them has seen the service
    draining (a client that stopped only on its own refusal could send a request at the instant
    the listener closes, after a slow answer that took the whole delay: uvicorn closes a
    connection whose request it has not read yet, which the delay exists to avoid). An upload held back half-way straddles the listener closing, so uvicorn's own
    wait for in-flight requests is exercised too. Under the shared inference process the
    supervisor stops the inference process only after both frontends have finished.
    """
    scan = nih_png.read_bytes()
    delay = 1.0
    env = {
        "CXR_DRAIN_DELAY_S": str(delay),
        "CXR_DRAIN_TIMEOUT_S": "20",
        "CXR_MAX_BATCH": "2",
        "CXR_INTRA_OP_THREADS": "1",
        "CXR_MAX_QUEUE": "64",
        **mode,
    }
    outcomes: list[tuple[str, object, float, float]] = []  # (kind, detail, started, finished)
    lock = threading.Lock()
    stop = threading.Event()
    signalled_at: list[float] = []

    def record(kind: str, detail: object, started: float) -> None:
        with lock:
            outcomes.append((kind, detail, started, time.monotonic()))

    draining_seen = threading.Event()  # like a balancer: once any client saw "draining", none sends new work

    def worker(url: str) -> None:
        while not stop.is_set() and not draining_seen.is_set():
            started = time.monotonic()
            try:
                response = httpx.post(f"{url}/predict", files={"file": ("a.png", scan)}, timeout=30)
            except httpx.ConnectError:
                record("not accepted", None, started)  # the listener is closed: nothing was lost
                return
            except httpx.TransportError as error:
                record("cut", type(error).__name__, started)
                return
            code = response.json().get("error", {}).get("code") if response.status_code != 200 else None
            if response.status_code == 503:
                assert "retry-after" in response.headers
            record(str(response.status_code), code, started)
            if code == "not_ready":
                draining_seen.set()
                return  # the service said it is draining: go elsewhere

    release = threading.Event()

    def slow_upload(url: str) -> None:
        started = time.monotonic()
        try:
            response = httpx.post(
                f"{url}/predict", content=held_back(scan, release), headers={"Content-Type": "image/png"}, timeout=30
            )
            record(f"slow {response.status_code}", None, started)
        except httpx.TransportError as error:
            record("cut", type(error).__name__, started)

    with running_service(slow_model, ready_timeout=240, **env) as server, ThreadPoolExecutor(9) as pool:
        every_process_ready(server.url, int(mode.get("CXR_WORKERS", "1")), 120, log=server.log)  # every frontend, not only one
        slow = pool.submit(slow_upload, server.url)
        while in_flight(server.url) < 1:  # the slow upload is accepted and past the readiness check
            time.sleep(0.02)
        workers = [pool.submit(worker, server.url) for _ in range(8)]
        while sum(1 for kind, *_ in outcomes if kind == "200") < 8:
            time.sleep(0.02)
        signalled_at.append(time.monotonic())
        server.terminate()
        time.sleep(delay + 0.5)  # the listener is closed now; only accepted requests remain
        release.set()
        for future in [*workers, slow]:
            future.result(timeout=30)
        stop.set()
        status, _ = wait_exit(server, timeout=30)
        exited_after = time.monotonic() - signalled_at[0]

    kinds = [kind for kind, *_ in outcomes]
    assert "cut" not in kinds, [o for o in outcomes if o[0] == "cut"]
    assert set(kinds) <= {"200", "503", "not accepted", "slow 200"}, set(kinds)
    assert {detail for kind, detail, *_ in outcomes if kind == "503"} <= {"not_ready", "overloaded"}
    signalled = signalled_at[0]
    in_flight_then_done = [o for o in outcomes if o[0] == "200" and o[2] < signalled < o[3]]
    assert in_flight_then_done, "no request was in flight at SIGTERM: the test proved nothing"
    assert "slow 200" in kinds  # accepted before SIGTERM, finished after the listener closed
    assert any(detail == "not_ready" for _, detail, *_ in outcomes)
    assert status in EXIT_STATUSES
    assert exited_after < delay + 10.0


def test_two_workers_each_finish_what_they_accepted_after_sigterm(slow_model: Path, nih_png: Path) -> None:
    """The parent passes SIGTERM on; the worker holding a half-received upload finishes it after its listener closed."""
    scan, release = nih_png.read_bytes(), threading.Event()
    with running_service(slow_model, ready_timeout=240, CXR_WORKERS="2", CXR_DRAIN_DELAY_S="0.5") as server, ThreadPoolExecutor(1) as pool:
        every_process_ready(server.url, 2, 60, log=server.log)  # the port answers once one worker is ready; wait for both
        slow = pool.submit(
            httpx.post, f"{server.url}/predict", content=held_back(scan, release), headers={"Content-Type": "image/png"}, timeout=60
        )
        deadline = time.monotonic() + 30
        while in_flight(server.url) < 1:  # accepted by one of the workers (the gauge adds both up)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.terminate()
        time.sleep(1.5)  # both workers have closed their listeners by now
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/live", timeout=5)
        release.set()
        assert slow.result(timeout=60).status_code == 200
        status, _ = wait_exit(server, timeout=30)
    assert status in EXIT_STATUSES
