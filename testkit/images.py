"""Scans made in memory: a Pillow image or an array serialised as PNG, JPEG or any Pillow format."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """Serialise a Pillow image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    return encode(Image.fromarray(array))
