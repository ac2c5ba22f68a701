"""Every setting of the service, typed, in one place. Each is an environment variable `CXR_<NAME>`.

The README's configuration table is this class; keep them in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_PATH = Path("models/cxr-effusion-resnet18.onnx")
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout, when installed editable (make serve, make test)
DEFAULT_MAX_PIXELS = 25_000_000  # also the decode limit training and the benchmarks apply


class Settings(BaseSettings):
    """Service configuration; construct with keyword overrides in tests, from the environment in production."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="forbid", protected_namespaces=())

    # Model and execution
    model_path: Path = Field(DEFAULT_MODEL_PATH, description="ONNX model file to serve.")
    model_variant: Literal["auto", "fp32", "int8", "fp16"] = Field(
        "auto",
        description="auto: on CPU the INT8 sibling <stem>.int8.onnx when its recorded AUROC guard passed, else and on CUDA "
        "CXR_MODEL_PATH itself; fp32 serves CXR_MODEL_PATH; int8 (CPU) or fp16 (CUDA) serve its sibling "
        "<stem>.<variant>.onnx written by `python -m model_export variants`.",
    )
    execution_provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="auto: CUDA if it really works, else CPU. cuda: not ready unless CUDA is active. cpu: CPU only.",
    )
    intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime intra-op threads; default: the CPUs this process may use (cgroup quota)."
    )
    warmup_runs: int = Field(2, ge=1, description="Inference runs per batch size before /ready turns 200.")

    # Batching and backpressure
    max_batch: int = Field(8, ge=1, le=256, description="Largest batch one inference call takes.")
    max_delay_ms: float = Field(
        2.0, ge=0, description="How long a partly filled batch waits for more work, only when other requests are queued."
    )
    max_queue: int = Field(64, ge=1, description="Requests waiting for inference before new ones get 503 overloaded.")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="/predict requests in progress at once (receiving, decoding, queued, inferring) before new ones "
        "get 503 overloaded without their body being read; bounds memory. Default: max_queue + 2 x max_batch, "
        "lowered to fit the memory limit (service/memory.py).",
    )
    memory_limit_bytes: int | None = Field(
        None,
        ge=1,
        description="Memory the process may use, for sizing admission (default: the cgroup limit; none: the fixed bound).",
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        description="Threads that decode and preprocess uploads; default: the CPUs this process may use. "
        "On many-core hosts about 4 per service process did best (docs/performance.md).",
    )
    decode_processes: int = Field(
        0,
        ge=0,
        description="Worker processes that decode and preprocess uploads instead of threads; 0: threads, which "
        "served more requests/s end to end on every host measured (docs/performance.md).",
    )

    # Input limits
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond).")
    max_head_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request head (request line and headers) accepted (431 beyond)."
    )
    max_headers: int = Field(100, ge=8, description="Most header fields in one request (431 beyond).")
    head_timeout_s: float = Field(
        10.0, gt=0, description="Time a request head may take to arrive (408 and close); also the body's allowance."
    )
    min_body_rate: int = Field(
        16 * 1024, ge=1, description="Bytes per second a request body must average after its allowance, else the connection closes."
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=65_536, description="Largest declared image (width x height) decoded (413 beyond)."
    )

    # HTTP server
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 in a container.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    workers: int = Field(
        1, ge=1, le=64, description="Service processes sharing the port, each loading the model and turning ready on its own."
    )
    inference: Literal["per-worker", "shared"] = Field(
        "per-worker",
        description="per-worker: each of the CXR_WORKERS processes is a whole service with its own model copy. shared: "
        "the CXR_WORKERS processes only receive, decode and preprocess (frontends), and one more process owns the model "
        "and batches every frontend's requests; for many-core and GPU hosts (docs/performance.md).",
    )
    restart_limit: int = Field(
        5,
        ge=0,
        description="With CXR_INFERENCE=shared, how many times one crashed process is replaced within "
        "CXR_RESTART_WINDOW_S (each replacement waiting twice as long as the last) before the service stops with "
        "status 1 and leaves restarting to systemd or Kubernetes.",
    )
    restart_window_s: float = Field(60.0, gt=0, description="The window CXR_RESTART_LIMIT counts crashes in.")
    drain_timeout_s: float = Field(
        20.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish before exit."
    )
    drain_delay_s: float = Field(
        2.0,
        ge=0,
        description="On SIGTERM, how long /ready says 503 and new work is refused before the listener closes, "
        "so load balancers stop sending traffic first. SIGINT (Ctrl-C) skips it.",
    )
    root_path: str = Field(
        "",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="Path prefix the gateway serves the service under, e.g. /cxr; empty: served at the root. Works whether "
        "the gateway strips the prefix or passes it on; /docs, /openapi.json and the review page use it.",
    )
    cors_origins: str = Field(
        "", description="Comma-separated browser origins allowed by CORS (e.g. https://viewer.example.org); empty: CORS off."
    )

    # Security: optional API keys
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys (16+ characters each); set, every route but /live, /ready and /ui needs one."
    )
    api_keys_file: Path | None = Field(
        None, description="File with one API key per line (# comments allowed); combined with CXR_API_KEYS."
    )
    metrics_public: bool = Field(False, description="Serve /metrics without a key even when API keys are set.")

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line (for log collectors); text: for a terminal."
    )


def variant_path(model_path: Path, variant: str) -> Path:
    """`models/x.onnx` -> `models/x.int8.onnx`; fp32 is the file itself."""
    if variant == "fp32":
        return model_path
    return model_path.with_name(f"{model_path.stem}.{variant}{model_path.suffix}")
