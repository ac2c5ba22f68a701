"""`cxr-effusion predict`: score files or whole folders, against a running service or locally.

Integrators should not have to write code to score an archive. Results are appended to the
output file one row at a time and flushed, so an interrupted run loses nothing: run the same
command again and files that already have a result (or a permanent error) are skipped.
Transient failures (overloaded, not ready, connection errors) are retried, honouring
`Retry-After`, and are left for the next run if they persist.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING

from service.decode.formats import SNIFF_BYTES, SUFFIXES, sniff  # the format table: standard library only

if TYPE_CHECKING:
    import httpx

# unreadable_file: missing or not readable now (a typo, permissions); invalid_response: a 200 that is not
# this service's answer (a proxy's page); both are left for the next run like the others.
TRANSIENT_CODES = {"overloaded", "not_ready", "connection_error", "timeout", "unreadable_file", "invalid_response"}


@dataclass
class Row:
    """One output line: a probability, or an error code saying why there is none."""

    file: str
    effusion_probability: float | None = None
    label: str | None = None
    threshold: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def finished(self) -> bool:
        """True unless the failure is worth another try on a later run."""
        return self.error_code not in TRANSIENT_CODES


COLUMNS = [field.name for field in fields(Row)]


def find_scans(paths: Iterable[Path]) -> list[Path]:
    """Files named on the command line, plus scans found under named folders (sorted, recursive).

    Inside folders, files with a suffix of a format in the service's format table are taken, and so
    are files without a suffix (DICOM archives often have none) whose content a format recognises.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and _looks_like_scan(p)))
        else:
            found.append(path)
    return found


def _looks_like_scan(path: Path) -> bool:
    if path.suffix.lower() in SUFFIXES:
        return True
    if path.suffix:
        return False
    with path.open("rb") as handle:
        return sniff(handle.read(SNIFF_BYTES)) is not None


def read_finished(output: Path) -> set[str]:
    """Files that already have a final row in an existing CSV or JSON Lines output."""
    if not output.exists():
        return set()
    with output.open(newline="") as handle:
        rows = [json.loads(line) for line in handle if line.strip()] if _is_jsonl(output) else list(csv.DictReader(handle))
    return {row["file"] for row in rows if (row.get("error_code") or None) not in TRANSIENT_CODES}


def _is_jsonl(output: Path) -> bool:
    return output.suffix.lower() in (".jsonl", ".ndjson")


