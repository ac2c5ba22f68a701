"""Drive a server with `hey` (a Go load generator, Debian package `hey`) and read its summary.

A Python client on a 2-core machine would steal the server's CPU and measure itself; `hey` is
cheap, and benchmarks/run.py also pins it to its own core with `taskset` when asked.
Request bodies are prepared once as files: a multipart form, a raw PNG, or a Triton request.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOUNDARY = "cxrbenchmarkboundary"


@dataclass(frozen=True)
class Body:
    """A prepared request: the file hey sends, its content type, and any extra headers."""

    path: Path
    content_type: str
    headers: tuple[str, ...] = ()


def multipart_body(scan: bytes, target: Path, field: str = "file") -> Body:
    """One multipart/form-data upload of `scan`, as a browser or `curl -F` would send it."""
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"scan.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    target.write_bytes(head + scan + f"\r\n--{BOUNDARY}--\r\n".encode())
    return Body(target, f"multipart/form-data; boundary={BOUNDARY}")


def run_hey(
    url: str, body: Body, *, concurrency: int, seconds: float | None = None, requests: int | None = None, cpus: str | None = None
) -> dict[str, Any]:
    """Load `url` for `seconds` (or `requests` in all) at `concurrency`; `cpus` pins hey with taskset."""
    command = ["hey", "-c", str(concurrency), "-m", "POST", "-T", body.content_type, "-D", str(body.path), "-t", "60"]
    command += ["-z", f"{seconds}s"] if seconds is not None else ["-n", str(requests)]
    for header in body.headers:
        command += ["-H", header]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    return parse_hey(output)


def parse_hey(output: str) -> dict[str, Any]:
    """Throughput, latency percentiles (ms), status counts and error count from hey's summary."""
    def number(pattern: str) -> float | None:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else None

    percentiles = {f"p{p}_ms": round(float(s) * 1000.0, 1) for p, s in re.findall(r"\s(\d+)% in ([\d.]+) secs", output)}
    statuses = {int(code): int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)}
    errors = sum(int(count) for count in re.findall(r"\[(\d+)\]\s+(?!responses)\S", output.split("Error distribution:")[-1])) if "Error distribution:" in output else 0
    ok = statuses.get(200, 0)
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "ok_rps": round(ok / total, 1) if (total := number(r"Total:\s+([\d.]+) secs")) else None,
        **{key: percentiles.get(key) for key in ("p50_ms", "p90_ms", "p99_ms")},
        "statuses": statuses,
        "errors": errors + sum(count for code, count in statuses.items() if code != 200),
    }


def triton_body(scan: bytes, target: Path, input_name: str = "image", output_name: str = "effusion_probability") -> Body:
    """A KServe v2 inference request with the scan as binary BYTES data (Triton's binary extension)."""
    import json

    element = len(scan).to_bytes(4, "little") + scan  # BYTES tensors: length-prefixed elements
    header = json.dumps(
        {
            "inputs": [{"name": input_name, "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}],
            "outputs": [{"name": output_name, "parameters": {"binary_data": False}}],
        }
    ).encode()
    target.write_bytes(header + element)
    return Body(target, "application/octet-stream", (f"Inference-Header-Content-Length: {len(header)}",))
