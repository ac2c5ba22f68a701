"""A FHIR R4 Bundle for one scored scan: a Device (the model), an Observation and a DiagnosticReport.

Plain dictionaries in FHIR's JSON shape, so the server needs no FHIR library at run time; the tests
parse every bundle with fhir.resources (its R4B models: R4B changed none of these four resources).
The Observation carries no subject: the service never learns who the patient is, and the
integration engine that sends the scan adds the reference it already holds (docs/pacs.md).
A DICOM input's Study Instance UID is named, so the result can be tied to its ImagingStudy.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from service.results.finding import PLEURAL_EFFUSION, SNOMED_URL, Finding, ModelIdentity

LOINC_URL = "http://loinc.org"
IMAGING_REPORT = ("18748-4", "Diagnostic imaging study")
INTERPRETATION_URL = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CATEGORY_URL = "http://terminology.hl7.org/CodeSystem/observation-category"
SECTION_URL = "http://terminology.hl7.org/CodeSystem/v2-0074"
DICOM_UID_SYSTEM = "urn:dicom:uid"
UCUM_URL = "http://unitsofmeasure.org"


def fhir_bundle(
    finding: Finding, model: ModelIdentity, *, issued: datetime, study_instance_uid: str | None = None
) -> dict[str, Any]:
    """A `collection` Bundle: the Device that scored the scan, the Observation it made, the report that holds it.

    Statuses are `preliminary`: a model's output awaiting a reader, never a signed result.
    """
    device_url, observation_url, report_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    when = issued.isoformat(timespec="seconds")
    effusion = _concept(SNOMED_URL, *PLEURAL_EFFUSION)
    interpretation = ("POS", "Positive") if finding.present else ("NEG", "Negative")
    summary = finding.summary(model)

    device = {
        "resourceType": "Device",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:sha256:{model.sha256}"}],
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "version": [{"value": model.version}],
        "note": [{"text": f"Decision threshold {model.threshold:g}; ONNX file sha256 {model.sha256}."}],
    }
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [_concept(CATEGORY_URL, "imaging", "Imaging")],
        "code": effusion,
        "issued": when,
        "valueQuantity": {"value": finding.probability, "unit": "probability", "system": UCUM_URL, "code": "1"},
        "interpretation": [_concept(INTERPRETATION_URL, *interpretation)],
        "referenceRange": [{"high": {"value": model.threshold, "system": UCUM_URL, "code": "1"}, "text": "threshold"}],
        "method": {"text": f"{model.name} {model.version} (sha256 {model.sha256})"},
        "device": {"reference": device_url, "display": f"{model.name} {model.version}"},
        "note": [{"text": summary}],
    }
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [_concept(SECTION_URL, "RAD", "Radiology")],
        "code": _concept(LOINC_URL, *IMAGING_REPORT),
        "issued": when,
        "result": [{"reference": observation_url}],
        "conclusion": summary,
    }
    if finding.present:
        report["conclusionCode"] = [effusion]
    if study_instance_uid is not None:
        study = {"type": "ImagingStudy", "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_instance_uid}"}}
        observation["derivedFrom"] = [study]
        report["imagingStudy"] = [study]
    entries = [(device_url, device), (observation_url, observation), (report_url, report)]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}
