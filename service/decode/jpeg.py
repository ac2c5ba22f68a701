"""JPEG bytes -> one 2-D grayscale array, through Pillow (EXIF orientation applied)."""

from __future__ import annotations

from service.decode.raster import decode_with_pillow
from service.decode.scan import DecodedScan


def decode(data: bytes, *, max_pixels: int) -> DecodedScan:
    return decode_with_pillow(data, "jpeg", max_pixels=max_pixels)
