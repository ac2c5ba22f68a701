"""DICOM input: the grayscale pipeline, compressed syntaxes, refusals, and no patient data out."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from service.decode import decode
from service.errors import ServiceError
from service.predictor import prepare
from testkit.dicom_factory import (
    PATIENT_ID,
    PATIENT_NAME,
    SOP_INSTANCE_UID,
    dicom_bytes,
    dicom_dataset,
    gdcm_transcoded_bytes,
    pillow_encapsulated_bytes,
    rle_bytes,
    to_bytes,
)

MAX_PIXELS = 25_000_000


@pytest.fixture(scope="module")
def scan12() -> np.ndarray:
    """A smooth 12-bit 'radiograph' stored in 16 bits, with structure the model can see."""
    rows, cols = np.mgrid[0:320, 0:288]
    values = 2000 + 1500 * np.sin(rows / 23.0) * np.cos(cols / 31.0) + rows * 2
    return np.clip(values, 0, 4095).astype(np.uint16)


def tensor(data: bytes) -> np.ndarray:
    return prepare(data, max_pixels=MAX_PIXELS).tensor


def refusal(data: bytes) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode(data, max_pixels=MAX_PIXELS)
    return caught.value


def post_dicom(client: TestClient, data: bytes) -> dict:
    response = client.post("/predict", content=data, headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    return response.json()


# --- acceptance: the same NIH pixels as PNG and as DICOM give the same probability ----------


@pytest.mark.parametrize("model_fixture", ["mean_model", "slow_model"])
def test_nih_png_and_dicom_wrappings_score_the_same(nih_png: Path, model_fixture: str, request: pytest.FixtureRequest) -> None:
    from service.http.app import create_app
    from tests.conftest import make_settings, wait_ready

    pixels = np.asarray(Image.open(nih_png))
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    monochrome2 = dicom_bytes(pixels)
    monochrome1 = dicom_bytes(255 - pixels, photometric="MONOCHROME1")
    with TestClient(create_app(make_settings(request.getfixturevalue(model_fixture)))) as client:
        wait_ready(client)
        png = client.post("/predict", files={"file": ("scan.png", nih_png.read_bytes(), "image/png")}).json()
        as_m2 = post_dicom(client, monochrome2)
        as_m1 = client.post("/predict", files={"file": ("scan.dcm", monochrome1, "application/dicom")}).json()
    assert as_m2["input"] == {**png["input"], "format": "dicom", "mode": "MONOCHROME2", "sop_instance_uid": SOP_INSTANCE_UID}
    assert as_m1["input"]["mode"] == "MONOCHROME1"
    assert abs(as_m2["effusion_probability"] - png["effusion_probability"]) < 1e-4
    assert abs(as_m1["effusion_probability"] - png["effusion_probability"]) < 1e-4
    # The inversion matters: the un-inverted MONOCHROME1 pixels would score differently.
    assert not np.allclose(tensor(dicom_bytes(255 - pixels)), tensor(nih_png.read_bytes()), atol=1e-3)


def test_response_echoes_uid_but_never_patient_identifiers(client: TestClient, scan12: np.ndarray) -> None:
    response = client.post("/predict", content=dicom_bytes(scan12, bits_stored=12), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200
    assert response.json()["input"]["sop_instance_uid"] == SOP_INSTANCE_UID
    for secret in (PATIENT_NAME, PATIENT_ID, "Zebulon", "19010101"):
        assert secret not in response.text


def test_a_uid_that_is_not_a_uid_is_not_echoed(scan12: np.ndarray) -> None:
    ds = dicom_dataset(scan12)
    ds.SOPInstanceUID = "1.2.3 " + PATIENT_NAME
    assert decode(to_bytes(ds), max_pixels=MAX_PIXELS).facts.sop_instance_uid is None


# --- the grayscale pipeline ------------------------------------------------------------------


def test_bits_stored_masks_unused_high_bits(scan12: np.ndarray) -> None:
    dirty = scan12 | np.uint16(0xA000)  # overlay bits above bit 11, as some modalities write
    decoded = decode(dicom_bytes(dirty, bits_stored=12), max_pixels=MAX_PIXELS).pixels
    np.testing.assert_array_equal(decoded, scan12)


def test_signed_pixels_are_sign_extended_from_bits_stored() -> None:
    stored = np.full((256, 256), 0x0800, dtype=np.uint16)  # -2048 as 12-bit two's complement
    stored[:, 128:] = 0x07FF  # +2047
    decoded = decode(dicom_bytes(stored.view(np.int16), bits_stored=12), max_pixels=MAX_PIXELS).pixels
    assert decoded.dtype.kind == "i"
    assert decoded.min() == -2048 and decoded.max() == 2047


def test_rescale_slope_and_intercept_are_applied(scan12: np.ndarray) -> None:
    decoded = decode(dicom_bytes(scan12, bits_stored=12, slope=0.5, intercept=-1024), max_pixels=MAX_PIXELS).pixels
    np.testing.assert_allclose(decoded, scan12 * 0.5 - 1024)


def test_window_is_applied_without_rescale(scan12: np.ndarray) -> None:
    center, width = 2200.0, 1001.0
    decoded = decode(dicom_bytes(scan12, bits_stored=12, window=(center, width)), max_pixels=MAX_PIXELS).pixels
    # PS3.3 C.11.2.1.2.1, LINEAR, output range 0..4095 for unsigned 12-bit
    x = scan12.astype(np.float64)
    expected = np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 4095, 0, 4095)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    assert (decoded == 0).any() and (decoded == 4095).any()  # the window really clipped


def test_window_is_applied_after_rescale(scan12: np.ndarray) -> None:
    slope, intercept = 0.5, -1024.0
    center, width = 100.0, 501.0  # in rescaled units: applied to the stored values it would clip everything
    decoded = decode(
        dicom_bytes(scan12, bits_stored=12, slope=slope, intercept=intercept, window=(center, width)),
        max_pixels=MAX_PIXELS,
    ).pixels
    # The Modality LUT first, then the LINEAR window onto the rescaled 12-bit output range.
    x = scan12.astype(np.float64) * slope + intercept
    low, high = intercept, 4095 * slope + intercept
    expected = np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * (high - low) + low, low, high)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)
    assert (decoded == low).any() and (decoded == high).any() and ((decoded > low) & (decoded < high)).any()


def test_monochrome1_is_inverted(scan12: np.ndarray) -> None:
    as_m1 = tensor(dicom_bytes(4095 - scan12, bits_stored=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(as_m1, tensor(dicom_bytes(scan12, bits_stored=12)), atol=1e-6)


def test_monochrome1_with_window_is_inverted_after_windowing(scan12: np.ndarray) -> None:
    window = (2048.0, 2049.0)
    as_m1 = tensor(dicom_bytes(4095 - scan12, bits_stored=12, photometric="MONOCHROME1", window=window))
    as_m2 = tensor(dicom_bytes(scan12, bits_stored=12, window=(4095 - window[0] + 1, window[1])))
    np.testing.assert_allclose(as_m1, as_m2, atol=1e-6)


# --- transfer syntaxes -----------------------------------------------------------------------


def test_file_without_preamble_is_detected_and_decoded(scan12: np.ndarray) -> None:
    data = to_bytes(dicom_dataset(scan12, bits_stored=12), preamble=False)
    assert b"DICM" not in data[:200]
    np.testing.assert_array_equal(decode(data, max_pixels=MAX_PIXELS).pixels, scan12)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda a: rle_bytes(a, bits_stored=12), id="rle-lossless"),
        pytest.param(lambda a: pillow_encapsulated_bytes(a, JPEG2000Lossless, bits_stored=12), id="jpeg2000-lossless"),
        pytest.param(lambda a: gdcm_transcoded_bytes(a, bits_stored=12), id="jpeg-lossless-sv1"),
    ],
)
def test_lossless_compressed_syntaxes_decode_exactly(scan12: np.ndarray, encode) -> None:
    data = encode(scan12)
    decoded = decode(data, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(decoded.pixels, scan12)
    assert decoded.facts.sop_instance_uid == SOP_INSTANCE_UID


def test_jpeg_baseline_decodes_close_to_the_source(scan12: np.ndarray) -> None:
    eight_bit = (scan12 >> 4).astype(np.uint8)
    data = pillow_encapsulated_bytes(eight_bit, JPEGBaseline8Bit)
    np.testing.assert_allclose(tensor(data), tensor(dicom_bytes(eight_bit)), atol=0.02)


# --- refusals, each with its stable code ----------------------------------------------------


@pytest.mark.parametrize(
    ("build", "code"),
    [
        pytest.param(lambda a: dicom_bytes(np.stack([a, a]), frames=2), "multi_frame", id="multi-frame"),
        pytest.param(
            lambda a: dicom_bytes(np.stack([a >> 4] * 3, axis=-1).astype(np.uint8), samples=3, photometric="RGB"),
            "unsupported_image",
            id="colour",
        ),
        pytest.param(lambda a: dicom_bytes(a, modality="CT"), "unsupported_modality", id="ct"),
        pytest.param(lambda a: dicom_bytes(a, modality="MR"), "unsupported_modality", id="mr"),
        pytest.param(lambda a: dicom_bytes(a[:100, :100]), "image_too_small", id="small"),
        pytest.param(lambda a: dicom_bytes(np.full_like(a, 7)), "blank_image", id="constant"),
    ],
)
def test_refused_with_a_stable_code(scan12: np.ndarray, build, code: str) -> None:
    with pytest.raises(ServiceError) as caught:
        prepare(build(scan12), max_pixels=MAX_PIXELS)
    assert caught.value.code == code


def test_huge_declared_size_is_refused_before_decoding(scan12: np.ndarray) -> None:
    ds = dicom_dataset(scan12)
    ds.Rows, ds.Columns = 60000, 60000  # pixel data stays tiny: only the header lies
    assert refusal(to_bytes(ds)).code == "too_many_pixels"


def test_truncated_pixel_data_is_undecodable(scan12: np.ndarray) -> None:
    data = dicom_bytes(scan12)
    assert refusal(data[: len(data) - 1000]).code == "undecodable_image"


def test_truncated_compressed_frame_is_undecodable(scan12: np.ndarray) -> None:
    data = pillow_encapsulated_bytes(scan12, JPEG2000Lossless, bits_stored=12)
    assert refusal(data[: len(data) // 2]).code == "undecodable_image"


def test_missing_pixel_data_is_undecodable(scan12: np.ndarray) -> None:
    ds = dicom_dataset(scan12)
    del ds.PixelData
    assert refusal(to_bytes(ds)).code == "undecodable_image"


def test_invalid_window_is_undecodable(scan12: np.ndarray) -> None:
    assert refusal(dicom_bytes(scan12, window=(100.0, 0.0))).code == "undecodable_image"


def test_deflated_syntax_is_refused_before_inflating(scan12: np.ndarray) -> None:
    meta = dicom_dataset(scan12).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(squeezer.compress(zeros) for _ in range(256)) + squeezer.flush()  # 256 MiB inflated
    assert len(bomb) < 1 << 20
    assert refusal(header.getvalue() + bomb).code == "unsupported_image"


def test_bare_dataset_without_file_meta_is_not_sniffed_as_dicom(scan12: np.ndarray) -> None:
    ds = dicom_dataset(scan12)
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert buffer.getvalue()[:2] == b"\x08\x00"
    assert refusal(buffer.getvalue()).code == "unsupported_media_type"


def test_garbage_after_the_dicom_prefix_is_undecodable() -> None:
    assert refusal(b"\0" * 128 + b"DICM" + b"\xff" * 500).code == "undecodable_image"
