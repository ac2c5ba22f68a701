"""What the benchmarks share: paths, the service's decode limit, real NIH scans, a server process.

Benchmarks import this, the service and testkit; never the tests, and never each other's entry points.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from service.settings import DEFAULT_MAX_PIXELS

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "benchmarks" / ".cache"
MAX_PIXELS = DEFAULT_MAX_PIXELS  # the service's own decode limit
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "nih-train"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def nih_scans(root: Path, count: int) -> list[bytes]:
    """Real 1024x1024 8-bit NIH PNGs (the common case the targets are stated for)."""
    scans = []
    for path in sorted(root.glob("*/*.png")):
        with Image.open(path) as image:
            if image.mode == "L" and image.size == (1024, 1024):
                scans.append(path.read_bytes())
        if len(scans) == count:
            break
    return scans


def answers(url: str) -> bool:
    """True when anything answers HTTP at `url`, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class Server:
    """A server process started for one benchmark, stopped afterwards."""

    def __init__(self, command: list[str], env: dict[str, str], ready_url: str, cwd: Path = REPO_ROOT) -> None:
        self.command, self.env, self.ready_url, self.cwd = command, env, ready_url, cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()

    def __enter__(self) -> Server:
        if answers(self.ready_url):  # a stale server would be measured in place of this one
            raise RuntimeError(f"something already answers at {self.ready_url}: stop it first")
        self.process = subprocess.Popen(self.command, env={**os.environ, **self.env}, cwd=self.cwd, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.log.seek(0)
        tail = self.log.read().decode(errors="replace")[-3000:]
        self.__exit__()  # never leave it (or its uvicorn workers) running behind the error
        raise RuntimeError(f"{self.command[:3]} did not become ready:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
