"""The format table: every input format the service accepts, one row each.

A row names the format, tells it apart by its first bytes (never by a file name or a declared
content type), lists the media types and file suffixes it travels under, and names its decoder
as "module:function". Uploads, the OpenAPI description, the client and the tests all read
this table, so adding a format is one decode module plus one row here.

Standard library only, and decoders are imported on first use: the client and the table's other
readers never load numpy, Pillow or pydicom through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.decode.scan import DecodedScan

    Decoder = Callable[..., DecodedScan]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_PREFIX = b"DICM"
# A Part 10 file whose 128-byte preamble was stripped starts with its File Meta Information
# Group Length: tag (0002,0000), explicit VR "UL", length 4. Anything else is not sniffed as
# DICOM (a bare dataset without file meta has no transfer syntax to trust).
DICOM_META_START = b"\x02\x00\x00\x00UL\x04\x00"
# Bytes a sniffer needs to see: the DICOM preamble and its prefix are the longest test.
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_PREFIX)


def has_dicom_preamble(data: bytes) -> bool:
    """True when the bytes carry a Part 10 file's 128-byte preamble and "DICM" prefix."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_PREFIX)] == DICOM_PREFIX


def is_dicom(data: bytes) -> bool:
    return has_dicom_preamble(data) or data.startswith(DICOM_META_START)


@dataclass(frozen=True)
class Format:
    """One accepted input format."""

    name: str  # reported as `input.format`
    matches: Callable[[bytes], bool]  # the magic-bytes test, given at least the first SNIFF_BYTES bytes
    media_types: tuple[str, ...]  # accepted as a raw request body; the first one is the format's own
    suffixes: tuple[str, ...]  # file names the client picks up in folders
    decoder: str  # "module:function" with signature (data: bytes, *, max_pixels: int) -> DecodedScan

    def load_decoder(self) -> Decoder:
        """Import the decoder on first use (pydicom costs ~0.2 s; a PNG-only caller never pays it)."""
        module, function = self.decoder.split(":")
        return getattr(importlib.import_module(module), function)


FORMATS: tuple[Format, ...] = (
    Format("png", lambda data: data.startswith(PNG_SIGNATURE), ("image/png",), (".png",), "service.decode.png:decode"),
    Format(
        "jpeg", lambda data: data.startswith(JPEG_SIGNATURE), ("image/jpeg",), (".jpg", ".jpeg"), "service.decode.jpeg:decode"
    ),
    Format("dicom", is_dicom, ("application/dicom",), (".dcm", ".dicom"), "service.decode.dicom:decode"),
)

# A raw body of unknown type is accepted too: the format is sniffed from the content anyway.
RAW_MEDIA_TYPES: tuple[str, ...] = tuple(t for f in FORMATS for t in f.media_types) + ("application/octet-stream",)
SUFFIXES: frozenset[str] = frozenset(suffix for f in FORMATS for suffix in f.suffixes)
NAMES: str = ", ".join(f.name.upper() for f in FORMATS[:-1]) + f" or {FORMATS[-1].name.upper()}"  # "PNG, JPEG or DICOM"


def sniff(data: bytes) -> Format | None:
    """The format whose magic bytes `data` starts with, or None when it is none we accept."""
    return next((fmt for fmt in FORMATS if fmt.matches(data)), None)
