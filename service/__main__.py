"""`python -m service`: load and check the model, then serve it with uvicorn.

The model is loaded before the server binds its port, so a model that breaks the contract
stops start-up with one line naming the problem (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

if importlib.util.find_spec("onnxruntime") is None:  # one line saying what to install, not an import traceback
    print("error: ONNX Runtime is not installed: pip install 'cxr-effusion[cpu]' (or [gpu] for CUDA)", file=sys.stderr)
    sys.exit(2)

import uvicorn

from service.http.app import create_app
from service.http.auth import AuthConfigError
from service.http.limits import limited_protocol
from service.http.shared_workers import serve_shared
from service.http.shutdown import DrainingServer
from service.http.workers import serve_workers
from service.logs import configure_logging
from service.model import ModelError
from service.native_stderr import capture_native_stderr
from service.settings import Settings
from service.variant_choice import load_served_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the pleural effusion model over HTTP. Every option is also an environment "
        "variable (CXR_HOST, CXR_PORT, CXR_MODEL_PATH, ...); options win.",
    )
    parser.add_argument("--host", help="address to bind (CXR_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (CXR_PORT, default 8000)")
    parser.add_argument("--model", type=Path, help="ONNX model file (CXR_MODEL_PATH)")
    parser.add_argument("--execution-provider", choices=["auto", "cuda", "cpu"], help="CXR_EXECUTION_PROVIDER")
    parser.add_argument("--workers", type=int, help="service processes sharing the port (CXR_WORKERS, default 1)")
    parser.add_argument(
        "--inference",
        choices=["per-worker", "shared"],
        help="per-worker: each worker runs its own model; shared: the workers are frontends of one inference process "
        "(CXR_INFERENCE, default per-worker)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "model_path": args.model,
        "execution_provider": args.execution_provider,
        "workers": args.workers,
        "inference": args.inference,
    }
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    logging_config = configure_logging(settings.log_level, settings.log_format)

    try:
        served = load_served_model(settings)
    except ModelError as error:
        print(f"error: model refused: {error}", file=sys.stderr)
        sys.exit(2)
    logging.getLogger("service").info("serving the %s variant: %s", served.variant, served.reason)
    try:
        app = create_app(settings, served=served)
    except AuthConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    capture_native_stderr(app.state.service.metrics.native_stderr_lines.inc)

    config_options = {
        "host": settings.host,
        "port": settings.port,
        "log_config": logging_config,
        "log_level": settings.log_level,
        "access_log": False,  # service.requests logs each request once, with its id and error code
        "timeout_graceful_shutdown": settings.drain_timeout_s,  # uvicorn accepts a float
        "server_header": False,
        "ws": "none",  # no WebSocket routes; uvicorn's WebSocket log lines would quote the query string
    }
    if settings.inference == "shared":
        del app, served  # checked; the inference process loads the one copy
        sys.exit(serve_shared(settings, config_options, settings.workers))
    if settings.workers > 1:
        del app, served  # checked; each worker loads its own copy
        sys.exit(serve_workers(settings, config_options, settings.workers))
    config = uvicorn.Config(app, http=limited_protocol(settings), **config_options)
    DrainingServer(config, on_drain=app.state.service.drain, drain_delay_s=settings.drain_delay_s).run()


if __name__ == "__main__":
    main()
