"""One process runs the model for several frontend processes; tensors cross by shared memory.

On a many-core or GPU host one Python process is bound by its own interpreter long before the
cores or the GPU are (docs/performance.md), and N whole services each batch only their own few
requests, with N model copies (and N CUDA contexts time-slicing one GPU). Here the frontends only
receive, decode and preprocess; one inference process owns the model and runs the same
micro-batcher (service/batching.py) over every frontend's requests.

The road of one request:
  1. the frontend copies its [1,1,256,256] float32 tensor into a free slot of its own shared-memory
     block (`create_slots`: made by the supervisor, one block per frontend start, never reused);
  2. it sends (job id, slot, heatmap?) over its Unix-socket connection to the inference process:
     a few bytes, never the 256 KB tensor;
  3. the inference process submits a view of that slot to its MicroBatcher (which copies it into
     the batch), writes the heatmap, if one was asked for, back into the same slot, and answers
     (job id, BatchResult or ServiceError);
  4. the frontend copies the heatmap out, frees the slot and resolves the waiting request.

A slot is freed only by its answer or by the loss of the connection (the inference process died:
its jobs fail with `not_ready`), so no request can read another's tensor. The inference process
opens its socket only once it is warm, so a connected frontend is one that may serve. Each side
reads its connection on a thread of its own and hands messages to its event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Client, Connection, Listener
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from service.batching import BatchResult, MicroBatcher
from service.errors import ErrorCode, ServiceError
from service.model import Model, ModelFacts
from service.preprocessing import OUTPUT_SIZE
from service.settings import Settings
from service.variant_choice import ServedModel

logger = logging.getLogger("service")

TENSOR_SHAPE = (1, 1, OUTPUT_SIZE, OUTPUT_SIZE)
SLOT_BYTES = 4 * OUTPUT_SIZE * OUTPUT_SIZE  # one float32 tensor; a [256, 256] heatmap comes back in the same place
RECONNECT_S = 0.1


def slots_per_frontend(settings: Settings) -> int:
    """Tensors one frontend may have at the inference process: as many as the host's queue and one batch hold."""
    return settings.max_queue + settings.max_batch


def create_slots(count: int) -> SharedMemory:
    """A shared-memory block for `count` tensors (the supervisor's, for one frontend start; unlink it when that
    frontend is gone).

    Its pages are written once here: /dev/shm is a tmpfs, and a block on a full one fails with SIGBUS
    at its first write, which must be now, at start-up, not in the middle of a request.
    """
    block = SharedMemory(create=True, size=count * SLOT_BYTES)
    pages = np.ndarray((block.size,), dtype=np.uint8, buffer=block.buf)
    pages[:] = 0
    del pages  # no view may outlive the block's close()
    return block


def shared_memory_problem(frontends: int, slots: int, folder: str = "/dev/shm") -> str | None:
    """Why `frontends` blocks of `slots` tensors do not fit in the shared-memory folder, or None when they do."""
    needed = frontends * slots * SLOT_BYTES
    try:
        stats = os.statvfs(folder)
    except OSError as error:
        return f"{folder} is not usable for shared memory: {error.strerror or error}"
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        return (
            f"{folder} has {free / 2**20:.0f} MiB free, but {frontends} frontends x {slots} tensor slots "
            f"(CXR_MAX_QUEUE + CXR_MAX_BATCH) need {needed / 2**20:.0f} MiB: give the container more "
            "(docker run --shm-size; Kubernetes: an emptyDir of medium Memory at /dev/shm) or lower CXR_MAX_QUEUE"
        )
    return None


def tensor_view(block: SharedMemory, slot: int) -> np.ndarray:
    """Slot `slot` of a block as a [1,1,256,256] float32 array (no copy)."""
    return np.ndarray(TENSOR_SHAPE, dtype=np.float32, buffer=block.buf, offset=slot * SLOT_BYTES)


@dataclass(frozen=True)
class FrontendPlan:
    """What the supervisor gives frontend `index`: where the inference process listens, its tensor block, and the
    host's shared counters (one cell per frontend: up after its warm-up; /predict requests in progress)."""

    index: int
    address: str
    authkey: bytes
    block: str
    slots: int
    up: MutableSequence[int]
    in_flight: MutableSequence[int]


@dataclass(frozen=True)
class Hello:
    """A frontend's first message: who it is and where its tensors are."""

    frontend: int
    block: str  # the shared-memory block's name
    slots: int


@dataclass(frozen=True)
class Welcome:
    """The inference process's answer: the model every response reports, and whether it may serve."""

    facts: ModelFacts
    variant: str
    reason: str
    problem: str | None  # why the model may not serve (e.g. CUDA asked for, CPU active); None: it may


