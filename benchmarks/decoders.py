"""Decoders and area-averaging recipes compared on real NIH PNGs, one thread; prints a Markdown table.

    python -m benchmarks.decoders

The service decodes plain grayscale PNGs with its own fast path (service/decode/png.py: ISA-L inflate and
a C unfilter kernel) and everything else with Pillow. OpenCV, pyspng and imagecodecs are measured
only when installed
(`pip install opencv-python-headless pyspng imagecodecs`): they are candidates that were not
chosen, not dependencies (docs/performance.md says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from isal import isal_zlib
from PIL import Image

from benchmarks.common import DEFAULT_DATA, MAX_PIXELS, nih_scans
from benchmarks.naive_recipe import naive_tensor
from service.decode._pngfilter import unfilter
from service.decode.png import decode_fast
from service.prepare import prepare
from service.preprocessing import preprocess


def best_ms(function: Callable[[Any], object], argument: Any, repeats: int = 7) -> float:
    """The fastest of `repeats` runs: the cost without other processes' interference."""
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function(argument)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1000.0


def literal_recipe(pixels: np.ndarray) -> np.ndarray:
    scaled = (pixels.astype(np.float32) - pixels.min()) / (pixels.max() - pixels.min())
    return scaled.reshape(256, 4, 256, 4).mean(axis=(1, 3))


def idat_stream(scan: bytes) -> bytes:
    """The zlib stream of a PNG: its IDAT chunks' data, joined."""
    parts, position = [], 8
    while position < len(scan):
        length, kind = struct.unpack_from(">I4s", scan, position)
        if kind == b"IDAT":
            parts.append(scan[position + 8 : position + 8 + length])
        position += 12 + length
    return b"".join(parts)


def unfilter_into_new_array(rows: bytes) -> np.ndarray:
    """The kernel's share of decode_fast on a 1024x1024 8-bit scan: allocate the pixels, undo the row filters."""
    pixels = np.empty((1024, 1024), np.uint8)
    unfilter(rows, pixels, 1024, 1024, 1)
    return pixels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of NIH class folders")
    args = parser.parse_args(argv)
    scans = nih_scans(args.data, 20)
    pixels = [np.asarray(Image.open(io.BytesIO(scan))) for scan in scans]
    streams = [idat_stream(scan) for scan in scans]
    rows = [isal_zlib.decompress(stream) for stream in streams]
    candidates: list[tuple[str, Callable[[Any], object], list[Any]]] = [
        ("decode: Pillow `np.asarray(Image.open(...))` - the fallback", lambda d: np.asarray(Image.open(io.BytesIO(d))), scans),
        ("decode: service fast path (`service.decode.png.decode_fast`) - chosen", lambda d: decode_fast(d, max_pixels=MAX_PIXELS), scans),
        ("inflate only: stdlib zlib", zlib.decompress, streams),
        ("inflate only: ISA-L (`isal.isal_zlib`) - chosen", isal_zlib.decompress, streams),
        ("unfilter only: C kernel (`service.decode._pngfilter`) - chosen", unfilter_into_new_array, rows),
    ]
    if importlib.util.find_spec("imagecodecs"):
        import imagecodecs

        candidates.append(("decode: imagecodecs `png_decode` (libpng; leaks on corrupt files)", imagecodecs.png_decode, scans))
        candidates.append(("decode: imagecodecs `spng_decode` (libspng)", imagecodecs.spng_decode, scans))
    if importlib.util.find_spec("cv2"):
        import cv2

        cv2.setNumThreads(1)
        candidates.append(("decode: OpenCV `cv2.imdecode`", lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED), scans))
        candidates.append(("area: OpenCV `INTER_AREA` on uint8 (rounds to uint8: not the contract)", lambda a: cv2.resize(a, (256, 256), interpolation=cv2.INTER_AREA), pixels))
    if importlib.util.find_spec("pyspng"):
        import pyspng

        candidates.append(("decode: pyspng (libspng)", pyspng.load, scans))
    candidates += [
        ("preprocess: literal recipe (float32 min-max, reshape-mean)", literal_recipe, pixels),
        ("preprocess: integer `reshape(...).sum(axis=(1, 3))`", lambda a: a.reshape(256, 4, 256, 4).sum(axis=(1, 3), dtype=np.uint32), pixels),
        ("area: Pillow `reduce(4)` (rounds to uint8: not the contract)", lambda a: Image.fromarray(a).reduce(4), pixels),
        ("preprocess: service (row adds, then column adds, + one affine map) - chosen", preprocess, pixels),
        ("decode + preprocess: Pillow + literal recipe (the baselines)", naive_tensor, scans),
        ("decode + preprocess: service (`service.prepare.prepare`)", lambda d: prepare(d, MAX_PIXELS), scans),
    ]
    print("| step (one thread; fastest of 7 per scan, median over 20 scans) | ms |\n|---|---|")
    for name, function, arguments in candidates:
        print(f"| {name} | {statistics.median(best_ms(function, argument) for argument in arguments):.2f} |")


if __name__ == "__main__":
    main()
