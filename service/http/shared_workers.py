"""`CXR_INFERENCE=shared`: N frontend processes on one port and one inference process that owns the model.

The frontends receive, admit, decode and preprocess (service/http/app.py with a `FrontendPlan`);
the inference process loads the model once, warms it and batches every frontend's tensors
(service/shared_inference.py). This process supervises them:
- it checks the model before binding (as --workers does), binds the port once and keeps it, so a
  replaced frontend can serve it again;
- a process that dies is reported and replaced: a frontend with a fresh tensor block (the old one
  is unlinked, so nothing of its requests can reach another's) and its host counters zeroed, the
  inference process as it was; meanwhile /ready and /predict say 503 `not_ready` on every frontend.
  Replacements back off, and a process that keeps crashing stops the service with status 1
  (service/http/restarts.py);
- a process that exits with status 2 (a model refused on reload) stops the whole service with 2;
- SIGTERM (or SIGINT) goes to the frontends, which drain as a single process does; the inference
  process is stopped only once the last frontend has finished what it accepted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from types import FrameType
from typing import Any

from prometheus_client import multiprocess

from service.http.restarts import RestartPolicy
from service.http.workers import become_child, listening, load_or_exit, run_worker
from service.settings import Settings
from service.shared_inference import FrontendPlan, create_slots, shared_memory_problem, slots_per_frontend

logger = logging.getLogger("service")

POLL_S = 0.2


def serve_shared(settings: Settings, config_options: dict[str, Any], frontends: int) -> int:
    """Run `frontends` frontends and one inference process on settings.host:settings.port; returns the exit status."""
    slots = slots_per_frontend(settings)
    problem = shared_memory_problem(frontends, slots)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with listening(settings) as sock:
        return supervise(settings, config_options, frontends, slots, sock)


def supervise(settings: Settings, config_options: dict[str, Any], frontends: int, slots: int, sock: socket.socket) -> int:
    """Start the inference process and the frontends on `sock`, replace the ones that die, drain on a signal."""
    run_dir = tempfile.mkdtemp(prefix="cxr-inference-")  # mode 0700: only this user reaches the socket
    address = os.path.join(run_dir, "inference.sock")
    authkey = os.urandom(32)
    context = multiprocessing.get_context("spawn")
    up, in_flight = context.RawArray("i", frontends), context.RawArray("i", frontends)
    blocks: dict[int, SharedMemory] = {}
    parent = os.getpid()

    def start_inference() -> BaseProcess:
        process = context.Process(
            target=run_inference_process, args=(settings, config_options, address, authkey, parent), name="cxr-inference"
        )
        process.start()
        return process

    def start_frontend(index: int) -> BaseProcess:
        release_block(blocks.pop(index, None))
        blocks[index] = block = create_slots(slots)
        up[index], in_flight[index] = 0, 0
        plan = FrontendPlan(index, address, authkey, block.name, slots, up, in_flight)
        process = context.Process(
            target=run_worker, args=(settings, config_options, sock, parent, plan), name=f"cxr-frontend-{index}"
        )
        process.start()
        return process

    stopping = False
    frontend_processes: dict[int, BaseProcess] = {}
    policies = {name: RestartPolicy(settings.restart_limit, settings.restart_window_s) for name in ["inference", *range(frontends)]}
    due: dict[str | int, float] = {}  # crashed processes waiting out their backoff: when each is started again

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in frontend_processes.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    def crashed(name: str | int, process: BaseProcess, what: str) -> None:
        """Schedule the replacement of a process that exited on its own, or stop the service if it keeps doing so."""
        nonlocal status
        delay = policies[name].delay_after_crash(time.monotonic())
        if delay is None:
            logger.error(
                "%s (pid %s) exited with status %s: more than CXR_RESTART_LIMIT=%d crashes within %g s; stopping the service",
                what, process.pid, process.exitcode, settings.restart_limit, settings.restart_window_s,
            )  # fmt: skip
            status = 1
            forward(signal.SIGTERM, None)
            return
        logger.error("%s (pid %s) exited with status %s; starting a new one in %g s", what, process.pid, process.exitcode, delay)
        due[name] = time.monotonic() + delay

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    inference: BaseProcess | None = None
    status = 0
    try:
        inference = start_inference()
        for index in range(frontends):
            frontend_processes[index] = start_frontend(index)
        logger.info("started %d frontends and one inference process on %s:%d", frontends, settings.host, settings.port)
        while frontend_processes or (due and not stopping):
            running = [p for p in [inference, *frontend_processes.values()] if p is not None]
            wait([p.sentinel for p in running], timeout=POLL_S)
            if stopping:
                sock.close()  # no frontend will be started again; the last one to drain closes the listener
                due.clear()
            for index, process in list(frontend_processes.items()):
                if process.exitcode is None:
                    continue
                multiprocess.mark_process_dead(process.pid)
                del frontend_processes[index]
                if stopping:
                    continue
                if process.exitcode == 2:
                    status = 2
                    forward(signal.SIGTERM, None)
                else:
                    crashed(index, process, f"frontend {index}")
            if inference is not None and inference.exitcode is not None and not stopping:
                multiprocess.mark_process_dead(inference.pid)
                if inference.exitcode == 2:
                    logger.error("the inference process refused the model; stopping")
                    status = 2
                    forward(signal.SIGTERM, None)
                else:
                    crashed("inference", inference, "the inference process")
                    inference = None
            now = time.monotonic()
            for name, when in list(due.items()):
                if when <= now and not stopping:
                    del due[name]
                    if name == "inference":
                        inference = start_inference()
                    else:
                        frontend_processes[name] = start_frontend(name)  # type: ignore[index]
        if inference is not None and inference.is_alive():  # every frontend has finished what it accepted: now the model may go
            os.kill(inference.pid, signal.SIGTERM)  # type: ignore[arg-type]
            inference.join(timeout=settings.drain_timeout_s + 10)
        return status
    finally:
        for process in [inference, *frontend_processes.values()]:
            if process is not None and process.is_alive():
                process.kill()
        sock.close()
        for block in blocks.values():
            release_block(block)
        shutil.rmtree(run_dir, ignore_errors=True)


def release_block(block: SharedMemory | None) -> None:
    """Unlink a dead frontend's tensor block (the inference process may still map it until its jobs finish)."""
    if block is not None:
        block.close()
        block.unlink()


def run_inference_process(settings: Settings, config_options: dict[str, Any], address: str, authkey: bytes, parent: int) -> None:
    """The inference process: load and warm the model, then batch the frontends' tensors until SIGTERM."""
    import asyncio

    from service.http.metrics import Metrics
    from service.predictor import batcher_for
    from service.shared_inference import run_inference

    become_child(config_options, parent)  # Ctrl-C reaches the supervisor only, which stops this process last
    served = load_or_exit(settings)
    logger.info("inference process %d serving the %s variant: %s", os.getpid(), served.variant, served.reason)
    metrics = Metrics()  # multiprocess mode: batches, inference time and the host's queue, added to the frontends'
    batcher = batcher_for(served.model, settings)  # type: ignore[arg-type]  # load_served_model returns a Model here
    metrics.watch(batcher, served.model)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def sample() -> None:
            while True:
                metrics.sample()  # the queue gauge; nothing asks this process for /metrics
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        try:
            await run_inference(served, batcher, settings, address=address, authkey=authkey, stop=stop)
        finally:
            sampler.cancel()

    asyncio.run(main())
