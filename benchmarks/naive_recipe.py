"""The preprocessing recipe written the straightforward way, as the baselines use it.

Pillow decode, float32 min-max over the full-size image, then a reshape-mean: the contract's
numbers (for square images whose side is a multiple of 256), at the cost a first version pays.
Only numpy and Pillow, so the Triton baseline can import it from its own virtual environment.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def naive_tensor(data: bytes) -> np.ndarray:
    """bytes -> float32 [1, 1, 256, 256] the way a tutorial does it."""
    image = Image.open(io.BytesIO(data)).convert("L")
    pixels = np.asarray(image).astype(np.float32)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    side = pixels.shape[0]
    factor = side // 256
    small = pixels.reshape(256, factor, 256, factor).mean(axis=(1, 3))
    return small.reshape(1, 1, 256, 256).astype(np.float32)
