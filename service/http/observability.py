"""One middleware that gives each request its id, its metrics and its single log line.

The request id is the client's `X-Request-ID` when it is sane (so a gateway's id follows the
request through), else a fresh one; it is echoed in the response and stamped on every log
record written while the request runs. Probes and /metrics are logged at debug level only:
an orchestrator polling them would drown everything else.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.metrics import Metrics
from service.logs import request_id_var

logger = logging.getLogger("service.requests")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUIET_PATHS = frozenset({"/live", "/ready", "/metrics"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestObserver:
    """Request id, latency histogram, in-flight gauge, rejection counter and one JSON log line."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, known_paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        path = scope["path"]
        counted = path not in QUIET_PATHS
        status = 500  # what the client sees if the app raises before answering
        started = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        if counted:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            state.setdefault("error_code", "internal_error")
            raise
        finally:
            if counted:
                self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = self.route_label(scope)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            error_code = state.get("error_code")
            self.metrics.observe_request(method, route, status, seconds, error_code)
            logger.log(
                logging.DEBUG if path in QUIET_PATHS else logging.INFO,
                "%s %s %s",
                method,
                route,
                status,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000.0, 2),
                    "error_code": error_code,
                    "client": scope["client"][0] if scope.get("client") else None,
                },
            )
            request_id_var.reset(token)

    def route_label(self, scope: Scope) -> str:
        """The route template; a raw path only when it is one of ours, else 'unmatched'."""
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        return scope["path"] if scope["path"] in self.known_paths else "unmatched"
