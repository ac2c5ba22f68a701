"""Errors that reach a client, each with a stable machine-readable code.

Codes are part of the public API: clients branch on them, so they never change meaning.
The HTTP status lives here too, so the core can raise without knowing about HTTP.
"""

from __future__ import annotations

from functools import partial

# Every code a client can receive; the framework's other HTTP errors answer `http_error` with their own status.
STATUS_BY_CODE: dict[str, int] = {
    "client_disconnected": 400,  # never seen by the client; keeps aborted uploads out of 5xx alerts
    "bad_request": 400,  # not valid HTTP/1.1 (service/limits.py)
    "missing_host": 400,  # HTTP/1.1 without exactly one Host header
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,  # the request head did not arrive in time
    "payload_too_large": 413,
    "too_many_pixels": 413,
    "unsupported_media_type": 415,
    "headers_too_large": 431,
    "missing_file": 422,
    "empty_file": 422,
    "undecodable_image": 422,
    "blank_image": 422,
    "image_too_small": 422,
    "bad_aspect_ratio": 422,
    "multi_frame": 422,
    "unsupported_image": 422,
    "unsupported_modality": 422,
    "invalid_request": 422,
    "overloaded": 503,
    "not_ready": 503,
    "internal_error": 500,
}


class ServiceError(Exception):
    """A failure with a client-facing code; the message must never contain patient data."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle by code and message, so decode worker processes can raise it across the pool."""
        return (partial(ServiceError, retry_after=self.retry_after), (self.code, self.message))

    @property
    def status_code(self) -> int:
        return STATUS_BY_CODE[self.code]


def error_body(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    """The one error body shape every route and middleware returns."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}
