"""The service without HTTP: bytes in, a probability and its provenance out.

`prepare` is the pure per-request work (decode + preprocess). `Predictor` runs it on a
thread pool (Pillow, zlib and numpy release the GIL for the heavy parts) and feeds the
micro-batcher, so decoding of one request overlaps inference of others. `score_bytes` is
the synchronous path for scripts and the CLI's `--local` mode: same functions, no server.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.batching import MicroBatcher
from service.imaging import DecodedImage, decode
from service.model import Model
from service.preprocessing import preprocess


@dataclass(frozen=True)
class Prepared:
    """A decoded scan's facts and its model tensor."""

    image: DecodedImage
    tensor: np.ndarray
    decode_ms: float
    preprocess_ms: float


@dataclass(frozen=True)
class Prediction:
    """Everything a response reports about one scored scan."""

    probability: float
    label: str
    image: DecodedImage
    batch_size: int
    timing_ms: dict[str, float]


def prepare(data: bytes, *, max_pixels: int) -> Prepared:
    """Decode and preprocess one upload (pure; raises ServiceError on bad input)."""
    started = time.perf_counter()
    image = decode(data, max_pixels=max_pixels)
    decoded = time.perf_counter()
    tensor = preprocess(image.pixels)
    finished = time.perf_counter()
    return Prepared(image, tensor, (decoded - started) * 1000.0, (finished - decoded) * 1000.0)


def score_bytes(model: Model, data: bytes, *, max_pixels: int) -> Prediction:
    """Score one scan synchronously, without a server or batcher."""
    started = time.perf_counter()
    prepared = prepare(data, max_pixels=max_pixels)
    inference_started = time.perf_counter()
    probability = float(model.predict(prepared.tensor)[0])
    finished = time.perf_counter()
    timing = {
        "decode": prepared.decode_ms,
        "preprocess": prepared.preprocess_ms,
        "queue": 0.0,
        "inference": (finished - inference_started) * 1000.0,
        "total": (finished - started) * 1000.0,
    }
    return Prediction(probability, model.contract.label(probability), prepared.image, 1, timing)


class Predictor:
    """Async scoring: decode on a thread pool, infer through the micro-batcher."""

    def __init__(self, model: Model, batcher: MicroBatcher, *, decode_threads: int, max_pixels: int) -> None:
        self.model = model
        self.batcher = batcher
        self.max_pixels = max_pixels
        self._decoders = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")

    async def predict(self, data: bytes) -> Prediction:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._decoders, lambda: prepare(data, max_pixels=self.max_pixels))
        result = await self.batcher.submit(prepared.tensor)
        timing = {
            "decode": prepared.decode_ms,
            "preprocess": prepared.preprocess_ms,
            "queue": result.queue_ms,
            "inference": result.inference_ms,
            "total": (time.perf_counter() - started) * 1000.0,
        }
        label = self.model.contract.label(result.probability)
        return Prediction(result.probability, label, prepared.image, result.batch_size, timing)

    def close(self) -> None:
        self._decoders.shutdown(wait=True)