def close_connection(connection: Connection) -> None:
    """Close a connection that another thread may be blocked reading: shut the socket down first, which wakes it."""
    try:
        sock = socket.socket(fileno=connection.fileno())
    except (OSError, ValueError):
        return  # already closed
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.detach()  # the Connection owns the descriptor
    connection.close()


class InferenceServer:
    """The inference process's side: frontends connect on a Unix socket; their tensors feed one MicroBatcher."""

    def __init__(self, batcher: MicroBatcher, welcome: Welcome, *, address: str, authkey: bytes) -> None:
        self.batcher = batcher
        self.welcome = welcome
        self.address = address
        self.authkey = authkey
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[Connection] = set()
        self._closed = threading.Event()

    async def serve(self, stop: asyncio.Event) -> None:
        """Accept frontends until `stop` is set, then close every connection (their waiting jobs fail there)."""
        self._loop = asyncio.get_running_loop()
        if os.path.exists(self.address):
            os.unlink(self.address)  # left by a predecessor that was killed
        listener = Listener(self.address, family="AF_UNIX", authkey=self.authkey)
        threading.Thread(target=self._accept, args=(listener,), name="inference-accept", daemon=True).start()
        try:
            await stop.wait()
        finally:
            self._closed.set()
            with socket.socket(socket.AF_UNIX) as wake:  # the accepting thread wakes, fails the handshake, sees closed
                wake.connect(self.address)
            listener.close()
            for connection in list(self._connections):
                close_connection(connection)

    def _accept(self, listener: Listener) -> None:
        while not self._closed.is_set():
            try:
                connection = listener.accept()
            except Exception:  # a closed listener, or a peer that failed the handshake
                continue
            self._connections.add(connection)
            threading.Thread(target=self._read, args=(connection,), name="inference-frontend", daemon=True).start()

    def _read(self, connection: Connection) -> None:
        """One frontend's requests, until it goes away (its jobs still run; their answers go nowhere)."""
        lock = threading.Lock()
        try:
            hello: Hello = connection.recv()
            block = SharedMemory(hello.block)
            if hello.slots * SLOT_BYTES > block.size:
                raise ValueError(f"a block of {block.size} bytes holds fewer than {hello.slots} tensors")
            connection.send(self.welcome)
            logger.info("frontend %d connected", hello.frontend)
            while True:
                job, slot, heatmap = connection.recv()
                if not 0 <= slot < hello.slots:
                    raise ValueError(f"slot {slot} outside 0..{hello.slots - 1}")
                assert self._loop is not None
                asyncio.run_coroutine_threadsafe(self._serve(connection, lock, block, job, slot, heatmap), self._loop)
        except (EOFError, OSError, ValueError) as error:
            if not self._closed.is_set():
                logger.info("a frontend disconnected (%s)", type(error).__name__)
        finally:
            self._connections.discard(connection)
            close_connection(connection)

    async def _serve(
        self, connection: Connection, lock: threading.Lock, block: SharedMemory, job: int, slot: int, heatmap: bool
    ) -> None:
        written = False
        try:
            result = await self.batcher.submit(tensor_view(block, slot), heatmap=heatmap)
            if result.heatmap is not None:
                tensor_view(block, slot)[0, 0] = result.heatmap
                written = True
            answer: tuple[int, BatchResult | ServiceError, bool] = (job, replace(result, heatmap=None), written)
        except ServiceError as error:
            answer = (job, error, False)
        except Exception as error:  # never leave the request waiting: it answers as one process would (500 internal_error)
            logger.error("inference failed: %s", type(error).__name__)
            answer = (job, ServiceError(ErrorCode.INTERNAL_ERROR, "inference failed"), False)
        try:
            with lock:
                connection.send(answer)
        except (OSError, ValueError):
            pass  # the frontend went away; its slots die with its block


@dataclass
class _Pending:
    future: asyncio.Future[BatchResult]
    slot: int


