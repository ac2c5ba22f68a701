"""Admission control: a bounded number of /predict requests in progress, refused before their body is read.

The micro-batcher's queue bounds work waiting for inference, but a request holds memory from
its first body byte: an upload being received, a scan being decoded. Without a bound, many
slow or concurrent uploads (a burst, or a slowloris client) hold up to `max_upload_bytes`
each until the process runs out of memory. Refusing at the door is also cheap: an overloaded
service stops spending CPU on decoding scans it will refuse anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import ErrorCode, ServiceError


class Admission:
    """Counts requests in progress; used from the event loop only, so no lock is needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of `limit` slots for the duration of a request, or raise `overloaded`."""
        if self.active >= self.limit:
            raise ServiceError(ErrorCode.OVERLOADED, f"{self.limit} requests are already in progress; retry shortly", retry_after=1)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
