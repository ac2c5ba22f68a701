"""The fast grayscale PNG path gives Pillow's pixels, keeps every refusal, and steps aside for the rest."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.fastpng import decode_grayscale_png
from service.imaging import decode
from tests.conftest import encode

LIMIT = 25_000_000


def pillow_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def header(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_real_nih_scan_matches_pillow(nih_png: Path) -> None:
    data = nih_png.read_bytes()
    fast = decode_grayscale_png(data, header(data))
    assert fast is not None
    np.testing.assert_array_equal(fast, pillow_pixels(data))
    decoded = decode(data, max_pixels=LIMIT)
    assert decoded.mode == "L" and not decoded.converted
    np.testing.assert_array_equal(decoded.pixels, pillow_pixels(data))


def test_16_bit_is_left_to_pillow() -> None:
    # libspng cannot output 16-bit grayscale; imagecodecs' libpng could, but leaks on corrupt files.
    pixels = np.random.default_rng(0).integers(0, 4096, size=(300, 400)).astype(np.uint16)
    data = encode(Image.fromarray(pixels))
    assert decode_grayscale_png(data, header(data)) is None


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (300, 300), (10, 20, 30, 255)),
        Image.new("P", (300, 300)),
        Image.new("LA", (300, 300)),
        Image.new("1", (300, 300)),
    ],
    ids=["rgba", "palette", "grey-alpha", "1-bit"],
)
def test_other_layouts_are_left_to_pillow(image: Image.Image) -> None:
    data = encode(image)
    assert decode_grayscale_png(data, header(data)) is None


def test_transparency_is_left_to_pillow() -> None:
    data = encode(Image.new("L", (300, 300), 7), transparency=5)
    assert decode_grayscale_png(data, header(data)) is None
    assert decode(data, max_pixels=LIMIT).pixels.shape == (300, 300)


def test_truncated_scan_is_undecodable(nih_png: Path) -> None:
    data = nih_png.read_bytes()[:200_000]
    with pytest.raises(ServiceError) as raised:
        decode(data, max_pixels=LIMIT)
    assert raised.value.code == "undecodable_image"


def test_pixel_limit_is_checked_before_the_fast_decoder(nih_png: Path) -> None:
    with pytest.raises(ServiceError) as raised:
        decode(nih_png.read_bytes(), max_pixels=1024 * 1024 - 1)
    assert raised.value.code == "too_many_pixels"
