"""DICOM Pixel Padding Value and Pixel Padding Range Limit stay out of the min-max normalisation.

A CR plate or a detector's collimated edge is often stored as padding far outside the
anatomy's values. Left in, it stretches the per-image min-max and the same anatomy scores
differently (0.86 against 0.58 in the report). The padded frame must score exactly as the
same frame whose padding already holds the anatomy's minimum.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.prepare import prepare
from testkit.dicom_factory import dicom_bytes, dicom_dataset, to_bytes
from testkit.live_server import running_service

MAX_PIXELS = 25_000_000
BORDER = 128  # padded columns on each side


@pytest.fixture(scope="module")
def anatomy(nih_png: Path) -> np.ndarray:
    """A real NIH scan as 12-bit stored values, offset from zero as a CR plate's are."""
    with Image.open(nih_png) as image:
        return np.asarray(image.convert("L")).astype(np.uint16) * 16 + 500


def framed(anatomy: np.ndarray, border: np.ndarray | int) -> np.ndarray:
    frame = np.zeros((anatomy.shape[0], anatomy.shape[1] + 2 * BORDER), dtype=np.uint16)
    frame[:, :BORDER] = frame[:, -BORDER:] = border if np.isscalar(border) else border[:, :BORDER]
    frame[:, BORDER:-BORDER] = anatomy
    return frame


def padded(frame: np.ndarray, value: int, limit: int | None = None, **options: object) -> bytes:
    ds = dicom_dataset(frame, **options)  # type: ignore[arg-type]
    ds.PixelPaddingValue = value
    if limit is not None:
        ds.PixelPaddingRangeLimit = limit
    return to_bytes(ds)


def cases(anatomy: np.ndarray) -> dict[str, tuple[bytes, bytes]]:
    """(padded file, the same frame with its padding already at the anatomy's minimum)."""
    low, high = int(anatomy.min()), int(anatomy.max())
    noise = np.random.default_rng(0).integers(0, 101, (anatomy.shape[0], BORDER)).astype(np.uint16)
    inverted = (high + low - anatomy).astype(np.uint16)  # MONOCHROME1 stores the same anatomy reflected
    return {
        "value-below-anatomy": (padded(framed(anatomy, 0), 0), dicom_bytes(framed(anatomy, low))),
        "range-limit": (padded(framed(anatomy, noise), 0, limit=100), dicom_bytes(framed(anatomy, low))),
        "range-limit-reversed": (padded(framed(anatomy, noise), 100, limit=0), dicom_bytes(framed(anatomy, low))),
        "monochrome1-value-above-anatomy": (
            padded(framed(inverted, 65000), 65000, photometric="MONOCHROME1"),
            dicom_bytes(framed(anatomy, low)),
        ),
    }


@pytest.mark.parametrize("case", ["value-below-anatomy", "range-limit", "range-limit-reversed", "monochrome1-value-above-anatomy"])
def test_padding_is_left_out_of_the_normalisation(anatomy: np.ndarray, case: str) -> None:
    with_padding, reference = cases(anatomy)[case]
    tensor = prepare(with_padding, max_pixels=MAX_PIXELS).tensor
    np.testing.assert_allclose(tensor, prepare(reference, max_pixels=MAX_PIXELS).tensor, atol=1e-6)


@pytest.fixture(scope="module")
def server(mean_model: Path) -> Iterator[str]:
    with running_service(mean_model) as live:
        yield live.url


def score(url: str, data: bytes) -> float:
    response = httpx.post(f"{url}/predict", content=data, headers={"Content-Type": "application/dicom"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["effusion_probability"]


def test_padded_frame_scores_as_the_same_anatomy_without_padding(server: str, anatomy: np.ndarray) -> None:
    with_padding, reference = cases(anatomy)["value-below-anatomy"]
    assert score(server, with_padding) == pytest.approx(score(server, reference), abs=1e-6)


def test_a_frame_that_is_all_padding_is_blank(server: str, anatomy: np.ndarray) -> None:
    response = httpx.post(
        f"{server}/predict", content=padded(framed(anatomy, 0), 0, limit=65535), headers={"Content-Type": "application/dicom"}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "blank_image")
