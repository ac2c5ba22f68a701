"""Every DICOM transfer syntax, one by one: decoded (and close to its source) or refused with its code.

docs/security.md lists the same syntaxes; `test_docs_list_every_syntax_tested_here` keeps the
two in step.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom import uid
from pydicom.uid import UID

from service.decode import decode
from service.errors import ServiceError
from testkit.dicom_factory import (
    dicom_dataset,
    gdcm_transcoded_bytes,
    pillow_encapsulated_bytes,
    rle_bytes,
    to_bytes,
    with_fragment,
)
from tests.conftest import REPO_ROOT

MAX_PIXELS = 25_000_000
SECURITY_DOC = (REPO_ROOT / "docs" / "security.md").read_text()


def scan(bits: int) -> np.ndarray:
    rows, cols = np.mgrid[0:320, 0:288]
    values = 0.5 + 0.4 * np.sin(rows / 23.0) * np.cos(cols / 31.0)
    return (values * (2**bits - 1)).astype(np.uint8 if bits <= 8 else np.uint16)


def uncompressed(syntax: UID, pixels: np.ndarray) -> bytes:
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == uid.ExplicitVRBigEndian:
        ds.PixelData = pixels.astype(">u2").tobytes()
    return to_bytes(ds)


def relabelled(syntax: UID, pixels: np.ndarray) -> bytes:
    """A JPEG 2000 codestream under another syntax's UID (an HTJ2K decoder would read it)."""
    data = pillow_encapsulated_bytes(pixels, uid.JPEG2000Lossless, bits_stored=12)
    return data.replace(uid.JPEG2000Lossless.encode(), syntax.encode())


# syntax -> (bits, encoder, tolerance for lossy syntaxes or the refusal's code)
SYNTAXES: dict[UID, tuple[int, object, float | str]] = {
    uid.ImplicitVRLittleEndian: (12, lambda a: uncompressed(uid.ImplicitVRLittleEndian, a), 0),
    uid.ExplicitVRLittleEndian: (12, lambda a: uncompressed(uid.ExplicitVRLittleEndian, a), 0),
    uid.ExplicitVRBigEndian: (12, lambda a: uncompressed(uid.ExplicitVRBigEndian, a), 0),
    uid.RLELossless: (12, lambda a: rle_bytes(a, bits_stored=12), 0),
    uid.JPEGBaseline8Bit: (8, lambda a: pillow_encapsulated_bytes(a, uid.JPEGBaseline8Bit), 4),
    uid.JPEGLossless: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEGLossless, bits_stored=12), 0),
    uid.JPEGLosslessSV1: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEGLosslessSV1, bits_stored=12), 0),
    uid.JPEGLSLossless: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEGLSLossless, bits_stored=12), 0),
    uid.JPEGLSNearLossless: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEGLSNearLossless, bits_stored=12), 8),
    uid.JPEG2000Lossless: (12, lambda a: pillow_encapsulated_bytes(a, uid.JPEG2000Lossless, bits_stored=12), 0),
    uid.JPEG2000: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEG2000, bits_stored=12), 64),
    uid.JPEGExtended12Bit: (12, lambda a: gdcm_transcoded_bytes(a, uid.JPEGExtended12Bit, bits_stored=12), "unsupported_image"),
    uid.HTJ2KLossless: (12, lambda a: relabelled(uid.HTJ2KLossless, a), "undecodable_image"),
    uid.DeflatedExplicitVRLittleEndian: (12, lambda a: uncompressed(uid.DeflatedExplicitVRLittleEndian, a), "unsupported_image"),
}


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[syntax.name for syntax in SYNTAXES])
def test_each_transfer_syntax_decodes_or_is_refused(syntax: UID) -> None:
    bits, build, expected = SYNTAXES[syntax]
    source = scan(bits)
    data = build(source)  # type: ignore[operator]
    if isinstance(expected, str):
        with pytest.raises(ServiceError) as caught:
            decode(data, max_pixels=MAX_PIXELS)
        assert caught.value.code == expected
        return
    decoded = decode(data, max_pixels=MAX_PIXELS).pixels
    assert np.abs(decoded.astype(np.int64) - source).max() <= expected


def test_eight_bit_jpeg_extended_goes_through_the_strict_decoder() -> None:
    source = scan(8)
    data = gdcm_transcoded_bytes(source, uid.JPEGExtended12Bit)
    assert np.abs(decode(data, max_pixels=MAX_PIXELS).pixels.astype(int) - source).max() <= 4
    broken = with_fragment(data, lambda frame: frame[: len(frame) // 10] + b"\xff\xd9")
    with pytest.raises(ServiceError) as caught:
        decode(broken, max_pixels=MAX_PIXELS)
    assert caught.value.code == "undecodable_image"


def test_docs_list_every_syntax_tested_here() -> None:
    table = SECURITY_DOC[SECURITY_DOC.index("Transfer syntaxes") :]
    missing = [syntax.name for syntax in SYNTAXES if not re.search(rf"(?<![\d.]){re.escape(syntax)}(?![\d]|\.\d)", table)]
    assert not missing, f"docs/security.md does not list {missing}"
