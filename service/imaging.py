"""Uploaded bytes -> one 2-D grayscale array, with the limits that protect the process.

The format is sniffed from the content, never taken from a file name or a declared
content type. Pixel dtype is preserved (uint8, uint16, int32 or float); colour images are
reduced to luminance and flagged, so a client can tell that its scan was not grayscale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from service.errors import ServiceError
from service.jpeg import load_strict
from service.png import SIGNATURE as PNG_SIGNATURE
from service.png import decode_png

JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_PREFIX = b"DICM"
# A Part 10 file whose 128-byte preamble was stripped starts with its File Meta Information
# Group Length: tag (0002,0000), explicit VR "UL", length 4. Anything else is not sniffed as
# DICOM (a bare dataset without file meta has no transfer syntax to trust).
DICOM_META_START = b"\x02\x00\x00\x00UL\x04\x00"

# Pillow modes whose pixels are already one grayscale channel, and the modes that are
# colour and must be reduced to luminance (ITU-R 601-2, Pillow's "L" conversion).
GRAYSCALE_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "F"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded scan: its pixels and the facts a response reports about the input."""

    pixels: np.ndarray
    format: str  # "png", "jpeg" or "dicom"
    mode: str  # the source's pixel layout, e.g. "L", "I;16", "RGBA", "MONOCHROME1"
    converted: bool  # True when colour was reduced to luminance
    sop_instance_uid: str | None = None  # DICOM only; lets a PACS match the result

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def sniff_format(data: bytes) -> str | None:
    """Name the container format from magic bytes, or None when it is none we accept."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if has_dicom_preamble(data) or data.startswith(DICOM_META_START):
        return "dicom"
    return None


def has_dicom_preamble(data: bytes) -> bool:
    """True when the bytes carry a Part 10 file's 128-byte preamble and "DICM" prefix."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_PREFIX


def check_declared_size(width: int, height: int, frames: int, *, max_pixels: int) -> None:
    """Refuse from the header alone, before any pixel is decoded: empty, bomb-sized or multi-frame images."""
    if width <= 0 or height <= 0:
        raise ServiceError("image_too_small", "image has no pixels")
    if width * height > max_pixels:
        raise ServiceError(
            "too_many_pixels", f"image declares {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
    if frames > 1:
        raise ServiceError("multi_frame", f"the file has {frames} frames; send a single frame")


def decode(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes; refuse anything else with a stable error code."""
    if not data:
        raise ServiceError("empty_file", "the uploaded file is empty")
    kind = sniff_format(data)
    if kind is None:
        raise ServiceError(
            "unsupported_media_type", "the upload is not a PNG, JPEG or DICOM file (checked by content)"
        )
    if kind == "dicom":
        from service.dicom import decode_dicom  # pydicom is imported only when DICOM arrives

        return decode_dicom(data, max_pixels=max_pixels)
    return decode_raster(data, kind, max_pixels=max_pixels)


def decode_raster(data: bytes, kind: str, *, max_pixels: int) -> DecodedImage:
    """PNG or JPEG through Pillow: header checks first, so a bomb is refused before decoding.

    A plain grayscale PNG takes service/png.py's faster path, which gives Pillow's pixels;
    JPEG pixels come from service/jpeg.py's strict decoder.
    """
    if kind == "png" and (fast := decode_png(data, max_pixels=max_pixels)) is not None:
        pixels, mode = fast
        return DecodedImage(pixels=pixels, format=kind, mode=mode, converted=False)
    try:
        image = Image.open(io.BytesIO(data), formats=[kind.upper()])
    except Image.DecompressionBombError as error:
        raise ServiceError("too_many_pixels", "the image declares more pixels than allowed") from error
    except Exception as error:  # any failure on untrusted bytes means "not a valid image"
        raise ServiceError("undecodable_image", f"the {kind.upper()} file could not be decoded") from error

    check_declared_size(*image.size, getattr(image, "n_frames", 1), max_pixels=max_pixels)

    try:
        if kind == "jpeg":
            image = load_strict(data, image)  # Pillow's own JPEG decoder ignores corrupt data
        image.load()
        image = ImageOps.exif_transpose(image)  # a JPEG's orientation tag is how viewers show it
        mode = image.mode
        converted = False
        if mode in ("LA", "La"):
            image = image.getchannel(0)  # alpha carries no diagnostic content
        elif mode == "1":
            image = image.convert("L")
        elif mode in COLOUR_MODES:
            image = image.convert("L")
            converted = True
        elif mode not in GRAYSCALE_MODES:
            raise ServiceError("unsupported_image", f"unsupported pixel mode {mode}")
        pixels = np.asarray(image)
    except ServiceError:
        raise
    except Exception as error:  # Pillow's own pixel limit already fired at open; this is a broken file
        raise ServiceError("undecodable_image", f"the {kind.upper()} file is truncated or corrupt") from error

    if pixels.ndim != 2:
        raise ServiceError("unsupported_image", f"expected one grayscale channel, got shape {pixels.shape}")
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return DecodedImage(pixels=pixels, format=kind, mode=mode, converted=converted)
