"""Synthetic chest phantoms, with and without an effusion-like opacity, for tests and demos.

These are drawings, not radiographs: a body outline, two dark lung fields above domed
diaphragms, a bright mediastinum and faint ribs. The effusion variant fills the bottom of
one or both lungs with fluid density whose upper edge is a meniscus (higher at the chest
wall than medially), which blunts the sharp costophrenic angle. Every file is named
`synthetic_<class>_<n>.png` so nobody mistakes one for a patient's scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from model_export.data import CLASS_FOLDERS  # the layout `train --data` reads

SIZE = 1024


@dataclass(frozen=True)
class Lung:
    """One lung field: an ellipse cut from below by a diaphragm dome."""

    centre_x: float
    centre_y: float
    half_width: float
    half_height: float
    dome_base: float  # y of the diaphragm at the lung's edges
    dome_height: float  # how far the dome rises at the lung's middle
    lateral_sign: int  # -1 when the chest wall is at smaller x (the image's left lung), +1 otherwise


def phantom(rng: np.random.Generator, *, effusion: bool, size: int = SIZE, side: str | None = None) -> np.ndarray:
    """One 8-bit grayscale phantom, size x size; `effusion` adds fluid to one or both lungs.

    `side` ("left" or "right" of the image) puts the fluid in that lung only; by default the
    side is random, sometimes both.
    """
    scale = size / SIZE
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.full((size, size), rng.uniform(5, 25), dtype=np.float32)

    centre = size / 2 + rng.normal(0, 12) * scale
    body = ((x - centre) / (size * rng.uniform(0.40, 0.46))) ** 2 + ((y - size * 0.55) / (size * 0.55)) ** 2 <= 1
    soft_tissue = rng.uniform(150, 180)
    image[body] = soft_tissue

    lungs = make_lungs(rng, centre, size)
    for lung in lungs:
        image[lung_mask(lung, x, y)] = rng.uniform(55, 80)

    ribs = rib_shadows(rng, x, y, size) * body
    image += ribs
    mediastinum = (np.abs(x - centre) < size * rng.uniform(0.07, 0.09)) & (y > size * 0.12) & body
    image[mediastinum] = rng.uniform(195, 220)

    if effusion:
        if side is None:
            sides = [lungs[rng.integers(2)]] if rng.random() < 0.6 else list(lungs)
        else:
            sides = [lungs[0] if side == "left" else lungs[1]]  # lungs[0] is at the image's left
        for lung in sides:
            fluid = fluid_fraction(lung, x, y, rng, edge=8.0 * scale)
            image = image * (1 - fluid) + soft_tissue * rng.uniform(0.9, 1.0) * fluid

    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3 * scale))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0, 4, (size, size))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_lungs(rng: np.random.Generator, centre: float, size: int) -> tuple[Lung, Lung]:
    """Two lung fields either side of the mediastinum, with some anatomical variety."""
    lungs = []
    for sign in (-1, 1):
        half_width = size * rng.uniform(0.14, 0.17)
        centre_x = centre + sign * (size * 0.085 + half_width) * rng.uniform(0.95, 1.05)
        centre_y = size * rng.uniform(0.46, 0.5)
        half_height = size * rng.uniform(0.28, 0.32)
        lungs.append(
            Lung(
                centre_x=centre_x,
                centre_y=centre_y,
                half_width=half_width,
                half_height=half_height,
                dome_base=centre_y + half_height * rng.uniform(0.75, 0.85),
                dome_height=size * rng.uniform(0.05, 0.08),
                lateral_sign=sign,
            )
        )
    return lungs[0], lungs[1]


def lung_mask(lung: Lung, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside the ellipse and above the dome: the lateral lower corner is the costophrenic angle."""
    u = (x - lung.centre_x) / lung.half_width
    ellipse = u**2 + ((y - lung.centre_y) / lung.half_height) ** 2 <= 1
    dome = lung.dome_base - lung.dome_height * np.clip(1 - u**2, 0, 1)
    return ellipse & (y < dome)


def fluid_fraction(lung: Lung, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, edge: float) -> np.ndarray:
    """How much fluid covers each pixel of `lung`: 0 above the meniscus, 1 below, soft edge between."""
    lateral = np.clip(lung.lateral_sign * (x - lung.centre_x) / lung.half_width, -1, 1)  # +1 at the chest wall
    depth = lung.half_height * rng.uniform(0.35, 0.6)
    meniscus = lung.half_height * rng.uniform(0.25, 0.4)
    surface = lung.dome_base - depth - meniscus * ((lateral + 1) / 2) ** 2
    cover = 1.0 / (1.0 + np.exp(-(y - surface) / edge))
    return cover * lung_mask(lung, x, y)


def rib_shadows(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Faint bright arcs across the chest, spaced like posterior ribs."""
    shadows = np.zeros_like(x)
    spacing = size * rng.uniform(0.065, 0.075)
    curvature = rng.uniform(0.5, 0.8) / size
    for index in range(9):
        level = size * 0.2 + index * spacing
        arc = level + curvature * (x - size / 2) ** 2 * 0.6
        shadows += 18.0 * np.exp(-(((y - arc) / (size * 0.012)) ** 2))
    return shadows


def write_dataset(root: Path, *, count: int, seed: int, size: int = SIZE) -> list[Path]:
    """Write `count` phantoms per class as PNGs in the class-folder layout; returns the paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for folder in CLASS_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        for folder in CLASS_FOLDERS:
            path = root / folder / f"synthetic_{folder}_{index:04d}.png"
            Image.fromarray(phantom(rng, effusion=folder == "effusion", size=size)).save(path)
            paths.append(path)
    return paths
