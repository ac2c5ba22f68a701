"""DICOM bytes -> one 2-D grayscale array with bone bright, as in the PNG exports we train on.

Order of operations follows PS3.4 (grayscale pipeline): stored values (pydicom masks unused
high bits and sign-extends per BitsStored/PixelRepresentation) -> Modality LUT (rescale
slope/intercept or LUT) -> VOI LUT or window -> MONOCHROME1 inverted. Only single-frame
grayscale projection radiographs are accepted.

Compressed pixel data is decoded by pydicom's plugins: RLE natively; JPEG lossless, JPEG-LS
and JPEG 2000 by GDCM (python-gdcm, BSD; Pillow too for JPEG 2000). 8-bit JPEG baseline and
extended go to libjpeg-turbo in strict mode (service/decode/jpeg.py), which refuses corrupt data;
12-bit JPEG is refused. docs/security.md says why these and not the GPL-licensed libjpeg plugin.

Nothing here reads or returns patient identifiers: the SOP Instance UID is the only
identifier a response may echo, and only when it is a well-formed UID.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, RLELossless

from service.decode.formats import has_dicom_preamble
from service.decode.jpeg import decode_pixels
from service.decode.scan import DecodedScan, check_declared_size, decoded
from service.errors import ErrorCode, ServiceError
from service.native_stderr import capturing_stderr

# Element values are validated lazily and reported as warnings that quote the offending
# value, which may be a patient name: never let them reach stderr or the logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# Projection X-ray modalities: computed/digital radiography (CR, DX, and the non-standard DR
# some vendors write), conventional radiographic film "RG" and secondary captures "OT". CT, MR, US, etc. are refused: the model has never seen them.
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "OT"}
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64
# libjpeg's warnings about missing or corrupt data, which GDCM prints to stderr and then
# reports success with the rest of the frame grey (JWRN_* in libjpeg's jerror.h).
CORRUPT_DATA_WARNING = re.compile(
    rb"Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression sequence"
)


def decode(data: bytes, *, max_pixels: int) -> DecodedScan:
    """Read the header first (syntax, size, frames, modality), then decode pixels only if all is well."""
    check_transfer_syntax(data, has_dicom_preamble(data))
    dataset = parse(data)
    photometric = check_header(dataset, max_pixels=max_pixels)
    try:
        stored = stored_values(dataset)
        padding = padding_mask(stored, dataset)
        values = apply_voi_lut(apply_modality_lut(stored, dataset), dataset)
    except ServiceError:
        raise
    except Exception as error:  # missing codec, truncated or oversized frame, bad LUT or window
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM pixel data could not be decoded") from error
    if values.shape != (int(dataset.Rows), int(dataset.Columns)):
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, f"expected one 2-D frame, got shape {values.shape}")
    if padding is not None and padding.all():
        raise ServiceError(ErrorCode.BLANK_IMAGE, "every pixel is padding")
    real = values if padding is None else values[~padding]
    low, high = real.min(), real.max()

    if photometric == "MONOCHROME1":
        # Minimum is white: reflect about the image's range so bone is bright, as in the PNG
        # exports. Reflecting about the full output range instead would only shift values by a
        # constant, which the per-image min-max normalisation removes.
        values = high + low - np.asarray(values, dtype=np.float64)
    if padding is not None:
        # Padding is not anatomy: left in, it stretches the min-max normalisation. It becomes
        # the image's real minimum, which is what the square padding of preprocessing adds too.
        values = np.where(padding, low, values)

    try:
        uid = safe_uid(dataset.get("SOPInstanceUID"))
    except Exception:  # a UID element with a hostile VR: echo nothing rather than fail the scan
        uid = None
    return decoded(values, "dicom", photometric, sop_instance_uid=uid)


def stored_values(dataset: Dataset) -> np.ndarray:
    """The frame's stored values. 8-bit JPEG goes through the strict decoder: GDCM and Pillow
    decode a truncated JPEG frame as grey and report success. 12-bit JPEG Extended is refused:
    GDCM's own API decodes it, but only reports corrupt data as text on stderr, and it turned
    black pixels white in our tests (docs/security.md). GDCM's other JPEG decoders (lossless)
    print libjpeg's warnings to stderr the same way: they are captured and refused."""
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        if int(dataset.BitsStored) > 8:
            raise ServiceError(
                ErrorCode.UNSUPPORTED_IMAGE, "12-bit JPEG Extended DICOM is not accepted; send it lossless or uncompressed"
            )
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
        return decode_pixels(frame, "GRAY")[:, :, 0]
    if not syntax.is_compressed or syntax == RLELossless:  # pydicom's own decoders: nothing on stderr
        return dataset.pixel_array
    stored, complaints = capturing_stderr(lambda: dataset.pixel_array)  # serialised: only GDCM's syntaxes
    if CORRUPT_DATA_WARNING.search(complaints):
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM's compressed frame is truncated or corrupt")
    return stored


