"""Hostile and broken inputs, built in memory: shared by the upload tests and the soak benchmark."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from testkit.images import encode, png_bytes


def scan(height: int = 512, width: int = 512) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 3 + cols * 5) % 251).astype(np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A hand-made 8-bit grayscale PNG whose IHDR claims `width` x `height`; its IDAT is tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A valid small JPEG with its SOF0 frame header rewritten to claim `width` x `height`."""
    data = bytearray(encode(Image.fromarray(scan(300, 300)), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def sixteen_bit_png() -> bytes:
    values = (scan().astype(np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(values))


def float_tiff() -> bytes:
    return encode(Image.fromarray(scan().astype(np.float32) / 255.0), "TIFF")


def animated_png() -> bytes:
    frames = [Image.fromarray(scan()), Image.fromarray(255 - scan())]
    return encode(frames[0], save_all=True, append_images=frames[1:])


def truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(scan()), "JPEG", quality=90)
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(png_bytes(scan()))
    data[100:400] = np.random.default_rng(0).bytes(300)  # fixed bytes: os.urandom sometimes left a decodable file
    return bytes(data)
