"""Graceful shutdown: say "draining" first, keep listening briefly, then let uvicorn drain.

uvicorn on SIGTERM closes its listening socket at once, lets in-flight requests finish
(bounded by `timeout_graceful_shutdown`), runs the lifespan shutdown, and re-raises the
signal, so the process ends with the SIGTERM status. A load balancer that only polls /ready
would never see a 503: the port is simply gone, and requests it still routes here fail to
connect. So on the first SIGTERM this server
  1. marks the service draining at once (/ready 503, new /predict 503 `not_ready`),
  2. keeps accepting and answering for `drain_delay_s` while the balancer catches up,
  3. then hands over to uvicorn's own shutdown, which finishes the in-flight requests.
SIGINT (Ctrl-C at a terminal) and a second signal skip the delay.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

logger = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM starts draining before the listener closes."""

    def __init__(self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_delay_s: float) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.drain_delay_s = drain_delay_s
        self.draining = False
        self._exit_at: float | None = None  # when the delayed SIGTERM reaches uvicorn

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.draining:
            self.draining = True
            self.on_drain()
            if sig == signal.SIGTERM and self.drain_delay_s > 0:
                logger.info("SIGTERM: draining; /ready answers 503, the listener closes in %.1f s", self.drain_delay_s)
                self._exit_at = time.monotonic() + self.drain_delay_s
                return
        self._exit_at = None
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        # uvicorn's main loop ticks every 0.1 s; the delayed exit starts on the first tick past it.
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self._exit_at = None
            super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)
