"""Soak test: thousands of mixed good and hostile requests against a real server process.

Passes when no request gets a 5xx or a broken connection, every answer carries the code its
input deserves, and the server's resident memory grows by less than `--max-growth-mb` between
the end of warm-up and the end of the run (a leak per request shows up as steady growth).

    python -m benchmarks.soak --requests 10000                      # the documented long run
    python -m benchmarks.soak --requests 500 --model models/x.onnx  # any model; default: a test model

A 500-request variant runs in CI (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from testkit.dicom_factory import dicom_bytes, rle_bytes
from testkit.hostile_inputs import (
    animated_png,
    corrupt_png,
    jpeg_declaring,
    png_declaring,
    scan,
    sixteen_bit_png,
    truncated_jpeg,
)
from testkit.images import encode, png_bytes
from testkit.live_server import LiveServer, running_service
from testkit.model_factory import build_model

MAX_UPLOAD_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One kind of request: its body, how it is sent, and the (status, error code) it must get."""

    name: str
    body: bytes
    expected: tuple[int, str | None]
    multipart: bool = True


def corpus() -> list[Sample]:
    """Good scans in every accepted format, and one of each hostile input class."""
    gray = scan(640, 512)
    deep = (scan(512, 512).astype(np.uint16) * 16).astype(np.uint16)
    ok = (200, None)
    return [
        Sample("png", png_bytes(gray), ok),
        Sample("png-raw", png_bytes(gray), ok, multipart=False),
        Sample("png-16bit", sixteen_bit_png(), ok),
        Sample("jpeg", encode(Image.fromarray(gray), "JPEG", quality=90), ok),
        Sample("dicom-monochrome2", dicom_bytes(deep, bits_stored=12), ok, multipart=False),
        Sample("dicom-monochrome1", dicom_bytes(4095 - deep, bits_stored=12, photometric="MONOCHROME1"), ok),
        Sample("dicom-rle", rle_bytes(deep, bits_stored=12), ok, multipart=False),
        Sample("empty", b"", (422, "empty_file")),
        Sample("text", b"not an image at all", (415, "unsupported_media_type")),
        Sample("truncated-jpeg", truncated_jpeg(), (422, "undecodable_image")),
        Sample("corrupt-png", corrupt_png(), (422, "undecodable_image")),
        Sample("png-bomb", png_declaring(100_000, 100_000), (413, "too_many_pixels")),
        Sample("jpeg-bomb", jpeg_declaring(60_000, 60_000), (413, "too_many_pixels")),
        Sample("tiny", png_bytes(scan(1, 1)), (422, "image_too_small")),
        Sample("aspect", png_bytes(scan(256, 1024)), (422, "bad_aspect_ratio")),
        Sample("animated", animated_png(), (422, "multi_frame")),
        Sample("dicom-ct", dicom_bytes(deep, modality="CT"), (422, "unsupported_modality"), multipart=False),
        Sample("dicom-truncated", dicom_bytes(deep)[:-4096], (422, "undecodable_image"), multipart=False),
        Sample("too-large", bytes(MAX_UPLOAD_BYTES + 1), (413, "payload_too_large"), multipart=False),
    ]


def send(client: httpx.Client, sample: Sample) -> tuple[int, str | None]:
    if sample.multipart:
        response = client.post("/predict", files={"file": ("scan", sample.body, "application/octet-stream")})
    else:
        response = client.post("/predict", content=sample.body, headers={"Content-Type": "application/octet-stream"})
    code = None if response.status_code == 200 else response.json()["error"]["code"]
    return response.status_code, code


def soak(server: LiveServer, *, requests: int, concurrency: int, warm_up: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Send `requests` requests round-robin over the corpus; RSS is measured after `warm_up` of them."""
    samples = corpus()
    outcomes: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    server_errors: list[str] = []
    lock = threading.Lock()
    next_index = 0
    rss: dict[str, int] = {}

    def worker() -> None:
        nonlocal next_index
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while True:
                with lock:
                    index = next_index
                    next_index += 1
                if index >= requests:
                    return
                if index == warm_up:
                    rss["after_warm_up"] = server.rss_bytes()
                sample = samples[index % len(samples)]
                try:
                    got = send(client, sample)
                except httpx.TransportError as error:
                    got = (0, type(error).__name__)
                with lock:
                    outcomes[f"{got[0]} {got[1] or ''}".strip()] += 1
                    if got[0] >= 500 or got[0] == 0:
                        server_errors.append(f"{sample.name}: {got}")
                    elif got != sample.expected and got != (503, "overloaded"):
                        wrong[f"{sample.name}: {got}"] += 1
                if index and index % 1000 == 0:
                    log(f"{index} requests, RSS {server.rss_bytes() / 2**20:.1f} MiB")

    started = time.perf_counter()
    rss["start"] = server.rss_bytes()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - started
    rss["end"] = server.rss_bytes()
    growth_mb = (rss["end"] - rss["after_warm_up"]) / 2**20
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "requests_per_second": round(requests / seconds, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "server_errors": server_errors[:20],
        "server_error_count": len(server_errors),
        "unexpected_answers": dict(wrong),
        "rss_mib": {key: round(value / 2**20, 1) for key, value in rss.items()},
        "rss_growth_mib": round(growth_mb, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warm-up", type=int, default=None, help="requests before the RSS baseline (default: 10%%)")
    parser.add_argument("--model", type=Path, help="ONNX model to serve (default: a small test model built now)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or build_model(Path(folder) / "soak-model.onnx")
        env = {"CXR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES), "CXR_LOG_LEVEL": "warning"}
        with running_service(model, **env) as server:
            report = soak(
                server,
                requests=args.requests,
                concurrency=args.concurrency,
                warm_up=args.warm_up if args.warm_up is not None else max(args.requests // 10, 50),
                log=lambda line: print(line, file=sys.stderr, flush=True),
            )
    report["passed"] = not report["server_error_count"] and not report["unexpected_answers"] and report["rss_growth_mib"] < args.max_growth_mb
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
