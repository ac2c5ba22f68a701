"""`/predict`'s other answers: the FHIR bundle and the DICOM objects, built by the core
(service/results/), serialised here. The JSON answer stays in app.py, unchanged.

Building reads the DICOM header again and runs highdicom: CPU work of a few milliseconds, done
on a worker thread so the event loop keeps parsing requests. Nothing built here is logged: the
DICOM objects carry the patient and study modules of the source.
"""

from __future__ import annotations

import importlib.util
import io
import json
import uuid
from datetime import UTC, datetime

import anyio
from fastapi.responses import Response
from pydicom.dataset import Dataset

from service.decode.formats import SNIFF_BYTES, sniff
from service.errors import ErrorCode, ServiceError
from service.http.negotiation import DICOM_MEDIA_TYPE, FHIR_MEDIA_TYPE, MULTIPART_MEDIA_TYPE
from service.model import Model
from service.predictor import Prediction
from service.results import source
from service.results.fhir import fhir_bundle
from service.results.finding import Finding, ModelIdentity

DICOM_RESULTS = importlib.util.find_spec("highdicom") is not None  # the `reports` extra; known once, not per request


def check_dicom_result_possible(data: bytes) -> None:
    """Refuse before scoring what cannot have a DICOM result: a PNG or JPEG upload, or an install without highdicom."""
    detected = sniff(data[:SNIFF_BYTES])
    if detected is not None and detected.name != "dicom":
        raise ServiceError(
            ErrorCode.NOT_ACCEPTABLE,
            f"a DICOM result needs a DICOM input to reference; this upload is {detected.name.upper()} "
            "(ask for application/json or application/fhir+json instead)",
        )
    if not DICOM_RESULTS:
        raise ServiceError(
            ErrorCode.NOT_ACCEPTABLE, "this installation cannot write DICOM results (install the cxr-effusion[reports] extra)"
        )


async def fhir_response(data: bytes, prediction: Prediction, model: Model) -> Response:
    """The FHIR R4 Bundle, as `application/fhir+json`."""
    study = await anyio.to_thread.run_sync(source.study_instance_uid, data) if prediction.image.format == "dicom" else None
    bundle = fhir_bundle(_finding(prediction, model), model_identity(model), issued=datetime.now(UTC), study_instance_uid=study)
    return Response(json.dumps(bundle).encode(), media_type=FHIR_MEDIA_TYPE)


async def dicom_response(data: bytes, prediction: Prediction, model: Model, *, heatmap: bool) -> Response:
    """The Structured Report as `application/dicom`; with `heatmap`, `multipart/related` holding the SR and, when the
    model draws one, the heatmap's Secondary Capture (the packaging STOW-RS takes as it is)."""
    parts = await anyio.to_thread.run_sync(_dicom_objects, data, prediction, model)
    if not heatmap:
        return Response(parts[0], media_type=DICOM_MEDIA_TYPE)
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode() + part + b"\r\n" for part in parts)
    body += f"--{boundary}--\r\n".encode()
    return Response(body, media_type=f'{MULTIPART_MEDIA_TYPE}; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}')


def model_identity(model: Model) -> ModelIdentity:
    contract = model.contract
    return ModelIdentity(contract.model_name, contract.model_version, model.sha256, contract.threshold)


def _dicom_objects(data: bytes, prediction: Prediction, model: Model) -> list[bytes]:
    from service.results.dicom_sc import heatmap_capture  # highdicom: the `reports` extra, checked before scoring
    from service.results.dicom_sr import structured_report

    header = source.read_source(data)
    identity, created = model_identity(model), datetime.now()
    try:  # highdicom validates the copied modules: real headers carry values it refuses (PatientSex "male", bad dates)
        objects = [structured_report(header, _finding(prediction, model), identity, created=created)]
        if prediction.heatmap is not None:
            objects.append(heatmap_capture(header, prediction.heatmap.overlay_png, identity, created=created))
    except (ValueError, TypeError, AttributeError):
        raise ServiceError(  # the value itself stays out of the message: it may be patient data
            ErrorCode.NOT_ACCEPTABLE,
            "this DICOM header has values a DICOM report cannot carry (ask for application/json or application/fhir+json instead)",
        ) from None
    return [_part10(dataset) for dataset in objects]


def _finding(prediction: Prediction, model: Model) -> Finding:
    """Present exactly when the JSON answer's label is the positive class, so every format agrees."""
    return Finding(prediction.probability, prediction.label == model.contract.class_names[1])


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