class RowWriter:
    """Appends rows to CSV or JSON Lines and flushes each one, so an interruption loses nothing."""

    def __init__(self, output: Path, columns: list[str] = COLUMNS) -> None:
        self.jsonl = _is_jsonl(output)
        new = not output.exists() or output.stat().st_size == 0
        self.handle: IO[str] = output.open("a", newline="")
        self.csv = None if self.jsonl else csv.DictWriter(self.handle, fieldnames=columns)
        if self.csv is not None and new:
            self.csv.writeheader()

    def write(self, row: Row) -> None:
        if self.csv is not None:
            self.csv.writerow(asdict(row))
        else:
            self.handle.write(json.dumps(asdict(row)) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def http_client(url: str, *, api_key: str | None, timeout: float) -> httpx.Client:
    """An HTTP client for the service at `url`, sending the API key if there is one."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def http_scorer(url: str, *, api_key: str | None, timeout: float, retries: int) -> Callable[[Path], Row]:
    """Score a file by POSTing it to a running service, retrying 503s as `Retry-After` asks."""
    import httpx

    client = http_client(url, api_key=api_key, timeout=timeout)

    def score(path: Path) -> Row:
        try:
            response = post_scan(client, path.read_bytes(), retries=retries)
        except httpx.TransportError as error:
            code, message = transport_error(error)
            return Row(str(path), error_code=code, error_message=message)
        return _row_from_response(path, response)

    return score


def post_scan(
    client: httpx.Client, data: bytes, *, retries: int, headers: dict[str, str] | None = None, params: dict[str, str] | None = None
) -> httpx.Response:
    """POST one scan to /predict with the retry rules of `with_retries`."""
    files = {"file": ("scan", data, "application/octet-stream")}
    return with_retries(lambda: client.post("/predict", files=files, headers=headers, params=params), retries=retries)


def with_retries(send: Callable[[], httpx.Response], *, retries: int) -> httpx.Response:
    """`send()` again after a 503, as its `Retry-After` asks, and after a connection error or timeout, with backoff;
    returns the last answer (a 503 too, once retries are spent), or raises the last transport error."""
    import httpx

    attempt = 0
    while True:
        try:
            response = send()
        except httpx.TransportError:
            if attempt >= retries:
                raise
            response = None
        else:
            if response.status_code != 503 or attempt >= retries:
                return response
        time.sleep(_retry_delay(response, attempt))
        attempt += 1


def _retry_delay(response: httpx.Response | None, attempt: int) -> float:
    """Wait as long as the service's Retry-After asks (capped), else back off exponentially."""
    retry_after = response.headers.get("retry-after", "") if response is not None else ""
    if retry_after.isdigit():
        return min(float(retry_after), 30.0)
    return min(0.5 * 2**attempt, 30.0)


def transport_error(error: httpx.TransportError) -> tuple[str, str]:
    """(error code, message) of a request that got no answer, as the predict and dicomweb commands record it."""
    import httpx

    if isinstance(error, httpx.TimeoutException):
        return "timeout", "the service did not answer in time"
    return "connection_error", type(error).__name__


def error_of(response: httpx.Response) -> tuple[str, str | None]:
    """(error code, message) of an answer other than 200: the service's own, or `http_<status>` for a body that is
    not the service's error (a gateway's or proxy's page)."""
    try:
        error = response.json()["error"]
        return str(error["code"]), error.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"http_{response.status_code}", None


def _row_from_response(path: Path, response: httpx.Response) -> Row:
    if response.status_code != 200:
        code, message = error_of(response)
        return Row(str(path), error_code=code, error_message=message)
    try:
        body = response.json()
        return Row(
            str(path),
            effusion_probability=body["effusion_probability"],
            label=body["label"],
            threshold=body["threshold"],
            model_name=body["model"]["name"],
            model_version=body["model"]["version"],
        )
    except (ValueError, KeyError, TypeError):  # e.g. a proxy's HTML page: not this service's answer
        return Row(str(path), error_code="invalid_response", error_message="a 200 answer without a prediction")


def local_scorer(model_path: Path) -> Callable[[Path], Row]:
    """Score a file in this process with the service's own core code; no server involved."""
    from service.errors import ServiceError  # the core, imported only for --local
    from service.model import load_model
    from service.predictor import score_bytes
    from service.resources import available_cpus
    from service.settings import Settings

    settings = Settings(model_path=model_path)
    model = load_model(model_path, policy=settings.execution_provider, intra_op_threads=available_cpus())
    contract = model.contract

    def score(path: Path) -> Row:
        try:
            prediction = score_bytes(model, path.read_bytes(), max_pixels=settings.max_pixels)
        except ServiceError as error:
            return Row(str(path), error_code=error.code, error_message=error.message)
        return Row(
            str(path),
            effusion_probability=prediction.probability,
            label=prediction.label,
            threshold=contract.threshold,
            model_name=contract.model_name,
            model_version=contract.model_version,
        )

    return score


def run(scans: list[Path], score: Callable[[Path], Row], writer: RowWriter, *, concurrency: int, progress: bool) -> dict[str, int]:
    """Score every scan with bounded concurrency, writing each row as soon as it is ready."""
    from tqdm import tqdm

    counts = {"scored": 0, "failed": 0}
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        with tqdm(total=len(scans), unit="scan", disable=not progress, file=sys.stderr) as bar:
            for future in as_completed([pool.submit(_score_readable, score, scan) for scan in scans]):
                row = future.result()
                writer.write(row)
                counts["failed" if row.error_code else "scored"] += 1
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, start nothing new
    return counts


def _score_readable(score: Callable[[Path], Row], path: Path) -> Row:
    """`score(path)`, or an `unreadable_file` row: one missing or unreadable file must not abort the whole run."""
    try:
        return score(path)
    except OSError as error:
        return Row(str(path), error_code="unreadable_file", error_message=error.strerror or type(error).__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `predict` on the `cxr-effusion` command line (cxr_client/cli.py)."""
    predict = commands.add_parser(
        "predict",
        help="score files or folders (PNG, JPEG, DICOM)",
        description="Score files or folders against a running service (--url) or locally (--local). "
        "Rows are appended and flushed one at a time; rerunning skips files already scored.",
    )
    predict.add_argument("paths", nargs="+", type=Path, help="scan files and/or folders (searched recursively)")
    predict.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (default: %(default)s)")
    predict.add_argument("--local", action="store_true", help="score in this process, without a server")
    predict.add_argument(
        "--model", type=Path, default=None, help="model for --local (default: CXR_MODEL_PATH or the shipped model)"
    )
    predict.add_argument(
        "--output", "-o", type=Path, default=Path("results.csv"), help="CSV, or JSON Lines if it ends in .jsonl"
    )
    predict.add_argument("--concurrency", "-c", type=int, default=4, help="requests in flight (default: %(default)s)")
    add_http_options(predict)
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_http_options(parser: argparse.ArgumentParser) -> None:
    """Options of every command that talks to a running service."""
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 or connection error per file")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--api-key", default=os.environ.get("CXR_API_KEY"), help="API key if the service needs one (env CXR_API_KEY)"
    )


def default_model() -> Path:
    """CXR_MODEL_PATH, else the shipped model: from the working directory if it is there, else from the
    checkout the package is installed from (`make serve` installs it editable), so `--local` works anywhere."""
    from service.settings import DEFAULT_MODEL_PATH, SOURCE_ROOT, Settings

    configured = Settings().model_path
    if configured != DEFAULT_MODEL_PATH or configured.exists():
        return configured
    return SOURCE_ROOT / DEFAULT_MODEL_PATH


def run_command(args: argparse.Namespace) -> int:
    """`cxr-effusion predict`: exit status 1 when any file failed."""
    scans = find_scans(args.paths)
    finished = read_finished(args.output)
    todo = [scan for scan in scans if str(scan) not in finished]
    if args.local:
        try:
            from service.model import ModelError
        except ModuleNotFoundError as error:  # the core without ONNX Runtime: say what to install, not a traceback
            print(f"error: --local needs {error.name}: pip install 'cxr-effusion[cpu]' (or use --url)", file=sys.stderr)
            return 2
        model = args.model or default_model()
        try:
            score = local_scorer(model)
        except ModelError as error:
            print(f"error: cannot use model {model}: {error}; pass --model PATH or set CXR_MODEL_PATH", file=sys.stderr)
            return 2
    else:
        score = http_scorer(args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries)
    writer = RowWriter(args.output)
    try:
        counts = run(todo, score, writer, concurrency=max(1, args.concurrency), progress=not args.no_progress)
    finally:
        writer.close()
    print(
        f"{counts['scored']} scored, {counts['failed']} failed, {len(scans) - len(todo)} already done -> {args.output}",
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0
