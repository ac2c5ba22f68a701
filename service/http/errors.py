"""Error codes as HTTP answers: each code's status, the one error body shape, and the app's handlers.

This is the only place that knows which status a core `ErrorCode` answers with.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ErrorCode, ServiceError

logger = logging.getLogger("service")

# Every code a client can receive; the framework's other HTTP errors answer `http_error` with their own status.
STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.CLIENT_DISCONNECTED: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.MISSING_HOST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_PIXELS: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_ACCEPTABLE: 406,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.MISSING_FILE: 422,
    ErrorCode.EMPTY_FILE: 422,
    ErrorCode.UNDECODABLE_IMAGE: 422,
    ErrorCode.BLANK_IMAGE: 422,
    ErrorCode.IMAGE_TOO_SMALL: 422,
    ErrorCode.BAD_ASPECT_RATIO: 422,
    ErrorCode.MULTI_FRAME: 422,
    ErrorCode.UNSUPPORTED_IMAGE: 422,
    ErrorCode.UNSUPPORTED_MODALITY: 422,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}


def status_of(code: ErrorCode) -> int:
    """The HTTP status a core error code answers with."""
    return STATUS_BY_CODE[code]


def error_body(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    """The one error body shape every route and middleware returns."""
    return {"error": {"code": str(code), "message": message, "request_id": request_id}}


def error_response(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body shape: {"error": {"code", "message", "request_id"}}; the code is kept for metrics and logs."""
    request.state.error_code = str(code)
    body = error_body(code, message, getattr(request.state, "request_id", ""))
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every failure, the core's and the framework's, answers with the one error body."""

    async def service_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ServiceError)
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        return error_response(request, status_of(error.code), error.code, error.message, headers)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, 422, ErrorCode.INVALID_REQUEST, "the request is malformed")

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}.get(error.status_code, "http_error")
        return error_response(request, error.status_code, code, str(error.detail), getattr(error, "headers", None))

    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # Starlette answers a 500 from its outermost middleware, outside the one that adds the header.
        logger.error("unhandled %s on %s", type(error).__name__, request.url.path)
        request_id = {"X-Request-ID": getattr(request.state, "request_id", "")}
        return error_response(request, 500, ErrorCode.INTERNAL_ERROR, "an unexpected error occurred", request_id)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
