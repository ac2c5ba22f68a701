"""Class-activation heatmap -> what a person or a client can use: a PNG overlay and a coarse grid.

The heatmap itself comes out of the ONNX graph (an optional second output), so serving it
costs one more output of the same inference, not a second model. These functions only draw.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

GRID_SIZE = 16  # 16x16 cells of 16x16 model pixels: coarse enough for JSON, fine enough to localise


@dataclass(frozen=True)
class RenderedHeatmap:
    overlay_png: bytes  # the downsampled scan in gray, heat in black-red-yellow on top
    grid: list[list[float]]  # GRID_SIZE x GRID_SIZE mean heat, rows top to bottom, in [0, 1]


def render(scan: np.ndarray, heatmap: np.ndarray) -> RenderedHeatmap:
    """Draw a [H, W] heatmap in [0, 1] over the [H, W] model input it explains."""
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    return RenderedHeatmap(overlay_png(scan, heat), grid(heat))


def grid(heat: np.ndarray, size: int = GRID_SIZE) -> list[list[float]]:
    """Block means of the heatmap, rounded to 3 decimals."""
    height, width = heat.shape
    blocks = heat.reshape(size, height // size, size, width // size).mean(axis=(1, 3))
    return np.round(blocks, 3).tolist()


def overlay_png(scan: np.ndarray, heat: np.ndarray) -> bytes:
    """PNG of the scan with heat blended in, opacity growing with heat ("hot" colour map)."""
    gray = np.clip(scan, 0.0, 1.0)[..., None].repeat(3, axis=2)
    colour = np.stack([np.clip(2 * heat, 0, 1), np.clip(2 * heat - 1, 0, 1), np.zeros_like(heat)], axis=2)
    alpha = 0.6 * heat[..., None]
    blended = (1 - alpha) * gray + alpha * colour
    buffer = io.BytesIO()
    Image.fromarray((blended * 255 + 0.5).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
