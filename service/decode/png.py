"""Fast PNG decoding for the scans this service is sent: grayscale, 8 or 16 bits, not interlaced.

Pillow spends ~9 ms on a 1024x1024 NIH scan, half of it inflating with zlib and half undoing the
Paeth row filter one branch per byte. Here the chunks are walked in Python, the image data is
inflated by ISA-L (python-isal, ~2x zlib) and the rows are unfiltered by a small C kernel
(service/decode/_pngfilter.c) that selects without branching: ~4.5 ms in all.

Anything unusual (colour, palette, interlace, transparency, EXIF, animation, compressed text, an
unknown chunk, a bad CRC, a stream that is short, long or unterminated) makes `decode_fast` return
None, and `decode` falls back to Pillow (service/decode/raster.py), which also words the error for
a corrupt file. So this path changes speed, never the answer: tests compare it with Pillow pixel for pixel, on real scans and on
hostile bytes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from service.decode.formats import PNG_SIGNATURE
from service.decode.raster import decode_with_pillow
from service.decode.scan import DecodedScan, decoded

try:
    from isal import isal_zlib as inflater
except ImportError:  # pragma: no cover - isal is a dependency; stdlib zlib is the slower fallback
    inflater = zlib

try:
    from service.decode._pngfilter import unfilter
except ImportError:  # the C extension is optional at install time (no compiler): Pillow decodes then
    unfilter = None

# Chunks that carry no pixels and that Pillow reads without changing them. Everything else
# (tRNS, PLTE, eXIf, acTL, iCCP, zTXt, iTXt, unknown chunks) sends the file to Pillow.
PASSIVE_CHUNKS = frozenset({b"tIME", b"tEXt", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD"})
GRAYSCALE = 0
MODES = {8: ("L", np.dtype(np.uint8)), 16: ("I;16", np.dtype(">u2"))}


def available() -> bool:
    """True when the C kernel was built; without it every PNG goes to Pillow."""
    return unfilter is not None


def decode(data: bytes, *, max_pixels: int) -> DecodedScan:
    """PNG bytes -> one 2-D grayscale array: the fast path when it applies (same pixels), else Pillow."""
    if (fast := decode_fast(data, max_pixels=max_pixels)) is not None:
        pixels, mode = fast
        return decoded(pixels, "png", mode)
    return decode_with_pillow(data, "png", max_pixels=max_pixels)


def decode_fast(data: bytes, *, max_pixels: int) -> tuple[np.ndarray, str] | None:
    """Pixels and Pillow's mode name for a plain grayscale PNG, or None to let Pillow decode it.

    An image over max_pixels is left to Pillow's path too, which refuses it from the header; so
    nothing is inflated before its size is known to be allowed.
    """
    if unfilter is None or not data.startswith(PNG_SIGNATURE):
        return None
    header = None
    parts: list[memoryview] = []
    after_data = False  # a chunk other than IDAT came after the image data
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            return None  # no IEND: truncated
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"IDAT":
            if header is None or after_data:
                return None
            parts.append(view[pos + 8 : end - 4])  # its CRC is not checked: zlib's Adler-32 covers the data
        else:
            after_data = bool(parts)
            if zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
                return None
            if kind == b"IHDR":
                if header is not None or length != 13:
                    return None
                header = struct.unpack_from(">IIBBBBB", data, pos + 8)
            elif kind == b"IEND":
                break
            elif header is None or kind not in PASSIVE_CHUNKS:
                return None
        pos = end

    if header is None or not parts:
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    if colour != GRAYSCALE or depth not in MODES or compression or filtering or interlace:
        return None
    if not 0 < width * height <= max_pixels:
        return None
    mode, dtype = MODES[depth]
    row_bytes = width * dtype.itemsize
    expected = height * (row_bytes + 1)

    stream = inflater.decompressobj()
    try:
        filtered = stream.decompress(b"".join(parts), expected)
    except Exception:  # a corrupt stream: Pillow gives the verdict
        return None
    if len(filtered) != expected or not stream.eof or stream.unused_data:
        return None

    pixels = np.empty((height, width), dtype)
    try:
        unfilter(filtered, pixels, height, row_bytes, dtype.itemsize)
    except ValueError:  # an unknown filter type
        return None
    if depth == 16:
        pixels = pixels.astype(np.uint16)  # big-endian on the wire, native in memory
    return pixels, mode
