"""Which result format a `/predict` request asks for, from its Accept header (RFC 9110 12.5.1).

JSON is the default and wins every tie: a missing header, `*/*`, a browser's `text/html,...` or
any range naming none of the other formats gets the JSON answer, exactly as before these formats
existed. The others are chosen only when named: a FHIR bundle (`application/fhir+json`) or DICOM
objects (`application/dicom`, or `multipart/related; type="application/dicom"`, the form that can
carry the heatmap's Secondary Capture beside the Structured Report).
"""

from __future__ import annotations

from enum import StrEnum

FHIR_MEDIA_TYPE = "application/fhir+json"
DICOM_MEDIA_TYPE = "application/dicom"
MULTIPART_MEDIA_TYPE = "multipart/related"


class ResultFormat(StrEnum):
    JSON = "json"
    FHIR = "fhir"
    DICOM = "dicom"


def result_format(accept: str | None) -> ResultFormat:
    """The format with the highest quality value the header gives a media type of its own; JSON on a tie or by default."""
    best, best_q = ResultFormat.JSON, 0.0
    json_q = 0.0
    for media_type, params, q in _ranges(accept or ""):
        if media_type in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, q)
        elif media_type == FHIR_MEDIA_TYPE and q > best_q:
            best, best_q = ResultFormat.FHIR, q
        elif (
            media_type == DICOM_MEDIA_TYPE
            or (media_type == MULTIPART_MEDIA_TYPE and params.get("type", DICOM_MEDIA_TYPE) == DICOM_MEDIA_TYPE)
        ) and q > best_q:
            best, best_q = ResultFormat.DICOM, q
    return best if best_q > json_q else ResultFormat.JSON


def _ranges(accept: str) -> list[tuple[str, dict[str, str], float]]:
    """(media type, parameters, q) of each media range; malformed ranges and q values are skipped."""
    ranges = []
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        params = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            params[name.strip().lower()] = value.strip().strip('"').lower()
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        if media_type and 0.0 < q <= 1.0:
            ranges.append((media_type.lower(), params, q))
    return ranges
