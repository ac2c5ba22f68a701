"""The preprocessing contract, checked against arrays computed by hand or by an independent recipe."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import ServiceError
from service.preprocessing import PREPROCESSING_ID, preprocess
from tests.reference import literal_recipe


def test_identifier_names_the_recipe() -> None:
    assert PREPROCESSING_ID == "minmax-area256/v1"


def test_output_is_float32_nchw_contiguous() -> None:
    pixels = np.arange(1024 * 1024, dtype=np.uint32).reshape(1024, 1024) % 251
    out = preprocess(pixels.astype(np.uint8))
    assert out.shape == (1, 1, 256, 256)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_hand_computed_2x2_means() -> None:
    # 512x512, min 0, max 255: only the top-left 2x2 block and one pixel elsewhere are non-zero.
    pixels = np.zeros((512, 512), dtype=np.uint8)
    pixels[0, 0] = 255  # normalised 1.0
    pixels[0, 1] = 51  # normalised 0.2
    pixels[511, 511] = 102  # normalised 0.4
    out = preprocess(pixels)[0, 0]
    assert out[0, 0] == pytest.approx((1.0 + 0.2) / 4, abs=1e-7)
    assert out[255, 255] == pytest.approx(0.4 / 4, abs=1e-7)
    out[0, 0] = out[255, 255] = 0
    assert not out.any()


def test_exact_4x4_mean_for_1024() -> None:
    pixels = np.zeros((1024, 1024), dtype=np.uint8)
    pixels[:4, :4] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17  # 0..255 in one block
    out = preprocess(pixels)[0, 0]
    assert out[0, 0] == pytest.approx(np.mean(np.arange(16) * 17) / 255, abs=1e-7)
    assert out[0, 1] == 0.0 and out[1, 0] == 0.0


def test_min_max_uses_the_image_own_range_not_0_255() -> None:
    pixels = np.full((256, 256), 100, dtype=np.uint8)
    pixels[:128] = 110
    out = preprocess(pixels)[0, 0]
    assert out[:128].min() == 1.0 and out[128:].max() == 0.0


def test_non_square_is_padded_centred_with_the_minimum() -> None:
    # 512 tall x 256 wide: left half 10, right half 20 -> 0 and 1; 128 pad columns on each side.
    pixels = np.full((512, 256), 10, dtype=np.uint8)
    pixels[:, 128:] = 20
    out = preprocess(pixels)[0, 0]
    expected_row = np.zeros(256, dtype=np.float32)
    expected_row[128:192] = 1.0
    np.testing.assert_array_equal(out, np.tile(expected_row, (256, 1)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_matches_literal_recipe_for_every_dtype(dtype: type) -> None:
    rng = np.random.default_rng(1)
    high = 255 if dtype == np.uint8 else 4095
    pixels = rng.integers(0, high + 1, size=(1024, 1024)).astype(dtype)
    np.testing.assert_allclose(preprocess(pixels)[0, 0], literal_recipe(pixels), rtol=0, atol=1e-6)


def test_matches_literal_recipe_for_non_square_16_bit() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(200, 3000, size=(768, 1024)).astype(np.uint16)
    np.testing.assert_allclose(preprocess(pixels)[0, 0], literal_recipe(pixels), rtol=0, atol=1e-6)


def test_fractional_factor_is_area_averaging() -> None:
    # 300 -> 256 has no integer factor. Independent reference: repeat each pixel 64 times
    # (300 * 64 = 19200 = 256 * 75), then take plain 75-sample means, one axis at a time.
    rng = np.random.default_rng(3)
    pixels = rng.random((300, 300))
    normalised = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    rows = np.repeat(normalised, 64, axis=1).reshape(300, 256, 75).mean(axis=2)
    expected = np.repeat(rows, 64, axis=0).reshape(256, 75, 256).mean(axis=1)
    np.testing.assert_allclose(preprocess(pixels)[0, 0], expected, rtol=0, atol=1e-6)


def test_constant_image_is_refused() -> None:
    with pytest.raises(ServiceError) as error:
        preprocess(np.zeros((1024, 1024), dtype=np.uint8))
    assert error.value.code == "blank_image"


@pytest.mark.parametrize("shape", [(255, 1024), (100, 100), (1, 1)])
def test_small_images_are_refused(shape: tuple[int, int]) -> None:
    pixels = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    with pytest.raises(ServiceError) as error:
        preprocess(pixels)
    assert error.value.code == "image_too_small"


def test_absurd_aspect_ratio_is_refused() -> None:
    pixels = np.arange(256 * 1024, dtype=np.float32).reshape(256, 1024)
    with pytest.raises(ServiceError) as error:
        preprocess(pixels)
    assert error.value.code == "bad_aspect_ratio"


def test_non_finite_pixels_are_refused() -> None:
    pixels = np.ones((256, 256), dtype=np.float32)
    pixels[0, 0] = np.nan
    with pytest.raises(ServiceError) as error:
        preprocess(pixels)
    assert error.value.code == "unsupported_image"


def test_values_that_overflow_the_sums_are_refused() -> None:
    # Finite pixels whose block sums overflow float64 (a DICOM rescale slope of 1e308 does this).
    pixels = np.zeros((1024, 1024), dtype=np.float64)
    pixels[:4, :4] = 1.7e308
    with pytest.raises(ServiceError) as error:
        preprocess(pixels)
    assert error.value.code == "unsupported_image"
