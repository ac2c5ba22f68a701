"""Independent references the tests compare the service against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def literal_recipe(pixels: np.ndarray) -> np.ndarray:
    """The preprocessing contract step by step, as written: float32 min-max, pad with 0, block mean."""
    x = pixels.astype(np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    side = max(x.shape)
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - x.shape[0]) // 2, (side - x.shape[1]) // 2
    canvas[top : top + x.shape[0], left : left + x.shape[1]] = x
    k = side // 256
    return canvas.reshape(256, k, 256, k).mean(axis=(1, 3))


def direct_probability(model_path: Path, scan: Path) -> float:
    """ONNX Runtime run directly on the documented preprocessing of a PNG, no service code."""
    with Image.open(scan) as image:
        pixels = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA") else image)
    tensor = literal_recipe(pixels)[None, None].astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (probability,) = session.run(["effusion_probability"], {"image": tensor})
    return float(probability[0])
