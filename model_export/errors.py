"""Failures the user can fix (data, arguments, a refused export): the CLI prints them as one message."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of the errors the CLI reports without a traceback."""


class DataError(PipelineError):
    """The data cannot be used as asked; the message says what to fix."""


class ExportError(PipelineError):
    """The export was refused; nothing was written."""
