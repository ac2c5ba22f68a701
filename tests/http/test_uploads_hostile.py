"""Hostile and broken uploads through the real app: each class answered with its stable code.

Content sniffing wins over every declaration: the multipart part's content type, the file
name and the request's Content-Type only decide how the body is framed (multipart or raw),
never how it is decoded.
"""

from __future__ import annotations

import io
import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.decode import decode
from service.errors import ServiceError
from testkit.dicom_factory import dicom_bytes
from testkit.hostile_inputs import (
    animated_png,
    corrupt_png,
    float_tiff,
    jpeg_declaring,
    png_declaring,
    scan,
    sixteen_bit_png,
    truncated_jpeg,
)
from testkit.images import encode, png_bytes
from testkit.live_server import running_service

MAX_UPLOAD = 1024 * 1024


REFUSALS = [
    ("empty multipart file", b"", 422, "empty_file"),
    ("text", b"patient notes, not an image", 415, "unsupported_media_type"),
    ("float TIFF", float_tiff(), 415, "unsupported_media_type"),
    ("truncated JPEG", truncated_jpeg(), 422, "undecodable_image"),
    ("corrupt PNG", corrupt_png(), 422, "undecodable_image"),
    ("only a PNG signature", b"\x89PNG\r\n\x1a\n", 422, "undecodable_image"),
    ("zero-size PNG", png_declaring(0, 0), 422, "undecodable_image"),
    ("1x1 PNG", png_bytes(np.array([[7]], dtype=np.uint8)), 422, "image_too_small"),
    ("255 px PNG", png_bytes(scan(255, 400)), 422, "image_too_small"),
    ("absurd aspect ratio", png_bytes(scan(256, 2048)), 422, "bad_aspect_ratio"),
    ("animated PNG", animated_png(), 422, "multi_frame"),
    ("PNG bomb above the limit", png_declaring(6000, 6000), 413, "too_many_pixels"),
    ("PNG bomb far above Pillow's limit", png_declaring(100_000, 100_000), 413, "too_many_pixels"),
    ("JPEG bomb", jpeg_declaring(60_000, 60_000), 413, "too_many_pixels"),
    ("constant image", png_bytes(np.full((512, 512), 9, dtype=np.uint8)), 422, "blank_image"),
]


