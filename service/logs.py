"""Structured logs: one JSON object per line, each carrying the id of the request it belongs to.

What may be logged is decided here and in the request observer: request id, method, route
template, status, duration, error code and client address. Never file names, pixel data,
DICOM attributes or request bodies: the code that sees those does not log.
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
Result = TypeVar("Result")

# Fields a log call may attach with `extra={...}`; anything else stays out of the line.
EXTRA_FIELDS = ("method", "route", "status", "duration_ms", "error_code", "client")


class RequestIdFilter(logging.Filter):
    """Stamp every record with the current request's id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class ClientInputFilter(logging.Filter):
    """A parser's complaint about an uploaded file is the client's problem, not a server error:
    pydicom logs some malformed files at error level; they are logged as warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def in_request(request_id: str | None, function: Callable[..., Result], *args: object) -> Result:
    """Call `function` stamped with `request_id`: decode threads and worker processes do not
    inherit the event loop's context, so their log lines would carry no id."""
    token = request_id_var.set(request_id)
    try:
        return function(*args)
    finally:
        request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, then whichever request fields the record has."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for field in EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__  # the type only: messages may quote input
        return json.dumps(line, ensure_ascii=False)


def log_config(level: str = "info", log_format: str = "json") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn alike (uvicorn's `log_config`)."""
    text = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": text}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}, "client_input": {"()": ClientInputFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # uvicorn's own handlers are replaced by the root's; its access log is off (we log requests).
            "uvicorn": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level.upper(), "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
            "pydicom": {"handlers": [], "level": "ERROR", "filters": ["client_input"], "propagate": True},
        },
    }


def configure_logging(level: str = "info", log_format: str = "json") -> dict[str, Any]:
    """Apply `log_config` to this process (the server, or a decode worker process) and return it."""
    config = log_config(level, log_format)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # library warnings become log lines in the same format
    return config
