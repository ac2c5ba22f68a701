"""`python -m service --workers 2 --inference shared` on the real server: two frontends, one inference process.

Ready only when the inference process is warm and both frontends are up; the same answers as one
process; metrics and admission are the host's; a killed process of either kind is reported and
replaced while the others answer 503 `not_ready`, never hang; one that keeps crashing stops the
service with status 1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.model import load_model
from service.predictor import score_bytes
from testkit.live_server import (
    REPO_ROOT,
    LiveServer,
    every_process_ready,
    free_port,
    held_back,
    in_flight,
    metric,
    running_service,
)

SHARED = {"CXR_WORKERS": "2", "CXR_INFERENCE": "shared", "CXR_MAX_QUEUE": "16"}  # small blocks: a CI container's /dev/shm may be 64 MiB
EXAMPLES = REPO_ROOT / "examples"
TIMEOUT = 240.0  # spawning three processes and warming up on a loaded 2-core machine


def pids(server: LiveServer, pattern: str) -> list[int]:
    """Process ids the log announced, oldest first (`pattern` has one group: the pid)."""
    return [int(pid) for pid in re.findall(pattern, server.log())]


def inference_pids(server: LiveServer) -> list[int]:
    return pids(server, r"inference process (\d+) serving")


def frontend_pids(server: LiveServer, index: int) -> list[int]:
    return pids(server, rf"frontend {index} started \(pid (\d+)\)")


def wait_for(condition: Callable[[], bool], server: LiveServer, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} within {timeout} s:\n{server.log()[-4000:]}"
        time.sleep(0.1)


def all_ready(server: LiveServer) -> bool:
    return metric(server.url, "cxr_ready") == 2  # each frontend's gauge, added up


@contextmanager
def shared_service(model: Path, **env: str) -> Iterator[LiveServer]:
    with running_service(model, ready_timeout=TIMEOUT, **SHARED, **env) as server:
        every_process_ready(server.url, 2, TIMEOUT, log=server.log)
        yield server


def test_ready_with_both_frontends_and_the_same_answers_as_one_process(mean_model: Path) -> None:
    scans = sorted(EXAMPLES.rglob("*.png")) + sorted(EXAMPLES.rglob("*.dcm"))
    model = load_model(mean_model, policy="cpu")
    expected = [score_bytes(model, path.read_bytes(), max_pixels=25_000_000).probability for path in scans]
    with shared_service(mean_model) as server:
        assert len(inference_pids(server)) == 1 and frontend_pids(server, 0) and frontend_pids(server, 1)
        ready = httpx.get(f"{server.url}/ready", timeout=10).json()
        assert ready["status"] == "ready" and ready["model"]["sha256"] == model.sha256
        assert ready["execution_provider"] == "CPUExecutionProvider"
        rounds = 3
        for _ in range(rounds):  # new connections: the kernel hands them to either frontend
            for path, probability in zip(scans, expected, strict=True):
                response = httpx.post(f"{server.url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
                assert response.status_code == 200, response.text
                assert abs(response.json()["effusion_probability"] - probability) <= 1e-6
        served = rounds * len(scans)
        assert metric(server.url, "cxr_http_request_duration_seconds_count", route="/predict", status="200") == served
        assert metric(server.url, "cxr_batch_size_count") == served  # counted once, by the inference process
        assert metric(server.url, "cxr_inference_duration_seconds_count") == served
        assert metric(server.url, "cxr_model_info", name="test-mean-model") == 1
        assert httpx.get(f"{server.url}/model", timeout=10).json()["model"]["sha256"] == model.sha256


def test_a_refused_model_stops_start_up_before_the_port_opens(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(broken), "--workers", "2", "--inference", "shared", "--port", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model refused:") and "Traceback" not in result.stderr


class Load:
    """Clients posting scans in a loop until stopped, recording what each request got (never waiting past 60 s)."""

    def __init__(self, url: str, scan: bytes) -> None:
        self.url, self.scan = url, scan
        self.outcomes: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                response = httpx.post(f"{self.url}/predict", files={"file": ("a.png", self.scan)}, timeout=60)
            except httpx.TimeoutException:
                outcome: tuple[str, str | None] = ("hang", None)
            except httpx.TransportError as error:
                outcome = ("cut", type(error).__name__)  # only a connection the killed frontend held
            else:
                code = None if response.status_code == 200 else response.json()["error"]["code"]
                if response.status_code == 503:
                    assert int(response.headers["retry-after"]) > 0
                outcome = (str(response.status_code), code)
            with self.lock:
                self.outcomes.append(outcome)

    def count(self, kind: str, code: str | None = None) -> int:
        with self.lock:
            return sum(1 for k, c in self.outcomes if k == kind and (code is None or c == code))


def kill_under_load(server: LiveServer, scan: bytes, victim: int, replaced: Callable[[], bool]) -> Load:
    """Kill `victim` while six clients post scans; wait for its replacement and a 200 after it; return the load."""
    load = Load(server.url, scan)
    with ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(load.run) for _ in range(6)]
        wait_for(lambda: load.count("200") >= 6, server, "six answers before the kill")
        signal_at = load.count("200")
        os.kill(victim, signal.SIGKILL)
        wait_for(replaced, server, "a replacement started")
        wait_for(lambda: all_ready(server), server, "both frontends ready again")
        settled = load.count("200")
        wait_for(lambda: load.count("200") > settled + 6, server, "answers after the replacement")
        load.stop.set()
        for client in clients:
            client.result(timeout=120)
    assert signal_at > 0
    return load


def test_a_killed_inference_process_is_replaced_and_meanwhile_requests_get_not_ready(slow_model: Path, nih_png: Path) -> None:
    with shared_service(slow_model, CXR_MAX_BATCH="2", CXR_INTRA_OP_THREADS="1") as server:
        (victim,) = inference_pids(server)
        load = kill_under_load(server, nih_png.read_bytes(), victim, lambda: len(inference_pids(server)) == 2)
        assert load.count("hang") == 0 and load.count("cut") == 0, load.outcomes  # the frontends lived
        assert load.count("503", "not_ready") > 0, "no request saw the gap: the test proved nothing"
        kinds = {outcome for outcome in load.outcomes if outcome[0] != "200"}
        assert kinds <= {("503", "not_ready"), ("503", "overloaded")}, kinds
        assert f"the inference process (pid {victim}) exited with status -9; starting a new one" in server.log()
        assert inference_pids(server)[-1] != victim
        assert metric(server.url, "cxr_http_requests_in_flight") == 0


def test_a_killed_frontend_is_replaced_and_meanwhile_the_other_says_not_ready(slow_model: Path, nih_png: Path) -> None:
    with shared_service(slow_model, CXR_MAX_BATCH="2", CXR_INTRA_OP_THREADS="1") as server:
        (victim,) = frontend_pids(server, 0)
        load = kill_under_load(server, nih_png.read_bytes(), victim, lambda: len(frontend_pids(server, 0)) == 2)
        assert load.count("hang") == 0, load.outcomes
        assert load.count("503", "not_ready") > 0, "the other frontend never said the host was not ready"
        kinds = {outcome[0] for outcome in load.outcomes}
        assert kinds <= {"200", "503", "cut"}, kinds  # cut: connections the killed frontend held, nothing else
        assert load.count("cut") <= 6
        assert f"frontend 0 (pid {victim}) exited with status -9; starting a new one" in server.log()
        assert len(inference_pids(server)) == 1  # the model stayed where it was
        assert metric(server.url, "cxr_http_requests_in_flight") == 0  # the dead frontend's gauge is gone


def test_a_process_that_keeps_crashing_stops_the_service_with_status_1(mean_model: Path) -> None:
    with shared_service(mean_model, CXR_RESTART_LIMIT="1", CXR_DRAIN_DELAY_S="0") as server:
        (first,) = inference_pids(server)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(inference_pids(server)) == 2, server, "a replacement started")
        assert f"the inference process (pid {first}) exited with status -9; starting a new one in 0.25 s" in server.log()
        second = inference_pids(server)[-1]
        os.kill(second, signal.SIGKILL)  # the second crash within 60 s: one more than the limit
        assert server.process.wait(timeout=120) == 1, server.log()[-4000:]
        log = server.log()
        assert f"the inference process (pid {second}) exited with status -9: more than CXR_RESTART_LIMIT=1" in log
        assert len(inference_pids(server)) == 2  # not replaced a second time


def test_admission_is_the_hosts_not_each_frontends(mean_model: Path, nih_png: Path) -> None:
    scan, release = nih_png.read_bytes(), threading.Event()
    with shared_service(mean_model, CXR_MAX_IN_FLIGHT="1") as server, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            httpx.post, f"{server.url}/predict", content=held_back(scan, release), headers={"Content-Type": "image/png"}, timeout=60
        )
        wait_for(lambda: in_flight(server.url) >= 1, server, "the held upload in flight")
        refused = [httpx.post(f"{server.url}/predict", files={"file": ("a.png", scan)}, timeout=30) for _ in range(8)]
        release.set()
        assert slow.result(timeout=60).status_code == 200
        # Each new connection goes to either frontend; per-frontend admission would have let the other one's through.
        assert [r.status_code for r in refused] == [503] * 8
        assert {r.json()["error"]["code"] for r in refused} == {"overloaded"}
        after = httpx.post(f"{server.url}/predict", files={"file": ("a.png", scan)}, timeout=30)
        assert after.status_code == 200
