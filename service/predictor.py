"""The service without HTTP: bytes in, a probability and its provenance out.

`Predictor` runs `prepare` (decode + preprocess) off the event loop and feeds the
micro-batcher, so decoding of some requests overlaps inference of others. Decoding runs on
threads by default (Pillow's decoders, zlib and numpy release the GIL for the heavy parts), which
measured best on every host we timed (docs/performance.md); `decode_processes` runs it in worker
processes instead, an option kept for hosts where profiling shows the GIL serialising decodes.
`score_bytes` is the synchronous path for scripts and the CLI's `--local` mode: same functions,
no server.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from service.batching import MicroBatcher
from service.decode.scan import ScanFacts
from service.errors import ErrorCode, ServiceError
from service.heatmap import RenderedHeatmap, render
from service.logs import configure_logging, in_request, request_id_var
from service.model import Model, ModelFacts
from service.prepare import Prepared, prepare
from service.resources import available_cpus
from service.settings import Settings

if TYPE_CHECKING:
    from service.shared_inference import InferenceClient  # its own module imports the batcher, not this one

__all__ = ["Prediction", "Predictor", "Timing", "prepare", "score_bytes"]  # prepare: re-exported for scripts and tests


@dataclass(frozen=True)
class Timing:
    """Where one request's time went, in milliseconds (the response's `timing_ms`)."""

    decode: float
    preprocess: float
    queue: float
    inference: float
    total: float


def timing(prepared: Prepared, *, queue_ms: float, inference_ms: float, started: float) -> Timing:
    """The timing record of a request that began at `started` (a `time.perf_counter()` reading) and ends now."""
    total = (time.perf_counter() - started) * 1000.0
    return Timing(prepared.decode_ms, prepared.preprocess_ms, queue_ms, inference_ms, total)


@dataclass(frozen=True)
class Prediction:
    """Everything a response reports about one scored scan."""

    probability: float
    label: str
    image: ScanFacts
    batch_size: int
    timing_ms: Timing
    heatmap: RenderedHeatmap | None = None


def score_bytes(model: Model, data: bytes, *, max_pixels: int) -> Prediction:
    """Score one scan synchronously, without a server or batcher."""
    started = time.perf_counter()
    return score_prepared(model, prepare(data, max_pixels), started=started)


def score_prepared(model: Model, prepared: Prepared, *, started: float) -> Prediction:
    """Score one prepared scan synchronously; `started` is when its decoding began (perf_counter)."""
    inference_started = time.perf_counter()
    probability = float(model.predict(prepared.tensor)[0])
    inference_ms = (time.perf_counter() - inference_started) * 1000.0
    spent = timing(prepared, queue_ms=0.0, inference_ms=inference_ms, started=started)
    return Prediction(probability, model.contract.label(probability), prepared.image, 1, spent)


def batcher_for(model: Model, settings: Settings) -> MicroBatcher:
    """The micro-batcher over a loaded model with the settings' policy (one process, or the shared inference process)."""
    return MicroBatcher(
        model.predict,
        run_with_heatmap=model.predict_with_heatmap if model.has_heatmap else None,
        max_batch=settings.max_batch,
        max_delay_s=settings.max_delay_ms / 1000.0,
        max_queue=settings.max_queue,
    )


def decode_pool(workers: int, *, processes: bool, logging: tuple[str, str] = ("info", "json")) -> Executor:
    """Threads in this process, or spawned worker processes (never forked: ORT's threads exist)
    that log as the server does (`logging`: level and format)."""
    if processes:
        spawn = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=configure_logging, initargs=logging)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")


class Predictor:
    """Async scoring: decode + preprocess on a pool, inference through the micro-batcher.

    Requests in progress are bounded before this (service/http/admission.py), so the decode pool's
    backlog is bounded too.
    """

    def __init__(
        self,
        model: Model | ModelFacts,
        batcher: MicroBatcher | InferenceClient,
        *,
        decoders: Executor,
        workers: int,
        max_pixels: int,
        logging: tuple[str, str] = ("info", "json"),
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.max_pixels = max_pixels
        self._decoders = decoders
        self._workers = workers
        self._logging = logging

    @classmethod
    def from_settings(cls, model: Model | ModelFacts, batcher: MicroBatcher | InferenceClient, settings: Settings) -> Predictor:
        """Threads (CXR_DECODE_THREADS) or processes (CXR_DECODE_PROCESSES) for decoding, from the settings."""
        processes = settings.decode_processes > 0
        workers = settings.decode_processes if processes else settings.decode_threads or available_cpus()
        return cls(
            model,
            batcher,
            decoders=decode_pool(workers, processes=processes, logging=(settings.log_level, settings.log_format)),
            workers=workers,
            max_pixels=settings.max_pixels,
            logging=(settings.log_level, settings.log_format),
        )

    async def predict(self, data: bytes, *, heatmap: bool = False) -> Prediction:
        """Decode off the event loop, then wait for this scan's share of a batch (and its heatmap, if asked)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        pool = self._decoders
        try:
            prepared = await loop.run_in_executor(pool, in_request, request_id_var.get(), prepare, data, self.max_pixels)
        except BrokenProcessPool:  # a decode worker died (OOM kill, a crash in a codec): start afresh
            if self._decoders is pool:
                self._decoders = decode_pool(self._workers, processes=True, logging=self._logging)
                pool.shutdown(wait=False, cancel_futures=True)
            raise ServiceError(ErrorCode.NOT_READY, "a decode worker stopped; retry shortly", retry_after=1) from None
        result = await self.batcher.submit(prepared.tensor, heatmap=heatmap)
        rendered = None
        if result.heatmap is not None:
            rendered = await loop.run_in_executor(None, render, prepared.tensor[0, 0], result.heatmap)
        spent = timing(prepared, queue_ms=result.queue_ms, inference_ms=result.inference_ms, started=started)
        label = self.model.contract.label(result.probability)
        return Prediction(result.probability, label, prepared.image, result.batch_size, spent, rendered)

    def start_decoders(self) -> None:
        """Run a scan through every decode worker before /ready, so no client pays a process start."""
        gradient = np.add.outer(np.arange(256), np.arange(256)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(gradient).save(buffer, format="PNG")
        sample = buffer.getvalue()
        for future in [self._decoders.submit(prepare, sample, self.max_pixels) for _ in range(self._workers)]:
            future.result()

    def close(self) -> None:
        self._decoders.shutdown(wait=True, cancel_futures=True)
