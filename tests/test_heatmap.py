"""Heatmaps: drawn correctly, served on request by models that have them, absent (and said so) otherwise."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.heatmap import grid, overlay_png
from service.http.app import create_app
from service.model import ModelError, load_model
from testkit.images import png_bytes
from testkit.model_factory import build_model
from tests.conftest import make_settings, wait_ready


@pytest.fixture(scope="module")
def heatmap_model(models_dir: Path) -> Path:
    return build_model(models_dir / "with-heatmap.onnx", heatmap_shape=("N", 256, 256))


def one_sided_scan(side: str) -> np.ndarray:
    """A 1024x1024 scan with a bright opacity over its left or right 300 columns."""
    scan = np.full((1024, 1024), 40, dtype=np.uint8)
    scan[:, slice(0, 300) if side == "left" else slice(-300, None)] = 220
    return scan


def test_grid_is_the_block_mean() -> None:
    heat = np.zeros((256, 256), dtype=np.float32)
    heat[:16, :16] = 1.0
    heat[:16, 16:24] = 0.5  # half of the second cell at 0.5
    cells = grid(heat)
    assert len(cells) == 16 and len(cells[0]) == 16
    assert cells[0][0] == 1.0 and cells[0][1] == 0.25 and cells[1][0] == 0.0


def test_overlay_keeps_the_scan_where_there_is_no_heat() -> None:
    scan = np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(256, 256)
    heat = np.zeros_like(scan)
    heat[:, 128:] = 1.0
    image = np.asarray(Image.open(io.BytesIO(overlay_png(scan, heat))))
    assert image.shape == (256, 256, 3)
    left = image[:, :128]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()  # gray: untouched
    right = image[:, 128:].astype(int)
    assert (right[..., 0] >= right[..., 2]).all() and right[..., 0].mean() > right[..., 2].mean() + 50  # heat is warm


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_opacity_side_lights_up(heatmap_model: Path, side: str) -> None:
    with TestClient(create_app(make_settings(heatmap_model))) as client:
        wait_ready(client)
        assert client.get("/model").json()["heatmap"] is True
        response = client.post("/predict?heatmap=true", files={"file": ("s.png", png_bytes(one_sided_scan(side)))})
        assert response.status_code == 200, response.text
        body = response.json()
        cells = np.array(body["heatmap"]["grid"])
        assert cells.shape == (16, 16) and 0.0 <= cells.min() and cells.max() <= 1.0
        left, right = cells[:, :4].mean(), cells[:, -4:].mean()
        assert (left > right + 0.3) if side == "left" else (right > left + 0.3)
        overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmap"]["overlay_png"])))
        assert overlay.size == (256, 256) and overlay.format == "PNG"
        assert body["notes"] == []

        plain = client.post("/predict", files={"file": ("s.png", png_bytes(one_sided_scan(side)))}).json()
        assert plain["heatmap"] is None
        assert plain["effusion_probability"] == body["effusion_probability"]


def test_a_model_without_heatmap_keeps_working_and_says_so(client: TestClient) -> None:
    response = client.post("/predict?heatmap=true", files={"file": ("s.png", png_bytes(one_sided_scan("left")))})
    assert response.status_code == 200
    body = response.json()
    assert body["heatmap"] is None
    assert any("no heatmap" in note for note in body["notes"])


def test_a_heatmap_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="heatmap"):
        load_model(build_model(tmp_path / "m.onnx", heatmap_shape=("N", 1, 256, 256)), policy="cpu")
