"""DICOM bytes -> one 2-D grayscale array with bone bright, as in the PNG exports we train on.

Order of operations follows PS3.4 (grayscale pipeline): stored values -> Modality LUT
(rescale slope/intercept) -> VOI LUT or window -> MONOCHROME1 inverted. Only single-frame
grayscale projection radiographs are accepted. Nothing here reads or returns patient
identifiers: the SOP Instance UID is the only identifier a response may echo.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from service.errors import ServiceError
from service.imaging import DecodedImage

# Projection X-ray modalities: computed/digital radiography and their "for presentation"
# secondary captures. CT, MR, US, etc. are refused: the model has never seen them.
XRAY_MODALITIES = {"CR", "DX", "DR", "RG", "OT"}


def decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Read the header first (size, frames, modality), then decode pixels only if all is well."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as error:  # pydicom raises a wide variety of errors on hostile input
        raise ServiceError("undecodable_image", "the DICOM file could not be parsed") from error

    if "PixelData" not in dataset:
        raise ServiceError("undecodable_image", "the DICOM file has no pixel data")
    modality = str(dataset.get("Modality", "")).upper()
    if modality and modality not in XRAY_MODALITIES:
        raise ServiceError(
            "unsupported_image", f"modality {modality} is not a projection radiograph (CR/DX expected)"
        )
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1))
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except (AttributeError, TypeError, ValueError) as error:
        raise ServiceError("undecodable_image", "the DICOM header lacks valid image dimensions") from error

    if rows * columns > max_pixels:
        raise ServiceError(
            "too_many_pixels", f"image declares {columns}x{rows} pixels; the limit is {max_pixels} pixels"
        )
    if frames > 1:
        raise ServiceError("multi_frame", f"the DICOM file has {frames} frames; send a single frame")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ServiceError(
            "unsupported_image", f"only grayscale DICOM is accepted, got {photometric} with {samples} samples"
        )

    try:
        stored = dataset.pixel_array
        values = apply_modality_lut(stored, dataset)
        values = apply_voi_lut(values, dataset)
    except Exception as error:  # missing codec plugin, truncated pixel data, bad LUT
        raise ServiceError("undecodable_image", "the DICOM pixel data could not be decoded") from error
    if values.ndim != 2:
        raise ServiceError("unsupported_image", f"expected one 2-D frame, got shape {values.shape}")

    values = np.asarray(values, dtype=np.float64)
    if photometric == "MONOCHROME1":
        # Minimum is white: reflect about the range so bone is bright, as in the PNG exports.
        values = values.max() + values.min() - values

    uid = dataset.get("SOPInstanceUID")
    return DecodedImage(
        pixels=values,
        format="dicom",
        mode=photometric,
        converted=False,
        sop_instance_uid=str(uid) if uid else None,
    )
