"""Errors that reach a client, each with a stable machine-readable code.

Codes are part of the public API: clients branch on them, so they never change meaning.
The core raises `ServiceError` with an `ErrorCode` and knows nothing of HTTP; the status each
code answers with lives in the HTTP layer (service/http/errors.py), the only place that maps them.
Adding an error is one member here plus its status there.
"""

from __future__ import annotations

from enum import StrEnum
from functools import partial


class ErrorCode(StrEnum):
    """Every code a client can receive (a StrEnum: members compare equal to their text)."""

    CLIENT_DISCONNECTED = "client_disconnected"  # never seen by the client; keeps aborted uploads out of 5xx alerts
    BAD_REQUEST = "bad_request"  # not valid HTTP/1.1 (service/http/limits.py)
    MISSING_HOST = "missing_host"  # HTTP/1.1 without exactly one Host header (RFC 9112)
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"  # the request head did not arrive in time
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_ACCEPTABLE = "not_acceptable"  # a result format the input cannot have (DICOM objects of a PNG) or this install cannot make
    HEADERS_TOO_LARGE = "headers_too_large"  # request head over its size or header-count limit
    MISSING_FILE = "missing_file"
    EMPTY_FILE = "empty_file"
    UNDECODABLE_IMAGE = "undecodable_image"
    BLANK_IMAGE = "blank_image"
    IMAGE_TOO_SMALL = "image_too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    MULTI_FRAME = "multi_frame"
    UNSUPPORTED_IMAGE = "unsupported_image"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    INVALID_REQUEST = "invalid_request"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"


class ServiceError(Exception):
    """A failure with a client-facing code; the message must never contain patient data.

    `retry_after` (seconds) marks a transient refusal: the caller may try again after it.
    """

    def __init__(self, code: ErrorCode, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)  # a string that is no code fails here, at the raise
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle by code and message, so decode worker processes can raise it across the pool."""
        return (partial(ServiceError, retry_after=self.retry_after), (self.code, self.message))
