"""`cxr-effusion dicomweb`: a DICOMweb router between a PACS and the service.

It finds CR and DX instances in the PACS (QIDO-RS: by study, by study date range, or since the
last run), skips every instance that already has a Structured Report from the served model's
name and version, retrieves the rest (WADO-RS), scores them through the service with
`Accept: application/dicom` (the SR, and with --heatmap the Secondary Capture too) and stores
what comes back in the same study (STOW-RS). The PACS itself is the record of what is done, so
an interrupted run resumes by running it again, and a second run stores nothing twice.

Calls to the service follow `predict`'s retry rules (503 as `Retry-After` asks, connection
errors with backoff); calls to the PACS retry 408/429/503/504 through dicomweb-client.
Patient data passes through in memory only: the router prints UIDs and error codes, nothing else.
"""

from __future__ import annotations

import argparse
import email.parser
import io
import json
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_client.predict import TRANSIENT_CODES, add_http_options, error_of, http_client, post_scan, transport_error, with_retries

if TYPE_CHECKING:
    import httpx
    from dicomweb_client.api import DICOMwebClient
    from pydicom.dataset import Dataset

MODALITIES = ("CR", "DX")
DICOM = "application/dicom"
# DICOM JSON (PS3.18 F.2) keys of the attributes the router reads.
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
BODY_PART, MODEL_NAME, SOFTWARE_VERSIONS = "00180015", "00081090", "00181020"
EVIDENCE, REFERENCED_SERIES, REFERENCED_SOPS, REFERENCED_SOP_UID = "0040A375", "00081115", "00081199", "00081155"


@dataclass(frozen=True)
class Instance:
    """One image in the PACS, by its three UIDs."""

    study: str
    series: str
    sop: str


@dataclass
class Outcome:
    """What one run did: counts, and the error codes of what failed (by SOP Instance UID)."""

    scored: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of `tag` in a DICOM JSON object, or None."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def find_instances(
    pacs: DICOMwebClient, *, studies: list[str], study_dates: str | None, modalities: Iterable[str] = MODALITIES
) -> list[Instance]:
    """The CR/DX instances of the given studies, or of studies dated within `study_dates` (a DICOM range,
    e.g. "20260101-"), leaving out series whose Body Part Examined names something other than the chest."""
    filters: list[dict[str, str]] = []
    for modality in modalities:
        if studies:
            filters.extend({"Modality": modality, "StudyInstanceUID": study} for study in studies)
        else:
            filters.append({"Modality": modality, **({"StudyDate": study_dates} if study_dates else {})})
    found: list[Instance] = []
    for search in filters:
        for series in pacs.search_for_series(search_filters=search, fields=["BodyPartExamined"], get_remaining=True):
            body_part = str(value(series, BODY_PART) or "CHEST").upper()
            if body_part != "CHEST":
                continue
            study, series_uid = value(series, STUDY_UID), value(series, SERIES_UID)
            for instance in pacs.search_for_instances(study, series_uid, get_remaining=True):
                found.append(Instance(study, series_uid, value(instance, SOP_UID)))
    return sorted(set(found), key=lambda instance: (instance.study, instance.series, instance.sop))


def reported_instances(pacs: DICOMwebClient, study: str, *, model_name: str, model_version: str) -> set[str]:
    """SOP Instance UIDs of the study that an SR of this model name and version already references."""
    done: set[str] = set()
    for series in pacs.search_for_series(search_filters={"Modality": "SR", "StudyInstanceUID": study}, get_remaining=True):
        for report in pacs.retrieve_series_metadata(study, value(series, SERIES_UID)):
            if (value(report, MODEL_NAME), value(report, SOFTWARE_VERSIONS)) != (model_name, model_version):
                continue
            for evidence in report.get(EVIDENCE, {}).get("Value", []):
                for referenced_series in evidence.get(REFERENCED_SERIES, {}).get("Value", []):
                    for sop in referenced_series.get(REFERENCED_SOPS, {}).get("Value", []):
                        done.add(value(sop, REFERENCED_SOP_UID))
    return done


