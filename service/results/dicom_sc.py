"""A DICOM Secondary Capture of the heatmap overlay, in the source's study, built with highdicom.

The picture is the model's own view of the scan (padded to square and resized to 256x256, as
preprocessing feeds it to the network) with the class-activation heat drawn on it
(service/heatmap.py), in RGB. It references the source image (Source Image Sequence) and copies
its patient and study modules, so a viewer files it next to the radiograph it explains.
"""

from __future__ import annotations

import io
from datetime import datetime

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.results.dicom_sr import MANUFACTURER, series_description
from service.results.finding import ModelIdentity

SC_SERIES_NUMBER = 9902
# A frontal chest radiograph as it is read (PS3.3 C.7.6.1.1.1): columns run to the patient's left,
# rows to the feet. Used when the source states no orientation; the overlay never flips the scan.
DISPLAY_ORIENTATION = ("L", "F")


def heatmap_capture(source: Dataset, overlay_png: bytes, model: ModelIdentity, *, created: datetime) -> Dataset:
    """The Secondary Capture (a pydicom Dataset, new Series and SOP Instance UIDs) of the PNG overlay for `source`."""
    pixels = np.asarray(Image.open(io.BytesIO(overlay_png)).convert("RGB"))
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        series_description=f"{series_description(model)} heatmap"[:64],
        manufacturer_model_name=model.name,
        software_versions=model.version,
        content_date=created.date(),
        content_time=created.time(),
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.DerivationDescription = (
        f"Class-activation heatmap of {model.name} {model.version} over the model's 256x256 input; not for diagnosis"
    )[:1024]
    capture.BurnedInAnnotation = "NO"
    return capture


def _orientation(source: Dataset) -> tuple[str, str]:
    try:
        value = [str(item) for item in source.get("PatientOrientation") or []]
    except Exception:  # a malformed element: as good as none
        value = []
    return (value[0], value[1]) if len(value) == 2 and all(value) else DISPLAY_ORIENTATION
