"""The fast PNG path gives Pillow's pixels or steps aside: every filter type, real scans, hostile bytes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from service.decode import png
from testkit.images import encode
from tests.conftest import require_module

MAX_PIXELS = 25_000_000
PAETH = 4


# Without the C kernel (no compiler at install) every PNG goes to Pillow: CI must have built it.
unfilter = require_module("service.decode._pngfilter").unfilter


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def paeth_predictor(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The spec's predictor, written from its text (section 9.4) on whole rows."""
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filter_row(row: np.ndarray, above: np.ndarray, kind: int, bpp: int) -> np.ndarray:
    """Forward-filter one row of bytes (as int arrays) with the given filter type."""
    left = np.concatenate([np.zeros(bpp, int), row[:-bpp]])
    upper_left = np.concatenate([np.zeros(bpp, int), above[:-bpp]])
    predictions = [0, left, above, (left + above) // 2, paeth_predictor(left, above, upper_left)]
    return (row - predictions[kind % 5]) % 256  # kind 5 and up: a defect, written unfiltered


def make_png(
    pixels: np.ndarray,
    filters: list[int],
    *,
    idat_pieces: int = 1,
    extra: bytes = b"",
    ihdr_patch: dict[int, int] | None = None,
) -> bytes:
    """A grayscale PNG written by hand, so every filter type (and every defect) can be chosen per row."""
    height, width = pixels.shape
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(height, -1).astype(int)
    bpp = depth // 8
    above = np.zeros(rows.shape[1], int)
    stream = bytearray()
    for row, kind in zip(rows, filters):
        stream.append(kind)
        stream += filter_row(row, above, kind, bpp).astype(np.uint8).tobytes()
        above = row
    data = zlib.compress(bytes(stream)) + extra
    ihdr = bytearray(struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
    for offset, value in (ihdr_patch or {}).items():
        ihdr[offset] = value
    cut = [len(data) * i // idat_pieces for i in range(idat_pieces + 1)]
    idats = b"".join(chunk(b"IDAT", data[cut[i] : cut[i + 1]]) for i in range(idat_pieces))
    return png.PNG_SIGNATURE + chunk(b"IHDR", bytes(ihdr)) + idats + chunk(b"IEND", b"")


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def assert_same_as_pillow(data: bytes) -> None:
    decoded = png.decode_fast(data, max_pixels=MAX_PIXELS)
    assert decoded is not None, "the fast path should have taken this file"
    pixels, mode = decoded
    with Image.open(io.BytesIO(data)) as image:
        assert mode == image.mode
        expected = np.asarray(image)
    assert pixels.dtype.isnative and pixels.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(pixels, expected)


def random_pixels(rng: np.random.Generator, height: int, width: int, depth: int) -> np.ndarray:
    # Smooth images with noise, like radiographs, so Paeth meets every branch of its choice.
    top = 255 if depth == 8 else 65535
    ramp = np.add.outer(np.arange(height), np.arange(width)) * (top // max(height + width, 1))
    noisy = ramp + rng.integers(-top // 8, top // 8, size=(height, width))
    return np.clip(noisy, 0, top).astype(np.uint8 if depth == 8 else np.uint16)


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 2), (7, 17), (32, 64)])
def test_every_filter_type_gives_pillows_pixels(depth: int, kind: int, height: int, width: int) -> None:
    pixels = random_pixels(np.random.default_rng(kind * 100 + width), height, width, depth)
    assert_same_as_pillow(make_png(pixels, [kind] * height))


@settings(max_examples=150, deadline=None)
@given(
    depth=st.sampled_from([8, 16]),
    height=st.integers(1, 24),
    width=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    pieces=st.integers(1, 4),
)
def test_mixed_filters_and_split_data_give_pillows_pixels(depth: int, height: int, width: int, seed: int, pieces: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = random_pixels(rng, height, width, depth)
    filters = rng.integers(0, 5, size=height).tolist()
    assert_same_as_pillow(make_png(pixels, filters, idat_pieces=pieces))


def test_real_nih_scans_take_the_fast_path_with_pillows_pixels(nih_dir: Path) -> None:
    scans = sorted(nih_dir.rglob("*.png"))
    assert scans, f"no PNG scans under {nih_dir}"  # else the share below holds for nothing
    fast = 0
    for path in scans:
        data = path.read_bytes()
        decoded = png.decode_fast(data, max_pixels=MAX_PIXELS)
        if decoded is None:  # the few RGBA files in the NIH set go to Pillow, which reduces them to luminance
            assert Image.open(path).mode != "L"
            continue
        fast += 1
        np.testing.assert_array_equal(decoded[0], pillow_pixels(data))
    assert fast >= 0.8 * len(scans)


def pillow_png(image: Image.Image, **options: object) -> bytes:
    return encode(image, "PNG", **options)


def text_chunk_png(zipped: bool) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 100, zip=zipped)
    return pillow_png(Image.new("L", (8, 8), 7), pnginfo=info)


def left_to_pillow_cases() -> dict[str, bytes]:
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    small = np.arange(64, dtype=np.uint8).reshape(8, 8)
    plain = make_png(small, [PAETH] * 8)
    iend = plain.index(b"IEND") - 4
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: Pillow's exif_transpose would rotate this one
    return {
        "rgb": pillow_png(gray.convert("RGB")),
        "palette": pillow_png(gray.convert("P")),
        "gray+alpha": pillow_png(gray.convert("LA")),
        "1-bit": pillow_png(gray.convert("1")),
        "transparency": pillow_png(gray, transparency=3),
        "exif": pillow_png(gray, exif=exif),
        "icc profile": pillow_png(gray, icc_profile=b"\0" * 128),
        "compressed text": text_chunk_png(zipped=True),
        "animated": pillow_png(gray, save_all=True, append_images=[gray]),
        "interlaced": make_png(small, [0] * 8, ihdr_patch={12: 1}),
        "unknown critical chunk": plain[:iend] + chunk(b"ABCD", b"1") + plain[iend:],
        "ancillary chunk with a bad CRC": plain[:iend] + chunk(b"tEXt", b"a\0b")[:-1] + b"!" + plain[iend:],
        "data after the stream": make_png(small, [0] * 8, extra=b"\0" * 4),
        "unknown filter type": make_png(small, [0, 0, 5, 0, 0, 0, 0, 0]),
        "no IEND": plain[:iend],
        "over the pixel limit": make_png(np.zeros((1, 9), np.uint8), [0]),
    }


@pytest.mark.parametrize("case", sorted(left_to_pillow_cases()))
def test_unusual_or_broken_files_are_left_to_pillow(case: str) -> None:
    data = left_to_pillow_cases()[case]
    max_pixels = 8 if case == "over the pixel limit" else MAX_PIXELS
    assert png.decode_fast(data, max_pixels=max_pixels) is None


def test_plain_text_chunk_keeps_the_fast_path() -> None:
    assert_same_as_pillow(text_chunk_png(zipped=False))


def test_split_data_with_a_chunk_between_is_left_to_pillow() -> None:
    data = make_png(random_pixels(np.random.default_rng(1), 16, 16, 8), [PAETH] * 16, idat_pieces=2)
    second = data.index(b"IDAT", data.index(b"IDAT") + 4) - 4
    assert png.decode_fast(data[:second] + chunk(b"tEXt", b"a\0b") + data[second:], max_pixels=MAX_PIXELS) is None


def test_mutated_files_never_raise_and_never_disagree_with_pillow() -> None:
    """Hostile bytes: the fast path either declines or returns exactly what Pillow decodes."""
    rng = np.random.default_rng(2026)
    original = make_png(random_pixels(rng, 24, 24, 8), rng.integers(0, 5, size=24).tolist(), idat_pieces=3)
    taken = 0
    for trial in range(600):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: int(rng.integers(8, len(data)))]
        for position in rng.integers(8, len(data), size=int(rng.integers(1, 4))):
            data[position] = int(rng.integers(0, 256))
        decoded = png.decode_fast(bytes(data), max_pixels=MAX_PIXELS)
        if decoded is not None:
            taken += 1
            np.testing.assert_array_equal(decoded[0], pillow_pixels(bytes(data)))
    assert taken > 0  # some mutations land in IDAT CRCs or text and still decode


@pytest.mark.parametrize(
    ("source", "target", "height", "row_bytes", "bpp"),
    [
        (b"\0" * 9, bytearray(8), 2, 4, 1),  # source one byte short
        (b"\0" * 10, bytearray(9), 2, 4, 1),  # target size wrong
        (b"\0" * 10, bytearray(8), 2, 4, 3),  # row not a whole number of pixels
        (b"\0" * 10, bytearray(8), 2, 4, 0),
        (b"\0" * 10, bytearray(8), -2, 4, 1),
        (b"\x06" + b"\0" * 4, bytearray(4), 1, 4, 1),  # filter type 6
    ],
)
def test_kernel_refuses_inconsistent_buffers(source: bytes, target: bytearray, height: int, row_bytes: int, bpp: int) -> None:
    with pytest.raises(ValueError):
        unfilter(source, target, height, row_bytes, bpp)


def test_kernel_refuses_a_read_only_target() -> None:
    with pytest.raises(TypeError):
        unfilter(b"\0" * 5, b"\0" * 4, 1, 4, 1)
