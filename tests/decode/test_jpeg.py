"""A corrupt JPEG is refused, never scored: libjpeg's warnings about corrupt or missing data are errors.

libjpeg answers missing or corrupt entropy data with a warning and fills the rest of the
image with grey; a decoder that ignores the warning hands the model a half-grey scan, which
it scores as a confident finding. Every case here starts from a real NIH scan.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.uid import JPEGBaseline8Bit

from service.decode import decode
from testkit.dicom_factory import pillow_encapsulated_bytes, with_fragment
from testkit.images import encode
from testkit.live_server import running_service

EOI = b"\xff\xd9"
MAX_PIXELS = 25_000_000


@pytest.fixture(scope="module")
def real_scan(nih_png: Path) -> np.ndarray:
    with Image.open(nih_png) as image:
        return np.asarray(image.convert("L"))


@pytest.fixture(scope="module")
def real_jpeg(real_scan: np.ndarray) -> bytes:
    return encode(Image.fromarray(real_scan), "JPEG", quality=90)


def cut(data: bytes, fraction: float = 0.1) -> bytes:
    return data[: int(len(data) * fraction)]


def size_lying(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF0 frame header claiming another size."""
    lying = bytearray(data)
    struct.pack_into(">HH", lying, lying.index(b"\xff\xc0") + 5, height, width)
    return bytes(lying)


CORRUPTIONS = {
    "cut-at-10%-eoi-appended": lambda data: cut(data) + EOI,
    "cut-at-10%-zero-padded": lambda data: cut(data) + bytes(len(data) - len(cut(data))) + EOI,
    "cut-at-10%-garbage-padded": lambda data: cut(data)
    + np.random.default_rng(0).bytes(len(data) - len(cut(data))).replace(b"\xff", b"\x5a")
    + EOI,
    "header-claims-2048-over-1024-data": lambda data: size_lying(data, 2048, 2048),
}


@pytest.fixture(scope="module")
def server(mean_model: Path) -> Iterator[str]:
    with running_service(mean_model) as live:
        yield live.url


def post(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": ("scan", data, "application/octet-stream")}, timeout=60)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_jpeg_is_refused(server: str, real_jpeg: bytes, corruption: str) -> None:
    response = post(server, CORRUPTIONS[corruption](real_jpeg))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "undecodable_image"


def test_corrupt_jpeg_inside_dicom_is_refused(server: str, real_scan: np.ndarray) -> None:
    good = pillow_encapsulated_bytes(real_scan, JPEGBaseline8Bit)
    assert post(server, good).status_code == 200  # positive control: the same container, intact
    data = with_fragment(good, lambda frame: cut(frame) + EOI)
    response = post(server, data)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "undecodable_image"


def test_intact_jpeg_is_scored(server: str, real_jpeg: bytes) -> None:
    response = post(server, real_jpeg)
    assert response.status_code == 200, response.text
    assert (response.json()["input"]["width"], response.json()["input"]["height"]) == (1024, 1024)


def pillow_pixels(data: bytes) -> np.ndarray:
    """What the service produced before strict decoding: Pillow, EXIF orientation, luminance."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image if image.mode == "L" else image.convert("L"))


def rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return exif.tobytes()


INTACT = {
    "grayscale": lambda scan: encode(Image.fromarray(scan), "JPEG", quality=90),
    "grayscale-progressive": lambda scan: encode(Image.fromarray(scan), "JPEG", quality=75, progressive=True),
    "colour-420": lambda scan: encode(Image.fromarray(scan).convert("RGB"), "JPEG", quality=90),
    "colour-444": lambda scan: encode(Image.fromarray(np.dstack([scan, scan // 2, 255 - scan])), "JPEG", subsampling=0),
    "exif-rotated": lambda scan: encode(Image.fromarray(scan[:, :700]), "JPEG", quality=90, exif=rotated_exif()),
    "cmyk": lambda scan: encode(Image.fromarray(scan).convert("CMYK"), "JPEG", quality=90),
}


@pytest.mark.parametrize("kind", INTACT)
def test_intact_jpeg_gives_the_pixels_it_gave_before(real_scan: np.ndarray, kind: str) -> None:
    data = INTACT[kind](real_scan)
    np.testing.assert_array_equal(decode(data, max_pixels=MAX_PIXELS).pixels, pillow_pixels(data))


def test_intact_jpeg_inside_dicom_gives_the_pixels_it_gave_before(real_scan: np.ndarray) -> None:
    data = pillow_encapsulated_bytes(real_scan, JPEGBaseline8Bit)
    before = pydicom.dcmread(io.BytesIO(data)).pixel_array  # pydicom's own plugins (GDCM, then Pillow)
    np.testing.assert_array_equal(decode(data, max_pixels=MAX_PIXELS).pixels, before)
