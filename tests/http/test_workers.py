"""`python -m service --workers 2` on the real server: two whole services on one port, metrics added up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from testkit.live_server import REPO_ROOT, every_process_ready, free_port, metric, running_service


def worker_pids(parent: int) -> set[int]:
    """The service processes the parent started (its multiprocessing helpers left out)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}


def test_two_workers_each_load_the_model_turn_ready_and_share_their_metrics(mean_model: Path, nih_png: Path) -> None:
    with running_service(mean_model, ready_timeout=240, CXR_WORKERS="2") as server:
        pids = worker_pids(server.process.pid)
        assert len(pids) == 2
        every_process_ready(server.url, 2, 120, log=server.log)  # each worker turns ready on its own
        scan = nih_png.read_bytes()
        for _ in range(12):  # new connections: the kernel hands them to either worker
            response = httpx.post(f"{server.url}/predict", files={"file": ("a.png", scan)}, timeout=60)
            assert response.status_code == 200, response.text
        count = "cxr_http_request_duration_seconds_count"
        assert metric(server.url, count, route="/predict", status="200") == 12  # whichever worker answers
        assert metric(server.url, "cxr_batch_size_count") == 12
        assert metric(server.url, "cxr_model_info", name="test-mean-model") == 1
        log = server.log()
        for pid in pids:
            assert f"worker {pid} serving the fp32 variant" in log


def test_no_worker_outlives_a_killed_parent(mean_model: Path) -> None:
    with running_service(mean_model, ready_timeout=240, CXR_WORKERS="2") as server:
        pids = worker_pids(server.process.pid)
        environment = Path(f"/proc/{next(iter(pids))}/environ").read_bytes().split(b"\0")
        metrics_dir = next(item.split(b"=", 1)[1].decode() for item in environment if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
        server.process.kill()  # SIGKILL: the parent cannot pass anything on, nor remove its metrics folder
        server.process.wait(timeout=30)
        shutil.rmtree(metrics_dir)  # what the parent's own shutdown would have done
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text() for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.2)


def test_a_refused_model_stops_the_workers_before_the_port_opens(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(broken), "--workers", "2", "--port", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: model refused:") and "Traceback" not in result.stderr
