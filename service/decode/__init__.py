"""Uploaded bytes -> one 2-D grayscale array, by the decoder the format table names.

The format is sniffed from the content (service/decode/formats.py), never taken from a file
name or a declared content type. One module per format does the decoding: png (a fast path,
then Pillow), jpeg (Pillow, through raster), dicom (pydicom). Importing this package is cheap:
a decoder module is imported when its format first arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.decode.formats import NAMES, sniff
from service.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from service.decode.scan import DecodedScan


def decode(data: bytes, *, max_pixels: int) -> DecodedScan:
    """Decode the bytes of any format in the table; refuse anything else with a stable error code."""
    if not data:
        raise ServiceError(ErrorCode.EMPTY_FILE, "the uploaded file is empty")
    fmt = sniff(data)
    if fmt is None:
        raise ServiceError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"the upload is not a {NAMES} file (checked by content)")
    return fmt.load_decoder()(data, max_pixels=max_pixels)
