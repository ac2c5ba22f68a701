"""The real server process: `python -m service` on a free port, spoken to over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from testkit.live_server import REPO_ROOT, free_port, running_service
from testkit.model_factory import build_model


def test_serves_predictions_and_stops_cleanly_on_sigterm(mean_model: Path, nih_png: Path) -> None:
    with running_service(mean_model) as server:
        url, process = server.url, server.process
        response = httpx.post(f"{url}/predict", files={"file": ("scan.png", nih_png.read_bytes(), "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        assert 0.0 <= response.json()["effusion_probability"] <= 1.0
        assert httpx.get(f"{url}/live").json() == {"alive": True}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)


def test_live_and_ready_answer_while_inference_is_busy(slow_model: Path, nih_png: Path) -> None:
    scan = nih_png.read_bytes()
    env = {"CXR_MAX_BATCH": "1", "CXR_INTRA_OP_THREADS": "1"}  # serialise: each inference takes tens of ms
    with running_service(slow_model, **env) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
            started = time.perf_counter()
            predictions = [pool.submit(client.post, "/predict", files={"file": ("s.png", scan)}) for _ in range(24)]
            probe_latencies = []
            while not all(p.done() for p in predictions):
                for route in ("/live", "/ready"):
                    t0 = time.perf_counter()
                    assert client.get(route).status_code == 200
                    probe_latencies.append(time.perf_counter() - t0)
                time.sleep(0.05)
            busy_for = time.perf_counter() - started
            assert all(p.result().status_code == 200 for p in predictions)
        assert busy_for > 0.5, "the model was not busy long enough to prove anything"
        assert len(probe_latencies) >= 4
        assert max(probe_latencies) < 0.25, f"probes waited for inference: {max(probe_latencies):.3f}s"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"input_name": "pixels"}, "input is named 'pixels'"),
        ({"input_shape": ("N", 1, 224, 224)}, "shape"),
        ({"metadata": {"contract_version": "1", "preprocessing_id": "imagenet-224/v1", "threshold": "0.5",
                       "class_names": '["no_effusion", "effusion"]', "model_name": "m", "model_version": "1"}},
         "imagenet-224/v1"),
    ],
)
def test_a_model_that_breaks_the_contract_stops_start_up(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    model = build_model(tmp_path / "bad.onnx", **kwargs)
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(model), "--port", str(free_port())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model refused:")
    assert fragment in lines[0]
