"""HTTP/1.1 limits on a real server, over raw sockets: Host, pipelining, multipart preamble,
head size and count, head deadline, and slow uploads that must not lock everyone out."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.live_server import LiveServer, running_service

HEAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(mean_model: Path) -> Iterator[LiveServer]:
    with running_service(mean_model, CXR_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S)) as live:
        yield live


def exchange(server: LiveServer, data: bytes, *, wait: float = 10.0) -> bytes:
    """Send `data`, then read until the server closes the connection (or `wait` passes)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        try:
            while part := sock.recv(65536):
                answer += part
        except TimeoutError:
            pass
    return answer


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in a stream of HTTP/1.1 responses."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        found.append((int(lines[0].split()[1]), rest[:length]))
        raw = rest[length:]
    return found


def code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def test_http11_without_host_is_refused(server: LiveServer) -> None:
    [(status, body)] = answers(exchange(server, b"GET /live HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert (status, code(body)) == (400, "missing_host")
    [(status, _)] = answers(exchange(server, b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert status == 200


def test_two_host_headers_are_refused(server: LiveServer) -> None:
    [(status, body)] = answers(exchange(server, b"GET /live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
    assert (status, code(body)) == (400, "missing_host")


def test_garbage_pipelined_after_a_valid_request_does_not_lose_its_answer(server: LiveServer) -> None:
    replies = answers(exchange(server, b"GET /live HTTP/1.1\r\nHost: a\r\n\r\nNOT HTTP AT ALL\r\n\r\n"))
    assert [status for status, _ in replies] == [200, 400]
    assert json.loads(replies[0][1]) == {"alive": True}
    assert code(replies[1][1]) == "bad_request"


def test_multipart_preamble_is_accepted(server: LiveServer, nih_png: Path) -> None:
    body = (
        b"This is the preamble, which RFC 2046 says to ignore.\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="scan.png"\r\nContent-Type: image/png\r\n\r\n'
        + nih_png.read_bytes()
        + b"\r\n--XyZ--\r\n"
    )
    response = httpx.post(
        f"{server.url}/predict", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}, timeout=30
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /live HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n", id="8-MiB-header"),
        pytest.param(b"GET /live HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", id="150-headers"),
        pytest.param(b"GET /live?" + b"q" * (1 << 20) + b" HTTP/1.1\r\nHost: a\r\n\r\n", id="1-MiB-target"),
    ],
)
def test_oversized_heads_are_refused_before_they_are_buffered(server: LiveServer, head: bytes) -> None:
    started = time.perf_counter()
    [(status, body)] = answers(exchange(server, head))
    assert (status, code(body)) == (431, "headers_too_large")
    assert time.perf_counter() - started < 3.0
    assert httpx.get(f"{server.url}/live", timeout=1).status_code == 200


def test_a_head_just_under_the_limit_is_served(server: LiveServer) -> None:
    head = b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: " + b"a" * 30_000 + b"\r\n\r\n"
    [(status, _)] = answers(exchange(server, head))
    assert status == 200


@pytest.mark.parametrize("sent", [b"", b"POST /predict HTTP/1.1\r\nHost: a\r\n"], ids=["nothing", "half-a-head"])
def test_a_head_that_never_completes_is_answered_408_and_closed(server: LiveServer, sent: bytes) -> None:
    started = time.perf_counter()
    [(status, body)] = answers(exchange(server, sent, wait=HEAD_TIMEOUT_S + 8))
    assert (status, code(body)) == (408, "request_timeout")
    assert time.perf_counter() - started < HEAD_TIMEOUT_S + 4


def closed(sock: socket.socket) -> bool:
    """True when the server has closed the connection (after any answer it sent: 503 for those refused)."""
    sock.settimeout(HEAD_TIMEOUT_S + 8)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_a_good_client_is_served_while_100_uploads_stall(server: LiveServer, nih_png: Path) -> None:
    """Each stalled upload holds an admission slot (72 by default) until the server closes it."""
    stalled = []
    head = b"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(head + nih_png.read_bytes()[:1000])  # then nothing more, ever
        stalled.append(sock)
    try:
        time.sleep(0.5)  # every stalled upload is admitted and waiting for its body
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 15
        statuses = []
        while time.monotonic() < deadline:
            response = httpx.post(f"{server.url}/predict", content=nih_png.read_bytes(), headers={"Content-Type": "image/png"}, timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            time.sleep(0.25)
        assert statuses[0] == 503 and statuses[-1] == 200, f"the good client got {statuses}"
        assert all(closed(sock) for sock in stalled), "a stalled upload is still open"
    finally:
        for sock in stalled:
            sock.close()
