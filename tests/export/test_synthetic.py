"""Synthetic phantoms: clearly named, the promised size, reproducible, and with a visible opacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model_export.synthetic import phantom, write_dataset


def test_synth_writes_named_1024_grayscale_pngs_per_class(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path, count=2, seed=5)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in paths) == [
        "effusion/synthetic_effusion_0001.png",
        "effusion/synthetic_effusion_0002.png",
        "nofinding/synthetic_nofinding_0001.png",
        "nofinding/synthetic_nofinding_0002.png",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert (image.size, image.mode) == ((1024, 1024), "L")


def test_phantoms_are_reproducible_from_the_seed() -> None:
    first = phantom(np.random.default_rng(7), effusion=True, size=256)
    np.testing.assert_array_equal(first, phantom(np.random.default_rng(7), effusion=True, size=256))
    assert not np.array_equal(first, phantom(np.random.default_rng(8), effusion=True, size=256))


def test_effusion_makes_the_lower_lung_zones_denser() -> None:
    """Fluid replaces dark lung above the diaphragm: the lower chest is brighter on average."""
    rng = np.random.default_rng(0)
    lower = (slice(int(256 * 0.55), int(256 * 0.8)), slice(int(256 * 0.1), int(256 * 0.9)))
    effusion = np.mean([phantom(rng, effusion=True, size=256)[lower].mean() for _ in range(8)])
    clear = np.mean([phantom(rng, effusion=False, size=256)[lower].mean() for _ in range(8)])
    assert effusion > clear + 10
