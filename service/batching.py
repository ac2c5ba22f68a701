"""Micro-batcher: concurrent requests share one inference call, behind a bounded queue.

Policy (measured in docs/performance.md):
- A lone request runs at once: the worker never waits for company when the queue is empty.
- Under load, whatever queued while the previous batch ran forms the next batch (up to
  `max_batch`); only when a batch already has company does it wait up to `max_delay` more.
- The queue is bounded: when full, a request is refused at once (503 `overloaded` with
  `Retry-After`), never left to time out.
- Inference runs on one dedicated thread, so the event loop stays free for /live and /ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import ErrorCode, ServiceError


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch, with the costs it paid."""

    probability: float
    heatmap: np.ndarray | None  # [256, 256] in [0, 1], when asked for and the model has one
    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Job:
    tensor: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float
    heatmap: bool = False


class MicroBatcher:
    """Collects single-image tensors into batches for `run_batch` (float32 [N,1,H,W] -> [N]).

    `run_with_heatmap` (-> probabilities [N], heatmaps [N,H,W]) runs instead when any request
    in the batch asked for a heatmap: the heatmap is one more output of the same graph.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        run_with_heatmap: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
    ) -> None:
        self._run_batch = run_batch
        self._run_with_heatmap = run_with_heatmap
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight: list[_Job] = []  # the batch being run, failed too if the worker is stopped
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.on_batch: Callable[[int, float], None] | None = None  # metrics hook: (size, seconds)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued or in the batch being run are failed with `not_ready`."""
        unfinished = list(self._in_flight)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                unfinished.append(self._queue.get_nowait())
        self._fail(unfinished, ServiceError(ErrorCode.NOT_READY, "the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, tensor: np.ndarray, *, heatmap: bool = False) -> BatchResult:
        """Queue one [1,1,H,W] tensor and wait for its probability (and heatmap, if asked and available)."""
        if self._queue is None:
            raise ServiceError(ErrorCode.NOT_READY, "the inference worker is not running")
        job = _Job(tensor, asyncio.get_running_loop().create_future(), time.perf_counter(), heatmap)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServiceError(
                ErrorCode.OVERLOADED, f"{self.max_queue} requests are already waiting; retry shortly", retry_after=1
            ) from None
        return await job.future

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            jobs = await self._collect(self._queue)
            jobs = [job for job in jobs if not job.future.done()]  # the client went away
            if not jobs:
                continue
            self._in_flight = jobs
            try:
                await self._run(jobs)
            except Exception as error:  # a failing model must fail its requests, never the worker
                self._fail(jobs, ServiceError(ErrorCode.INTERNAL_ERROR, f"inference failed: {type(error).__name__}"))
            finally:
                self._in_flight = []

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        batch = np.concatenate([job.tensor for job in jobs])
        started = time.perf_counter()
        if self._run_with_heatmap is not None and any(job.heatmap for job in jobs):
            probabilities, heatmaps = await loop.run_in_executor(self._executor, self._run_with_heatmap, batch)
        else:
            probabilities = await loop.run_in_executor(self._executor, self._run_batch, batch)
            heatmaps = None
        finished = time.perf_counter()
        if len(probabilities) != len(jobs) or not np.all((probabilities >= 0) & (probabilities <= 1)):
            raise ValueError(f"model returned {len(probabilities)} values outside [0, 1] for {len(jobs)} images")
        if self.on_batch is not None:
            self.on_batch(len(jobs), finished - started)
        for index, (job, probability) in enumerate(zip(jobs, probabilities, strict=True)):
            if not job.future.done():
                job.future.set_result(
                    BatchResult(
                        probability=float(probability),
                        heatmap=heatmaps[index].copy() if heatmaps is not None and job.heatmap else None,
                        batch_size=len(jobs),
                        queue_ms=(started - job.enqueued) * 1000.0,
                        inference_ms=(finished - started) * 1000.0,
                    )
                )

    @staticmethod
    def _fail(jobs: list[_Job], error: ServiceError) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        jobs = [await queue.get()]
        while len(jobs) < self.max_batch and not queue.empty():
            jobs.append(queue.get_nowait())
        if len(jobs) > 1 and self.max_delay_s > 0:
            deadline = time.perf_counter() + self.max_delay_s
            while len(jobs) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
        return jobs
