"""Smoke-check a running cxr-effusion service from outside: is it ready, does it score a scan?

Standard library only, so it runs on any host (CI, a gateway box, an operator's laptop):

    python3 deploy/check_service.py ready   http://127.0.0.1:8000 --timeout 120
    python3 deploy/check_service.py predict http://127.0.0.1:8000 scan.png --provider CPUExecutionProvider
    python3 deploy/check_service.py predict http://127.0.0.1:8000 scan.png --upload-seconds 4

With API keys on (CXR_API_KEYS), put one in the environment as CXR_API_KEY, as for the
project's client; /ready needs none. `--upload-seconds` trickles the upload so that the request
is still in flight seconds later, which is how .ci/container-test proves that SIGTERM lets
in-flight requests finish.
Exit status 0 when every check passes; each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SHA256_HEX_LENGTH = 64


def connect(base_url: str, timeout: float) -> http.client.HTTPConnection:
    """A plain connection to the service (never through a proxy: this checks one container)."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"expected an http:// URL, got {base_url!r}")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


def get_json(base_url: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    connection = connect(base_url, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def wait_ready(base_url: str, timeout: float) -> float:
    """Seconds until /ready answered 200; SystemExit with the last answer when `timeout` passes."""
    start = time.monotonic()
    last: object = "no answer"
    while time.monotonic() - start < timeout:
        try:
            status, body = get_json(base_url, "/ready", timeout=2.0)
            if status == 200:
                return time.monotonic() - start
            last = f"{status} {body}"
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.25)
    raise SystemExit(f"not ready after {timeout:.0f} s; last answer: {last}")


def multipart_body(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """One file part, as a browser or curl -F would send it."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_scan(
    base_url: str, scan: Path, upload_seconds: float, timeout: float, api_key: str | None = None
) -> tuple[int, Any]:
    """POST the scan to /predict, spreading the upload over `upload_seconds` (0: all at once)."""
    body, content_type = multipart_body("file", "scan" + scan.suffix, scan.read_bytes())
    connection = connect(base_url, timeout)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        if api_key:
            connection.putheader("Authorization", f"Bearer {api_key}")
        connection.endheaders()
        chunks = 20 if upload_seconds > 0 else 1
        size = -(-len(body) // chunks)
        for offset in range(0, len(body), size):
            connection.send(body[offset : offset + size])
            if upload_seconds > 0:
                time.sleep(upload_seconds / chunks)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def prediction_problems(status: int, body: Any, provider: str | None, sha256: str | None) -> list[str]:
    """Everything wrong with a /predict answer, as readable lines (empty: it is correct)."""
    if status != 200 or not isinstance(body, dict):
        return [f"/predict answered {status}: {body}"]
    problems = []
    probability = body.get("effusion_probability")
    if not isinstance(probability, float) or not 0.0 <= probability <= 1.0:
        problems.append(f"effusion_probability is not a probability: {probability!r}")
    model = body.get("model") or {}
    for key in ("name", "version"):
        if not isinstance(model.get(key), str) or not model.get(key):
            problems.append(f"model.{key} missing: {model!r}")
    model_sha = model.get("sha256")
    if not isinstance(model_sha, str) or len(model_sha) != SHA256_HEX_LENGTH:
        problems.append(f"model.sha256 is not a SHA-256: {model_sha!r}")
    elif sha256 is not None and model_sha != sha256:
        problems.append(f"model.sha256 {model_sha} is not the expected {sha256}")
    if provider is not None and body.get("execution_provider") != provider:
        problems.append(f"execution_provider {body.get('execution_provider')!r}, expected {provider!r}")
    if not isinstance(body.get("label"), str) or not body.get("label"):
        problems.append(f"label missing: {body.get('label')!r}")
    threshold = body.get("threshold")
    if not isinstance(threshold, float) or not 0.0 <= threshold <= 1.0:
        problems.append(f"threshold is not a probability: {threshold!r}")
    if not body.get("request_id"):
        problems.append("request_id missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ready = commands.add_parser("ready", help="wait until /ready answers 200")
    ready.add_argument("url")
    ready.add_argument("--timeout", type=float, default=120.0)
    predict = commands.add_parser("predict", help="POST a scan to /predict and check the answer")
    predict.add_argument("url")
    predict.add_argument("scan", type=Path)
    predict.add_argument("--provider", help="expected execution_provider, e.g. CPUExecutionProvider")
    predict.add_argument("--sha256", help="expected model.sha256 (of the model file that should be served)")
    predict.add_argument("--upload-seconds", type=float, default=0.0, help="spread the upload over this long")
    predict.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    api_key = os.environ.get("CXR_API_KEY")

    if args.command == "ready":
        print(f"ready after {wait_ready(args.url, args.timeout):.1f} s")
        return 0
    status, body = post_scan(args.url, args.scan, args.upload_seconds, args.timeout, api_key)
    problems = prediction_problems(status, body, args.provider, args.sha256)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(
            f"predict: p={body['effusion_probability']:.4f} label={body['label']} "
            f"model={body['model']['name']} {body['model']['version']} on {body['execution_provider']}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
