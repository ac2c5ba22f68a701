"""The service's readiness, as /ready reports it: one status and, when not ready, why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["loading", "warming", "ready", "failed", "draining"]


@dataclass
class Readiness:
    """Only `ready` admits traffic; every other status carries a human-readable reason."""

    status: Status = "loading"
    reason: str | None = "the model is loading"

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def set(self, status: Status, reason: str | None = None) -> None:
        if self.status == "draining":
            return  # final: a warm-up finishing after SIGTERM must not re-open the service
        self.status = status
        self.reason = None if status == "ready" else reason