def dicom_parts(response: httpx.Response) -> list[bytes]:
    """The DICOM objects of the service's answer: one `application/dicom` body, or the parts of a multipart/related one."""
    content_type = response.headers.get("content-type", "")
    if content_type.split(";")[0].strip() == DICOM:
        return [response.content]
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + response.content)
    if message.get_content_type() != "multipart/related":
        raise ValueError("the answer is neither application/dicom nor multipart/related")
    return [part.get_payload(decode=True) for part in message.get_payload()]


def route_instance(
    pacs: DICOMwebClient, service: httpx.Client, instance: Instance, *, heatmap: bool, retries: int
) -> str | None:
    """Retrieve, score and store one instance; None when its SR is stored, else an error code."""
    import httpx
    import pydicom

    try:
        dataset = pacs.retrieve_instance(instance.study, instance.series, instance.sop)
    except Exception as error:  # requests' and dicomweb-client's errors, after their retries
        return f"pacs_retrieve_failed ({type(error).__name__})"
    try:
        response = post_scan(
            service,
            _part10(dataset),
            retries=retries,
            headers={"Accept": DICOM},
            params={"heatmap": "true"} if heatmap else None,
        )
    except httpx.TransportError as error:
        return transport_error(error)[0]
    if response.status_code != 200:
        return error_of(response)[0]
    try:
        results = [pydicom.dcmread(io.BytesIO(part)) for part in dicom_parts(response)]
    except Exception:
        return "invalid_response"
    try:
        pacs.store_instances(results, study_instance_uid=instance.study)
    except Exception as error:
        return f"pacs_store_failed ({type(error).__name__})"
    return None


def route(
    pacs: DICOMwebClient,
    service: httpx.Client,
    instances: list[Instance],
    *,
    model_name: str,
    model_version: str,
    heatmap: bool,
    retries: int,
    concurrency: int,
    progress: bool,
) -> Outcome:
    """Score every instance that has no SR of this model version yet, with bounded concurrency and a progress bar."""
    from tqdm import tqdm

    outcome = Outcome()
    done: dict[str, set[str]] = {}
    todo = []
    for instance in instances:
        if instance.study not in done:
            done[instance.study] = reported_instances(pacs, instance.study, model_name=model_name, model_version=model_version)
        if instance.sop in done[instance.study]:
            outcome.skipped += 1
        else:
            todo.append(instance)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        with tqdm(total=len(todo), unit="instance", disable=not progress, file=sys.stderr) as bar:
            futures = {pool.submit(route_instance, pacs, service, item, heatmap=heatmap, retries=retries): item for item in todo}
            for future in as_completed(futures):
                error = future.result()
                if error is None:
                    outcome.scored += 1
                else:
                    outcome.failed[futures[future].sop] = error
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, start nothing new
    return outcome


def served_model(service: httpx.Client, *, retries: int) -> tuple[str, str]:
    """The name and version of the model the service serves (GET /model), which its SRs carry."""
    import httpx

    try:
        response = with_retries(lambda: service.get("/model"), retries=retries)
        model = response.json()["model"] if response.status_code == 200 else {}
        return str(model["name"]), str(model["version"])
    except (httpx.TransportError, ValueError, KeyError, TypeError):
        raise RuntimeError(f"the service at {service.base_url} did not say which model it serves (GET /model)") from None


def pacs_client(url: str, *, timeout: float, retries: int) -> DICOMwebClient:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url.rstrip("/"), timeout=timeout)
    client.set_http_retry_params(retry=True, max_attempts=retries + 1, wait_exponential_multiplier=500)
    return client


