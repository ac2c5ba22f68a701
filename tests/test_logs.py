"""The log stream on a real server: JSON on every line, no query strings, the request id in
decode threads and processes, and a client's broken file never logged as a server error."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from testkit.dicom_factory import dicom_bytes, gdcm_transcoded_bytes, with_fragment
from testkit.live_server import LiveServer, running_service

SECRET = "Zebulon-Quixotic"


@pytest.fixture(scope="module", params=["threads", "processes"])
def server(request: pytest.FixtureRequest, mean_model: Path) -> Iterator[LiveServer]:
    env = {"CXR_DECODE_PROCESSES": "1"} if request.param == "processes" else {}
    with running_service(mean_model, **env) as live:
        yield live
        live.terminate()  # a graceful stop shuts the decode worker process down; a kill would orphan it
        live.process.wait(timeout=30)


def scan12() -> np.ndarray:
    rows, cols = np.mgrid[0:320, 0:288]
    return (2000 + 1500 * np.sin(rows / 23.0) * np.cos(cols / 31.0)).astype(np.uint16)


def log_lines(server: LiveServer) -> list[dict]:
    """Every line of the server's output (stdout and stderr together), each required to be JSON."""
    lines = [line for line in server.log().splitlines() if line.strip()]
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a line of the log stream is not JSON: {line[:200]!r}")
    return [json.loads(line) for line in lines]


def test_websocket_upgrade_never_logs_the_query_string(server: LiveServer) -> None:
    head = (
        f"GET /predict?patient={SECRET} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 ")
    httpx.get(f"{server.url}/live?patient={SECRET}")
    assert SECRET not in server.log()


def test_c_library_stderr_becomes_counted_json_lines(server: LiveServer) -> None:
    broken = with_fragment(gdcm_transcoded_bytes(scan12(), bits_stored=12), lambda f: f[: len(f) // 10] + b"\xff\xd9")
    response = httpx.post(f"{server.url}/predict", content=broken, headers={"Content-Type": "application/dicom"}, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "undecodable_image")
    metrics = httpx.get(f"{server.url}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("cxr_native_stderr_lines_total")]
    assert counted and float(counted[0].split()[-1]) >= 1, metrics
    relayed = [line for line in log_lines(server) if line["logger"] == "service.native_stderr"]
    assert any("Corrupt JPEG data" in line["message"] for line in relayed)


def test_decode_log_lines_carry_the_request_id_and_are_not_errors(server: LiveServer) -> None:
    """pydicom logs this file at error level while it parses it, in the decode thread or process."""
    good = dicom_bytes(scan12(), bits_stored=12)
    at = good.index(b"\x10\x00\x10\x00PN")  # before Patient Name: a private OB element with a bad delimiter
    odd = good[:at] + b"\x09\x00\x10\x10OB\x00\x00\xff\xff\xff\xff" + b"abcd" + b"\xfe\xff\xdd\xe0\x01\x00\x00\x00" + good[at:]
    headers = {"Content-Type": "application/dicom", "X-Request-ID": "trace-decode-1"}
    assert httpx.post(f"{server.url}/predict", content=odd, headers=headers, timeout=30).status_code == 200
    from_pydicom = [line for line in log_lines(server) if line["logger"] == "pydicom"]
    assert from_pydicom, "pydicom logged nothing: the case no longer exercises the decode path"
    assert all(line["request_id"] == "trace-decode-1" for line in from_pydicom), from_pydicom
    assert all(line["level"] != "error" for line in log_lines(server))
