"""How many CPUs and how much memory this process may really use: a container's limits, not the host's.

ONNX Runtime and thread pools sized by `os.cpu_count()` oversubscribe a container that was
given 2 CPUs on a 64-core host, and latency collapses. We take the smallest of the CPU
affinity mask and the cgroup quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup CPU limit in CPUs (e.g. 1.5), or None when there is none or it cannot be read."""
    v2 = cgroup_root / "cpu.max"
    v1_quota = cgroup_root / "cpu" / "cpu.cfs_quota_us"
    v1_period = cgroup_root / "cpu" / "cpu.cfs_period_us"
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1_quota.exists() and v1_period.exists():
            quota_us = int(v1_quota.read_text())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return None


# cgroup v1 reports "no limit" as a page-rounded 2**63 - 1; anything this large is no limit.
UNLIMITED_BYTES = 1 << 60


def cgroup_memory_limit(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup memory limit in bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`), or None when there is none."""
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            return None
        return None if limit >= UNLIMITED_BYTES else limit
    return None
