"""The source DICOM's header, read once more after scoring, for the reports that must reference it.

Decoding (service/decode/dicom.py) already accepted the file, possibly in a worker process that
returns only the model tensor; the reports need the header's UIDs and the patient and study
modules, so the header is read here without its pixels. Its values are patient data: they go
into the DICOM objects built from it and nowhere else (never a log line or an error message).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from service.decode.dicom import parse, safe_uid
from service.errors import ErrorCode, ServiceError

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# The patient and study modules' type 2 attributes (present, possibly empty: PS3.3 C.7.1.1, C.7.2.1)
# that the reports copy. Images in the wild sometimes lack some; they are added empty, never invented.
COPIED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def read_source(data: bytes) -> Dataset:
    """The header of an accepted DICOM upload, without pixel data, with its copied type 2 attributes present;
    refused when a UID a report must reference is missing."""
    dataset = _header(data)
    for keyword in REQUIRED_UIDS:
        if _uid(dataset, keyword) is None:
            raise ServiceError(
                ErrorCode.UNSUPPORTED_IMAGE, f"the DICOM file has no valid {keyword}, which a DICOM report must reference"
            )
    for keyword in COPIED_TYPE2:
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    return dataset


def study_instance_uid(data: bytes) -> str | None:
    """The Study Instance UID of a DICOM upload when it is well formed (the FHIR bundle names it), else None."""
    return _uid(_header(data), "StudyInstanceUID")


def _uid(dataset: Dataset, keyword: str) -> str | None:
    try:
        return safe_uid(dataset.get(keyword))
    except Exception:  # an element with a hostile VR or value: as good as missing
        return None


def _header(data: bytes) -> Dataset:
    return parse(data, pixels=False)  # decoding read it already, with the same reader: this fails only if it did
