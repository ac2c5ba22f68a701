"""Score scans the way the service does: locally through the core, or through a running deployment.

Both ways also decode each file here, with the service's decoder, for the data summary (format,
size, mode, SOPInstanceUID, a hash of the decoded pixels); scoring itself is the core's
`score_bytes` locally and `POST /predict` remotely, so the numbers are the service's own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_client.predict import Row, http_client, http_scorer

if TYPE_CHECKING:
    import httpx
    import numpy as np

    from service.decode.scan import DecodedScan
    from service.model import Model

THUMBNAIL_SIDE = 128


@dataclass
class ScanRow(Row):
    """A predict row plus what the report needs to know about the file and the model that scored it."""

    model_sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    sop_instance_uid: str | None = None
    pixel_sha256: str | None = None


JOURNAL_COLUMNS = [field.name for field in fields(ScanRow)]


@dataclass(frozen=True)
class ModelFacts:
    """The identity of the model that scored the scans, from the file or from the deployment's GET /model."""

    name: str
    version: str
    sha256: str
    threshold: float
    execution_provider: str
    variant: str | None
    heatmap: bool
    training_patients: list[str] | None  # training_data.patients, when the model lists them
    scored_by: str  # "local: <file>" or "url: <base URL>"


def max_pixels() -> int:
    from service.settings import Settings  # the core, imported only when validating

    return Settings().max_pixels


def inspect(data: bytes, limit: int) -> dict[str, Any]:
    """Decode with the service's decoder: the facts and pixel hash of a file, or {} if it does not decode."""
    from service.decode import decode
    from service.errors import ServiceError

    try:
        scan = decode(data, max_pixels=limit)
    except ServiceError:
        return {}  # the scorer reports why, with the service's code
    return summarise(scan)


def summarise(scan: DecodedScan) -> dict[str, Any]:
    """The facts and pixel hash of a decoded scan, as the report's columns."""
    facts = scan.facts
    return {
        "format": facts.format,
        "width": facts.width,
        "height": facts.height,
        "mode": facts.mode,
        "sop_instance_uid": facts.sop_instance_uid,
        "pixel_sha256": pixel_hash(scan.pixels),
    }


