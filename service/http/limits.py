"""HTTP/1.1 limits uvicorn lacks, enforced in its fast httptools protocol before the app runs.

- The request head: a size limit and a header count limit (431 `headers_too_large`), checked
  on the raw bytes before httptools sees them, because httptools grows a header value by
  concatenation (a 64 MiB header took seconds of event loop); and a deadline (408
  `request_timeout`), so a client that connects and never finishes its head is closed.
- The body: after an allowance of `head_timeout_s`, it must keep arriving at `min_body_rate`
  bytes per second on average, else the connection is closed. The app's upload reader then
  sees a disconnect, the request ends, and its admission slot is free again: a stalled upload
  never holds a slot for long.
- HTTP/1.1 without exactly one Host header: 400 `missing_host` (RFC 9112, section 3.2).
- A malformed request pipelined behind a valid one: the valid one is answered first, then
  the 400, then the connection closes (uvicorn closed at once and lost the valid answer).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import ErrorCode
from service.http.errors import STATUS_BY_CODE, error_body
from service.settings import Settings

LINGER_S = 2.0  # after a refusal, input is read and dropped this long, so the client can read the answer


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int
    max_headers: int
    head_timeout_s: float
    min_body_rate: int  # bytes per second, averaged from the end of the head plus head_timeout_s


class Refused(Exception):
    """Stops httptools inside a callback; uvicorn then calls `send_400_response`, which answers `code`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `protocol_class` binds the settings."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = True
        self.head_bytes = 0
        self.header_count = 0
        self.refusal: Refused | None = None
        self.deferred: Refused | None = None  # answered once the requests before it are
        self.head_timer: Any = None
        self.body_timer: Any = None
        self.body_started = 0.0
        self.body_bytes = 0
        self.lingering = False

    # --- the head: size, count, deadline, Host -------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self.head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        # Only `max_head_bytes` of a head reach the parser; the rest of a chunk follows once the
        # head is complete. A head that starts mid-chunk may overshoot by at most one read.
        while data and self.deferred is None and not self.transport.is_closing():
            if not self.in_head:
                super().data_received(data)
                return
            budget = self.limits.max_head_bytes - self.head_bytes
            if budget <= 0:
                self.refuse(Refused(ErrorCode.HEADERS_TOO_LARGE, f"the request head exceeds {self.limits.max_head_bytes} bytes"))
                return
            piece, data = data[:budget], data[budget:]
            self.head_bytes += len(piece)
            super().data_received(piece)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.head_bytes, self.header_count = True, 0, 0
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self.head_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            raise self.refused(Refused(ErrorCode.HEADERS_TOO_LARGE, f"more than {self.limits.max_headers} header fields"))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.parser.get_http_version() == "1.1" and sum(name == b"host" for name, _ in self.headers) != 1:
            raise self.refused(Refused(ErrorCode.MISSING_HOST, "an HTTP/1.1 request needs exactly one Host header"))
        self.in_head = False
        self.cancel(self.head_timer)
        self.head_timer = None
        self.body_started, self.body_bytes = time.monotonic(), 0
        self.body_timer = self.loop.call_later(self.limits.head_timeout_s, self.check_body_rate)
        super().on_headers_complete()

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.in_head and not self.transport.is_closing():
            self.refuse(Refused(ErrorCode.REQUEST_TIMEOUT, f"the request head did not arrive within {self.limits.head_timeout_s} s"))

    # --- the body: a minimum average rate --------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.cancel(self.body_timer)
        self.body_timer = None
        super().on_message_complete()

    def check_body_rate(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or self.cycle is None or self.cycle.response_complete:
            return  # answered already (e.g. 503 before reading): the rest of the body is not waited for
        if self.flow.read_paused:  # the app is not reading: not the client's fault, so no time runs
            self.body_started += 1.0
            self.body_timer = self.loop.call_later(1.0, self.check_body_rate)
            return
        deadline = self.body_started + self.limits.head_timeout_s + self.body_bytes / self.limits.min_body_rate
        if time.monotonic() < deadline:
            self.body_timer = self.loop.call_later(deadline - time.monotonic(), self.check_body_rate)
            return
        self.logger.info("Closing a connection whose request body arrives below %d bytes/s.", self.limits.min_body_rate)
        self.transport.close()  # the app's receive() sees http.disconnect: the upload ends, its slot frees

    # --- refusals ------------------------------------------------------------------------

    def refused(self, refusal: Refused) -> Refused:
        self.refusal = refusal
        return refusal

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; ours says which limit, in the service's error shape."""
        refusal, self.refusal = self.refusal, None
        self.refuse(refusal or Refused(ErrorCode.BAD_REQUEST, "the request is not valid HTTP/1.1"))

    def refuse(self, refusal: Refused) -> None:
        """Answer `refusal` and close; after the requests already running, if any."""
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            self.deferred = refusal
            self.flow.pause_reading()
            return
        self.cancel_timers()
        status = STATUS_BY_CODE[refusal.code]
        body = json.dumps(error_body(refusal.code, refusal.message, uuid.uuid4().hex)).encode()
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(STATUS_LINE[status] + head + body)
        # Closing with unread input would make the kernel reset the connection and discard the
        # answer before the client reads it: stop sending, drop input for a moment, then close.
        self.lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def on_response_complete(self) -> None:
        if self.deferred is not None and not self.pipeline and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self.refuse(self.deferred)
            return
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer):
            self.cancel(timer)
        self.head_timer = self.body_timer = None

    @staticmethod
    def cancel(timer: Any) -> None:
        if timer is not None:
            timer.cancel()


def limited_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """uvicorn's `http=` protocol for the settings' limits; built in each process (a class made at run time does not pickle)."""
    return protocol_class(HttpLimits(settings.max_head_bytes, settings.max_headers, settings.head_timeout_s, settings.min_body_rate))


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection (`uvicorn.Config(http=...)`), bound to `limits`."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
