"""Decoding: every PNG mode the contract names, JPEG, and the refusals with their codes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.decode import decode
from service.errors import ServiceError
from testkit.images import encode

MAX_PIXELS = 25_000_000


def gradient(height: int = 300, width: int = 300) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)


def refused(data: bytes) -> str:
    with pytest.raises(ServiceError) as error:
        decode(data, max_pixels=MAX_PIXELS)
    return error.value.code


def test_real_nih_png_decodes_to_uint8(nih_png: Path) -> None:
    image = decode(nih_png.read_bytes(), max_pixels=MAX_PIXELS)
    with Image.open(nih_png) as reference:
        expected = np.asarray(reference)
    assert (image.facts.format, image.facts.mode, image.facts.converted) == ("png", "L", False)
    assert (image.facts.width, image.facts.height) == (1024, 1024)
    assert image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, expected)


def test_16_bit_png_keeps_its_depth() -> None:
    pixels = (np.arange(300 * 300).reshape(300, 300) * 7 % 65536).astype(np.uint16)
    image = decode(encode(Image.fromarray(pixels)), max_pixels=MAX_PIXELS)
    assert image.pixels.dtype.kind in "ui" and image.pixels.dtype.itemsize >= 2
    np.testing.assert_array_equal(image.pixels, pixels)
    assert not image.facts.converted


def test_la_png_drops_alpha_without_conversion() -> None:
    gray = gradient()
    alpha = np.full_like(gray, 255)
    image = decode(encode(Image.fromarray(np.dstack([gray, alpha]), mode="LA")), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(image.pixels, gray)
    assert (image.facts.mode, image.facts.converted) == ("LA", False)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_png_is_reduced_to_luminance_and_flagged(mode: str) -> None:
    gray = gradient()
    colour = Image.fromarray(gray).convert(mode)
    image = decode(encode(colour), max_pixels=MAX_PIXELS)
    assert (image.facts.mode, image.facts.converted) == (mode, True)
    np.testing.assert_array_equal(image.pixels, gray)  # equal channels -> the same luminance


def test_rgb_luminance_uses_itu_r_601_weights() -> None:
    rgb = np.zeros((300, 300, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red: L = 200 * 299/1000 = 59.8 -> 60
    image = decode(encode(Image.fromarray(rgb)), max_pixels=MAX_PIXELS)
    assert int(image.pixels[0, 0]) == 60


def test_jpeg_decodes() -> None:
    image = decode(encode(Image.fromarray(gradient()), "JPEG", quality=95), max_pixels=MAX_PIXELS)
    assert (image.facts.format, image.facts.mode, image.pixels.shape) == ("jpeg", "L", (300, 300))


def test_jpeg_exif_orientation_is_applied() -> None:
    tall = np.zeros((400, 300), dtype=np.uint8)
    tall[:50] = 255  # bright band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = decode(encode(Image.fromarray(tall), "JPEG", quality=95, exif=exif.tobytes()), max_pixels=MAX_PIXELS)
    assert image.pixels.shape == (300, 400)
    assert image.pixels[:, -50:].mean() > 200  # the top band is now on the right


def test_truncated_png_is_undecodable() -> None:
    data = encode(Image.fromarray(gradient()))
    assert refused(data[: len(data) // 2]) == "undecodable_image"


def test_corrupt_png_is_undecodable() -> None:
    data = bytearray(encode(Image.fromarray(gradient())))
    data[60:200] = b"\x00" * 140
    assert refused(bytes(data)) == "undecodable_image"


def test_text_is_unsupported_media_type() -> None:
    assert refused(b"patient notes, not an image\n") == "unsupported_media_type"


def test_empty_upload() -> None:
    assert refused(b"") == "empty_file"


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # A 100000 x 100000 PNG that is a few hundred bytes: refused before any decoding.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100_001)) + chunk(b"IEND", b"")
    assert len(bomb) < 1000
    assert refused(bomb) == "too_many_pixels"


def test_animated_png_is_refused() -> None:
    frames = [Image.fromarray(gradient()), Image.fromarray(255 - gradient())]
    data = encode(frames[0], save_all=True, append_images=frames[1:])
    assert refused(data) == "multi_frame"