def pixel_hash(pixels: np.ndarray) -> str:
    """Equal for equal decoded pixels, whatever the file format or metadata around them."""
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(pixels.astype(pixels.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _facts(model: Model, location: str) -> ModelFacts:
    contract = model.contract
    return ModelFacts(
        name=contract.model_name,
        version=contract.model_version,
        sha256=model.sha256,
        threshold=contract.threshold,
        execution_provider=model.execution_provider,
        variant=_variant_name(contract.metadata),
        heatmap=model.has_heatmap,
        training_patients=_training_patients(contract.metadata),
        scored_by=location,
    )


def _variant_name(metadata: dict[str, Any]) -> str | None:
    variant = metadata.get("variant")
    if isinstance(variant, dict):
        return str(variant.get("variant", "unnamed variant"))  # int8 or fp16, model_export/variants.py
    return None


def _training_patients(metadata: dict[str, Any]) -> list[str] | None:
    training = metadata.get("training_data")
    patients = training.get("patients") if isinstance(training, dict) else None
    return [str(patient) for patient in patients] if isinstance(patients, list) else None


@dataclass
class Scorer:
    """Scores one file into a ScanRow, and explains one file as (thumbnail JPEG, heatmap JPEG or None)."""

    model: ModelFacts
    score: Callable[[Path], ScanRow]
    explain: Callable[[Path], tuple[bytes, bytes | None]]


def local_scorer(model_path: Path) -> Scorer:
    """The service's core in this process: `score_bytes` for the number, the graph's heatmap for the examples."""
    from service.decode import decode
    from service.errors import ServiceError
    from service.heatmap import render
    from service.model import load_model
    from service.predictor import prepare, score_prepared
    from service.prepare import prepare_scan
    from service.resources import available_cpus
    from service.settings import Settings

    settings = Settings(model_path=model_path)
    model = load_model(model_path, policy=settings.execution_provider, intra_op_threads=available_cpus())
    facts = _facts(model, f"local: {model_path}")

    def score(path: Path) -> ScanRow:  # one decode gives the report's facts and the score, as score_bytes would
        row = ScanRow(str(path), model_name=facts.name, model_version=facts.version, model_sha256=facts.sha256)
        started = time.perf_counter()
        try:
            scan = decode(path.read_bytes(), max_pixels=settings.max_pixels)
            for name, value in summarise(scan).items():
                setattr(row, name, value)
            prepared = prepare_scan(scan, decode_ms=(time.perf_counter() - started) * 1000.0)
        except ServiceError as error:  # refused by the decoder or by preprocessing (a blank scan), as the service would
            row.error_code, row.error_message = error.code, error.message
            return row
        prediction = score_prepared(model, prepared, started=started)
        row.effusion_probability, row.label, row.threshold = prediction.probability, prediction.label, facts.threshold
        return row

    def explain(path: Path) -> tuple[bytes, bytes | None]:
        tensor = prepare(path.read_bytes(), settings.max_pixels).tensor
        if not model.has_heatmap:
            return thumbnail(tensor[0, 0]), None
        _, heatmaps = model.predict_with_heatmap(tensor)
        return thumbnail(tensor[0, 0]), to_jpeg(render(tensor[0, 0], heatmaps[0]).overlay_png)

    return Scorer(facts, score, explain)


def remote_scorer(url: str, *, api_key: str | None, timeout: float, retries: int) -> Scorer:
    """A running deployment: `predict`'s HTTP scorer (retries, Retry-After, API key), its GET /model, ?heatmap=true."""
    from service.predictor import prepare

    client = http_client(url, api_key=api_key, timeout=timeout)
    facts = remote_model_facts(client, url)
    post = http_scorer(url, api_key=api_key, timeout=timeout, retries=retries)
    limit = max_pixels()

    def score(path: Path) -> ScanRow:
        seen = inspect(path.read_bytes(), limit)
        answer = post(path)
        values = {field.name: getattr(answer, field.name) for field in fields(Row)}
        return ScanRow(**values, model_sha256=facts.sha256 if answer.error_code is None else None, **seen)

    def explain(path: Path) -> tuple[bytes, bytes | None]:
        data = path.read_bytes()
        small = thumbnail(prepare(data, limit).tensor[0, 0])
        if not facts.heatmap:
            return small, None
        response = client.post("/predict", params={"heatmap": "true"}, files={"file": ("scan", data, "application/octet-stream")})
        heatmap = (response.json().get("heatmap") or {}) if response.status_code == 200 else {}
        overlay = heatmap.get("overlay_png")
        return small, to_jpeg(base64.b64decode(overlay)) if overlay else None

    return Scorer(facts, score, explain)


class RemoteError(Exception):
    """The deployment cannot be asked what it serves; the message is one line."""


def remote_model_facts(client: httpx.Client, url: str) -> ModelFacts:
    """What the deployment serves, from its GET /model."""
    import httpx

    try:
        response = client.get("/model")
    except httpx.HTTPError as error:
        raise RemoteError(f"cannot reach {url}: {type(error).__name__}") from error
    if response.status_code != 200:
        raise RemoteError(f"{url}/model answered {response.status_code}; is the service ready and the API key right?")
    try:
        body = response.json()
        return ModelFacts(
            name=body["model"]["name"],
            version=body["model"]["version"],
            sha256=body["model"]["sha256"],
            threshold=float(body["threshold"]),
            execution_provider=body["execution_provider"],
            variant=_variant_name(body.get("metadata", {})),
            heatmap=bool(body["heatmap"]),
            training_patients=_training_patients(body.get("metadata", {})),
            scored_by=f"url: {url}",
        )
    except (ValueError, KeyError, TypeError) as error:
        raise RemoteError(f"{url}/model did not answer as this service does") from error


def thumbnail(scan: np.ndarray) -> bytes:
    """A small JPEG of the model's 256x256 input in [0, 1]: what the model saw, not the original file."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.clip(scan, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    return to_jpeg_image(image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX))


def to_jpeg(png: bytes) -> bytes:
    """Re-encode a PNG as JPEG: an embedded report stays small."""
    from PIL import Image

    return to_jpeg_image(Image.open(io.BytesIO(png)).convert("RGB"))


def to_jpeg_image(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()
