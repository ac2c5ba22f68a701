"""Build real DICOM Part 10 files in memory with pydicom, as a modality or PACS would send them.

Every file carries recognisable fake patient identifiers (PATIENT_NAME, PATIENT_ID), so tests
can prove that none of them reaches a response or a log line.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

PATIENT_NAME = "Zebulon^Quixotic-Patient"
PATIENT_ID = "PID-7f3a9c-SECRET"
SOP_INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str | None = "DX",
    slope: float | str | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    samples: int = 1,
    sop_instance_uid: str = SOP_INSTANCE_UID,
) -> Dataset:
    """An uncompressed (Explicit VR Little Endian) DX image holding `pixels` as stored values.

    `pixels` is [rows, cols] (or [frames, rows, cols], [rows, cols, samples]); its dtype sets
    BitsAllocated and PixelRepresentation (uint8/uint16 unsigned, int16 signed).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19010101"
    if modality is not None:
        ds.Modality = modality
    bits_allocated = pixels.dtype.itemsize * 8
    ds.Rows, ds.Columns = (pixels.shape[1:3] if frames > 1 else pixels.shape[:2])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    if slope is not None or intercept is not None:
        ds.RescaleSlope = slope if slope is not None else 1
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def to_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Serialise as a Part 10 file; without `preamble` the 128 bytes and 'DICM' are stripped."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]


def dicom_bytes(pixels: np.ndarray, **options: object) -> bytes:
    return to_bytes(dicom_dataset(pixels, **options))  # type: ignore[arg-type]


def rle_bytes(pixels: np.ndarray, **options: object) -> bytes:
    """RLE Lossless, encoded by pydicom's own encoder."""
    ds = dicom_dataset(pixels, **options)  # type: ignore[arg-type]
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return to_bytes(ds)


def pillow_encapsulated_bytes(pixels: np.ndarray, syntax: UID, **options: object) -> bytes:
    """JPEG baseline (8-bit) or JPEG 2000 lossless, encoded by Pillow and encapsulated."""
    ds = dicom_dataset(pixels, **options)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    if syntax == JPEGBaseline8Bit:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    elif syntax == JPEG2000Lossless:
        mode = "L" if pixels.dtype == np.uint8 else "I;16"
        Image.frombytes(mode, pixels.shape[::-1], pixels.tobytes()).save(buffer, format="JPEG2000", no_jp2=True)
    else:
        raise ValueError(f"no Pillow encoder for {syntax.name}")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    if syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
    return to_bytes(ds)


def gdcm_transcoded_bytes(pixels: np.ndarray, syntax: UID = JPEGLosslessSV1, **options: object) -> bytes:
    """JPEG lossless, JPEG extended, JPEG-LS or JPEG 2000, transcoded by GDCM (it has no in-memory API)."""
    import gdcm

    names = {
        JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14,
        JPEGExtended12Bit: gdcm.TransferSyntax.JPEGExtendedProcess2_4,
        JPEGLSLossless: gdcm.TransferSyntax.JPEGLSLossless,
        JPEGLSNearLossless: gdcm.TransferSyntax.JPEGLSNearLossless,
        JPEG2000: gdcm.TransferSyntax.JPEG2000,
    }
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        source.write_bytes(dicom_bytes(pixels, **options))
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        if not reader.Read():
            raise RuntimeError("gdcm could not read the source file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(names[syntax]))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("gdcm could not transcode")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write")
        return target.read_bytes()


def with_fragment(data: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """An encapsulated single-frame file with its frame's fragment replaced by `change(fragment)`."""
    item = data.index(b"\xff\xd8\xff") - 8  # the item header: tag (FFFE,E000), then its length
    if data[item : item + 4] != b"\xfe\xff\x00\xe0":
        raise ValueError("the frame is not the first fragment of an item")
    (length,) = struct.unpack_from("<I", data, item + 4)
    fragment = change(data[item + 8 : item + 8 + length])
    fragment += b"\x00" * (len(fragment) % 2)  # items have even length
    return data[: item + 4] + struct.pack("<I", len(fragment)) + fragment + data[item + 8 + length :]
