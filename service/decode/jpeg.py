"""JPEG bytes -> one 2-D grayscale array, through libjpeg-turbo in strict mode: a corrupt JPEG is refused, never scored.

libjpeg treats missing or corrupt entropy data as a warning: it fills the rest of the image
with grey and carries on. Pillow silences those warnings, so a JPEG cut to a tenth of its
length decoded as a mostly grey scan, which the model scored as a confident effusion.
simplejpeg's strict mode turns every libjpeg warning into an error. Pillow still reads the
header (size limits, mode, EXIF orientation) and does the colour conversion, so intact JPEGs
give the pixels they gave before (libjpeg-turbo's integer IDCT and upsampling in both).
JPEG Baseline frames inside DICOM go through `decode_pixels` too (service/decode/dicom.py).
"""

from __future__ import annotations

import numpy as np
import simplejpeg
from PIL import Image

from service.decode.raster import decode_with_pillow
from service.decode.scan import DecodedScan
from service.errors import ErrorCode, ServiceError

# Pillow's JPEG modes and the libjpeg output colour space that gives Pillow's pixels.
COLORSPACE_BY_MODE = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}


def decode(data: bytes, *, max_pixels: int) -> DecodedScan:
    """Pillow's header checks and colour handling, with the pixels from the strict decoder."""
    return decode_with_pillow(data, "jpeg", max_pixels=max_pixels, load=load_strict)


def decode_pixels(data: bytes, colorspace: str) -> np.ndarray:
    """An 8-bit JPEG's pixels as [rows, cols, channels] in libjpeg's `colorspace` ("GRAY", "RGB", "CMYK").

    Any libjpeg warning about corrupt or missing data is `undecodable_image`; so is a frame
    header that claims more pixels than the data fills (libjpeg warns when it runs out).
    """
    try:
        return simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError as error:
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the JPEG data is truncated or corrupt") from error


def load_strict(data: bytes, header: Image.Image) -> Image.Image:
    """Decode the JPEG whose header Pillow opened, as Pillow would have; the result keeps the
    header's info (EXIF, XMP) so that `ImageOps.exif_transpose` still applies its orientation."""
    colorspace = COLORSPACE_BY_MODE.get(header.mode)
    if colorspace is None:
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, f"unsupported JPEG pixel mode {header.mode}")
    pixels = decode_pixels(data, colorspace)
    if pixels.shape[1::-1] != header.size:
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the JPEG data does not match its declared size")
    if header.mode == "CMYK":
        pixels = 255 - pixels  # Adobe's inverted CMYK, which Pillow reads as "CMYK;I"
    image = Image.frombuffer(header.mode, header.size, pixels, "raw", header.mode, 0, 1)
    image.info.update(header.info)
    return image
