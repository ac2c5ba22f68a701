"""Decode + preprocess one upload: the per-request CPU work, importable without ONNX Runtime.

It lives apart from `predictor` so that decode worker processes (`CXR_DECODE_PROCESSES`)
import only Pillow, numpy and pydicom, and so that only the small model tensor and the
facts a response reports cross the process boundary, never the full-size pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import service.decode.dicom  # noqa: F401  # pydicom and its plugins load with the worker (~0.2 s), not on the first DICOM upload
from service.decode import decode
from service.decode.scan import DecodedScan, ScanFacts
from service.preprocessing import preprocess


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
    scan = decode(data, max_pixels=max_pixels)
    return prepare_scan(scan, decode_ms=(time.perf_counter() - started) * 1000.0)


def prepare_scan(scan: DecodedScan, *, decode_ms: float = 0.0) -> Prepared:
    """Preprocess a scan already decoded, for a caller that also needs its pixels and decodes only once."""
    started = time.perf_counter()
    tensor = preprocess(scan.pixels)
    return Prepared(scan.facts, tensor, decode_ms, (time.perf_counter() - started) * 1000.0)
