"""Decode + preprocess one upload: the per-request CPU work, importable without ONNX Runtime.

It lives apart from `predictor` so that decode worker processes (`CXR_DECODE_PROCESSES`)
import only Pillow and numpy, and so that only the small model tensor and the
facts a response reports cross the process boundary, never the full-size pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import service.dicom  # noqa: F401  # pydicom and its plugins load with the worker (~0.2 s), not on the first DICOM upload
from service.imaging import decode
from service.preprocessing import preprocess


@dataclass(frozen=True)
class ScanFacts:
    """What a response reports about the input scan."""

    format: str
    width: int
    height: int
    mode: str
    converted: bool
    sop_instance_uid: str | None


@dataclass(frozen=True)
class Prepared:
    """A decoded scan's facts and its model tensor."""

    image: ScanFacts
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float


def prepare(data: bytes, max_pixels: int) -> Prepared:
    """Decode and preprocess one upload (pure; raises ServiceError on bad input)."""
    started = time.perf_counter()
    image = decode(data, max_pixels=max_pixels)
    decoded = time.perf_counter()
    tensor = preprocess(image.pixels)
    finished = time.perf_counter()
    facts = ScanFacts(image.format, image.width, image.height, image.mode, image.converted, image.sop_instance_uid)
    return Prepared(facts, tensor, (decoded - started) * 1000.0, (finished - decoded) * 1000.0)
