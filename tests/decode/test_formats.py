"""The format table: sniffing by content, and every reader of the table agreeing with it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from service.decode.formats import FORMATS, RAW_MEDIA_TYPES, SUFFIXES, sniff
from service.http.app import create_app
from service.http.uploads import RAW_CONTENT_TYPES
from service.settings import Settings
from testkit.dicom_factory import dicom_bytes
from testkit.images import encode
from tests.decode.test_raster import gradient


def test_sniffing_ignores_names_and_declared_types() -> None:
    assert sniff(encode(Image.fromarray(gradient()))).name == "png"
    assert sniff(encode(Image.fromarray(gradient()), "JPEG")).name == "jpeg"
    assert sniff(b"\0" * 128 + b"DICM" + b"\0" * 10).name == "dicom"
    assert sniff(b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 10).name == "dicom"  # a Part 10 file without its preamble
    assert sniff(b"GIF89a....") is None


def test_every_row_names_a_decoder_that_exists() -> None:
    for fmt in FORMATS:
        assert callable(fmt.load_decoder()), fmt.name
        assert fmt.media_types and fmt.suffixes and all(suffix.startswith(".") for suffix in fmt.suffixes)


@pytest.mark.parametrize("name", [fmt.name for fmt in FORMATS])
def test_every_format_is_read_by_its_own_row(name: str) -> None:
    samples = {
        "png": encode(Image.fromarray(gradient())),
        "jpeg": encode(Image.fromarray(gradient()), "JPEG"),
        "dicom": dicom_bytes(gradient(300, 300).astype("uint16")),
    }
    fmt = sniff(samples[name])
    assert fmt is not None and fmt.name == name
    assert fmt.load_decoder()(samples[name], max_pixels=25_000_000).facts.format == name


def test_uploads_and_client_read_the_table() -> None:
    assert {t.decode() for t in RAW_CONTENT_TYPES} == set(RAW_MEDIA_TYPES)
    assert {t for fmt in FORMATS for t in fmt.media_types} <= set(RAW_MEDIA_TYPES)
    assert {".png", ".jpg", ".jpeg", ".dcm", ".dicom"} == SUFFIXES


def test_the_openapi_upload_body_lists_every_format() -> None:
    openapi = create_app(Settings()).openapi()  # the model loads in the lifespan, which this does not start
    content = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {fmt.media_types[0] for fmt in FORMATS} <= set(content)


def test_the_table_imports_no_decoder() -> None:
    """The client and the upload reader use the table; neither may pull in numpy, Pillow or pydicom through it."""
    code = "import sys, service.decode.formats, service.decode; print(sorted({'numpy', 'PIL', 'pydicom'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
