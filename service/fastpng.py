"""A faster pixel decoder for the common case: a plain 8- or 16-bit grayscale PNG.

Pillow stays in charge of the file: it parses the header and `imaging.decode_raster` applies
every limit (too_many_pixels, multi-frame, empty) before this runs. Only the pixel decode is
handed to libspng through `imagecodecs`, a little faster than Pillow on NIH scans
(docs/performance.md). Anything unusual — colour, palette, transparency, bit depths other than
8, an EXIF orientation — returns None and takes Pillow's general path, so results are the same
array Pillow would give.

libspng, not imagecodecs' libpng decoder: that one leaks a few kilobytes or more on every
corrupt or truncated file (found by benchmarks/soak.py), so hostile uploads could exhaust
memory. libspng frees everything on error but cannot output 16-bit grayscale, so 16-bit
PNGs take Pillow's path.
"""

from __future__ import annotations

import imagecodecs
import numpy as np
from PIL import Image

from service.errors import ServiceError

GRAYSCALE = 0  # PNG colour type of a single grey channel without alpha
DTYPES = {8: np.dtype(np.uint8)}
# IHDR sits right after the 8-byte signature and its 8-byte chunk header.
BIT_DEPTH_OFFSET = 24
COLOUR_TYPE_OFFSET = 25


def decode_grayscale_png(data: bytes, header: Image.Image) -> np.ndarray | None:
    """The pixels of a plain grayscale PNG whose header Pillow has checked, or None for Pillow to decode."""
    if len(data) <= COLOUR_TYPE_OFFSET or data[COLOUR_TYPE_OFFSET] != GRAYSCALE:
        return None
    dtype = DTYPES.get(data[BIT_DEPTH_OFFSET])
    if dtype is None or "transparency" in header.info or b"eXIf" in data:
        return None
    try:
        pixels = imagecodecs.spng_decode(data)
    except Exception as error:  # libspng reports truncation and corruption as its own error types
        raise ServiceError("undecodable_image", "the PNG file is truncated or corrupt") from error
    width, height = header.size
    if pixels.shape != (height, width) or pixels.dtype != dtype:
        return None  # a layout this module did not foresee: let Pillow decide
    return pixels