@pytest.mark.parametrize(("data", "status", "code"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_refused_with_a_stable_code(client: TestClient, data: bytes, status: int, code: str) -> None:
    response = client.post("/predict", files={"file": ("scan.png", data, "image/png")})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_empty_raw_body(client: TestClient) -> None:
    response = client.post("/predict", content=b"", headers={"Content-Type": "image/png"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "empty_file")


def test_bombs_are_refused_without_decoding(client: TestClient) -> None:
    started = time.perf_counter()
    for _ in range(20):
        response = client.post("/predict", content=png_declaring(6000, 6000), headers={"Content-Type": "image/png"})
        assert response.status_code == 413
    assert time.perf_counter() - started < 2.0  # decoding 36 Mpx twenty times would take far longer


@pytest.mark.parametrize(
    ("data", "declared", "name", "detected"),
    [
        pytest.param(png_bytes(scan()), "image/jpeg", "scan.jpg", "png", id="png-declared-jpeg"),
        pytest.param(encode(Image.fromarray(scan()), "JPEG"), "application/dicom", "scan.dcm", "jpeg", id="jpeg-declared-dicom"),
        pytest.param(dicom_bytes(scan()), "image/png", "scan.png", "dicom", id="dicom-declared-png"),
        pytest.param(png_bytes(scan()), "application/octet-stream", "no-extension", "png", id="png-declared-octet-stream"),
    ],
)
def test_content_sniffing_wins_over_declared_type_and_name(
    client: TestClient, data: bytes, declared: str, name: str, detected: str
) -> None:
    as_part = client.post("/predict", files={"file": (name, data, declared)})
    as_raw = client.post("/predict", content=data, headers={"Content-Type": declared})
    for response in (as_part, as_raw):
        assert response.status_code == 200, response.text
        assert response.json()["input"]["format"] == detected


def test_sixteen_bit_png_is_accepted_at_full_depth(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("scan.png", sixteen_bit_png(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["input"]["mode"] in ("I;16", "I")


def test_exif_orientation_is_honoured_end_to_end(client: TestClient) -> None:
    upright = scan(600, 400)
    upright[:80] = 250  # a bright band at the top of the displayed image
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # as a sensor would store it, on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = encode(Image.fromarray(stored), "JPEG", quality=100, exif=exif.tobytes())
    reference = encode(Image.fromarray(upright), "JPEG", quality=100)
    with_exif = client.post("/predict", files={"file": ("scan.jpg", rotated, "image/jpeg")}).json()
    displayed = client.post("/predict", files={"file": ("scan.jpg", reference, "image/jpeg")}).json()
    assert (with_exif["input"]["width"], with_exif["input"]["height"]) == (400, 600)
    assert abs(with_exif["effusion_probability"] - displayed["effusion_probability"]) < 2e-3


# --- uploads never touch the disk -------------------------------------------------------------


class DiskWrites:
    """An audit hook (PEP 578) that records every file opened for writing while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)  # hooks cannot be removed; disarmed it costs one attribute check

    def _hook(self, event: str, args: tuple) -> None:
        if not self.armed or event != "open":
            return
        path, mode, flags = args
        writes = (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) or any(c in (mode or "") for c in "wax+")
        if writes:
            self.paths.append(str(path))


@pytest.fixture(scope="module")
def disk_writes() -> Iterator[DiskWrites]:
    recorder = DiskWrites()
    yield recorder
    recorder.armed = False


def test_uploads_never_touch_disk(client: TestClient, disk_writes: DiskWrites) -> None:
    big_scan = png_bytes(np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8))
    assert len(big_scan) > 2 * 1024 * 1024  # Starlette's form parser would spool this to a temp file

    # Positive control: the detector sees Starlette's own form parsing spool a file to disk.
    async def form_route(request: Request) -> PlainTextResponse:
        form = await request.form()
        return PlainTextResponse(str(len(await form["file"].read())))  # type: ignore[union-attr]

    with TestClient(Starlette(routes=[Route("/form", form_route, methods=["POST"])])) as control:
        disk_writes.armed = True
        try:
            assert control.post("/form", files={"file": ("scan.png", big_scan)}).status_code == 200
        finally:
            disk_writes.armed = False
    assert disk_writes.paths, "the detector missed a spooled upload"
    disk_writes.paths.clear()

    disk_writes.armed = True
    try:
        multipart = client.post("/predict", files={"file": ("scan.png", big_scan, "image/png")})
        raw = client.post("/predict", content=dicom_bytes(scan(1500, 1500)), headers={"Content-Type": "application/dicom"})
    finally:
        disk_writes.armed = False
    assert (multipart.status_code, raw.status_code) == (200, 200)
    assert disk_writes.paths == []


# --- size limits enforced while streaming, against a real server ------------------------------


@pytest.fixture(scope="module")
def small_limit_server(mean_model: Path) -> Iterator[str]:
    with running_service(mean_model, CXR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD)) as server:
        yield server.url


def send_until_answered(url: str, head: bytes, body_chunk: bytes, give_up_after: int) -> tuple[bytes, int]:
    """Send `head`, then `body_chunk` repeatedly, until the server answers; returns (answer, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # keep our own buffering small
        sock.settimeout(10)
        sock.connect((host, int(port)))
        sock.sendall(head)
        while sent < give_up_after:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(body_chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(body_chunk)
        answer = b""
        try:
            while not answer_complete(answer):  # the head and the body can arrive in separate packets
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
        except ConnectionResetError:
            pass
    return answer, sent


def answer_complete(answer: bytes) -> bool:
    """True once the response head and as many body bytes as its Content-Length are in."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=XyZ"])
def test_chunked_body_without_length_is_cut_off_while_streaming(small_limit_server: str, content_type: str) -> None:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    prefix = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    give_up_after = 64 * MAX_UPLOAD
    first = chunked(prefix + b"\x89PNG\r\n\x1a\n")
    answer, sent = send_until_answered(small_limit_server, head + first, chunked(bytes(64 * 1024)), give_up_after)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    assert sent < 8 * MAX_UPLOAD, f"the server read {sent} bytes before refusing"


def test_declared_length_over_the_limit_is_refused_before_the_body(small_limit_server: str) -> None:
    head = (
        "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        f"Content-Length: {100 * MAX_UPLOAD}\r\n\r\n"
    ).encode()
    answer, sent = send_until_answered(small_limit_server, head, b"", give_up_after=0)
    assert sent == 0
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_request_just_under_the_limit_is_served(small_limit_server: str) -> None:
    import httpx

    data = png_bytes(scan(700, 700))
    assert len(data) < MAX_UPLOAD
    response = httpx.post(f"{small_limit_server}/predict", content=io.BytesIO(data).read(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found")


def test_broken_files_do_not_leak_memory() -> None:
    """Refusing a broken file frees everything: a decoder that leaks on errors is a denial of service."""
    good = png_bytes(scan())
    broken = [corrupt_png(), good[: len(good) // 2], truncated_jpeg()]
    for data in broken:  # warm-up: allocator pools, lazy imports
        for _ in range(200):
            with pytest.raises(ServiceError):
                decode(data, max_pixels=25_000_000)
    before = rss_mib()
    for _ in range(1500):
        for data in broken:
            with pytest.raises(ServiceError):
                decode(data, max_pixels=25_000_000)
    assert rss_mib() - before < 4.0, f"RSS grew {rss_mib() - before:.1f} MiB over 4500 refused files"
