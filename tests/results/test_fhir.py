"""The FHIR bundle of service/results/fhir.py, parsed by a maintained FHIR library (fhir.resources, R4B models:
R4B left Bundle, Device, Observation and DiagnosticReport as R4 defined them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from service.results.fhir import fhir_bundle
from service.results.finding import Finding, ModelIdentity
from tests.conftest import require_module

MODEL = ModelIdentity("cxr-effusion-resnet18", "2.1.0", "0123456789abcdef" * 4, 0.42)
ISSUED = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


def parse(bundle: dict) -> object:
    """The bundle as fhir.resources models; raises on anything R4 does not allow."""
    require_module("fhir.resources")
    from fhir.resources.R4B.bundle import Bundle

    return Bundle.model_validate(bundle)


def test_a_present_finding_is_a_valid_bundle_naming_the_model_and_the_study() -> None:
    bundle = parse(fhir_bundle(Finding(0.8125, True), MODEL, issued=ISSUED, study_instance_uid="1.2.840.99.7"))
    device, observation, report = (entry.resource for entry in bundle.entry)
    assert bundle.type == "collection"
    assert [type(resource).__name__ for resource in (device, observation, report)] == ["Device", "Observation", "DiagnosticReport"]

    coding = observation.code.coding[0]
    assert (coding.system, coding.code) == ("http://snomed.info/sct", "60046008")  # Pleural effusion (disorder)
    assert float(observation.valueQuantity.value) == 0.8125  # FHIR decimals parse as Decimal
    assert observation.interpretation[0].coding[0].code == "POS"
    assert float(observation.referenceRange[0].high.value) == 0.42
    assert observation.status == report.status == "preliminary"
    for text in (MODEL.name, MODEL.version, MODEL.sha256):
        assert text in observation.method.text
    assert observation.device.reference == bundle.entry[0].fullUrl  # the Device entry names the file
    assert device.deviceName[0].name == MODEL.name and device.version[0].value == MODEL.version
    assert device.identifier[0].value == f"urn:sha256:{MODEL.sha256}"

    assert report.result[0].reference == bundle.entry[1].fullUrl
    assert report.conclusionCode[0].coding[0].code == "60046008"
    assert observation.derivedFrom[0].identifier.value == report.imagingStudy[0].identifier.value == "urn:oid:1.2.840.99.7"
    assert observation.subject is None  # the service never learns who the patient is


def test_an_absent_finding_is_negative_and_names_no_study_without_dicom() -> None:
    raw = fhir_bundle(Finding(0.125, False), MODEL, issued=ISSUED)
    bundle = parse(raw)
    observation, report = bundle.entry[1].resource, bundle.entry[2].resource
    assert observation.interpretation[0].coding[0].code == "NEG"
    assert report.conclusionCode is None and observation.derivedFrom is None
    assert "absent" in report.conclusion and "0.125" in report.conclusion


def test_the_validator_refuses_what_r4_forbids() -> None:
    """The check above can fail: an Observation without its required status is refused."""
    raw = fhir_bundle(Finding(0.5, True), MODEL, issued=ISSUED)
    broken = copy.deepcopy(raw)
    del broken["entry"][1]["resource"]["status"]
    with pytest.raises(ValueError):
        parse(broken)
