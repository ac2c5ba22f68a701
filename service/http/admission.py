"""Admission control: a bounded number of /predict requests in progress, refused before their body is read.

The micro-batcher's queue bounds work waiting for inference, but a request holds memory from
its first body byte: an upload being received, a scan being decoded. Without a bound, many
slow or concurrent uploads (a burst, or a slowloris client) hold up to `max_upload_bytes`
each until the process runs out of memory. Refusing at the door is also cheap: an overloaded
service stops spending CPU on decoding scans it will refuse anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableSequence
from contextlib import contextmanager

from service.errors import ErrorCode, ServiceError


class Admission:
    """Counts requests in progress; used from the event loop only, so no lock is needed.

    Under the shared inference process (`CXR_INFERENCE=shared`) the bound is the host's: `counts`
    is a shared array with one cell per frontend, each written only by its own frontend (and
    zeroed by the supervisor when that frontend dies, so a killed one leaks no slots), and every
    frontend compares the sum. Without a lock two frontends may both take the last slot at the same
    instant, so the host's bound can be passed by at most one request per other frontend.
    """

    def __init__(self, limit: int, counts: MutableSequence[int] | None = None, index: int = 0) -> None:
        self.limit = limit
        self._counts = counts if counts is not None else [0]
        self._index = index

    @property
    def active(self) -> int:
        """Requests in progress on this host (this process alone, unless the counts are shared)."""
        return sum(self._counts)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of `limit` slots for the duration of a request, or raise `overloaded`."""
        if self.active >= self.limit:
            raise ServiceError(ErrorCode.OVERLOADED, f"{self.limit} requests are already in progress; retry shortly", retry_after=1)
        self._counts[self._index] += 1
        try:
            yield
        finally:
            self._counts[self._index] -= 1
