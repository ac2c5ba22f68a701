"""Raster formats through Pillow -> one 2-D grayscale array, with the limits that protect the process.

Shared by the png (after its fast path declines) and jpeg decoders; a new Pillow-readable
format (TIFF, WebP) needs only a module calling `decode_with_pillow` and a row in the format
table. Pixel dtype is preserved (uint8, uint16, int32 or float); colour images are reduced to
luminance and flagged, so a client can tell that its scan was not grayscale.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from service.decode.scan import DecodedScan, check_declared_size, decoded
from service.errors import ErrorCode, ServiceError

# Pillow modes whose pixels are already one grayscale channel, and the modes that are
# colour and must be reduced to luminance (ITU-R 601-2, Pillow's "L" conversion).
GRAYSCALE_MODES = {"L", "I", "I;16", "I;16B", "I;16L", "F"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def decode_with_pillow(
    data: bytes, kind: str, *, max_pixels: int, load: Callable[[bytes, Image.Image], Image.Image] | None = None
) -> DecodedScan:
    """One Pillow format (`kind` is its table name, e.g. "png"): header checks first, so a bomb is refused before decoding.

    `load(data, header)` replaces Pillow's own pixel decoding where a format needs a stricter one
    (jpeg.py); Pillow still reads the header and converts the result.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=[kind.upper()])
    except Image.DecompressionBombError as error:
        raise ServiceError(ErrorCode.TOO_MANY_PIXELS, "the image declares more pixels than allowed") from error
    except Exception as error:  # any failure on untrusted bytes means "not a valid image"
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, f"the {kind.upper()} file could not be decoded") from error

    check_declared_size(*image.size, getattr(image, "n_frames", 1), max_pixels=max_pixels)

    try:
        if load is not None:
            image = load(data, image)
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
            raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, f"unsupported pixel mode {mode}")
        pixels = np.asarray(image)
    except ServiceError:
        raise
    except Exception as error:  # Pillow's own pixel limit already fired at open; this is a broken file
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, f"the {kind.upper()} file is truncated or corrupt") from error

    if pixels.ndim != 2:
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, f"expected one grayscale channel, got shape {pixels.shape}")
    if not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return decoded(pixels, kind, mode, converted=converted)
