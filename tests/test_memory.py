"""Uploads in progress are bounded by the container's memory limit, so a burst cannot OOM-kill the pod."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from service.memory import admission_limit
from service.resources import cgroup_memory_limit
from service.settings import Settings
from testkit.live_server import running_service

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory.max": "2147483648\n"}, 2 * GiB),
        ({"memory.max": "max\n"}, None),
        ({"memory/memory.limit_in_bytes": "1073741824\n"}, GiB),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1's "no limit"
        ({}, None),
    ],
    ids=["v2", "v2-unlimited", "v1", "v1-unlimited", "no-cgroup"],
)
def test_cgroup_memory_limit(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_memory_limit(tmp_path) == expected


def test_the_shipped_pod_admits_what_its_memory_affords() -> None:
    """deploy/k8s: 2 GiB, 2 decode threads, defaults: (0.85 x 2048 - 512 - 2 x 381.5) MiB // 64 MiB = 7."""
    pod = Settings(memory_limit_bytes=2 * GiB, decode_threads=2)
    assert admission_limit(pod) == 7
    assert admission_limit(Settings(memory_limit_bytes=2 * GiB, decode_threads=2, max_in_flight=30)) == 30  # the override wins
    assert admission_limit(Settings(memory_limit_bytes=64 * GiB, decode_threads=2)) == 64 + 2 * 8  # never above the fixed bound
    # 16 decoders cannot all hold a 25 Mpx DICOM in 4 GiB: each upload in progress counts as decoding.
    assert admission_limit(Settings(memory_limit_bytes=4 * GiB, decode_threads=16)) == 6  # (3481.6 - 512) // (64 + 381.5)
    assert admission_limit(Settings(memory_limit_bytes=GiB, decode_threads=2)) == 1  # never zero


SIMULATED_LIMIT = GiB
UPLOAD = 20 * MiB


def paced_upload(port: int, statuses: list[bytes]) -> None:
    """POST a 20 MiB body in 1 MiB steps over about 3 s, as a burst of real uploads would arrive."""
    chunk = bytes(MiB)
    head = b"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % UPLOAD
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        for _ in range(UPLOAD // MiB):
            try:
                if sock.recv(64):  # answered early: refused at the door (503)
                    statuses.append(b"refused")
                    return
            except BlockingIOError:
                pass
            sock.setblocking(True)
            sock.sendall(chunk)
            sock.setblocking(False)
            time.sleep(0.15)
        sock.setblocking(True)
        statuses.append(sock.recv(64)[:12])


def test_a_burst_of_uploads_stays_under_a_small_simulated_limit(mean_model: Path) -> None:
    env = {
        "CXR_MEMORY_LIMIT_BYTES": str(SIMULATED_LIMIT),
        "CXR_MAX_UPLOAD_BYTES": str(UPLOAD),
        "CXR_MAX_PIXELS": "4000000",
        "CXR_DECODE_THREADS": "1",
    }
    with running_service(mean_model, **env) as server:
        statuses: list[bytes] = []
        clients = [threading.Thread(target=paced_upload, args=(server.port, statuses)) for _ in range(64)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=120)
        peak = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    assert len(statuses) == 64
    assert statuses.count(b"refused") >= 64 - 7, statuses  # (0.85 x 1024 - 512 - 61) MiB // 40 MiB = 7 admitted at once
    assert peak < SIMULATED_LIMIT, f"peak RSS {peak / MiB:.0f} MiB over the simulated {SIMULATED_LIMIT / MiB:.0f} MiB"