def padding_mask(stored: np.ndarray, dataset: Dataset) -> np.ndarray | None:
    """Where the stored values are Pixel Padding Value, or within Pixel Padding Range Limit (PS3.3 C.7.5.1.1.2)."""
    value = dataset.get("PixelPaddingValue")
    if value is None:
        return None
    limit = dataset.get("PixelPaddingRangeLimit", value)
    return (stored >= min(value, limit)) & (stored <= max(value, limit))


def parse(data: bytes, *, pixels: bool = True) -> Dataset:
    """pydicom's reading of an upload, with or without its pixel data (the reports re-read only the header);
    any parser error is the client's undecodable file, never a 500."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=not has_dicom_preamble(data))
    except Exception as error:  # pydicom raises a wide variety of errors on hostile input
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM file could not be parsed") from error


def check_transfer_syntax(data: bytes, has_preamble: bool) -> None:
    """Refuse syntaxes pydicom would expand without bound before we see the header.

    pydicom inflates a Deflated Explicit VR dataset in one unbounded `zlib.decompress`,
    so a small upload could become gigabytes: a deflate bomb. Images are not sent deflated
    in practice; the syntax is refused.
    """
    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force=not has_preamble)
        meta = read_dataset(
            stream, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag >> 16 != 2
        )
        syntax = meta.get("TransferSyntaxUID")
    except Exception as error:
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM file meta information could not be parsed") from error
    if syntax is None:
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM file declares no transfer syntax")
    if syntax == DeflatedExplicitVRLittleEndian:
        raise ServiceError(ErrorCode.UNSUPPORTED_IMAGE, "the Deflated Explicit VR transfer syntax is not accepted")


def check_header(dataset: Dataset, *, max_pixels: int) -> str:
    """Refuse what the model cannot read before any pixel is decoded; returns the photometric interpretation."""
    if "PixelData" not in dataset:
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM file has no pixel data")
    try:
        modality = str(dataset.get("Modality", "") or "").upper()
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "") or "").upper()
    except Exception as error:  # missing, malformed or wrongly typed elements
        raise ServiceError(ErrorCode.UNDECODABLE_IMAGE, "the DICOM header lacks valid image attributes") from error

    if modality and modality not in XRAY_MODALITIES:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MODALITY, f"modality {modality[:16]} is not a projection radiograph (CR, DX, DR, RG or OT expected)"
        )
    check_declared_size(columns, rows, frames, max_pixels=max_pixels)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ServiceError(
            ErrorCode.UNSUPPORTED_IMAGE,
            f"only grayscale DICOM is accepted, got {photometric[:16] or 'no photometric interpretation'} "
            f"with {samples} samples per pixel",
        )
    return photometric


def safe_uid(value: object) -> str | None:
    """The SOP Instance UID when it is a well-formed UID; anything else could carry free text."""
    text = str(value).strip().rstrip("\x00") if value else ""
    if 0 < len(text) <= MAX_UID_LENGTH and UID_PATTERN.match(text):
        return text
    return None
