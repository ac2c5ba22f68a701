"""Grayscale array -> model tensor. The single source of truth, imported by training too.

The contract (`PREPROCESSING_ID`), as written in docs/architecture.md:
  1. float32, min-max to [0, 1] by the image's own minimum and maximum;
     a constant image has no contrast and is refused;
  2. pad a non-square image to a square with the image minimum, centred (never crop);
  3. resize to 256x256 by area averaging (an exact 4x4 mean for 1024x1024);
  4. output float32 [1, 1, 256, 256], C-contiguous.

Min-max scaling is affine, and area averaging and padding with the minimum commute with
it, so this module computes the same numbers in a cheaper order: area *sums* on the
integer image (exact), then one affine map on the 256x256 result. The only difference
from the literal recipe is float rounding (below 1e-6, see tests/test_preprocessing.py).

Changing any step changes numbers the model was trained on: bump `PREPROCESSING_ID`.
"""

from __future__ import annotations

import numpy as np

from service.errors import ErrorCode, ServiceError

PREPROCESSING_ID = "minmax-area256/v1"
OUTPUT_SIZE = 256
MIN_SIDE = 256  # we never upsample: a shorter side below this is refused
MAX_ASPECT_RATIO = 2.0  # chest detectors are about 1.2:1; past 2:1 it is not a chest film


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Map one 2-D grayscale image (any integer or float dtype) to the model input tensor."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {pixels.shape}")
    height, width = pixels.shape
    if min(height, width) < MIN_SIDE:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_SMALL,
            f"image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels",
        )
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ServiceError(
            ErrorCode.BAD_ASPECT_RATIO,
            f"image is {width}x{height}; the aspect ratio must not exceed {MAX_ASPECT_RATIO:g}:1",
        )
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, "image contains NaN or infinite pixel values")
    if pixels.dtype.kind not in "uif":
        raise ValueError(f"unsupported pixel dtype {pixels.dtype}")

    low = pixels.min()
    high = pixels.max()
    if low == high:
        raise ServiceError(ErrorCode.BLANK_IMAGE, "image is constant (no contrast); nothing to analyse")

    square = pad_to_square(pixels, low)
    sums, count = area_sums(square, OUTPUT_SIZE)
    # (mean - low) / (high - low), with mean = sums / count; exact integer sums stay exact
    # until this single float64 step.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflow is checked just below
        scale = 1.0 / ((float(high) - float(low)) * count)
        normalised = (sums - float(low) * count) * scale
    if not np.isfinite(normalised).all():  # e.g. a DICOM rescale slope of 1e308 overflows the sums
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, "pixel values are too large or too small to normalise")
    return np.ascontiguousarray(normalised, dtype=np.float32).reshape(1, 1, OUTPUT_SIZE, OUTPUT_SIZE)


def pad_to_square(pixels: np.ndarray, fill: np.generic | float) -> np.ndarray:
    """Centre the image on a square canvas filled with `fill`; a square image is returned as is."""
    height, width = pixels.shape
    side = max(height, width)
    if height == width:
        return pixels
    canvas = np.full((side, side), fill, dtype=pixels.dtype)
    top = (side - height) // 2
    left = (side - width) // 2
    canvas[top : top + height, left : left + width] = pixels
    return canvas


def area_sums(square: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Area-average a square image down to `size` x `size`, returned as (sums, pixels per sum).

    An integer factor is an exact block sum. Any other factor uses the fractional pixel-overlap
    weights that define area interpolation (as Pillow's BOX and OpenCV's INTER_AREA do).
    """
    side = square.shape[0]
    if side % size == 0:
        factor = side // size
        return block_sums(square, factor, size).astype(np.float64), float(factor * factor)
    weights = area_weights(side, size)
    return weights @ square.astype(np.float64) @ weights.T, 1.0


def block_sums(square: np.ndarray, factor: int, size: int) -> np.ndarray:
    """Exact sums of `factor` x `factor` blocks, as `factor` contiguous row adds then column adds.

    numpy's `reshape(...).sum(axis=(1, 3))` reduces over short strided axes and costs ~4 ms for
    1024x1024; adding whole rows (then every factor-th column) is ~20x faster and just as exact.
    8-bit images sum in uint16 (16x16 blocks of 255 fit), other integers in int64, floats in float64.
    """
    if square.dtype.kind == "f":
        accumulator: type[np.generic] = np.float64
    elif square.dtype.itemsize == 1 and factor <= 16:
        accumulator = np.uint16
    else:
        accumulator = np.int64
    rows = square.reshape(size, factor, size * factor)
    row_sums = rows[:, 0].astype(accumulator)
    for offset in range(1, factor):
        row_sums += rows[:, offset]
    columns = row_sums.reshape(size, size, factor)
    sums = columns[..., 0].copy()
    for offset in range(1, factor):
        sums += columns[..., offset]
    return sums


def area_weights(source: int, target: int) -> np.ndarray:
    """Row i holds the share of each source pixel inside target cell i (rows sum to 1)."""
    edges = np.arange(target + 1, dtype=np.float64) * (source / target)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixel = np.arange(source, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(ends, pixel + 1) - np.maximum(starts, pixel), 0.0, None)
    return overlap / (source / target)
