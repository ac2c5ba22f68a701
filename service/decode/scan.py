"""What decoding yields: a scan's pixels and the facts a response reports about it.

`ScanFacts` is the one type for those facts: decoders fill it, it crosses the decode worker
pool beside the model tensor (never the full-size pixels), and the HTTP response embeds it
as `input` unchanged (pydantic reads the field descriptions below for the OpenAPI document).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from service.errors import ErrorCode, ServiceError


@dataclass(frozen=True)
class ScanFacts:
    """The facts about an input scan that a response reports."""

    format: Annotated[str, Field(description="png, jpeg or dicom (detected from content).")]
    width: int
    height: int
    mode: Annotated[str, Field(description="Source pixel layout, e.g. L, I;16, RGBA, MONOCHROME1.")]
    converted: Annotated[bool, Field(description="True when a colour image was reduced to luminance.")]
    sop_instance_uid: Annotated[
        str | None, Field(description="DICOM SOP Instance UID, so a PACS can match the result.")
    ] = None


@dataclass(frozen=True)
class DecodedScan:
    """A decoded scan: one 2-D grayscale array (dtype preserved) and its facts."""

    pixels: np.ndarray
    facts: ScanFacts


def decoded(
    pixels: np.ndarray, format: str, mode: str, *, converted: bool = False, sop_instance_uid: str | None = None
) -> DecodedScan:
    """Pair pixels with their facts; width and height are read from the array, so they cannot disagree."""
    height, width = pixels.shape[:2]
    return DecodedScan(pixels, ScanFacts(format, int(width), int(height), mode, converted, sop_instance_uid))


def check_declared_size(width: int, height: int, frames: int, *, max_pixels: int) -> None:
    """Refuse from the header alone, before any pixel is decoded: empty, bomb-sized or multi-frame images."""
    if width <= 0 or height <= 0:
        raise ServiceError(ErrorCode.IMAGE_TOO_SMALL, "image has no pixels")
    if width * height > max_pixels:
        raise ServiceError(
            ErrorCode.TOO_MANY_PIXELS, f"image declares {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
    if frames > 1:
        raise ServiceError(ErrorCode.MULTI_FRAME, f"the file has {frames} frames; send a single frame")
