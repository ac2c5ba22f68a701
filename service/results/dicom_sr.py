"""A DICOM Comprehensive SR for one scored radiograph, built with highdicom (TID 1500 Measurement Report).

One measurement group (TID 1501) holds the finding: pleural effusion as a qualitative evaluation
(present or absent at the model's threshold) and its probability as a measurement, both naming
the algorithm (TID 4019: model name, version; sha256 and threshold as its parameters) and the
source image (its SOP Class and Instance UIDs). highdicom copies the patient and study modules
from the source and records it as evidence (Study, Series and SOP Instance UIDs). The document is
neither final nor verified: it is a model's output awaiting a reader.
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from service.results.finding import (
    ABSENT,
    CHEST_RADIOGRAPH,
    PLEURAL_EFFUSION,
    PRESENT,
    PRIVATE_SCHEME,
    PROBABILITY,
    SNOMED,
    Finding,
    ModelIdentity,
)

MANUFACTURER = "cxr-effusion"
SR_SERIES_NUMBER = 9901  # high, so the derived series sort after the acquisition's own
NO_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")


def structured_report(source: Dataset, finding: Finding, model: ModelIdentity, *, created: datetime) -> Dataset:
    """The SR (a pydicom Dataset, new Series and SOP Instance UIDs) of `finding` on the image `source`."""
    effusion = hd.sr.CodedConcept(*_code(PLEURAL_EFFUSION))
    algorithm = algorithm_identification(model)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="pleural effusion"),
        finding_type=effusion,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        measurements=[
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(PROBABILITY[0], PRIVATE_SCHEME, PROBABILITY[1]),
                value=finding.probability,
                unit=NO_UNIT,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=effusion, value=hd.sr.CodedConcept(*_code(PRESENT if finding.present else ABSENT)))
        ],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(model), name=model.name, manufacturer_name=MANUFACTURER, model_name=model.version
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept(*_code(CHEST_RADIOGRAPH)),
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description(model),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        content_date=created.date(),
        content_time=created.time(),
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="cxr-effusion result concepts", responsible_organization=MANUFACTURER
            )
        ],
    )


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the model's name and version, and what else pins the result down (file hash, threshold)."""
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, parameters=[f"sha256={model.sha256}", f"threshold={model.threshold:g}"]
    )


def series_description(model: ModelIdentity) -> str:
    """How a reader (and `cxr-effusion dicomweb`) tells this model version's results from others'; at most 64 characters."""
    return f"AI {model.name} {model.version}"[:64]


def device_uid(model: ModelIdentity) -> str:
    """One UID per model file: the UUID-derived form (2.25.<integer>, PS3.5 B.2) of its sha256's first 128 bits."""
    return f"2.25.{int(model.sha256[:32], 16)}"


def _code(concept: tuple[str, str]) -> tuple[str, str, str]:
    value, meaning = concept
    return value, SNOMED, meaning
