"""`python -m service` as a real subprocess on a free port, its log going to a file.

The log goes to a file, not a pipe: a server that logs one JSON line per request would block
on a full pipe that nobody reads, and a load test would measure that instead of the service.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)


@contextmanager
def running_service(model: Path, *, ready_timeout: float = 60.0, **env: str) -> Iterator[LiveServer]:
    """Start the service with `CXR_*` overrides in `env`, wait for /ready, always stop it."""
    port = free_port()
    ambient = {name: value for name, value in os.environ.items() if not name.startswith("CXR_")}  # e.g. a shell's CXR_API_KEYS
    environment = {**ambient, "CXR_EXECUTION_PROVIDER": "cpu", "CXR_WARMUP_RUNS": "1", **env}
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "--model", str(model), "--port", str(port)],
                cwd=REPO_ROOT,
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = LiveServer(f"http://127.0.0.1:{port}", port, process, log_path)
        try:
            wait_until_ready(server, ready_timeout)
            yield server
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGINT (shutdown without the drain delay), so the service removes its temporary folders (metrics,
    the shared inference socket) as in production; SIGKILL only if it has not exited after `grace_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=10)


def wait_until_ready(server: LiveServer, timeout: float) -> None:
    wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=1).status_code == 200, server.process, server.log, timeout)


def wait_until(answers: Callable[[], bool], process: subprocess.Popen[bytes], log: Callable[[], str], timeout: float) -> None:
    """Poll `answers()` until it says yes; fail, with the process's log, if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited early:\n{log()}")
        try:
            if answers():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.args[0]} not answering within {timeout} s:\n{log()}")
        time.sleep(0.05)


def metric(url: str, name: str, /, **labels: str) -> float:
    """One sample of a running service's /metrics (0 when absent); with several workers, their sum."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def every_process_ready(url: str, processes: int, timeout: float = 300.0, *, log: Callable[[], str] | None = None) -> None:
    """/ready answers for whichever of `python -m service`'s processes the kernel picks: wait until all of them
    say ready (`cxr_ready` adds them up); fail with the log's tail, when given, if they do not within `timeout`."""
    deadline = time.monotonic() + timeout
    while metric(url, "cxr_ready") < processes:
        if time.monotonic() > deadline:
            tail = f":\n{log()[-4000:]}" if log is not None else ""
            raise AssertionError(f"fewer than {processes} processes ready at {url} within {timeout} s{tail}")
        time.sleep(0.1)


def held_back(data: bytes, release: threading.Event, pieces: int = 40) -> Iterator[bytes]:
    """A request body that stalls half-way until `release` is set: the request stays in flight."""
    size = -(-len(data) // pieces)
    for index, start in enumerate(range(0, len(data), size)):
        if index == pieces // 2:
            assert release.wait(timeout=30)
        yield data[start : start + size]
        time.sleep(0.01)


def in_flight(url: str) -> float:
    """Requests the service is serving now (with several processes, their sum)."""
    return metric(url, "cxr_http_requests_in_flight")
