"""`python -m service --workers N`: N service processes sharing one listening socket.

One Python process is bound by its own interpreter long before a big CPU or a GPU is (docs/performance.md),
so several run side by side. Each worker is the whole service: it loads and checks the model,
warms up and turns ready on its own (/ready answers for whichever worker the kernel hands the
connection to), and drains on SIGTERM exactly like a single process, finishing what it accepted.
The parent checks the model once before binding (a refused model still stops start-up with exit
status 2 and one line), binds the port once, starts the workers, passes SIGTERM and SIGINT on to
them, and waits. Metrics are aggregated across workers by prometheus_client's multiprocess mode,
in a private temporary folder that the parent creates before the workers start and removes after.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from service.settings import Settings
from service.shared_inference import FrontendPlan

if TYPE_CHECKING:
    from service.variant_choice import ServedModel

logger = logging.getLogger("service")

PR_SET_PDEATHSIG = 1  # prctl(2)
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when a worker imports it


def serve_workers(settings: Settings, config_options: dict[str, Any], workers: int) -> int:
    """Run `workers` copies of the service on settings.host:settings.port; returns the exit status."""
    with listening(settings) as sock:
        return supervise_workers(settings, config_options, workers, sock)


@contextmanager
def listening(settings: Settings) -> Iterator[socket.socket]:
    """The port, bound once for every child process, and the metrics folder they all write into (prometheus_client's
    multiprocess mode, named in the environment the children inherit); the socket is closed and the folder removed
    on the way out."""
    sock = uvicorn.Config(app=None, host=settings.host, port=settings.port, log_config=None).bind_socket()
    metrics_dir = tempfile.mkdtemp(prefix="cxr-metrics-")
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def supervise_workers(settings: Settings, config_options: dict[str, Any], workers: int, sock: socket.socket) -> int:
    """Start the workers on `sock`, pass signals on, and stop them all when one dies on its own."""
    context = multiprocessing.get_context("spawn")  # children start afresh: no inherited thread pools or model
    processes = [
        context.Process(target=run_worker, args=(settings, config_options, sock, os.getpid()), name=f"cxr-worker-{index}")
        for index in range(workers)
    ]
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.start()
    # Only the workers may hold the listener: once they all close it on SIGTERM, new connections must be
    # refused, not left in a backlog that nobody accepts from and reset when this process exits.
    sock.close()
    logger.info("started %d workers on %s:%d", workers, settings.host, settings.port)
    status = 0
    while any(process.is_alive() for process in processes):
        for process in processes:
            process.join(timeout=0.2)
            if process.exitcode is not None and process.exitcode != 0 and not stopping:
                # One worker died on its own: stop the others so the orchestrator restarts the whole service.
                logger.error("%s exited with status %s; stopping the others", process.name, process.exitcode)
                status = 2 if process.exitcode == 2 else 1
                forward(signal.SIGTERM, None)
    return status


def run_worker(
    settings: Settings, config_options: dict[str, Any], sock: socket.socket, parent: int, frontend: FrontendPlan | None = None
) -> None:
    """One worker: load and check the model (a frontend of the shared inference process loads none), then serve the
    inherited socket until drained."""
    from service.http.app import create_app
    from service.http.limits import limited_protocol
    from service.http.shutdown import DrainingServer
    from service.native_stderr import capture_native_stderr

    become_child(config_options, parent)
    if frontend is None:
        served = load_or_exit(settings)
        app = create_app(settings, served=served)
        logger.info("worker %d serving the %s variant: %s", os.getpid(), served.variant, served.reason)
    else:
        app = create_app(settings, frontend=frontend)
        logger.info("frontend %d started (pid %d)", frontend.index, os.getpid())
    capture_native_stderr(app.state.service.metrics.native_stderr_lines.inc)
    config = uvicorn.Config(app, http=limited_protocol(settings), **config_options)
    DrainingServer(config, on_drain=app.state.service.drain, drain_delay_s=settings.drain_delay_s).run(sockets=[sock])


def become_child(config_options: dict[str, Any], parent: int) -> None:
    """What every child process does first: leave the parent's process group (Ctrl-C reaches the parent only, which
    passes it on once; a second signal would cut a drain short), die with the parent, and log as it does."""
    import logging.config

    os.setpgrp()
    drain_when_orphaned(parent)
    logging.config.dictConfig(config_options["log_config"])


def load_or_exit(settings: Settings) -> ServedModel:
    """The model this process serves; a model refused on (re)load exits with status 2, which stops the service."""
    from service.model import ModelError
    from service.variant_choice import load_served_model

    try:
        return load_served_model(settings)
    except ModelError as error:
        print(f"error: model refused: {error}", file=sys.stderr)
        sys.exit(2)


def drain_when_orphaned(parent: int) -> None:
    """Ask Linux for a SIGTERM when the parent dies (even by SIGKILL), so no worker outlives it and keeps the port."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