def study_date_range(args: argparse.Namespace) -> str | None:
    """The StudyDate filter of a run: --since/--until, or from the date of the last run in --state."""
    if args.since_last_run:
        try:
            last = json.loads(args.state.read_text())["last_run"]
        except (OSError, ValueError, KeyError) as error:
            raise RuntimeError(
                f"no previous run recorded in {args.state} ({type(error).__name__}); start with --since YYYYMMDD"
            ) from None
        return f"{last}-"
    if args.since or args.until:
        return f"{args.since or ''}-{args.until or ''}"
    return None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `dicomweb` on the `cxr-effusion` command line (cxr_client/cli.py)."""
    command = commands.add_parser(
        "dicomweb",
        help="score new CR/DX images of a PACS and store the results back (DICOMweb)",
        description="Find CR/DX instances in a PACS over DICOMweb (QIDO-RS), score those without a Structured Report "
        "from the served model version (WADO-RS, then the service), and store the SR (and with --heatmap the heatmap "
        "Secondary Capture) in the same study (STOW-RS). Rerunning skips what is done. Needs the client extra "
        "(pip install 'cxr-effusion[client]'). docs/pacs.md.",
    )
    command.add_argument("--pacs", required=True, help="the PACS's DICOMweb base URL, e.g. http://orthanc:8042/dicom-web")
    command.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL (default: %(default)s)")
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", action="append", default=[], help="Study Instance UID; repeatable")
    which.add_argument("--since", help="studies dated from this day on (YYYYMMDD)")
    which.add_argument("--since-last-run", action="store_true", help="studies dated from the day of the last run in --state on")
    command.add_argument("--until", help="with --since: studies dated up to this day (YYYYMMDD)")
    command.add_argument(
        "--state", type=Path, default=Path(".cxr-dicomweb.json"), help="where the date of the last run is kept (default: %(default)s)"
    )
    command.add_argument("--heatmap", action="store_true", help="store the heatmap's Secondary Capture too")
    command.add_argument("--concurrency", "-c", type=int, default=2, help="instances in flight (default: %(default)s)")
    add_http_options(command)
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_command(args: argparse.Namespace, *, today: Callable[[], date] = date.today) -> int:
    """`cxr-effusion dicomweb`: exit status 1 when any instance failed, 2 when the command cannot start."""
    try:
        import dicomweb_client  # noqa: F401
    except ModuleNotFoundError:
        print("error: cxr-effusion dicomweb needs the client extra: pip install 'cxr-effusion[client]'", file=sys.stderr)
        return 2
    import requests  # dicomweb-client's transport

    started = today()
    service = http_client(args.url, api_key=args.api_key, timeout=args.timeout)
    pacs = pacs_client(args.pacs, timeout=args.timeout, retries=args.retries)
    try:
        dates = study_date_range(args)
        name, version = served_model(service, retries=args.retries)
        instances = find_instances(pacs, studies=args.study, study_dates=dates)
        outcome = route(
            pacs,
            service,
            instances,
            model_name=name,
            model_version=version,
            heatmap=args.heatmap,
            retries=args.retries,
            concurrency=max(1, args.concurrency),
            progress=not args.no_progress,
        )
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except requests.RequestException as error:  # the PACS cannot be searched: no instance was touched
        print(f"error: PACS {args.pacs} did not answer its search ({type(error).__name__}); nothing was scored", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dicomweb: interrupted; run the same command again to resume (the PACS records what is done)", file=sys.stderr)
        return 130
    for sop, code in sorted(outcome.failed.items()):
        print(f"failed: {sop}: {code}", file=sys.stderr)
    if not any(code in TRANSIENT_CODES or code.startswith("pacs_") for code in outcome.failed.values()):
        args.state.write_text(json.dumps({"last_run": started.strftime("%Y%m%d")}) + "\n")
    print(
        f"{outcome.scored} scored, {len(outcome.failed)} failed, {outcome.skipped} already reported by {name} {version}",
        file=sys.stderr,
    )
    return 1 if outcome.failed else 0


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