class InferenceClient:
    """A frontend's side: `submit` as MicroBatcher's, answered by the inference process.

    Connects (and reconnects, when the inference process is replaced) on a thread of its own;
    while not connected, `submit` refuses at once with `not_ready`, never waits.
    """

    def __init__(self, *, address: str, authkey: bytes, block: str, slots: int, frontend: int = 0) -> None:
        self.address = address
        self.authkey = authkey
        self.hello = Hello(frontend, block, slots)
        self.welcome: Welcome | None = None  # the latest inference process's, kept after it goes
        self._connection: Connection | None = None
        self._block: SharedMemory | None = None
        self._free = list(range(slots))
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._closed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        """An inference process, warm, is connected now."""
        return self._connection is not None

    @property
    def queue_depth(self) -> int:
        return 0  # the queue is the inference process's, which reports the host's depth itself

    def start(self) -> None:
        """Attach the block and start connecting, on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._block = SharedMemory(self.hello.block)
        self._thread = threading.Thread(target=self._run, name="inference-client", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Disconnect; requests still waiting fail with `not_ready`."""
        self._closed.set()
        if self._connection is not None:
            self._lost(self._connection, "the service is shutting down")
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    async def submit(self, tensor: np.ndarray, *, heatmap: bool = False) -> BatchResult:
        """Hand one [1,1,H,W] tensor to the inference process and wait for its share of a batch."""
        connection, block = self._connection, self._block
        if connection is None or block is None:
            raise ServiceError(ErrorCode.NOT_READY, "the inference process is not running; retry shortly", retry_after=1)
        if not self._free:
            raise ServiceError(
                ErrorCode.OVERLOADED, f"{self.hello.slots} requests are already waiting; retry shortly", retry_after=1
            )
        slot = self._free.pop()
        tensor_view(block, slot)[...] = tensor
        job = next(self._ids)
        assert self._loop is not None
        pending = _Pending(self._loop.create_future(), slot)
        self._pending[job] = pending
        try:
            connection.send((job, slot, heatmap))
        except (OSError, ValueError):
            self._lost(connection, "the inference process stopped; retry shortly")
        return await pending.future

    def _run(self) -> None:
        """Connect, read answers, and connect again when the inference process goes away."""
        while not self._closed.is_set():
            try:
                connection = Client(self.address, family="AF_UNIX", authkey=self.authkey)
            except Exception:  # not listening yet (starting, warming up, being replaced)
                self._closed.wait(RECONNECT_S)
                continue
            try:
                connection.send(self.hello)
                welcome = connection.recv()
                if not self._call(self._connected, connection, welcome):
                    return
                while True:
                    if not self._call(self._answer, *connection.recv()):
                        return
            except (EOFError, OSError):
                pass
            if not self._call(self._lost, connection, "the inference process stopped; retry shortly"):
                return

    def _call(self, function: object, *args: object) -> bool:
        """Run `function(*args)` on the event loop; False once the loop is gone."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)  # type: ignore[arg-type]
        except RuntimeError:
            return False
        return True

    def _connected(self, connection: Connection, welcome: Welcome) -> None:
        if self._closed.is_set():
            close_connection(connection)
            return
        self.welcome = welcome
        self._connection = connection
        logger.info("connected to the inference process (%s)", welcome.facts.execution_provider)

    def _answer(self, job: int, outcome: BatchResult | ServiceError, heatmap_written: bool) -> None:
        pending = self._pending.pop(job, None)
        if pending is None:
            return
        heatmap = None
        if heatmap_written and self._block is not None:
            heatmap = tensor_view(self._block, pending.slot)[0, 0].copy()
        self._free.append(pending.slot)
        if pending.future.done():
            return
        if isinstance(outcome, ServiceError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(replace(outcome, heatmap=heatmap))

    def _lost(self, connection: Connection, reason: str) -> None:
        """The connection is gone: nobody will answer its jobs, so fail them and free their slots."""
        if self._connection is not None and self._connection is not connection:
            close_connection(connection)  # an older connection, reported twice; the jobs waiting are the new one's
            return
        if self._connection is connection:
            self._connection = None
            if not self._closed.is_set():
                logger.warning("lost the inference process; %d requests fail with not_ready", len(self._pending))
        close_connection(connection)
        pending, self._pending = self._pending, {}
        for job in pending.values():
            self._free.append(job.slot)
            if not job.future.done():
                job.future.set_exception(ServiceError(ErrorCode.NOT_READY, reason, retry_after=1))


async def run_inference(
    served: ServedModel, batcher: MicroBatcher, settings: Settings, *, address: str, authkey: bytes, stop: asyncio.Event
) -> None:
    """The inference process's main: warm every batch size, then serve frontends on `address` until `stop` is set.

    The socket opens only after the warm-up, so a frontend that connects talks to a warm model.
    """
    model = served.model
    assert isinstance(model, Model), "the inference process runs the model itself"
    started = time.perf_counter()
    await asyncio.to_thread(model.warm_up, list(range(1, settings.max_batch + 1)), settings.warmup_runs)
    problem = model.provider_problem(settings.execution_provider)
    if problem is not None:
        logger.error("not ready: %s", problem)
    welcome = Welcome(model.facts, served.variant, served.reason, problem)
    batcher.start()
    logger.info(
        "inference process ready: model %s %s on %s, warmed in %.1f s",
        model.contract.model_name, model.contract.model_version, model.execution_provider, time.perf_counter() - started,
    )  # fmt: skip
    try:
        await InferenceServer(batcher, welcome, address=address, authkey=authkey).serve(stop)
    finally:
        await batcher.stop()
