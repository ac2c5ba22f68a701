"""When the shared-inference supervisor replaces a crashed process, and when it gives up.

A process that dies once (a SIGKILL, an out-of-memory kill) is worth replacing at once. One that
dies every time it starts (a broken GPU, a full disk, a bad library) is not: replacing it in a
tight loop burns the host and floods the log while the service stays not ready. So each
replacement waits twice as long as the one before, and after `limit` crashes of one process within
`window_s` the supervisor stops the service with status 1, which hands the decision to whatever
restarts services on the host (systemd's or Kubernetes' own backoff), as `--workers` does at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 8.0


@dataclass
class RestartPolicy:
    """The crash history of one supervised process (one policy per process: a flapping frontend does not use up
    the inference process's allowance)."""

    limit: int
    window_s: float
    crashes: deque[float] = field(default_factory=deque)

    def delay_after_crash(self, now: float) -> float | None:
        """Record a crash at monotonic time `now`; the seconds to wait before replacing the process, or None when
        it has crashed more than `limit` times within `window_s` and should not be replaced."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] <= now - self.window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.limit:
            return None
        return min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (len(self.crashes) - 1))
